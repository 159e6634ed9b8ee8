//! The operating system backend: each call is the `std` call of the same name.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Backend, OpenMode};

/// The operating system's file system.
#[derive(Debug)]
pub(crate) struct Os;

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

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, file: &fs::File, _id: u64, from: u64, to: u64) -> io::Result<()> {
        let (offset, len) = offset_and_len(from, to)?;
        // SAFETY: sync_file_range takes a descriptor this file keeps open and
        // three integers; it touches no memory of ours.
        let ret = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn drop_cached(&self, file: &fs::File, _id: u64, from: u64, to: u64) -> io::Result<()> {
        let (offset, len) = offset_and_len(from, to)?;
        // SAFETY: posix_fadvise takes a descriptor this file keeps open and two
        // integers; it touches no memory of ours.
        let ret = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(ret))
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

    fn can_sync_file_system(&self, path: &Path) -> bool {
        #[cfg(target_os = "linux")]
        {
            syncfs_reports_errors() && reliable_syncfs(path)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            false
        }
    }

    fn sync_file_system(&self, path: &Path) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
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

/// Whether this kernel's `syncfs` reports every failure to make the file
/// system durable: since Linux 5.8 it reports a failed writeback of any file
/// (before, nothing), and since 5.17 a failure of the file system's own sync
/// (its journal's commit, the disk cache's flush), which 5.8 to 5.16 dropped.
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| kernel_at_least(&release, (5, 17)))
            .unwrap_or(false)
    })
}

/// Whether the kernel `release` (such as `6.1.0-18-amd64`) is at least
/// `(major, minor)`; `None` if it cannot be read.
#[cfg(any(target_os = "linux", test))]
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let have_major: u32 = parts.next()?.parse().ok()?;
    let have_minor: u32 = parts.next()?.parse().ok()?;
    Some((have_major, have_minor) >= (major, minor))
}

/// Whether the file system holding `path` is one whose `syncfs` writes back
/// and waits for every file, as an fsync of each would: the common local
/// ones. Others (network and FUSE file systems, overlays) may not pass a
/// whole-file-system sync on to where the data live, so each file is synced.
#[cfg(target_os = "linux")]
fn reliable_syncfs(path: &Path) -> bool {
    const EXT2_3_4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    fs_magic(path).is_some_and(|magic| [EXT2_3_4, XFS, BTRFS, F2FS, TMPFS].contains(&magic))
}

/// The offset and length of `[from, to)` as the system calls take them (an empty range
/// if `to` is below `from`); `InvalidInput` past what they can name.
fn offset_and_len(from: u64, to: u64) -> io::Result<(libc::off_t, libc::off_t)> {
    match (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to.saturating_sub(from)),
    ) {
        (Ok(offset), Ok(len)) => Ok((offset, len)),
        _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
    }
}

/// tmpfs's magic number (`statfs`'s `f_type`).
#[cfg(target_os = "linux")]
const TMPFS: i64 = 0x0102_1994;

/// The magic number of the file system holding `path` (`statfs`'s `f_type`).
#[cfg(target_os = "linux")]
fn fs_magic(path: &Path) -> Option<i64> {
    let st = rustix::fs::statfs(path).ok()?;
    // `f_type` is an i64 on most targets and a u32 on some.
    #[allow(
        clippy::useless_conversion,
        reason = "the field's type differs by target"
    )]
    Some(i64::from(st.f_type) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert_eq!(kernel_at_least("5.8.0", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.4.0-150-generic", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("4.19.0", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("6.1.0-18-amd64\n", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.10-rc1", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("garbage", (5, 8)), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn writeback_starts_over_written_bytes_and_changes_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, id) = Os
            .open(&dir.path().join("f"), OpenMode::Create)
            .expect("create");
        let data: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
        Os.write_at(&file, id, &data, 0).expect("write");
        Os.start_writeback(&file, id, 0, 1 << 20)
            .expect("first megabyte");
        Os.start_writeback(&file, id, 1 << 20, 3 << 20)
            .expect("the rest");
        // An empty range, and one past the end, are not errors.
        Os.start_writeback(&file, id, 5, 5).expect("empty range");
        Os.start_writeback(&file, id, 4 << 20, 5 << 20)
            .expect("past the end");
        // An offset past what the call can name is refused, not wrapped.
        let refused = Os.start_writeback(&file, id, u64::MAX, u64::MAX);
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
        Os.sync(&file, id, true).expect("sync");
        let mut back = vec![0; data.len()];
        file.read_exact_at(&mut back, 0).expect("read");
        assert!(back == data, "the file holds what was written");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_local_file_systems_are_synced_whole() {
        // procfs is no place for data; a missing directory cannot be asked.
        assert!(!reliable_syncfs(Path::new("/proc")));
        assert!(!Os.can_sync_file_system(Path::new("/proc")));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!Os.can_sync_file_system(&dir.path().join("missing")));
        // A tmpfs, where the system has one there.
        let shm = Path::new("/dev/shm");
        let is_tmpfs = fs_magic(shm) == Some(TMPFS);
        assert_eq!(reliable_syncfs(shm), is_tmpfs);
        if Os.can_sync_file_system(dir.path()) {
            Os.sync_file_system(dir.path()).expect("syncfs");
        }
    }
}
