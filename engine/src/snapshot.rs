//! Index snapshots: the whole index of a bucket in one checksummed file
//! (`index.snap`), so that reopening does not read every record.
//!
//! Written at clean close and after compaction: the index is encoded under
//! its read lock with the published log end, and the log is made durable up
//! to that end before the file is saved, so the end it records is durable.
//!
//! On open it is used only if its segment list matches the segment files
//! exactly (same ids; every sealed one the same length; a checksum of the log
//! bytes just before its end); the log after its end is then scanned with the
//! normal recovery rules. A missing, damaged or stale snapshot is removed with
//! a log line and the whole log is scanned instead: never wrong data. Layout
//! (little-endian) in `docs/FORMAT.md`.
//!
//! It is written whole each time, after every compaction pass too: the
//! encoding (under the index read lock) walks every key in order, a block of
//! the index at a time. Not done: an incremental snapshot
//! (a base plus deltas of the keys a pass moved), which needs a format with
//! more than one file and a recovery rule for a delta without its base; or
//! writing it only at close and after a number of passes, which trades the
//! cost for longer log scans after a crash.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fsutil::{remove_if_exists, write_atomic};
use crate::index::{Index, RecordRef, SortedBuilder};
use crate::io::Storage;
use crate::log::segment::{Segment, SegmentId};

/// File name of a bucket's snapshot.
pub const SNAPSHOT_FILE: &str = "index.snap";
const MAGIC: &[u8; 8] = b"LOGKVIDX";
const VERSION: u32 = 1;
/// The version of a snapshot that also holds a replication tag (after the keys).
const VERSION_TAGGED: u32 = 2;

/// A segment as the snapshot saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegRef {
    id: SegmentId,
    /// Offset just past its last record covered by the snapshot.
    end: u64,
}

/// A decoded snapshot.
pub(crate) struct Snapshot {
    pub last_revision: u64,
    /// The replication tag of the last tag record before its end, if any
    /// (version 2): recovery does not read the records the snapshot covers.
    pub tag: Option<Box<[u8]>>,
    segments: Vec<SegRef>,
    /// [`tail_crc`] of the last segment at its covered end.
    tail_crc: u32,
    /// The index it holds, with positions in `segments` for segment slots.
    index: Index,
    /// Most revisions any key holds.
    max_revisions: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("truncated")?;
        let s = self.buf.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], &'static str> {
        self.take(N)?.try_into().map_err(|_| "truncated")
    }
    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn varint(&mut self) -> std::result::Result<u64, &'static str> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.at += i + 1;
                return Ok(v);
            }
        }
        Err(if rest.len() < 10 {
            "truncated"
        } else {
            "varint too long"
        })
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A varint that counts something held in memory.
    fn count(&mut self) -> std::result::Result<usize, &'static str> {
        usize::try_from(self.varint()?).map_err(|_| "count out of range")
    }
}

