//! Small durable files: written whole and atomically (temp file, fsync, rename, fsync of the
//! directory), read back with a checksum so a damaged one is told from a missing one; and
//! [`SlotFile`], for a small record rewritten on every batch without a rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    f.write_all(&checked(body))?;
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

/// The contents of a file [`write_atomic`] writes for `body`: `crc32 (LE) | body`.
pub fn checked(body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(CRC_LEN + body.len());
    buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    buf.extend_from_slice(body);
    buf
}

/// Reads a file written by [`write_atomic`] (or with [`checked`] contents): `Ok(None)` if it does not exist, an
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

/// A small record rewritten often (on every applied batch, on every commit): each write goes
/// in place into one of two files, `<name>.0` and `<name>.1`, in turn, as `crc32 | seq | len |
/// body` (the CRC covers the rest). A write torn by a power cut damages only the file it was
/// writing; the other holds the previous record whole, so a reader gets either the old
/// record or the new one, never a mix (as with [`write_atomic`]), without creating, renaming
/// or removing a file per write.
#[derive(Debug)]
pub struct SlotFile {
    files: [File; 2],
    paths: [PathBuf; 2],
    /// The sequence number of the newest record (0: none yet).
    seq: u64,
}

/// `crc32 | seq u64 | len u32` before a slot's body.
const SLOT_HEADER: usize = 4 + 8 + 4;

impl SlotFile {
    /// Opens (creating them if missing) the two files of `path`; returns the newest whole
    /// record, if any.
    pub fn open(path: &Path) -> io::Result<(SlotFile, Option<Vec<u8>>)> {
        let dir = path.parent().ok_or_else(|| {
            io::Error::other(format!("{} has no parent directory", path.display()))
        })?;
        let name = path.file_name().unwrap_or_default().to_os_string();
        let paths = [0, 1].map(|i| {
            let mut n = name.clone();
            n.push(format!(".{i}"));
            dir.join(n)
        });
        let mut created = false;
        let mut open = |p: &Path| -> io::Result<File> {
            created |= !p.exists();
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        if created {
            sync_dir(dir)?;
        }
        let mut newest: Option<(u64, Vec<u8>)> = None;
        for p in &paths {
            if let Some((seq, body)) = read_slot(&fs::read(p)?) {
                if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                    newest = Some((seq, body));
                }
            }
        }
        let seq = newest.as_ref().map_or(0, |(s, _)| *s);
        Ok((SlotFile { files, paths, seq }, newest.map(|(_, b)| b)))
    }

    /// Writes `body` as the newest record; with `durable`, it is on stable storage when this
    /// returns.
    pub fn write(&mut self, body: &[u8], durable: bool) -> io::Result<()> {
        let seq = self.seq + 1;
        let len =
            u32::try_from(body.len()).map_err(|_| io::Error::other("a record of 4 GiB or more"))?;
        let mut buf = Vec::with_capacity(SLOT_HEADER + body.len());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(body);
        let crc = crc32fast::hash(&buf[4..]);
        buf[..4].copy_from_slice(&crc.to_le_bytes());
        // Odd records in `.1`, even in `.0`: the file not written holds the previous one.
        let i = usize::from(seq % 2 == 1);
        let file = &self.files[i];
        file.write_all_at(&buf, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.paths[i].display())))?;
        if durable {
            file.sync_data()?;
        }
        self.seq = seq;
        Ok(())
    }
}

/// The record in one slot file, if whole: `(seq, body)`.
fn read_slot(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    let header = bytes.get(..SLOT_HEADER)?;
    let crc = u32::from_le_bytes(header[..4].try_into().ok()?);
    let seq = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let len = usize::try_from(u32::from_le_bytes(header[12..16].try_into().ok()?)).ok()?;
    let end = SLOT_HEADER.checked_add(len)?;
    let record = bytes.get(4..end)?;
    (crc32fast::hash(record) == crc && seq > 0).then(|| (seq, bytes[SLOT_HEADER..end].to_vec()))
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
    fn slot_files_keep_the_newest_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec");
        let (mut f, got) = SlotFile::open(&p).unwrap();
        assert!(got.is_none());
        f.write(b"first, a longer record", true).unwrap();
        f.write(b"second", false).unwrap();
        drop(f);
        let (mut f, got) = SlotFile::open(&p).unwrap();
        assert_eq!(got.unwrap(), b"second");
        // The next write goes to the slot that held "first": a shorter record over a longer
        // one leaves its tail, which the length excludes.
        f.write(b"third", false).unwrap();
        drop(f);
        let (_, got) = SlotFile::open(&p).unwrap();
        assert_eq!(got.unwrap(), b"third");
        // A torn (damaged) newest record: the previous one is read.
        let newest = dir.path().join("rec.1");
        let mut bytes = fs::read(&newest).unwrap();
        bytes[SLOT_HEADER] ^= 1;
        fs::write(&newest, &bytes).unwrap();
        let (mut f, got) = SlotFile::open(&p).unwrap();
        assert_eq!(got.unwrap(), b"second");
        // Writing again goes on from the newest whole record.
        f.write(b"fourth", false).unwrap();
        drop(f);
        let (_, got) = SlotFile::open(&p).unwrap();
        assert_eq!(got.unwrap(), b"fourth");
    }

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
