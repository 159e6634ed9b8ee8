//! The snapshot file: versions, parts, damage, slots at apply.

use super::*;
use crate::index::IKey;
use crate::log::record::Op;
use crate::log::segment::SegmentHeader;
use std::ops::Bound;

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
            ix.apply(key.as_bytes(), r, 0, 3, &mut removed);
            model.entry(key.clone()).or_insert_with(Vec::new).push(r);
        }
    }
    (ix, model.into_iter().collect())
}

/// An index of `n` short keys with one small revision each (about 13 bytes a
/// key in a snapshot), in segment slot `slot`, and the same in a sorted list.
fn small_index(n: u32, slot: u32) -> (Index, Vec<(String, Vec<RecordRef>)>) {
    let mut ix = Index::default();
    let mut model = Vec::new();
    let mut removed = Vec::new();
    for i in 0..n {
        let key = format!("{:06}", (u64::from(i) * 7_919) % u64::from(n));
        let r = RecordRef::new(u64::from(i) + 1, 0, slot, u64::from(i), 8, Op::Put);
        ix.apply(key.as_bytes(), r, 0, 1, &mut removed);
        model.push((key, vec![r]));
    }
    model.sort_by(|a, b| a.0.cmp(&b.0));
    (ix, model)
}

fn same(ix: &Index, model: &[(String, Vec<RecordRef>)]) {
    assert_eq!(ix.key_count(), model.len());
    let mut at = model.iter();
    for (key, _) in ix.range(Bound::Unbounded, Bound::Unbounded) {
        let (k, revs) = at.next().unwrap();
        assert_eq!(key.as_str(), k);
        assert_eq!(&ix.revisions(k.as_bytes()), revs, "{k}");
        assert_eq!(ix.latest(k.as_bytes()), revs.last().copied());
    }
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

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).unwrap());
}

