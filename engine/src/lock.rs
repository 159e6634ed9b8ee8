//! The directory lock: one store per directory, across processes and within one.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};

/// Name of the lock file in the store directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds the exclusive lock on a store directory until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock or fails at once with [`Error::Locked`].
    ///
    /// The lock is an `flock` on `dir/LOCK` (std's `File::try_lock`): it belongs to
    /// the open file description, so a second open in the same process fails too,
    /// and the kernel releases it if the process dies.
    ///
    /// One consequence: while another thread of this process is spawning a
    /// child, the child briefly shares the descriptor (between `fork` and
    /// `exec`, which closes it), so a store closed at that moment may still
    /// read as locked for that instant.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}
