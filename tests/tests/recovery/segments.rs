//! The store's files as the tests see them from outside: where a bucket's segments and
//! snapshot are, a segment parsed independently of the store, and damage to a byte.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use logkv::log::record::{decode, Decoded};
use logkv::log::segment::SegmentHeader;

pub const SEG: u64 = 4096;

pub fn bucket_dir(store: &Path, bucket: &str) -> PathBuf {
    store.join("buckets").join(bucket)
}

/// The index snapshot file of a bucket (written at clean close).
pub fn snap_path(store: &Path, bucket: &str) -> PathBuf {
    bucket_dir(store, bucket).join("index.snap")
}

/// Removes every bucket's index snapshot: the state a crash leaves when no
/// clean close happened since the writes.
pub fn remove_snapshots(store: &Path) {
    for e in fs::read_dir(store.join("buckets")).unwrap() {
        let p = e.unwrap().path().join("index.snap");
        if p.exists() {
            fs::remove_file(p).unwrap();
        }
    }
}

/// The segment files of a bucket directory, in log order.
pub fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// The file name of the last segment of `bucket` in the store at `store` (to
/// find it again in copies of the store).
pub fn last_seg_name(store: &Path, bucket: &str) -> std::ffi::OsString {
    seg_files(&bucket_dir(store, bucket))
        .pop()
        .unwrap()
        .file_name()
        .unwrap()
        .to_owned()
}

/// One record as found in a segment file.
#[derive(Debug, Clone)]
pub struct Rec {
    pub offset: u64,
    pub len: u64,
    pub key: String,
    pub revision: u64,
    pub batch_more: bool,
}

/// A segment file parsed independently of the store: where records start,
/// the records, and where the written data ends.
pub struct Parsed {
    pub data_start: u64,
    pub records: Vec<Rec>,
    pub data_end: u64,
}

pub fn parse_segment(path: &Path) -> Parsed {
    let buf = fs::read(path).unwrap();
    let header = SegmentHeader::decode(&buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data_start = header.data_start();
    let mut at = data_start as usize;
    let mut records = Vec::new();
    loop {
        match decode(&buf[at..], header.salt) {
            Decoded::Record(r) => {
                let len = r.header.record_len();
                records.push(Rec {
                    offset: at as u64,
                    len: len as u64,
                    key: String::from_utf8(r.key.to_vec()).unwrap(),
                    revision: r.header.revision,
                    batch_more: r.header.batch_more(),
                });
                at += len;
            }
            Decoded::End => break,
            Decoded::Invalid(why) => panic!("{} at {at}: {why}", path.display()),
        }
    }
    Parsed {
        data_start,
        records,
        data_end: at as u64,
    }
}

/// Flips one bit (0x40) of the byte at `at` in `path`, as a bad sector would.
pub fn flip_byte(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}