/// A version 2 snapshot of `index`, as the code before version 3 wrote it.
fn encode_v2(
    index: &Index,
    last_revision: u64,
    segments: &[(Arc<Segment>, u64)],
    tag: Option<&[u8]>,
) -> Vec<u8> {
    let slot_to_pos: HashMap<u32, u32> = segments
        .iter()
        .zip(0..)
        .map(|((s, _), pos)| (s.slot, pos))
        .collect();
    let mut out = Vec::new();
    let header = Header {
        version: 2,
        last_revision,
        segments,
        nkeys: index.key_count(),
        tag: tag.unwrap_or_default(),
    };
    let split_field_at = header.write(&mut out).unwrap();
    // As the code of version 2 split: at half the keys, from PARALLEL_FROM.
    let nkeys = index.key_count();
    let split = if nkeys >= PARALLEL_FROM {
        nkeys / 2
    } else {
        nkeys
    };
    out[split_field_at..split_field_at + 8].copy_from_slice(&(split as u64).to_le_bytes());
    let split_offset_at = split_field_at + 8;
    let mut prev: Vec<u8> = Vec::new();
    for (written, (key, latest)) in index.range(Bound::Unbounded, Bound::Unbounded).enumerate() {
        if written == split {
            prev.clear();
            let at = out.len() as u64;
            out[split_offset_at..split_offset_at + 8].copy_from_slice(&at.to_le_bytes());
        }
        let k = key.as_bytes();
        let shared = k.iter().zip(&prev).take_while(|(a, b)| a == b).count();
        put_varint(&mut out, shared as u64);
        put_varint(&mut out, (k.len() - shared) as u64);
        out.extend_from_slice(&k[shared..]);
        prev.clear();
        prev.extend_from_slice(k);
        let mut revs = Vec::new();
        index.for_each_rev(latest, |r| revs.push(*r));
        out.push(u8::try_from(revs.len()).unwrap());
        for r in &revs {
            put_varint(&mut out, r.revision);
            put_varint(&mut out, r.expires_ms);
            put_varint(&mut out, u64::from(slot_to_pos[&r.slot]));
            put_varint(&mut out, u64::from(r.offset));
            put_varint(&mut out, (r.len() as u64) << 2 | r.op() as u64);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Bytes of the header before the split fields (one segment).
const BEFORE_SPLIT: usize = 8 + 4 + 4 + 8 + 4 + 20 + 4 + 8;

/// Where the keys of a version 3 or 4 snapshot of one segment start.
fn keys_start(bytes: &[u8]) -> usize {
    let tag_len = usize::from(bytes[BEFORE_SPLIT + 16]);
    BEFORE_SPLIT + 16 + 1 + tag_len + 6
}

/// A version 3 snapshot of `model` (keys ascending, in the layout version 4
/// keeps): an index built in key order writes its keys in that order.
fn as_version_3(
    model: &[(String, Vec<RecordRef>)],
    last_revision: u64,
    segments: &[(Arc<Segment>, u64)],
    tag: Option<&[u8]>,
) -> Vec<u8> {
    let sorted = Index::from_sorted(
        model
            .iter()
            .map(|(k, revs)| (IKey::new(k.as_bytes()), revs.clone())),
    );
    let mut bytes = encode(&sorted, last_revision, segments, tag).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    reseal(&mut bytes);
    bytes
}

/// Checks a two-part snapshot of [`index`]`(n, _)` whose first key's length
/// fields take `lengths` bytes: it decodes to `model`; damaged at the split,
/// it is refused.
fn decodes_in_two_parts(
    bytes: &[u8],
    n: u32,
    lengths: usize,
    model: &[(String, Vec<RecordRef>)],
    segs: &[(Arc<Segment>, u64)],
) {
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let snap = decode(bytes).unwrap();
    assert_eq!(snap.last_revision, 99);
    assert_eq!(
        snap.tag.as_deref(),
        Some(&b"tag-1"[..]),
        "the tag comes back"
    );
    assert_eq!(snap.max_revisions, 3);
    same(&snap.index, model);
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

    let split_at = {
        let mut r = Reader {
            buf: bytes,
            at: BEFORE_SPLIT,
        };
        assert_eq!(r.u64().unwrap(), u64::from(n) / 2);
        usize::try_from(r.u64().unwrap()).unwrap()
    };
    // An index loaded in two parts keeps the bounds of both: it encodes
    // again (a bound of the second part lost would refuse a field).
    let again = encode(&snap.index, 99, segs, Some(b"tag-1"));
    assert!(again.is_ok(), "{again:?}");
    let mut bad = bytes.to_vec();
    let key_at = split_at + lengths;
    assert_eq!(&bad[key_at..key_at + 4], b"key:");
    if version >= 4 {
        // Keys in any order: the second part's first key made the same as
        // the first part's (both stored whole).
        let first_key_at = keys_start(bytes);
        assert_eq!(&bytes[first_key_at..first_key_at + lengths], &[0, 12]);
        let first = bytes[first_key_at + lengths..first_key_at + lengths + 12].to_vec();
        bad[key_at..key_at + 12].copy_from_slice(&first);
        reseal(&mut bad);
        assert_eq!(decode(&bad).err(), Some("a key is in the snapshot twice"));
    } else {
        // Keys ascending: the second part's first key, `key:000xxxxx`, made
        // to sort first.
        bad[key_at] = b'a';
        reseal(&mut bad);
        assert_eq!(decode(&bad).err(), Some("keys out of order"));
    }
    // A split offset that does not fall on a key.
    let mut bad = bytes.to_vec();
    let field = BEFORE_SPLIT + 8;
    bad[field..field + 8].copy_from_slice(&(split_at as u64 + 1).to_le_bytes());
    reseal(&mut bad);
    assert!(decode(&bad).is_err());
}

#[test]
fn a_large_index_decodes_in_two_parts_to_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let n = u32::try_from(PARALLEL_FROM).unwrap() + 1_001;
    let (ix, model) = index(n, 1);
    let end = seg.data_start + 100;
    let segs = [(Arc::clone(&seg), end)];
    let bytes = encode(&ix, 99, &segs, Some(b"tag-1")).unwrap();
    assert_eq!(&bytes[8..12], &VERSION.to_le_bytes());
    // Version 4: lengths of one byte each.
    decodes_in_two_parts(&bytes, n, 2, &model, &segs);
    // Version 3: the same, keys ascending.
    decodes_in_two_parts(
        &as_version_3(&model, 99, &segs, Some(b"tag-1")),
        n,
        2,
        &model,
        &segs,
    );
    // Version 2: lengths of one varint byte each.
    decodes_in_two_parts(
        &encode_v2(&ix, 99, &segs, Some(b"tag-1")),
        n,
        2,
        &model,
        &segs,
    );
}

#[test]
fn versions_1_and_2_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let (ix, model) = index(500, 1);
    let v2 = encode_v2(&ix, 7, &[(Arc::clone(&seg), seg.data_start)], None);
    let snap = decode(&v2).unwrap();
    assert_eq!(snap.last_revision, 7);
    same(&snap.index, &model);
    // Version 1: no split fields and no tag length after the key count.
    let mut v1 = v2[..BEFORE_SPLIT].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&v2[BEFORE_SPLIT + 16 + 1..]);
    reseal(&mut v1);
    let snap = decode(&v1).unwrap();
    same(&snap.index, &model);
    for version in [0u32, VERSION + 1] {
        let mut other = v2.clone();
        other[8..12].copy_from_slice(&version.to_le_bytes());
        reseal(&mut other);
        assert_eq!(decode(&other).err(), Some("unsupported version"));
    }
}

