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
use crate::index::{Index, RecordRef, SortedBuilder, SortedPart, PARALLEL_FROM};
use crate::io::Storage;
use crate::log::segment::{Segment, SegmentId};

/// File name of a bucket's snapshot.
pub const SNAPSHOT_FILE: &str = "index.snap";
const MAGIC: &[u8; 8] = b"LOGKVIDX";
/// Version 2 splits the keys in two parts that decode at once and holds the
/// bucket's replication tag (see `docs/FORMAT.md`); version 1 (one part, no
/// tag) still loads.
const VERSION: u32 = 2;

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
    /// The replication tag of the last tag record before its end, if any:
    /// recovery does not read the records the snapshot covers.
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
/// the replication tag as of that end.
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
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&last_revision.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (s, end) in segments {
        out.extend_from_slice(&s.id.seq.to_le_bytes());
        out.extend_from_slice(&s.id.gen.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(&tail_crc(last, *last_end).to_le_bytes());
    let nkeys = index.key_count();
    out.extend_from_slice(&(nkeys as u64).to_le_bytes());
    // The second part starts at key `split`, at a byte offset patched in below.
    let split = if nkeys >= PARALLEL_FROM {
        nkeys / 2
    } else {
        nkeys
    };
    out.extend_from_slice(&(split as u64).to_le_bytes());
    let split_offset_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    // The replication tag: its length (0: none), then its bytes.
    let tag = tag.unwrap_or_default();
    let tag_len = u8::try_from(tag.len())
        .map_err(|_| Error::Internal(format!("a replication tag of {} bytes", tag.len())))?;
    out.push(tag_len);
    out.extend_from_slice(tag);
    let mut prev: Vec<u8> = Vec::new();
    let mut revs = Vec::new();
    let mut written = 0usize;
    // Revisions mostly sit in the segment of the one before: skip the lookup then.
    let mut last_seg = (u32::MAX, u32::MAX);
    index.try_for_each_sorted(|key, latest| {
        if written == split {
            // The second part's first key shares nothing: it decodes on its own.
            prev.clear();
            let at = out.len() as u64;
            if let Some(field) = out.get_mut(split_offset_at..split_offset_at + 8) {
                field.copy_from_slice(&at.to_le_bytes());
            }
        }
        written += 1;
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
    if version != 1 && version != VERSION {
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
    let (split, split_at) = if version == 1 {
        (nkeys, body.len())
    } else {
        let split = usize::try_from(r.u64()?).map_err(|_| "bad split")?;
        let at = usize::try_from(r.u64()?).map_err(|_| "bad split")?;
        (split, at)
    };
    let tag = if version == 1 {
        None
    } else {
        let len = usize::from(r.u8()?);
        (len > 0).then(|| r.take(len).map(Box::from)).transpose()?
    };
    // A key takes 8 bytes at least (lengths, count, one revision).
    if nkeys > body.len() / 8 {
        return Err("more keys than bytes for them");
    }
    let mut builder = SortedBuilder::with_capacity(nkeys);
    let keys = Keys {
        body,
        segments: segments.len(),
    };
    if split == nkeys || split == 0 || version == 1 {
        keys.decode(r.at, body.len(), nkeys, &mut builder)?;
    } else if split > nkeys || split_at <= r.at || split_at > body.len() {
        return Err("bad split");
    } else {
        let from = r.at;
        builder.fill_in_two(split, nkeys - split, |part, sink| match part {
            0 => keys.decode(from, split_at, split, sink),
            _ => keys.decode(split_at, body.len(), nkeys - split, sink),
        })?;
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

/// Where decoded keys go: a builder, or one part of it.
trait Sink {
    fn push_ascending(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str>;
    fn is_empty(&self) -> bool;
}

impl Sink for SortedBuilder {
    fn push_ascending(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        SortedBuilder::push_ascending(self, key, revs)
    }
    fn is_empty(&self) -> bool {
        SortedBuilder::is_empty(self)
    }
}

impl Sink for SortedPart<'_> {
    fn push_ascending(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        SortedPart::push_ascending(self, key, revs)
    }
    fn is_empty(&self) -> bool {
        SortedPart::is_empty(self)
    }
}

/// The keys of a snapshot's body.
struct Keys<'a> {
    body: &'a [u8],
    /// Number of segments the snapshot lists.
    segments: usize,
}

impl Keys<'_> {
    /// Decodes `count` keys from `body[from..to]` (exactly) into `sink`.
    fn decode(
        &self,
        from: usize,
        to: usize,
        count: usize,
        sink: &mut impl Sink,
    ) -> std::result::Result<(), &'static str> {
        let mut r = Reader {
            buf: self.body.get(..to).ok_or("truncated")?,
            at: from,
        };
        let mut key: Vec<u8> = Vec::new();
        let mut revs = Vec::new();
        for _ in 0..count {
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
            if !ascends && !sink.is_empty() {
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
                if seg as usize >= self.segments || len >= 1 << 30 {
                    return Err("revision out of range");
                }
                revs.push(RecordRef::new(
                    revision,
                    expires,
                    // The slot recovery gives the segment at position `seg`
                    // when it opens the log (from 1, in log order): no remap then.
                    seg + 1,
                    u64::from(offset),
                    len,
                    op,
                ));
            }
            sink.push_ascending(&key, &revs)?;
        }
        if r.at != to {
            return Err("trailing bytes");
        }
        Ok(())
    }
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
        // The index names the segment at position `pos` as slot `pos + 1`,
        // the slots handed out in log order at open: usually already right.
        let same = slots
            .iter()
            .zip(1u32..)
            .all(|(slot, expected)| *slot == expected);
        let slot_of = |s: u32| {
            s.checked_sub(1)
                .and_then(|pos| slots.get(pos as usize).copied())
        };
        if !same && !built.remap_segments(slot_of) {
            return Err("the snapshot names a segment it does not list".into());
        }
        *index = built;
        Ok((n - 1, last_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::Op;
    use crate::log::segment::SegmentHeader;

    /// An index of `n` keys (every third with three revisions, the rest
    /// with one) in segment slot `slot`, and the same in a sorted list.
    fn index(n: u32, slot: u32) -> (Index, Vec<(String, Vec<RecordRef>)>) {
        let mut ix = Index::default();
        let mut model = std::collections::BTreeMap::new();
        let mut removed = Vec::new();
        let mut revision = 0;
        for i in 0..n {
            // Written out of order, so the index sorts them.
            let key = format!("key:{:08}", (u64::from(i) * 7_919) % u64::from(n));
            let versions = if i % 3 == 0 { 3 } else { 1 };
            for _ in 0..versions {
                revision += 1;
                let op = if revision % 11 == 0 { Op::Del } else { Op::Put };
                let r = RecordRef::new(revision, revision % 5, slot, revision * 8, 40, op);
                ix.apply(key.as_bytes(), r, 3, &mut removed);
                model.entry(key.clone()).or_insert_with(Vec::new).push(r);
            }
        }
        (ix, model.into_iter().collect())
    }

    fn same(ix: &Index, model: &[(String, Vec<RecordRef>)]) {
        assert_eq!(ix.key_count(), model.len());
        let mut at = model.iter();
        ix.try_for_each_sorted(|key, _| {
            let (k, revs) = at.next().unwrap();
            assert_eq!(key.as_str(), k);
            assert_eq!(&ix.revisions(k.as_bytes()), revs, "{k}");
            assert_eq!(ix.latest(k.as_bytes()), revs.last().copied());
            Ok::<(), ()>(())
        })
        .unwrap();
        let values: usize = model.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(ix.values(), values as u64);
    }

    /// The first segment of a log, in slot `slot`, with a record's worth of bytes.
    fn segment(dir: &Path, slot: u32) -> Arc<Segment> {
        let h = SegmentHeader::new(SegmentId { seq: 1, gen: 0 }, 0, vec![]);
        let seg = Segment::create(&Storage::os(), dir, slot, h, 1 << 20, 4096, 0).unwrap();
        seg.set_data_end(seg.data_start + 100);
        Arc::new(seg)
    }

    /// Sets the checksum of a snapshot whose body was changed.
    fn reseal(bytes: &mut Vec<u8>) {
        bytes.truncate(bytes.len() - 4);
        let crc = crc32fast::hash(bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn a_large_index_decodes_in_two_parts_to_the_same_index() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let n = u32::try_from(PARALLEL_FROM).unwrap() + 1_001;
        let (ix, model) = index(n, 1);
        let end = seg.data_start + 100;
        let bytes = encode(&ix, 99, &[(Arc::clone(&seg), end)], Some(b"tag-1")).unwrap();
        let snap = decode(&bytes).unwrap();
        assert_eq!(snap.last_revision, 99);
        assert_eq!(
            snap.tag.as_deref(),
            Some(&b"tag-1"[..]),
            "the tag comes back"
        );
        assert_eq!(snap.max_revisions, 3);
        same(&snap.index, &model);
        // Found through the hash table, in order through the blocks.
        let mid = &model[model.len() / 2].0;
        let from = snap
            .index
            .range(
                std::ops::Bound::Included(mid.as_bytes()),
                std::ops::Bound::Unbounded,
            )
            .next()
            .map(|(k, _)| k.as_str().to_string());
        assert_eq!(from.as_deref(), Some(mid.as_str()));

        // Damage the split: the keys of the second part out of order with the first.
        let split_at = {
            let mut r = Reader {
                buf: &bytes,
                at: 8 + 4 + 4 + 8 + 4 + 20 + 4 + 8,
            };
            assert_eq!(r.u64().unwrap(), u64::from(n) / 2);
            usize::try_from(r.u64().unwrap()).unwrap()
        };
        let mut bad = bytes.clone();
        // The second part's first key, `key:000xxxxx`: make it sort first.
        let key_at = split_at + 2;
        assert_eq!(&bad[key_at..key_at + 4], b"key:");
        bad[key_at] = b'a';
        reseal(&mut bad);
        assert_eq!(decode(&bad).err(), Some("keys out of order"));
        // A split offset that does not fall on a key.
        let mut bad = bytes.clone();
        let field = 8 + 4 + 4 + 8 + 4 + 20 + 4 + 8 + 8;
        bad[field..field + 8].copy_from_slice(&(split_at as u64 + 1).to_le_bytes());
        reseal(&mut bad);
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn a_version_1_snapshot_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let (ix, model) = index(500, 1);
        let v2 = encode(&ix, 7, &[(Arc::clone(&seg), seg.data_start)], None).unwrap();
        // Version 1: no split fields and no tag length after the key count.
        let fields = 8 + 4 + 4 + 8 + 4 + 20 + 4 + 8;
        let mut v1 = v2[..fields].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&v2[fields + 16 + 1..]);
        reseal(&mut v1);
        let snap = decode(&v1).unwrap();
        same(&snap.index, &model);
        let mut v3 = v2.clone();
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        reseal(&mut v3);
        assert_eq!(decode(&v3).err(), Some("unsupported version"));
    }

    #[test]
    fn applying_gives_revisions_the_slots_of_the_opened_segments() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path(), 1);
        let (ix, model) = index(300, 1);
        let end = seg.data_start + 100;
        let bytes = encode(&ix, 9, &[(Arc::clone(&seg), end)], None).unwrap();
        for slot in [1, 7] {
            // The same file opened in slot 1 (as recovery does) or in another.
            let opened = Arc::new(Segment::open(&Storage::os(), &seg.path, slot, None).unwrap());
            let mut applied = Index::default();
            let at = decode(&bytes)
                .unwrap()
                .apply(&[opened], 3, &mut applied)
                .unwrap();
            assert_eq!(at, (0, end));
            let moved: Vec<_> = model
                .iter()
                .map(|(k, revs)| {
                    let revs = revs
                        .iter()
                        .map(|r| {
                            let mut r = *r;
                            r.slot = slot;
                            r
                        })
                        .collect();
                    (k.clone(), revs)
                })
                .collect();
            same(&applied, &moved);
        }
    }
}
