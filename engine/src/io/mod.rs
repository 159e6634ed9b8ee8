//! The storage seam: every call the engine makes that changes a file or a
//! directory goes through a [`Storage`].
//!
//! In production that is the operating system ([`Storage::os`]). In tests it can
//! be a simulated page cache (`SimFs`, feature `failpoints`) that remembers
//! what was written but not yet synced, so that a simulated power cut can lose,
//! keep or tear those writes and undo unsynced directory changes — which a
//! `SIGKILL` never does, since the kernel's page cache survives the process.
//!
//! Reads are not routed through the seam: the engine reads segments through
//! memory maps and small files with `std::fs`, and both see what the process
//! wrote, synced or not, exactly as they would on a real kernel.
//!
//! What the seam covers: creating and opening files, `pwrite`, `set_len`,
//! `fdatasync`/`fsync`, creating, renaming (replacing or not) and removing files
//! and directories, hard links, fsyncs of directories, and `syncfs` of a whole
//! file system.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod open_files;
mod os;
#[cfg(any(test, feature = "failpoints"))]
mod sim;

pub use open_files::{out_of_descriptors, FileRef, DEFAULT_OPEN_FILES};
#[cfg(test)]
pub(crate) use os::Os;
#[cfg(any(test, feature = "failpoints"))]
pub use sim::{CutStyle, SimFaults, SimFs, SimStats};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; an existing one of the same name is truncated.
    Create,
}

