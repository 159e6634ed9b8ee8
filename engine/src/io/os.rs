//! The operating system backend: each call is the `std` call of the same name.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Backend, OpenMode};

/// The operating system's file system.
#[derive(Debug)]
pub(super) struct Os;

impl Backend for Os {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<(fs::File, u64)> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if mode == OpenMode::Create {
            o.create(true).truncate(true);
        }
        Ok((o.open(path)?, 0))
    }

    fn write_at(&self, file: &fs::File, _id: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn note_mapped_write(&self, _id: u64, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn set_len(&self, file: &fs::File, _id: u64, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync(&self, file: &fs::File, _id: u64, data_only: bool) -> io::Result<()> {
        if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{renameat_with, RenameFlags, CWD};
            match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(()),
                // A file system without RENAME_NOREPLACE: check, then rename (below).
                Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
                Err(e) => return Err(e.into()),
            }
        }
        if to.symlink_metadata().is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }

    fn syncs_file_systems(&self) -> bool {
        cfg!(target_os = "linux")
    }

    fn sync_file_system(&self, path: &Path) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            // Since Linux 5.8 syncfs reports a writeback error of any file of
            // the file system, as fsync does for its file.
            let dir = fs::File::open(path)?;
            Ok(rustix::fs::syncfs(&dir)?)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }
}