/// Segment `seq` of a log, in slot `slot`, with a record's worth of bytes.
fn segment_seq(dir: &Path, slot: u32, seq: u64) -> Arc<Segment> {
    let h = SegmentHeader::new(SegmentId { seq, gen: 0 }, 0, vec![]);
    let seg = Segment::create(&Storage::os(), dir, slot, h, 1 << 20, 4096, 0).unwrap();
    seg.set_data_end(seg.data_start + 100);
    Arc::new(seg)
}

#[test]
fn version_4_keeps_every_field_at_any_width() {
    let dir = tempfile::tempdir().unwrap();
    let segs: Vec<_> = (1..=3)
        .map(|i| {
            let s = segment_seq(dir.path(), i, u64::from(i));
            let end = s.data_start + 100;
            (s, end)
        })
        .collect();
    // Long keys (two-byte lengths), large revisions and expiries, every
    // segment, every op; one key of the longest length.
    let mut ix = Index::default();
    let mut model = std::collections::BTreeMap::new();
    let mut removed = Vec::new();
    let ops = [Op::Put, Op::Del, Op::Purge];
    for i in 0..600u64 {
        let key = format!("{}.{i:04}", "x".repeat((i % 300) as usize + 1));
        let r = RecordRef::new(
            (1 << 40) + i,
            if i % 4 == 0 { 0 } else { u64::MAX - i },
            u32::try_from(i % 3).unwrap() + 1,
            u64::from(u32::MAX) - i,
            (1 << 30) - 1 - usize::try_from(i).unwrap(),
            ops[(i % 3) as usize],
        );
        ix.apply(key.as_bytes(), r, 0, 1, &mut removed);
        model.insert(key, vec![r]);
    }
    let longest = "k".repeat(crate::key::MAX_KEY_LEN);
    let r = RecordRef::new(1, 0, 1, 0, 0, Op::Put);
    ix.apply(longest.as_bytes(), r, 0, 1, &mut removed);
    model.insert(longest, vec![r]);
    let model: Vec<_> = model.into_iter().collect();
    let bytes = encode(&ix, 1 << 41, &segs, None).unwrap();
    // The widths: two-byte key lengths, then 6, 8, 1, 4 and 4 bytes.
    // Two more segments in the list, the split fields, the tag's length.
    let widths_at = BEFORE_SPLIT + 2 * 20 + 16 + 1;
    assert_eq!(&bytes[widths_at..widths_at + 6], &[2, 6, 8, 1, 4, 4]);
    let snap = decode(&bytes).unwrap();
    same(&snap.index, &model);
    assert_eq!(snap.segments.len(), 3);

    // Few keys, small numbers, one segment: narrow fields (the segment's
    // holds 1, the index a segment missing from the list would get).
    let (small, small_model) = index(50, 1);
    let bytes = encode(&small, 7, &segs[..1], None).unwrap();
    let widths_at = BEFORE_SPLIT + 16 + 1;
    assert_eq!(&bytes[widths_at..widths_at + 6], &[1, 1, 1, 1, 2, 1]);
    same(&decode(&bytes).unwrap().index, &small_model);
}

