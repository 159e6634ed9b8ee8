//! Segment files: a header, then records back to back, then zeros.
//!
//! File name: `{seq:016x}-{gen:08x}.seg`. `seq` orders segments in the log;
//! `gen` is raised when compaction rewrites segments into a new file that takes
//! the `seq` of the first segment it replaces. The header (layout in
//! `docs/FORMAT.md`) names the segments a compacted file supersedes, so that
//! recovery can finish or undo an interrupted compaction.
//!
//! Segments are created under a temporary name, filled with their header and a
//! first chunk of zeros, synced, and renamed into place, so a segment with its
//! final name always has a complete header. The active segment grows by
//! pre-writing zeros a chunk at a time: an `fdatasync` then finds the file size
//! unchanged and has no inode to write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

use super::mark::{self, Mark, MARK_AREA};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::io::{File, FileRef, OpenMode, Storage};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LOGKVSEG";
/// Segment header format version.
pub const SEGMENT_VERSION: u16 = 2;
/// Size of the fixed part of the segment header.
const FIXED_HEADER: usize = 56;
/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// Identity of a segment: its place in the log and its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    /// Place in the log.
    pub seq: u64,
    /// Generation: raised by each compaction that rewrites this place.
    pub gen: u32,
}

impl SegmentId {
    /// The file name of this segment.
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:08x}.{SEGMENT_EXT}", self.seq, self.gen)
    }

    /// Parses a segment file name; `None` for any other file.
    pub fn parse(name: &str) -> Option<SegmentId> {
        let stem = name.strip_suffix(".seg")?;
        let (seq, gen) = stem.split_once('-')?;
        if seq.len() != 16 || gen.len() != 8 {
            return None;
        }
        Some(SegmentId {
            seq: u64::from_str_radix(seq, 16).ok()?,
            gen: u32::from_str_radix(gen, 16).ok()?,
        })
    }
}

/// The decoded segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's identity.
    pub id: SegmentId,
    /// The bucket's last assigned revision when this file was created: the
    /// revision counter never goes below it, even if every record is compacted away.
    pub revision_watermark: u64,
    /// Segments whose retained records this file holds (compaction output).
    pub supersedes: Vec<SegmentId>,
    /// No revision above this is given while this segment is the active one
    /// (0 in a compaction output): after a crash that lost writes which were
    /// visible before they were durable (`interval`, `never`), the revision
    /// counter resumes above it, so that no revision a client may have seen is
    /// given to other data.
    pub reserved_through: u64,
    /// Random value mixed into every record checksum of this segment.
    pub salt: u32,
}

impl SegmentHeader {
    /// A header for a new segment, with a fresh random salt.
    pub fn new(
        id: SegmentId,
        revision_watermark: u64,
        supersedes: Vec<SegmentId>,
    ) -> SegmentHeader {
        SegmentHeader {
            id,
            revision_watermark,
            supersedes,
            reserved_through: 0,
            salt: random_salt(),
        }
    }

    /// A header for a new active segment, reserving revisions up to `reserved_through`.
    pub fn active(id: SegmentId, revision_watermark: u64, reserved_through: u64) -> SegmentHeader {
        SegmentHeader {
            reserved_through,
            ..SegmentHeader::new(id, revision_watermark, Vec::new())
        }
    }

    /// Encoded length, a multiple of 8.
    pub fn encoded_len(&self) -> usize {
        (FIXED_HEADER + 16 * self.supersedes.len() + 4).div_ceil(8) * 8
    }

    /// Offset of the first record: after the header and the durability mark's slots.
    pub fn data_start(&self) -> u64 {
        self.encoded_len() as u64 + MARK_AREA
    }