/// The operations a storage backend provides (see the module documentation).
///
/// File operations take the `std` file and the backend's own number for it
/// (given by [`Backend::open`]), so that a simulation can tell files apart
/// across renames.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<(fs::File, u64)>;
    fn write_at(&self, file: &fs::File, id: u64, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The caller is about to write `len` bytes at `offset` through a shared
    /// memory mapping of the file (no system call): a simulation records them
    /// as unsynced, or refuses once the power is off.
    fn note_mapped_write(&self, id: u64, offset: u64, len: u64) -> io::Result<()>;
    fn set_len(&self, file: &fs::File, id: u64, len: u64) -> io::Result<()>;
    fn sync(&self, file: &fs::File, id: u64, data_only: bool) -> io::Result<()>;
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` over `[from, to)`: the page cache lets go
    /// of the pages there that hold no unwritten change, so that they are read from
    /// the disk again. After a failed writeback Linux keeps the failed pages cached
    /// and counts them clean: read back, they would pass for data the disk has.
    fn drop_cached(&self, file: &fs::File, id: u64, from: u64, to: u64) -> io::Result<()>;
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over `[from, to)`: starts
    /// writing those bytes to the disk without waiting for them, so that a later
    /// sync has less left to wait for. It makes nothing durable and promises
    /// nothing; only a sync does. A simulated page cache has no writeback to
    /// start: by default it does nothing.
    fn start_writeback(&self, file: &fs::File, id: u64, from: u64, to: u64) -> io::Result<()> {
        let _ = (file, id, from, to);
        Ok(())
    }
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists (of any kind,
    /// a symbolic link included) instead of replacing it.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether [`Backend::sync_file_system`] makes durable everything in the
    /// file system holding `path`, and reports a failure to.
    fn can_sync_file_system(&self, path: &Path) -> bool;
    /// `syncfs`: every write to any file of the file system holding `path`,
    /// and every change of its directories, made so far by any process,
    /// reaches stable storage.
    fn sync_file_system(&self, path: &Path) -> io::Result<()>;
    /// Whether the order of calls decides what the backend does, so that calls
    /// from several threads at once would make a run impossible to replay (a
    /// simulation numbers files and draws faults in call order).
    fn replays_call_order(&self) -> bool {
        false
    }
}

/// Where a store keeps its files: the operating system, or (in tests) a
/// simulated page cache over a real directory.
///
/// It also keeps the files opened as needed (segments, see [`FileRef`]): at
/// most [`DEFAULT_OPEN_FILES`] (or [`Storage::with_open_file_limit`]) open
/// at once, shared by every clone of it, so by every bucket of a store.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    open_files: Arc<open_files::OpenFiles>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.backend.fmt(f)
    }
}

impl Default for Storage {
    fn default() -> Storage {
        Storage::os()
    }
}

impl Storage {
    /// The operating system's file system.
    pub fn os() -> Storage {
        Storage::over(Arc::new(os::Os))
    }

    pub(crate) fn over(backend: Arc<dyn Backend>) -> Storage {
        Storage {
            backend,
            open_files: Arc::new(open_files::OpenFiles::new(DEFAULT_OPEN_FILES)),
        }
    }

    /// The same storage, keeping at most `limit` files open (at least one)
    /// for this value and its clones.
    #[must_use]
    pub fn with_open_file_limit(self, limit: usize) -> Storage {
        Storage {
            open_files: Arc::new(open_files::OpenFiles::new(limit)),
            ..self
        }
    }

    /// Number of files kept open for reuse now (see [`FileRef`]).
    pub fn open_file_count(&self) -> usize {
        self.open_files.len()
    }

    /// A simulated page cache (see [`SimFs`]).
    #[cfg(any(test, feature = "failpoints"))]
    pub fn simulated(sim: &SimFs) -> Storage {
        Storage::over(Arc::new(sim.clone()))
    }

    /// Whether work on several files may run on several threads at once (the
    /// operating system), or must keep one order so a run replays (a simulation).
    pub(crate) fn allows_parallel_work(&self) -> bool {
        !self.backend.replays_call_order()
    }

    /// Opens a file.
    pub(crate) fn open(&self, path: &Path, mode: OpenMode) -> io::Result<File> {
        let (file, id) = self.backend.open(path, mode)?;
        Ok(File {
            inner: file,
            id,
            path: path.to_path_buf(),
            backend: Arc::clone(&self.backend),
        })
    }

    /// Creates a directory (its parent must exist).
    pub(crate) fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.backend.create_dir(path)
    }

    /// Creates a directory and every missing parent. Returns the directories
    /// it created, outermost first, so that the caller can sync their parents.
    pub(crate) fn create_dir_all(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(p) = at {
            if p.as_os_str().is_empty() || p.is_dir() {
                break;
            }
            missing.push(p.to_path_buf());
            at = p.parent();
        }
        missing.reverse();
        for dir in &missing {
            match self.backend.create_dir(dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                other => other?,
            }
        }
        Ok(missing)
    }

    /// Renames a file or a directory (replacing a file at `to`).
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.backend.rename(from, to)
    }

    /// Removes a file.
    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.backend.remove_file(path)
    }

    /// Removes a directory and everything in it.
    pub(crate) fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.backend.remove_dir_all(path)
    }

    /// Makes `to` a second name of the file `from`.
    pub(crate) fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.backend.hard_link(from, to)
    }

    /// Renames a file or a directory, failing with `AlreadyExists` when `to`
    /// exists in any form (a file, a directory, an empty one included, or a
    /// symbolic link) rather than replacing it.
    pub(crate) fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.backend.rename_noreplace(from, to)
    }

    /// Fsyncs a directory: creations, renames and removals in it become durable.
    pub(crate) fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.backend.sync_dir(path)
    }

    /// Whether [`Storage::sync_file_system`] can stand for a sync of each file
    /// under `path`: Linux's `syncfs` on a common local file system (ext4,
    /// XFS, Btrfs, F2FS, tmpfs) of a kernel that reports its errors (5.17 on),
    /// or a simulation.
    pub(crate) fn can_sync_file_system(&self, path: &Path) -> bool {
        self.backend.can_sync_file_system(path)
    }

    /// Makes durable everything written to the file system that holds `path`
    /// (every file's data and every directory's changes, by this process or
    /// one before it): one call instead of a sync per file.
    pub(crate) fn sync_file_system(&self, path: &Path) -> io::Result<()> {
        self.backend.sync_file_system(path)
    }
}

/// Renames `from` to `to` on the operating system's file system, failing with
/// `AlreadyExists` when `to` exists in any form instead of replacing it (for
/// tools beside a store, e.g. one that receives a backup).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    Storage::os().rename_noreplace(from, to)
}

/// An open file whose changes go through the storage seam.
pub struct File {
    inner: fs::File,
    id: u64,
    path: PathBuf,
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl File {
    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file, for memory maps and reads (never for writes).
    pub(crate) fn std(&self) -> &fs::File {
        &self.inner
    }

    /// Writes all of `buf` at `offset` (`pwrite`).
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.backend.write_at(&self.inner, self.id, buf, offset)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    /// Sets the file's length (truncating or extending with zeros).
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.backend.set_len(&self.inner, self.id, len)
    }

    /// `fdatasync`: the data (and the size) reach stable storage.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.backend.sync(&self.inner, self.id, true)
    }

    /// `fsync`: data and metadata reach stable storage.
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        self.backend.sync(&self.inner, self.id, false)
    }

    /// Has the page cache read `[from, to)` from the disk again where it holds no
    /// unwritten change (see [`Backend::drop_cached`]).
    pub(crate) fn drop_cached(&self, from: u64, to: u64) -> io::Result<()> {
        self.backend.drop_cached(&self.inner, self.id, from, to)
    }

    /// Starts writing `[from, to)` to the disk, without waiting (see
    /// [`Backend::start_writeback`]): a hint that a sync follows.
    pub(crate) fn start_writeback(&self, from: u64, to: u64) -> io::Result<()> {
        self.backend.start_writeback(&self.inner, self.id, from, to)
    }

    /// The file's current length.
    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.inner.metadata()?.len())
    }

    /// Writes zeros over `[from, to)`.
    pub(crate) fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = from;
        while at < to {
            let n = usize::try_from(to - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            self.write_all_at(ZEROS.get(..n).unwrap_or(&ZEROS), at)?;
            at += n as u64;
        }
        Ok(())
    }
}