/// Appends `v` as a LEB128 varint.
#[allow(
    clippy::cast_possible_truncation,
    reason = "each byte takes the low 7 bits, masked"
)]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Serialises `index` with the log state it corresponds to.
/// `segments`: every live segment in log order with its covered end; `tag`:
/// the replication tag as of that end (written as version 2; none: version 1).
pub(crate) fn encode(
    index: &Index,
    last_revision: u64,
    segments: &[(Arc<Segment>, u64)],
    tag: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let Some((last, last_end)) = segments.last() else {
        return Err(Error::Internal(
            "a snapshot needs at least one segment".into(),
        ));
    };
    let count = u32::try_from(segments.len())
        .map_err(|_| Error::Internal(format!("{} segments in a snapshot", segments.len())))?;
    let slot_to_pos: HashMap<u32, u32> = segments
        .iter()
        .zip(0..count)
        .map(|((s, _), pos)| (s.slot, pos))
        .collect();
    let mut out = Vec::with_capacity(64 + index.key_count() * 56);
    out.extend_from_slice(MAGIC);
    let version = if tag.is_some() {
        VERSION_TAGGED
    } else {
        VERSION
    };
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&last_revision.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (s, end) in segments {
        out.extend_from_slice(&s.id.seq.to_le_bytes());
        out.extend_from_slice(&s.id.gen.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(&tail_crc(last, *last_end).to_le_bytes());
    out.extend_from_slice(&(index.key_count() as u64).to_le_bytes());
    let mut prev: Vec<u8> = Vec::new();
    let mut revs = Vec::new();
    // Revisions mostly sit in the segment of the one before: skip the lookup then.
    let mut last_seg = (u32::MAX, u32::MAX);
    index.try_for_each_sorted(|key, latest| {
        // Keys are sorted: store the length shared with the previous key and the rest.
        let k = key.as_bytes();
        let shared = k.iter().zip(&prev).take_while(|(a, b)| a == b).count();
        put_varint(&mut out, shared as u64);
        put_varint(&mut out, (k.len() - shared) as u64);
        out.extend_from_slice(k.get(shared..).unwrap_or_default());
        prev.clear();
        prev.extend_from_slice(k);
        revs.clear();
        index.for_each_rev(latest, |r| revs.push(*r));
        let n = u8::try_from(revs.len())
            .map_err(|_| Error::Internal(format!("{} revisions of one key", revs.len())))?;
        out.push(n);
        for r in &revs {
            put_varint(&mut out, r.revision);
            put_varint(&mut out, r.expires_ms);
            if r.slot != last_seg.0 {
                last_seg = (
                    r.slot,
                    slot_to_pos.get(&r.slot).copied().unwrap_or(u32::MAX),
                );
            }
            put_varint(&mut out, u64::from(last_seg.1));
            put_varint(&mut out, u64::from(r.offset));
            put_varint(&mut out, (r.len() as u64) << 2 | r.op() as u64);
        }
        Ok(())
    })?;
    if let Some(tag) = tag {
        let len = u8::try_from(tag.len())
            .map_err(|_| Error::Internal(format!("a replication tag of {} bytes", tag.len())))?;
        out.push(len);
        out.extend_from_slice(tag);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Bytes of log just before the snapshot's end that it keeps a checksum of.
const TAIL_CHECK: u64 = 64;

/// Checksum of the last bytes (up to [`TAIL_CHECK`]) before `end` in `seg`:
/// if the log was cut below the end and written again, they differ.
fn tail_crc(seg: &Segment, end: u64) -> u32 {
    let from = end.saturating_sub(TAIL_CHECK).max(seg.data_start);
    crc32fast::hash(seg.range(from, end))
}

/// Writes the snapshot file atomically.
pub(crate) fn save(storage: &Storage, dir: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(storage, &dir.join(SNAPSHOT_FILE), bytes)
}

/// Removes a snapshot that no longer matches the log.
pub(crate) fn remove(storage: &Storage, dir: &Path) -> Result<()> {
    remove_if_exists(storage, &dir.join(SNAPSHOT_FILE))
}

/// Reads and checks a snapshot; `Ok(None)` if there is none, `Err(reason)` if it is unusable.
pub(crate) fn load(dir: &Path) -> std::result::Result<Option<Snapshot>, String> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // Mapped, not read: no copy of tens of MiB into fresh (zeroed) memory.
    // SAFETY: the file belongs to this store, which holds the directory lock,
    // so no other logkv process writes it, and this process replaces it only
    // by renaming a new file over it (the mapping keeps the old one); it is
    // only read, under a checksum, while mapped.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
    decode(&bytes)
        .map(Some)
        .map_err(|why| format!("{}: {why}", path.display()))
}

fn decode(bytes: &[u8]) -> std::result::Result<Snapshot, &'static str> {
    let (body, crc) = bytes.split_last_chunk::<4>().ok_or("truncated")?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch");
    }
    let mut r = Reader { buf: body, at: 0 };
    if r.take(8)? != MAGIC {
        return Err("bad magic");
    }
    let version = r.u32()?;
    if version != VERSION && version != VERSION_TAGGED {
        return Err("unsupported version");
    }
    r.u32()?;
    let last_revision = r.u64()?;
    let nseg = r.u32()? as usize;
    let mut segments = Vec::with_capacity(nseg.min(1 << 16));
    for _ in 0..nseg {
        let seq = r.u64()?;
        let gen = r.u32()?;
        let end = r.u64()?;
        segments.push(SegRef {
            id: SegmentId { seq, gen },
            end,
        });
    }
    let tail_crc = r.u32()?;
    let nkeys = usize::try_from(r.u64()?).map_err(|_| "too many keys")?;
    let mut builder = SortedBuilder::with_capacity(nkeys.min(body.len() / 8));
    let mut key: Vec<u8> = Vec::new();
    let mut revs = Vec::new();
    for _ in 0..nkeys {
        let shared = r.count()?;
        let rest = r.count()?;
        if shared > key.len() || shared + rest > crate::key::MAX_KEY_LEN {
            return Err("bad key lengths");
        }
        let rest = r.take(rest)?;
        // Keys must ascend. The writer shares as much as it can, so the first
        // byte after the shared part decides (a full comparison otherwise).
        let ascends = match (key.get(shared), rest.first()) {
            (Some(old), Some(new)) if old != new => new > old,
            (None, Some(_)) => true,
            _ => rest > key.get(shared..).unwrap_or_default(),
        };
        if !ascends && !builder.is_empty() {
            return Err("keys out of order");
        }
        key.truncate(shared);
        key.extend_from_slice(rest);
        let n = usize::from(r.u8()?);
        revs.clear();
        for _ in 0..n {
            let revision = r.varint()?;
            let expires = r.varint()?;
            let seg = u32::try_from(r.varint()?).map_err(|_| "bad segment")?;
            let offset = u32::try_from(r.varint()?).map_err(|_| "bad offset")?;
            let len_op = r.varint()?;
            let op = crate::log::record::Op::from_u8((len_op & 3) as u8).ok_or("bad op")?;
            let len = usize::try_from(len_op >> 2).map_err(|_| "bad length")?;
            if seg as usize >= segments.len() || len >= 1 << 30 {
                return Err("revision out of range");
            }
            revs.push(RecordRef::new(
                revision,
                expires,
                seg,
                u64::from(offset),
                len,
                op,
            ));
        }
        builder.push_ascending(&key, &revs)?;
    }
    let tag = if version == VERSION_TAGGED {
        let len = usize::from(r.u8()?);
        Some(Box::from(r.take(len)?))
    } else {
        None
    };
    if r.at != body.len() {
        return Err("trailing bytes");
    }
    Ok(Snapshot {
        last_revision,
        tag,
        segments,
        tail_crc,
        max_revisions: builder.max_revisions(),
        index: builder.finish(),
    })
}

impl Snapshot {
    /// If the snapshot matches the opened segments, fills `index` and returns
    /// where to resume scanning; otherwise says why not.
    pub fn apply(
        self,
        segments: &[Arc<Segment>],
        history: usize,
        index: &mut Index,
    ) -> std::result::Result<(usize, u64), String> {
        let n = self.segments.len();
        if n == 0 || segments.len() < n {
            return Err("the snapshot names segments that are gone".into());
        }
        for (i, (snap, seg)) in self.segments.iter().zip(segments).enumerate() {
            if snap.id != seg.id {
                return Err(format!(
                    "segment {:?} expected, {:?} found",
                    snap.id, seg.id
                ));
            }
            let len = seg.file_len().map_err(|e| e.to_string())?;
            let sealed = i + 1 < n;
            if (sealed && len != snap.end) || len < snap.end {
                return Err(format!(
                    "segment {:?} is {len} bytes, the snapshot expected {}",
                    seg.id, snap.end
                ));
            }
        }
        let (Some(last), Some(last_seg)) = (self.segments.last(), segments.get(n - 1)) else {
            return Err("the snapshot names segments that are gone".into());
        };
        let last_end = last.end;
        if tail_crc(last_seg, last_end) != self.tail_crc {
            return Err(
                "the log before the snapshot's end has changed since it was written".into(),
            );
        }
        if self.max_revisions > history {
            return Err("the snapshot holds more history than the bucket keeps".into());
        }
        let slots: Vec<u32> = segments.iter().take(n).map(|s| s.slot).collect();
        let mut built = self.index;
        // Slots are handed out in log order at open: usually the positions already.
        let same = slots.iter().zip(0u32..).all(|(slot, pos)| *slot == pos);
        if !same && !built.remap_segments(|pos| slots.get(pos as usize).copied()) {
            return Err("the snapshot names a segment it does not list".into());
        }
        *index = built;
        Ok((n - 1, last_end))
    }
}
