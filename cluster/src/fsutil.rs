//! Small durable files: written whole and atomically (temp file, fsync, rename, fsync of the
//! directory), read back with a checksum so a damaged one is told from a missing one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Checksummed small-file layout: `crc32 (LE) | body`.
const CRC_LEN: usize = 4;

/// Makes a directory entry change (create, rename, unlink) in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `body` to `path` atomically: after a crash the file holds either its old content or
/// `body`, never a mix. With `durable`, it is on stable storage when this returns; without,
/// it survives a process crash but a power cut may leave the old content.
pub fn write_atomic(path: &Path, body: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let crc = crc32fast::hash(body);
    let mut buf = Vec::with_capacity(CRC_LEN + body.len());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(body);
    f.write_all(&buf)?;
    if durable {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads a file written by [`write_atomic`]: `Ok(None)` if it does not exist, an
/// `InvalidData` error if its checksum does not match.
pub fn read_checked(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some((crc, body)) = bytes.split_first_chunk::<CRC_LEN>() else {
        return Err(invalid(format!("{} is truncated", path.display())));
    };
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err(invalid(format!("{} fails its checksum", path.display())));
    }
    Ok(Some(body.to_vec()))
}

/// An `InvalidData` I/O error.
pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Copies every file under `from` into `to` (created), fsyncing each file and directory;
/// returns the relative paths copied. Files named in `skip` (at the top level) are left out.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> io::Result<Vec<String>> {
    let mut copied = Vec::new();
    copy_dir(from, to, "", skip, &mut copied)?;
    Ok(copied)
}

fn copy_dir(
    from: &Path,
    to: &Path,
    prefix: &str,
    skip: &[&str],
    copied: &mut Vec<String>,
) -> io::Result<()> {
    fs::create_dir_all(to)?;
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(invalid(format!(
                "{}: a file name that is not UTF-8",
                entry.path().display()
            )));
        };
        if prefix.is_empty() && skip.contains(&name) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(name), &rel, skip, copied)?;
        } else if kind.is_file() {
            let target = to.join(name);
            fs::copy(entry.path(), &target)?;
            File::open(&target)?.sync_data()?;
            copied.push(rel);
        }
    }
    sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_files_round_trip_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(read_checked(&p).unwrap().is_none());
        write_atomic(&p, b"hello", true).unwrap();
        assert_eq!(read_checked(&p).unwrap().unwrap(), b"hello");
        write_atomic(&p, b"world", false).unwrap();
        assert_eq!(read_checked(&p).unwrap().unwrap(), b"world");
        let mut bytes = fs::read(&p).unwrap();
        bytes[5] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert_eq!(
            read_checked(&p).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::write(&p, b"ab").unwrap();
        assert!(read_checked(&p).is_err());
    }

    #[test]
    fn trees_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("x"), b"1").unwrap();
        fs::write(a.join("LOCK"), b"").unwrap();
        fs::write(a.join("sub/y"), b"2").unwrap();
        let copied = copy_tree(&a, &dir.path().join("b"), &["LOCK"]).unwrap();
        assert_eq!(copied, ["sub/y", "x"]);
        assert_eq!(fs::read(dir.path().join("b/sub/y")).unwrap(), b"2");
        assert!(!dir.path().join("b/LOCK").exists());
    }
}