    /// Encodes the header.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a header is a few KiB: its length and its list of superseded segments (one compaction run) fit 32 bits"
    )]
    pub fn encode(&self) -> Vec<u8> {
        let len = self.encoded_len();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(SEGMENT_MAGIC);
        b.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(&self.id.seq.to_le_bytes());
        b.extend_from_slice(&self.id.gen.to_le_bytes());
        b.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.revision_watermark.to_le_bytes());
        b.extend_from_slice(&self.salt.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.reserved_through.to_le_bytes());
        for s in &self.supersedes {
            b.extend_from_slice(&s.seq.to_le_bytes());
            b.extend_from_slice(&s.gen.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        b.resize(len - 4, 0);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The whole length of a header, from its fixed part.
    pub fn peek_len(fixed: &[u8]) -> std::result::Result<u64, &'static str> {
        if fixed.len() < FIXED_HEADER {
            return Err("file shorter than a segment header");
        }
        if fixed.get(..8) != Some(SEGMENT_MAGIC.as_slice()) {
            return Err("bad segment magic");
        }
        le_bytes(fixed, 12)
            .map(|b| u64::from(u32::from_le_bytes(b)))
            .ok_or("file shorter than a segment header")
    }

    /// Decodes a header from the start of a file's bytes.
    pub fn decode(buf: &[u8]) -> std::result::Result<SegmentHeader, &'static str> {
        const SHORT: &str = "file shorter than a segment header";
        if buf.len() < FIXED_HEADER + 4 {
            return Err(SHORT);
        }
        if buf.get(..8) != Some(SEGMENT_MAGIC.as_slice()) {
            return Err("bad segment magic");
        }
        let rd32 = |at: usize| le_bytes(buf, at).map(u32::from_le_bytes).ok_or(SHORT);
        let rd64 = |at: usize| le_bytes(buf, at).map(u64::from_le_bytes).ok_or(SHORT);
        if le_bytes(buf, 8).map(u16::from_le_bytes) != Some(SEGMENT_VERSION) {
            return Err("unsupported segment version");
        }
        let len = rd32(12)? as usize;
        let count = rd32(28)? as usize;
        if count > (1 << 20)
            || len != (FIXED_HEADER + 16 * count + 4).div_ceil(8) * 8
            || len > buf.len()
        {
            return Err("bad segment header length");
        }
        let checked = buf.get(..len - 4).ok_or(SHORT)?;
        if crc32fast::hash(checked) != rd32(len - 4)? {
            return Err("segment header checksum mismatch");
        }
        let supersedes = (0..count)
            .map(|i| {
                let at = FIXED_HEADER + 16 * i;
                Ok(SegmentId {
                    seq: rd64(at)?,
                    gen: rd32(at + 8)?,
                })
            })
            .collect::<std::result::Result<_, &'static str>>()?;
        Ok(SegmentHeader {
            id: SegmentId {
                seq: rd64(16)?,
                gen: rd32(24)?,
            },
            revision_watermark: rd64(32)?,
            supersedes,
            reserved_through: rd64(48)?,
            salt: rd32(40)?,
        })
    }
}

/// The `N` bytes of `buf` at `at`, if it has them.
fn le_bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// A random salt from the standard library's randomly seeded hasher, the
/// time and the process id (no cryptographic strength needed: it only has to
/// be unknown to whoever chooses values).
#[allow(
    clippy::cast_possible_truncation,
    reason = "any 32 bits of the hash will do"
)]
fn random_salt() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// The newest mark in a segment file (read from the file, not the map: a
/// damaged file may end before its mark area).
fn read_mark(file: &File, header: &SegmentHeader) -> Option<Mark> {
    let mut area = [0u8; mark::MARK_AREA_LEN];
    file.read_exact_at(&mut area, header.encoded_len() as u64)
        .ok()?;
    Mark::latest(&area, header.salt)
}

/// A value alone on its cache line (no false sharing with its neighbours).
#[repr(align(64))]
struct CacheLine<T>(T);

/// The newest durability mark of a segment, and the counter of the last one written.
#[derive(Clone, Copy)]
struct Marks {
    latest: Option<Mark>,
    counter: u64,
}

