//! One segment file of the Raft log.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{encode_header, HEADER_LEN};
use crate::fsutil::sync_dir;

/// File-name suffix of segments.
pub const SUFFIX: &str = ".log";

/// A segment: its file, and the index of its first entry (in its name and its header).
#[derive(Debug)]
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// Index of the first entry it holds (or would hold).
    pub first_index: u64,
    file: File,
}

/// The file name of the segment whose first entry is `first_index`.
pub fn file_name(first_index: u64) -> String {
    format!("{first_index:020}{SUFFIX}")
}

/// The first index a segment file name stands for.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Segment {
    /// Creates the segment of `first_index` in `dir`: its header written and synced, the
    /// directory synced.
    pub fn create(dir: &Path, first_index: u64) -> io::Result<Segment> {
        let path = dir.join(file_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all_at(&encode_header(first_index), 0)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Segment {
            path,
            first_index,
            file,
        })
    }

    /// Opens an existing segment for reading and writing.
    pub fn open(path: &Path, first_index: u64) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Segment {
            path: path.to_path_buf(),
            first_index,
            file,
        })
    }

    /// Offset of the first record.
    pub fn data_start() -> u64 {
        HEADER_LEN as u64
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// The whole file.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.file.metadata()?.len())
            .map_err(|_| io::Error::other("segment larger than memory"))?;
        self.read_at(0, len)
    }

    /// Cuts the file at `len` and makes the cut durable.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    /// Makes the written bytes durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