#[test]
fn a_snapshot_cut_short_or_with_impossible_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let (ix, _) = index(200, 1);
    let good = encode(&ix, 9, &[(Arc::clone(&seg), seg.data_start)], None).unwrap();
    assert!(decode(&good).is_ok());
    let widths_at = BEFORE_SPLIT + 16 + 1;
    // Every cut of the body (resealed: the checksum alone would catch it).
    for cut in 0..good.len() - 4 {
        let mut bad = good[..cut].to_vec();
        bad.extend_from_slice(&[0; 4]);
        reseal(&mut bad);
        assert!(decode(&bad).is_err(), "cut at {cut}");
    }
    // A byte more at the end of the keys.
    let mut bad = good[..good.len() - 4].to_vec();
    bad.extend_from_slice(&[0; 5]);
    reseal(&mut bad);
    assert_eq!(decode(&bad).err(), Some("trailing bytes"));
    // Impossible widths.
    let mut bad = good.clone();
    bad[widths_at + 1] = 9;
    reseal(&mut bad);
    assert_eq!(decode(&bad).err(), Some("bad field widths"));
    // A segment index past the list (one segment: its field is 0 bytes wide,
    // so write one key with every field at its widest, pointing at segment 1).
    let mut revs = Vec::new();
    ix.for_each_rev(&ix.latest(b"key:00000000").unwrap(), |r| revs.push(*r));
    let mut bad = good[..widths_at].to_vec();
    bad.extend_from_slice(&[1, 8, 8, 4, 4, 4]);
    bad.extend_from_slice(&[0, 12]);
    bad.extend_from_slice(b"key:00000000");
    bad.push(u8::try_from(revs.len()).unwrap());
    for r in &revs {
        bad.extend_from_slice(&r.revision.to_le_bytes());
        bad.extend_from_slice(&r.expires_ms.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.extend_from_slice(&r.offset.to_le_bytes());
        bad.extend_from_slice(
            &u32::try_from(r.len() << 2 | r.op() as usize)
                .unwrap()
                .to_le_bytes(),
        );
    }
    bad[BEFORE_SPLIT - 8..BEFORE_SPLIT].copy_from_slice(&1u64.to_le_bytes());
    bad[BEFORE_SPLIT..BEFORE_SPLIT + 8].copy_from_slice(&1u64.to_le_bytes());
    bad.extend_from_slice(&[0; 4]);
    reseal(&mut bad);
    assert_eq!(decode(&bad).err(), Some("revision out of range"));
    // The same key pointing at segment 0 is fine.
    let at = bad.len() - 4 - revs.len() * 28;
    for i in 0..revs.len() {
        bad[at + i * 28 + 16] = 0;
    }
    reseal(&mut bad);
    let snap = decode(&bad).unwrap();
    assert_eq!(snap.index.key_count(), 1);
    assert_eq!(snap.index.revisions(b"key:00000000"), revs);
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
        assert_eq!(at.resume, (0, end));
        let retained: u64 = model
            .iter()
            .flat_map(|(_, r)| r)
            .map(|r| r.len() as u64)
            .sum();
        assert_eq!(
            at.live,
            Some(HashMap::from([(slot, retained)])),
            "what it retains, counted in the segment's slot"
        );
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

/// The file [`write`] streams (on the caller's thread for a small snapshot,
/// on a thread of its own once a chunk fills) holds the bytes [`encode`]
/// makes, and is in place, the temporary file gone, after the save.
#[test]
fn the_streamed_file_holds_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let segs = [(Arc::clone(&seg), seg.data_start + 100)];
    // One part in one chunk; two parts in less than a chunk (no thread: the
    // second part appended to what the first left unsent); two parts in many.
    let two_parts = u32::try_from(PARALLEL_FROM).unwrap() + 100;
    for n in [300, two_parts, 300_000] {
        let (ix, model) = if n == two_parts {
            small_index(n, 1)
        } else {
            index(n, 1)
        };
        let expected = encode(&ix, 9, &segs, Some(b"t")).unwrap();
        if n == two_parts {
            assert!(expected.len() < stream::CHUNK, "{} bytes", expected.len());
        }
        if n == 300_000 {
            assert!(
                expected.len() > 3 * stream::CHUNK,
                "{} bytes",
                expected.len()
            );
        }
        // An attempt dropped before its save (the log's fsync failed, say)
        // leaves nothing in place, and its thread writes nothing after it.
        let before = std::fs::read(dir.path().join(SNAPSHOT_FILE)).ok();
        let file = SnapshotFile::create(&Storage::os(), dir.path()).unwrap();
        drop(write(file, &ix, 9, &segs, Some(b"t")).ok().unwrap());
        let after = std::fs::read(dir.path().join(SNAPSHOT_FILE)).ok();
        assert!(before == after, "{n} keys: the file in place changed");
        let file = SnapshotFile::create(&Storage::os(), dir.path()).unwrap();
        write(file, &ix, 9, &segs, Some(b"t"))
            .ok()
            .unwrap()
            .save()
            .unwrap();
        let written = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert!(
            written == expected,
            "{n} keys: the file differs from the encoding"
        );
        assert!(!dir.path().join(SNAPSHOT_TMP).exists());
        same(&load(dir.path()).unwrap().unwrap().index, &model);
    }
}