/// An open segment: a map of its file, and the file opened as needed.
///
/// The map may be longer than the file (the active segment is mapped at its
/// full capacity and grows into it); only offsets below what has been written
/// are ever read. Reads go through the map; the file is opened (through the
/// store's cache of open files, see [`FileRef`]) only to write around the map
/// and to sync, so an idle segment holds no file descriptor.
pub struct Segment {
    /// The segment's identity.
    pub id: SegmentId,
    /// In-memory number of this open segment, unique for the life of the
    /// process; index entries point at slots, so a compaction output and the
    /// segments it replaces (which share a `seq`) can be open side by side.
    pub slot: u32,
    /// The file.
    pub path: PathBuf,
    /// Its decoded header.
    pub header: SegmentHeader,
    /// Offset where records begin.
    pub data_start: u64,
    /// Offset just past the last complete record: readers (watches) never go past it.
    /// Written on every append, so it gets a cache line of its own.
    end: CacheLine<AtomicU64>,
    file: FileRef,
    /// The file mapped read-write: readers make slices of what lies below
    /// `end`, the writer copies records in above it (see [`Segment::write_at`]).
    map: MmapRaw,
    /// The durability marks (see [`super::mark`]): read from the file at
    /// open, then kept as this process writes them (no one else writes the
    /// file: the directory lock).
    marks: Mutex<Marks>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A complete segment (compaction output) being written under a temporary
/// name, its records appended a piece at a time so that the writer holds a
/// bounded buffer, not the whole segment. [`TmpSegment::finish`] syncs it;
/// [`Segment::install`] renames it into place. Dropped unfinished (the pass
/// failed), it removes its file; if that fails too, or the process dies, the
/// next open removes it (a `.tmp` file is never part of the log).
pub struct TmpSegment {
    storage: Storage,
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    end: u64,
    finished: bool,
}

impl TmpSegment {
    /// Creates the file (truncating a leftover of a failed pass of the same
    /// name) with `header` and a zeroed mark area.
    pub fn create(storage: &Storage, dir: &Path, header: &SegmentHeader) -> Result<TmpSegment> {
        let path = dir.join(format!("{}.tmp", header.id.file_name()));
        let file = storage
            .open(&path, OpenMode::Create)
            .map_err(|e| Error::io(&path, e))?;
        let tmp = TmpSegment {
            storage: storage.clone(),
            path,
            file,
            end: header.data_start(),
            finished: false,
        };
        let head = header.encode();
        tmp.file
            .write_all_at(&head, 0)
            .and_then(|()| tmp.file.write_zeros(head.len() as u64, tmp.end))
            .map_err(|e| Error::io(&tmp.path, e))?;
        Ok(tmp)
    }

    /// Appends records (bytes as they go on disk) after those already written.
    pub fn append(&mut self, records: &[u8]) -> Result<()> {
        self.file
            .write_all_at(records, self.end)
            .map_err(|e| Error::io(&self.path, e))?;
        self.end += records.len() as u64;
        Ok(())
    }

    /// Syncs the file; returns its temporary path.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        self.finished = true;
        Ok(self.path.clone())
    }
}

impl Drop for TmpSegment {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.storage.remove_file(&self.path) {
                tracing::warn!(file = %self.path.display(), error = %e,
                    "could not remove an unfinished segment; the next open will");
            }
        }
    }
}

impl Segment {
    /// Creates a new segment under a temporary name, pre-writes `prealloc` bytes
    /// (header included) and a first durability mark (nothing written yet,
    /// with `mark_flags`), syncs it, maps it and renames it into place. The
    /// caller syncs `dir` before anything is written to it: the rename is the
    /// last step, so a segment that exists by its name was created whole, and
    /// a failure before it leaves only a `.tmp` file (removed by the next open).
    pub fn create(
        storage: &Storage,
        dir: &Path,
        slot: u32,
        header: SegmentHeader,
        capacity: u64,
        prealloc: u64,
        mark_flags: u64,
    ) -> Result<Segment> {
        let final_path = dir.join(header.id.file_name());
        let tmp_path = dir.join(format!("{}.tmp", header.id.file_name()));
        let head = header.encode();
        let io = |e| Error::io(&tmp_path, e);
        let file = storage.open(&tmp_path, OpenMode::Create).map_err(io)?;
        file.write_all_at(&head, 0).map_err(io)?;
        let data_start = header.data_start();
        let prealloc = prealloc.max(data_start).min(capacity.max(data_start));
        file.write_zeros(head.len() as u64, prealloc).map_err(io)?;
        let first = Mark {
            counter: 1,
            end: data_start,
            flags: mark_flags,
        };
        file.write_all_at(
            &first.encode(header.salt),
            Mark::slot_offset(head.len() as u64, first.counter),
        )
        .map_err(io)?;
        file.sync_all().map_err(io)?;
        // A new segment is about to be written: its file stays open.
        let segment = Self::map(
            storage,
            slot,
            final_path.clone(),
            file,
            header,
            capacity,
            true,
        )?;
        storage.rename(&tmp_path, &final_path).map_err(io)?;
        Ok(segment)
    }

