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
//! | file | what |
//! |---|---|
//! | `mod.rs` | the file: header, checksum, the two parts decoded at once, matching the log at open |
//! | `fields.rs` | the keys of versions 3 and 4 (4 written now): fixed-width fields, their widths from the index's bounds |
//! | `stream.rs` | writing the file while it is encoded, on a thread of its own |
//! | `varint.rs` | the keys of versions 1 and 2 (varints), still read |
//!
//! It is written whole each time (at close, and after compaction passes at
//! most every few seconds): the encoding (under the index read lock) walks
//! the index's slab, the entries as they lie in memory, not the key order
//! (which a bucket may never have built, and whose walk jumps about memory);
//! its chunks are written to the file as they fill. The file's widths come
//! from bounds the index keeps as revisions come ([`crate::index::Widest`]),
//! so nothing walks the index before the encoding. Loading builds the slab
//! in the file's order; the key order is built on first use. Not done: an
//! incremental snapshot (a base plus deltas of the keys a pass moved), which
//! needs a format with more than one file and a recovery rule for a delta
//! without its base.

mod fields;
mod stream;
#[cfg(test)]
mod tests;
mod varint;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use self::fields::{FixedKeys, Widths};
use self::stream::Stream;
use self::varint::VarintKeys;
use crate::error::{Error, Result};
use crate::fsutil::{remove_if_exists, sync_dir};
use crate::index::{two_cores, BulkBuilder, BulkPart, Index, KeyOrder, RecordRef, PARALLEL_FROM};
use crate::io::Storage;
use crate::log::segment::{Segment, SegmentId};

/// File name of a bucket's snapshot.
pub const SNAPSHOT_FILE: &str = "index.snap";
/// The file a snapshot is written to before it is renamed into place.
const SNAPSHOT_TMP: &str = "index.snap.tmp";
const MAGIC: &[u8; 8] = b"LOGKVIDX";
/// Version 4 stores the keys in the order of the index's slab, each key's
/// fields at fixed widths chosen per snapshot (see `docs/FORMAT.md`).
/// Versions 1 (one part, no tag), 2 (two parts, the replication tag;
/// varints) and 3 (version 4's fields, keys ascending) still load.
const VERSION: u32 = 4;

/// A segment as the snapshot saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegRef {
    id: SegmentId,
    /// Offset just past its last record covered by the snapshot.
    end: u64,
}

/// A decoded snapshot.
pub(crate) struct Snapshot {
    /// Written in the current format (an older one is written again at close).
    pub current_format: bool,
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
    /// Bytes of the revisions it holds, by the slot `index` names each
    /// segment with (counted while decoding).
    live: Option<Vec<u64>>,
}

/// A snapshot applied: where recovery resumes, and what it retains.
pub(crate) struct Applied {
    /// Position in the log of the segment to scan from, and the offset in it.
    pub resume: (usize, u64),
    /// Bytes of the snapshot's revisions in each opened segment, by slot.
    pub live: Option<HashMap<u32, u64>>,
}

/// Reads the header's fields in order.
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
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// The fields of a snapshot before its keys (and, in version 3, their widths).
struct Header<'a> {
    version: u32,
    last_revision: u64,
    /// Every live segment in log order with its covered end.
    segments: &'a [(Arc<Segment>, u64)],
    nkeys: usize,
    /// The replication tag as of the end (empty for none).
    tag: &'a [u8],
}