/// A value wider than its field is refused, never cut to the width (a
/// snapshot would otherwise load with wrong places).
#[test]
fn a_field_wider_than_its_width_is_refused() {
    let widths = Widths::bounding(&crate::index::Widest::default(), 1);
    let r = RecordRef::new(300, 0, 1, 0, 0, Op::Put);
    let mut out = Vec::new();
    assert_eq!(
        widths.put_key(&mut out, b"k", 0, &[r], |_| 0),
        Err("a field wider than its width")
    );
}

/// Which slots of `n` a case frees, given `n / 2`.
type Freed = fn(u32, u32) -> bool;

/// A large index is encoded in two parts, each half of the slab's slots:
/// with slots freed in both halves, or every slot of the first half free
/// (one part, then), the file says where the second part starts and
/// decodes to the same index.
#[test]
fn an_index_with_free_slots_encodes_in_two_parts_by_slot() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let segs = [(Arc::clone(&seg), seg.data_start + 100)];
    let n = u32::try_from(PARALLEL_FROM).unwrap() * 2 + 10;
    let key = |i: u32| format!("key:{:08}", (u64::from(i) * 7_919) % u64::from(n));
    let half = n / 2;
    let cases: [(&str, Freed); 2] = [
        ("slots freed in both halves", |i, half| {
            if i < half {
                i % 5 == 0
            } else {
                i % 7 == 0
            }
        }),
        ("the first half free", |i, half| i < half),
    ];
    for (case, freed) in cases {
        // `index` puts the i-th key written in slot i.
        let (mut ix, model) = index(n, 1);
        let mut removed = Vec::new();
        let mut gone = std::collections::HashSet::new();
        for i in (0..n).filter(|&i| freed(i, half)) {
            ix.drop_oldest_while(key(i).as_bytes(), |_| true, &mut removed);
            gone.insert(key(i));
        }
        let model: Vec<_> = model
            .into_iter()
            .filter(|(k, _)| !gone.contains(k))
            .collect();
        assert_eq!(ix.slot_count(), n, "{case}");
        let in_first = (0..half).filter(|&i| !freed(i, half)).count() as u64;
        let bytes = encode(&ix, 99, &segs, None).unwrap();
        let mut r = Reader {
            buf: &bytes,
            at: BEFORE_SPLIT,
        };
        assert_eq!(r.u64().unwrap(), in_first, "{case}: keys in the first part");
        let at = usize::try_from(r.u64().unwrap()).unwrap();
        // The second part's first key is stored whole.
        assert_eq!(&bytes[at..at + 2], &[0, 12], "{case}");
        let snap = decode(&bytes).unwrap();
        same(&snap.index, &model);
    }
}

/// A snapshot that cannot be written gives its file back with the error, for
/// the caller to drop once it has released the index lock; the file in place
/// is left as it was.
#[test]
fn a_snapshot_that_cannot_be_written_gives_its_file_back() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 1);
    let segs = [(Arc::clone(&seg), seg.data_start + 100)];
    let (ix, _) = index(300, 1);
    let file = SnapshotFile::create(&Storage::os(), dir.path()).unwrap();
    let too_long = [b't'; 300];
    let Err(failed) = write(file, &ix, 9, &segs, Some(&too_long)) else {
        panic!("a tag of 300 bytes was written");
    };
    assert!(
        failed
            .error
            .to_string()
            .contains("replication tag of 300 bytes"),
        "{}",
        failed.error
    );
    drop(failed.file);
    assert!(!dir.path().join(SNAPSHOT_FILE).exists(), "nothing in place");
}