    /// Renames a file written by [`TmpSegment`] into place and opens it.
    pub fn install(
        storage: &Storage,
        dir: &Path,
        slot: u32,
        tmp_path: &Path,
        id: SegmentId,
    ) -> Result<Segment> {
        let final_path = dir.join(id.file_name());
        storage
            .rename(tmp_path, &final_path)
            .map_err(|e| Error::io(tmp_path, e))?;
        sync_dir(storage, dir)?;
        let seg = Self::open(storage, &final_path, slot, None)?;
        seg.set_data_end(seg.capacity());
        Ok(seg)
    }

    /// Opens an existing segment read-write, mapping it at its file length or
    /// at `capacity`, whichever is longer (the active segment's full size).
    pub fn open(
        storage: &Storage,
        path: &Path,
        slot: u32,
        capacity: Option<u64>,
    ) -> Result<Segment> {
        let io = |e| Error::io(path, e);
        let file = storage.open(path, OpenMode::ReadWrite).map_err(io)?;
        let len = file.len().map_err(io)?;
        let corrupt = |why: &str| Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: why.to_string(),
        };
        // The fixed part first: it gives the header's whole length (a
        // compaction output that supersedes thousands of segments has a long one).
        let fixed = usize::try_from(len).map_or(FIXED_HEADER, |l| l.min(FIXED_HEADER));
        let mut head = vec![0u8; fixed];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let header_len = SegmentHeader::peek_len(&head).map_err(corrupt)?;
        if header_len > len {
            return Err(corrupt("file shorter than its segment header"));
        }
        head.resize(
            usize::try_from(header_len).map_err(|_| corrupt("header too long"))?,
            0,
        );
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let header = SegmentHeader::decode(&head).map_err(corrupt)?;
        Self::map(
            storage,
            slot,
            path.to_path_buf(),
            file,
            header,
            len.max(capacity.unwrap_or(0)),
            false,
        )
    }

    /// Maps `file` (at `path`) and reads its durability mark; the file is
    /// then closed, or kept among the open files if `keep_open`.
    fn map(
        storage: &Storage,
        slot: u32,
        path: PathBuf,
        file: File,
        header: SegmentHeader,
        map_len: u64,
        keep_open: bool,
    ) -> Result<Segment> {
        let map_len = usize::try_from(map_len)
            .map_err(|_| Error::Internal("segment too large to map".into()))?;
        let map = MmapOptions::new()
            .len(map_len.max(1))
            .map_raw(file.std())
            .map_err(|e| Error::io(&path, e))?;
        let data_start = header.data_start();
        let latest = read_mark(&file, &header);
        let marks = Marks {
            latest,
            counter: latest.map_or(0, |m| m.counter),
        };
        Ok(Segment {
            id: header.id,
            slot,
            data_start,
            end: CacheLine(AtomicU64::new(data_start)),
            header,
            file: FileRef::new(storage, &path, file, keep_open),
            path,
            map,
            marks: Mutex::new(marks),
        })
    }

    /// Offset just past the last complete record.
    pub fn data_end(&self) -> u64 {
        self.end.0.load(Ordering::Acquire)
    }

    /// Publishes a new data end (after an append, or once recovery knows it).
    pub fn set_data_end(&self, end: u64) {
        self.end.0.store(end, Ordering::Release);
    }

    /// The mapped capacity of this segment.
    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// The bytes `[offset, offset+len)`, if they lie in the mapping. The caller
    /// guarantees they were written (below the data end, or recovery's reading).
    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.map.len()).then(|| self.slice(start, end))
    }

    /// Starts loading into the CPU cache the first `max` of the `len` bytes
    /// at `offset` (a record about to be read); nothing if they do not lie in
    /// the mapping. Only a hint.
    #[inline]
    pub fn prefetch(&self, offset: u64, len: usize, max: usize) {
        if let Some(bytes) = self.bytes(offset, len) {
            crate::prefetch::bytes(bytes, max);
        }
    }

    /// All bytes from `offset` up to `end` (clamped to the mapping).
    pub fn range(&self, offset: u64, end: u64) -> &[u8] {
        let len = self.map.len();
        let end = usize::try_from(end).map_or(len, |e| e.min(len));
        let start = usize::try_from(offset).map_or(end, |o| o.min(end));
        self.slice(start, end)
    }

    /// The mapped bytes `[start, end)`, with `start <= end <= map.len()`.
    fn slice(&self, start: usize, end: usize) -> &[u8] {
        debug_assert!(start <= end && end <= self.map.len());
        // SAFETY: `start..end` lies inside the mapping, which lives as long as
        // `self`. The file is this store's alone (the directory lock): no other
        // process writes it. In this process only the writer changes mapped
        // bytes (`write_at`, `write_through_file`), and only past the data end; readers ask for bytes
        // below it, which never change again, or (recovery) read before any
        // writer exists. (`Log::truncate` zeroes bytes that were below it, but
        // moves the data end back first, and its caller guarantees that no
        // reader still holds them.) So no byte of this slice is written while
        // it lives.
        // Pages past the end of the file are mapped but never read.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start), end - start) }
    }

    /// Writes `bytes` at `offset` through the mapping: no system call. The
    /// range must lie past the data end (no reader looks there) and inside the
    /// file's written length (pre-written zeros), and only the bucket's writer
    /// calls this. The storage layer is told first, so that a simulated power
    /// cut can refuse it and track it as unsynced.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let (start, end) = self.append_range(offset, bytes.len())?;
        self.file.note_mapped_write(offset, bytes.len() as u64)?;
        // SAFETY: `start..end` lies inside the mapping (checked above). The
        // caller is the bucket's only writer and the bytes lie past the data
        // end, which no reader reads (readers stop at `data_end`, which moves
        // past these bytes only after this copy, with release ordering); they
        // lie inside the file (pre-written), so the store cannot fault. The
        // source is a separate buffer: the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(start),
                end - start,
            );
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` with a system call (`pwrite`) instead of
    /// through the mapping, under the same rules as [`Segment::write_at`].
    /// Under `FsyncPolicy::Always` every append is followed by an fdatasync,
    /// which write-protects the mapped page it cleans: the next copy into the
    /// mapping then takes a page fault and the file system's page-mkwrite path,
    /// which costs more than the system call.
    /// `file` is this segment's, from [`Segment::file`].
    pub fn write_through_file(
        &self,
        file: &File,
        bytes: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        self.append_range(offset, bytes.len())?;
        file.write_all_at(bytes, offset)
    }

    /// Checks that an append of `len` bytes at `offset` lies inside the
    /// mapping and past the data end; returns it as a range of the mapping.
    fn append_range(&self, offset: u64, len: usize) -> std::io::Result<(usize, usize)> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.map.len())
            .ok_or_else(|| std::io::Error::other("a write past the segment's mapping"))?;
        if offset < self.data_end() {
            return Err(std::io::Error::other(
                "a write below the segment's data end",
            ));
        }
        Ok((start, end))
    }

    /// The file, open (from the store's open files, or opened again by name).
    /// Whoever holds it keeps it open, evicted from the cache or not.
    pub fn file(&self) -> Result<Arc<File>> {
        self.file.open().map_err(|e| Error::io(&self.path, e))
    }

    /// Current length of the file on disk (by name: no descriptor needed).
    pub fn file_len(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Has the page cache read `[from, to)` of the file from the disk again
    /// where it holds no unwritten change (`POSIX_FADV_DONTNEED`; see
    /// `io::Backend::drop_cached`). Only a hint: a failure is logged.
    pub fn reread_from_disk(&self, from: u64, to: u64) {
        let dropped = self.file().and_then(|f| {
            f.drop_cached(from, to)
                .map_err(|e| Error::io(&self.path, e))
        });
        if let Err(e) = dropped {
            tracing::warn!(file = %self.path.display(), error = %e, "could not drop cached pages");
        }
    }

    /// Flushes written data to stable storage (fdatasync).
    pub fn sync_data(&self) -> Result<()> {
        self.file()?
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The newest durability mark of this segment, if it has one (see [`super::mark`]).
    pub fn mark(&self) -> Option<Mark> {
        self.marks.lock().latest
    }

    /// Writes a durability mark: everything below `end` is durable (it
    /// reaches the disk itself with the next fsync of this segment).
    ///
    /// The counter moves on only once the mark is written: a mark that could
    /// not be (no descriptor to open the file with) must not leave its slot
    /// unused, or the next one would overwrite the newest mark on disk instead
    /// of the older one.
    pub fn write_mark(&self, end: u64, flags: u64) -> Result<()> {
        let mut marks = self.marks.lock();
        let mark = Mark {
            counter: marks.counter + 1,
            end,
            flags,
        };
        let at = Mark::slot_offset(self.header.encoded_len() as u64, mark.counter);
        self.file()?
            .write_all_at(&mark.encode(self.header.salt), at)
            .map_err(|e| Error::io(&self.path, e))?;
        marks.counter = mark.counter;
        marks.latest = Some(mark);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let id = SegmentId {
            seq: 0x1234,
            gen: 7,
        };
        assert_eq!(id.file_name(), "0000000000001234-00000007.seg");
        assert_eq!(SegmentId::parse(&id.file_name()), Some(id));
        assert_eq!(SegmentId::parse("LOCK"), None);
        assert_eq!(SegmentId::parse("zz-00000007.seg"), None);
        assert_eq!(SegmentId::parse("0000000000001234-00000007.seg.tmp"), None);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = SegmentHeader::new(
            SegmentId { seq: 9, gen: 2 },
            77,
            vec![SegmentId { seq: 9, gen: 1 }, SegmentId { seq: 10, gen: 0 }],
        );
        let b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(b.len() % 8, 0);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(
                SegmentHeader::decode(&bad).is_err(),
                "flip at {i} unnoticed"
            );
        }
        assert!(SegmentHeader::decode(&b[..20]).is_err());
    }

    #[test]
    fn create_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let h = SegmentHeader::new(SegmentId { seq: 1, gen: 0 }, 0, vec![]);
        let seg =
            Segment::create(&Storage::os(), dir.path(), 1, h.clone(), 1 << 20, 4096, 0).unwrap();
        assert_eq!(seg.file_len().unwrap(), 4096);
        assert_eq!(seg.capacity(), 1 << 20);
        drop(seg);
        let seg =
            Segment::open(&Storage::os(), &dir.path().join(h.id.file_name()), 2, None).unwrap();
        assert_eq!(seg.header, h);
        assert_eq!(seg.data_start, h.encoded_len() as u64 + MARK_AREA);
        assert_eq!(
            seg.mark().map(|m| (m.counter, m.end)),
            Some((1, seg.data_start)),
            "a new segment's mark: nothing written"
        );
        seg.write_mark(100, 0).unwrap();
        seg.write_mark(200, 0).unwrap();
        assert_eq!(seg.mark().map(|m| (m.counter, m.end)), Some((3, 200)));
        drop(seg);
        let seg =
            Segment::open(&Storage::os(), &dir.path().join(h.id.file_name()), 3, None).unwrap();
        assert_eq!(
            seg.mark().map(|m| (m.counter, m.end)),
            Some((3, 200)),
            "the marks reached the file"
        );
        assert!(!dir
            .path()
            .join(format!("{}.tmp", h.id.file_name()))
            .exists());
    }

    /// A mark that cannot be written (its file cannot be opened) leaves the
    /// counter where it was: the next mark goes to the other slot than the
    /// newest one on disk, and a reopen finds it.
    #[test]
    fn a_mark_not_written_uses_no_counter() {
        let dir = tempfile::tempdir().unwrap();
        // One open file: creating the second segment closes the first's.
        let storage = Storage::os().with_open_file_limit(1);
        let h = SegmentHeader::new(SegmentId { seq: 1, gen: 0 }, 0, vec![]);
        let seg = Segment::create(&storage, dir.path(), 1, h.clone(), 1 << 20, 4096, 0).unwrap();
        let other = SegmentHeader::new(SegmentId { seq: 2, gen: 0 }, 0, vec![]);
        let second = Segment::create(&storage, dir.path(), 2, other, 1 << 20, 4096, 0).unwrap();
        seg.write_mark(100, 0).unwrap();
        let held = second.file().unwrap(); // the first's is closed again
        let path = dir.path().join(h.id.file_name());
        let away = dir.path().join("away");
        std::fs::rename(&path, &away).unwrap();
        assert!(seg.write_mark(200, 0).is_err(), "the file is not there");
        std::fs::rename(&away, &path).unwrap();
        assert_eq!(seg.mark().map(|m| (m.counter, m.end)), Some((2, 100)));
        seg.write_mark(300, 0).unwrap();
        assert_eq!(seg.mark().map(|m| (m.counter, m.end)), Some((3, 300)));
        drop((seg, held, second));
        let seg = Segment::open(&Storage::os(), &path, 3, None).unwrap();
        assert_eq!(seg.mark().map(|m| (m.counter, m.end)), Some((3, 300)));
    }
}