impl Header<'_> {
    /// Appends the header to `out`; returns where the second part's first
    /// key and offset are to be patched in.
    fn write(&self, out: &mut Vec<u8>) -> Result<usize> {
        let Some((last, last_end)) = self.segments.last() else {
            return Err(Error::Internal(
                "a snapshot needs at least one segment".into(),
            ));
        };
        let count = u32::try_from(self.segments.len()).map_err(|_| {
            Error::Internal(format!("{} segments in a snapshot", self.segments.len()))
        })?;
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.last_revision.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        for (s, end) in self.segments {
            out.extend_from_slice(&s.id.seq.to_le_bytes());
            out.extend_from_slice(&s.id.gen.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        out.extend_from_slice(&tail_crc(last, *last_end).to_le_bytes());
        out.extend_from_slice(&(self.nkeys as u64).to_le_bytes());
        // The second part's first key and its byte offset, patched in once
        // the keys are encoded (see `encode_keys`).
        let split_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        // The replication tag: its length (0: none), then its bytes.
        let tag_len = u8::try_from(self.tag.len()).map_err(|_| {
            Error::Internal(format!("a replication tag of {} bytes", self.tag.len()))
        })?;
        out.push(tag_len);
        out.extend_from_slice(self.tag);
        Ok(split_at)
    }
}

/// What goes before a snapshot's keys (header and widths), and how the keys
/// are to be encoded.
struct Prelude {
    bytes: Vec<u8>,
    widths: Widths,
    /// Where in `bytes` the second part's first key and offset are to be
    /// patched in.
    split_field_at: usize,
}

impl Prelude {
    fn new(
        index: &Index,
        last_revision: u64,
        segments: &[(Arc<Segment>, u64)],
        tag: Option<&[u8]>,
    ) -> Result<Prelude> {
        let mut bytes = Vec::new();
        let header = Header {
            version: VERSION,
            last_revision,
            segments,
            nkeys: index.key_count(),
            tag: tag.unwrap_or_default(),
        };
        let split_field_at = header.write(&mut bytes)?;
        // Positions fit a u32: the header refuses more segments.
        let count = u32::try_from(segments.len()).unwrap_or(u32::MAX);
        let widths = Widths::bounding(index.widest(), count);
        widths.write(&mut bytes);
        Ok(Prelude {
            bytes,
            widths,
            split_field_at,
        })
    }
}

/// Where the second part of an encoding starts: its first key's number
/// (the key count for one part) and that key's offset in the file.
#[derive(Debug, Clone, Copy)]
struct Split {
    key: u64,
    at: u64,
}

/// Sets `split` in `bytes` (the file from its start) at `field_at`.
fn patch_split(bytes: &mut [u8], field_at: usize, split: Split) {
    if let Some(field) = bytes.get_mut(field_at..field_at + 16) {
        let (key, at) = field.split_at_mut(8);
        key.copy_from_slice(&split.key.to_le_bytes());
        at.copy_from_slice(&split.at.to_le_bytes());
    }
}

/// Where an encoding's keys go: a buffer, handed on between keys.
trait KeysOut {
    /// The buffer the keys are appended to.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// Offset in the file of the next byte appended.
    fn position(&self) -> u64;
    /// Called after each key.
    fn key_done(&mut self);
    /// Appends bytes encoded elsewhere (whole keys).
    fn append(&mut self, bytes: Vec<u8>) {
        self.buf().extend_from_slice(&bytes);
        self.key_done();
    }
}

/// Keys encoded apart, in chunks, to append to the file once the keys
/// before them are (the second part of a two-part encoding).
#[derive(Default)]
struct Chunks {
    full: Vec<Vec<u8>>,
    last: Vec<u8>,
}

impl KeysOut for Chunks {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.last
    }
    fn position(&self) -> u64 {
        self.full.iter().map(|c| c.len() as u64).sum::<u64>() + self.last.len() as u64
    }
    fn key_done(&mut self) {
        if self.last.len() >= stream::CHUNK {
            let next = Vec::with_capacity(stream::CHUNK);
            self.full.push(std::mem::replace(&mut self.last, next));
        }
    }
}

/// The whole file in memory (tests: the file [`write`] makes is the same).
#[cfg(test)]
struct InMemory(Vec<u8>);

#[cfg(test)]
impl KeysOut for InMemory {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
    fn position(&self) -> u64 {
        self.0.len() as u64
    }
    fn key_done(&mut self) {}
}

impl KeysOut for Stream {
    fn buf(&mut self) -> &mut Vec<u8> {
        Stream::buf(self)
    }
    fn position(&self) -> u64 {
        Stream::position(self)
    }
    fn key_done(&mut self) {
        Stream::key_done(self);
    }
    fn append(&mut self, bytes: Vec<u8>) {
        Stream::append(self, bytes);
    }
}

/// Appends the keys of `index` in the order of its slab (version 4), each
/// with its revisions, in two parts from [`PARALLEL_FROM`] keys (each half
/// of the slab's slots a part; on two cores the second is encoded on a
/// thread of its own into memory while the first goes to `out`, then
/// appended; the file is the same either way): where the second part starts.
fn encode_keys(
    index: &Index,
    segments: &[(Arc<Segment>, u64)],
    prelude: &Prelude,
    out: &mut impl KeysOut,
) -> Result<Split> {
    let places = SegmentPlaces::new(segments);
    let slots = index.slot_count();
    if index.key_count() < PARALLEL_FROM {
        let keys = encode_part(index, 0..slots, &places, prelude, out)?;
        return Ok(Split {
            key: keys,
            at: out.position(),
        });
    }
    let mid = slots / 2;
    let mut second = Chunks::default();
    let (first, rest) = std::thread::scope(|s| {
        let other = if two_cores() {
            std::thread::Builder::new()
                .name("logkv-snapshot".into())
                .spawn_scoped(s, || {
                    encode_part(index, mid..slots, &places, prelude, &mut second)
                })
                .map_err(|e| {
                    tracing::warn!(error = %e, "could not start a thread to encode an index snapshot");
                })
        } else {
            Err(())
        };
        let first = encode_part(index, 0..mid, &places, prelude, out);
        let rest = other
            .ok()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (first, rest)
    });
    let first = first?;
    // The second part's first key shares nothing with the key before it:
    // it decodes on its own.
    let split = Split {
        key: first,
        at: out.position(),
    };
    match rest {
        Some(rest) => {
            rest?;
            for chunk in second.full.into_iter().chain([second.last]) {
                out.append(chunk);
            }
        }
        // One core, or no thread: the second part on this one, after the first.
        None => {
            encode_part(index, mid..slots, &places, prelude, out)?;
        }
    }
    Ok(split)
}

/// Where each live segment is in a snapshot's list, by segment slot.
struct SegmentPlaces {
    by_slot: HashMap<u32, u32>,
    count: u32,
}

impl SegmentPlaces {
    fn new(segments: &[(Arc<Segment>, u64)]) -> SegmentPlaces {
        let count = u32::try_from(segments.len()).unwrap_or(u32::MAX);
        let by_slot = segments
            .iter()
            .zip(0..count)
            .map(|((s, _), pos)| (s.slot, pos))
            .collect();
        SegmentPlaces { by_slot, count }
    }
}

/// Appends the keys in entry slots `slots`, the first stored whole; how many.
fn encode_part(
    index: &Index,
    slots: std::ops::Range<u32>,
    places: &SegmentPlaces,
    prelude: &Prelude,
    out: &mut impl KeysOut,
) -> Result<u64> {
    // A revision in a segment the list does not hold gets an index past the
    // list: the snapshot is refused at load (and the log scanned). Revisions
    // mostly sit in the segment of the one before: skip the lookup then.
    let last_seg = std::cell::Cell::new((u32::MAX, u32::MAX));
    let segment_of = |slot: u32| {
        if slot != last_seg.get().0 {
            let pos = places.by_slot.get(&slot).copied().unwrap_or(places.count);
            last_seg.set((slot, pos));
        }
        last_seg.get().1
    };
    let mut written = 0;
    let mut prev: &[u8] = &[];
    let mut revs = Vec::new();
    for (key, latest) in index.in_slots(slots) {
        // The length shared with the previous key is stored, then the rest.
        let k = key.as_bytes();
        let shared = k.iter().zip(prev).take_while(|(a, b)| a == b).count();
        revs.clear();
        index.for_each_rev(latest, |r| revs.push(*r));
        prelude
            .widths
            .put_key(out.buf(), k, shared, &revs, segment_of)
            .map_err(|why| Error::Internal(why.into()))?;
        out.key_done();
        prev = k;
        written += 1;
    }
    Ok(written)
}

/// Serialises `index` with the log state it corresponds to, in memory (for
/// tests: [`write`] makes the same bytes in the file). `segments`: every
/// live segment in log order with its covered end; `tag`: the replication
/// tag as of that end.
#[cfg(test)]
pub(crate) fn encode(
    index: &Index,
    last_revision: u64,
    segments: &[(Arc<Segment>, u64)],
    tag: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let prelude = Prelude::new(index, last_revision, segments, tag)?;
    let mut out = InMemory(prelude.bytes.clone());
    let split = encode_keys(index, segments, &prelude, &mut out)?;
    let mut bytes = out.0;
    patch_split(&mut bytes, prelude.split_field_at, split);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// A snapshot written to its temporary file, not yet in place.
pub(crate) struct Unsaved {
    file: SnapshotFile,
    prelude: Prelude,
}

/// A snapshot whose encoding failed, with its file: the caller drops the
/// file once it has released the index lock (the drop waits for the file's
/// writing thread, which may be in the middle of a write).
pub(crate) struct NotWritten {
    pub error: Error,
    pub file: SnapshotFile,
}

/// Serialises `index` with the log state it corresponds to into `file`, the
/// bucket's temporary snapshot file, written as it is encoded (see
/// `stream.rs`): [`Unsaved::save`] puts it in place. `segments`: every live
/// segment in log order with its covered end; `tag`: the replication tag as
/// of that end.
pub(crate) fn write(
    file: SnapshotFile,
    index: &Index,
    last_revision: u64,
    segments: &[(Arc<Segment>, u64)],
    tag: Option<&[u8]>,
) -> std::result::Result<Unsaved, Box<NotWritten>> {
    let mut file = file;
    let mut prelude = match Prelude::new(index, last_revision, segments, tag) {
        Ok(p) => p,
        Err(error) => return Err(Box::new(NotWritten { error, file })),
    };
    file.stream.begin(prelude.bytes.len() as u64);
    let split = match encode_keys(index, segments, &prelude, &mut file.stream) {
        Ok(split) => split,
        Err(error) => return Err(Box::new(NotWritten { error, file })),
    };
    patch_split(&mut prelude.bytes, prelude.split_field_at, split);
    Ok(Unsaved { file, prelude })
}

/// The temporary file of a bucket's next snapshot, created before the
/// index lock is taken (see [`write`]).
pub(crate) struct SnapshotFile {
    stream: Stream,
    storage: Storage,
    dir: std::path::PathBuf,
}

impl SnapshotFile {
    /// Creates the temporary snapshot file of the bucket in `dir`.
    pub(crate) fn create(storage: &Storage, dir: &Path) -> Result<SnapshotFile> {
        Ok(SnapshotFile {
            stream: Stream::create(storage, &dir.join(SNAPSHOT_TMP))?,
            storage: storage.clone(),
            dir: dir.to_path_buf(),
        })
    }
}

impl Unsaved {
    /// Waits for the body to be written, writes the header and the
    /// checksum, makes the file durable and renames it into place (a
    /// snapshot never names records a crash could lose: the caller made the
    /// log durable up to its end first).
    pub(crate) fn save(self) -> Result<()> {
        let SnapshotFile {
            stream,
            storage,
            dir,
        } = self.file;
        let tmp = dir.join(SNAPSHOT_TMP);
        let io = |e| Error::io(&tmp, e);
        let (file, body) = stream.finish()?;
        let header = &self.prelude.bytes;
        file.write_all_at(header, 0).map_err(io)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(header);
        crc.combine(&body.crc);
        let end = header.len() as u64 + body.len;
        file.write_all_at(&crc.finalize().to_le_bytes(), end)
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        let path = dir.join(SNAPSHOT_FILE);
        storage
            .rename(&tmp, &path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(&storage, &dir)
    }
}

/// Bytes of log just before the snapshot's end that it keeps a checksum of.
const TAIL_CHECK: u64 = 64;

/// Checksum of the last bytes (up to [`TAIL_CHECK`]) before `end` in `seg`:
/// if the log was cut below the end and written again, they differ.
fn tail_crc(seg: &Segment, end: u64) -> u32 {
    let from = end.saturating_sub(TAIL_CHECK).max(seg.data_start);
    crc32fast::hash(seg.range(from, end))
}

/// Removes a snapshot that no longer matches the log (or that the bucket no
/// longer keeps), and the temporary file of one if there is any.
pub(crate) fn remove(storage: &Storage, dir: &Path) -> Result<()> {
    remove_if_exists(storage, &dir.join(SNAPSHOT_FILE))?;
    remove_if_exists(storage, &dir.join(SNAPSHOT_TMP))
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
    if !(1..=VERSION).contains(&version) {
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
    let keys = if version >= 3 {
        Keys::Fixed(FixedKeys {
            bytes,
            widths: Widths::read(r.array()?)?,
            segments: segments.len(),
            ascending: version == 3,
        })
    } else {
        Keys::Varint(VarintKeys {
            body,
            segments: segments.len(),
        })
    };
    // A key takes 8 bytes at least in versions 1 and 2 (lengths, count, one
    // revision), 3 in versions 3 and 4 (its fields can be 0 bytes wide).
    let smallest_key = if version >= 3 { 3 } else { 8 };
    if nkeys > body.len() / smallest_key {
        return Err("more keys than bytes for them");
    }
    let order = if version >= 4 {
        KeyOrder::Any
    } else {
        KeyOrder::Ascending
    };
    let mut builder = BulkBuilder::with_capacity(nkeys, order);
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
    let max_revisions = builder.max_revisions();
    let live = builder.live_bytes_by_slot().map(<[u64]>::to_vec);
    let index = builder.finish()?;
    Ok(Snapshot {
        current_format: version == VERSION,
        last_revision,
        tag,
        segments,
        tail_crc,
        index,
        max_revisions,
        live,
    })
}

/// The keys of a snapshot, in the encoding of its version.
enum Keys<'a> {
    Varint(VarintKeys<'a>),
    Fixed(FixedKeys<'a>),
}

impl Keys<'_> {
    /// Decodes `count` keys from the file's bytes `from..to` (exactly) into `sink`.
    fn decode(
        &self,
        from: usize,
        to: usize,
        count: usize,
        sink: &mut impl Sink,
    ) -> std::result::Result<(), &'static str> {
        match self {
            Keys::Varint(k) => k.decode(from, to, count, sink),
            Keys::Fixed(k) => k.decode(from, to, count, sink),
        }
    }
}

/// Where decoded keys go: a builder, or one part of it.
trait Sink {
    /// Adds a key (checked to ascend by the caller in an ascending build).
    fn push_key(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str>;
    fn is_empty(&self) -> bool;
}

impl Sink for BulkBuilder {
    fn push_key(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        BulkBuilder::push_key(self, key, revs)
    }
    fn is_empty(&self) -> bool {
        BulkBuilder::is_empty(self)
    }
}

impl Sink for BulkPart<'_> {
    fn push_key(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        BulkPart::push_key(self, key, revs)
    }
    fn is_empty(&self) -> bool {
        BulkPart::is_empty(self)
    }
}

impl Snapshot {
    /// If the snapshot matches the opened segments, fills `index` and says
    /// where to resume scanning; otherwise says why not.
    pub fn apply(
        self,
        segments: &[Arc<Segment>],
        history: usize,
        index: &mut Index,
    ) -> std::result::Result<Applied, String> {
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
        let live = self.live.map(|by_slot| {
            (0u32..)
                .zip(by_slot)
                .filter_map(|(s, bytes)| Some((slot_of(s)?, bytes)))
                .collect()
        });
        Ok(Applied {
            resume: (n - 1, last_end),
            live,
        })
    }
}
