//! Recovery tests: what `Store::open` makes of a store directory after clean
//! closes, torn tails, garbage, corruption, stray files, locks and permissions.
//!
//! The rules under test are in `engine/src/log/recovery.rs`.

mod common;

use common::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use logkv::log::record::{decode, encode, Decoded, Op as RecOp, HEADER_LEN};
use logkv::log::segment::SegmentHeader;
use logkv::{
    Bucket, BucketConfig, BucketStatus, Entry, Error, FsyncPolicy, Op, Options, RecoveryReport,
    Store, WriteOp,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Spawning a process copies every open file of this process into the child
/// until the child execs, and a store's directory lock (an `flock`) belongs to
/// the open file: a store closed by one test while another test spawns stays
/// locked until that exec, and an immediate reopen can fail with `Locked`.
/// Tests that spawn processes take this gate exclusively; all others share it.
static SPAWN_GATE: RwLock<()> = RwLock::new(());

fn shared_gate() -> RwLockReadGuard<'static, ()> {
    SPAWN_GATE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_gate() -> RwLockWriteGuard<'static, ()> {
    SPAWN_GATE.write().unwrap_or_else(|e| e.into_inner())
}

/// The ops of a key's retained history, oldest first.
fn ops(b: &Bucket, key: &str) -> Vec<Op> {
    b.history(key).unwrap().iter().map(|e| e.op).collect()
}

fn opts(segment_size: u64) -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size,
        ..Default::default()
    }
}

fn repair_opts(segment_size: u64) -> Options {
    Options {
        repair: true,
        ..opts(segment_size)
    }
}

const SEG: u64 = 4096;

fn bucket_dir(store: &Path, bucket: &str) -> PathBuf {
    store.join("buckets").join(bucket)
}

/// The index snapshot file of a bucket (written at clean close).
fn snap_path(store: &Path, bucket: &str) -> PathBuf {
    bucket_dir(store, bucket).join("index.snap")
}

/// Removes every bucket's index snapshot: the state a crash leaves when no
/// clean close happened since the writes.
fn remove_snapshots(store: &Path) {
    for e in fs::read_dir(store.join("buckets")).unwrap() {
        let p = e.unwrap().path().join("index.snap");
        if p.exists() {
            fs::remove_file(p).unwrap();
        }
    }
}

/// The segment files of a bucket directory, in log order.
fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

fn copy_dir_all(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir_all(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// One record as found in a segment file.
#[derive(Debug, Clone)]
struct Rec {
    offset: u64,
    len: u64,
    key: String,
    revision: u64,
    batch_more: bool,
}

/// A segment file parsed independently of the store: where records start,
/// the records, and where the written data ends.
struct Parsed {
    data_start: u64,
    records: Vec<Rec>,
    data_end: u64,
}

fn parse_segment(path: &Path) -> Parsed {
    let buf = fs::read(path).unwrap();
    let header = SegmentHeader::decode(&buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data_start = header.encoded_len() as u64;
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

/// The report recovery made for `bucket`.
fn report<'a>(store: &'a Store, bucket: &str) -> &'a RecoveryReport {
    &store
        .recovery_reports()
        .iter()
        .find(|(n, _)| n == bucket)
        .unwrap_or_else(|| panic!("no report for {bucket}"))
        .1
}

fn assert_clean(store: &Store, ctx: &str) {
    for (name, r) in store.recovery_reports() {
        assert_eq!(
            r.truncated_bytes, 0,
            "{ctx}: bucket {name} truncated on a clean reopen: {r:?}"
        );
        assert!(
            r.skipped.is_empty(),
            "{ctx}: bucket {name} skipped regions on a clean reopen: {r:?}"
        );
    }
}

/// What a bucket with history 1 should hold: key -> (revision, op, value).
type Model = BTreeMap<String, (u64, Op, Vec<u8>)>;

fn model_last_rev(model: &Model) -> u64 {
    model.values().map(|(r, _, _)| *r).max().unwrap_or(0)
}

/// Checks a history-1 bucket against a model: the same keys, each with exactly the
/// modelled revision, op and value, nothing else, and the expected last revision.
fn check_model(bucket: &Bucket, model: &Model, last_rev: u64, ctx: &str) {
    let mut seen: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in bucket.history(">").unwrap() {
        seen.entry(e.key.clone()).or_default().push(e);
    }
    let seen_keys: BTreeSet<&String> = seen.keys().collect();
    let model_keys: BTreeSet<&String> = model.keys().collect();
    let invented: Vec<_> = seen_keys.difference(&model_keys).collect();
    let lost: Vec<_> = model_keys.difference(&seen_keys).collect();
    assert!(
        invented.is_empty() && lost.is_empty(),
        "{ctx}: keys invented {invented:?}, keys lost {lost:?}"
    );
    for (key, (rev, op, value)) in model {
        let h = &seen[key];
        assert_eq!(h.len(), 1, "{ctx}: {key}: history {h:?}");
        assert_eq!((h[0].revision, h[0].op), (*rev, *op), "{ctx}: {key}");
        assert_eq!(&h[0].value[..], &value[..], "{ctx}: {key} value");
        let live = bucket.entry(key).unwrap();
        match op {
            Op::Put => {
                let e = live.unwrap_or_else(|| panic!("{ctx}: {key} has no live value"));
                assert_eq!(
                    (e.revision, &e.value[..]),
                    (*rev, &value[..]),
                    "{ctx}: {key}"
                );
            }
            _ => assert!(
                live.is_none(),
                "{ctx}: {key} should have no live value, has {live:?}"
            ),
        }
    }
    let live_keys: Vec<String> = model
        .iter()
        .filter(|(_, (_, op, _))| *op == Op::Put)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(bucket.keys(">").unwrap(), live_keys, "{ctx}: live keys");
    assert_eq!(
        bucket.status().unwrap().last_revision,
        last_rev,
        "{ctx}: last revision"
    );
}

/// The parts of [`BucketStatus`] that are state (not counters since open).
#[derive(Debug, Clone, PartialEq)]
struct StatusState {
    values: u64,
    keys: u64,
    bytes: u64,
    history: u8,
    ttl_ms: u64,
    max_bytes: u64,
    max_value_size: u64,
    first_revision: u64,
    last_revision: u64,
    segments: u64,
    dead_bytes: u64,
}

impl From<BucketStatus> for StatusState {
    fn from(s: BucketStatus) -> StatusState {
        StatusState {
            values: s.values,
            keys: s.keys,
            bytes: s.bytes,
            history: s.history,
            ttl_ms: s.ttl_ms,
            max_bytes: s.max_bytes,
            max_value_size: s.max_value_size,
            first_revision: s.first_revision,
            last_revision: s.last_revision,
            segments: s.segments,
            dead_bytes: s.dead_bytes,
        }
    }
}

/// Everything observable about a bucket, for before/after comparisons.
#[derive(Debug, Clone, PartialEq)]
struct State {
    entries: BTreeMap<String, (Option<Entry>, Vec<Entry>)>,
    history: Vec<Entry>,
    keys: Vec<String>,
    status: StatusState,
}

fn state_of(bucket: &Bucket, extra_keys: &[String]) -> State {
    let history = bucket.history(">").unwrap();
    let mut names: BTreeSet<String> = history.iter().map(|e| e.key.clone()).collect();
    names.extend(extra_keys.iter().cloned());
    let entries = names
        .into_iter()
        .map(|k| {
            let latest = bucket.entry(&k).unwrap();
            let h = bucket.history(&k).unwrap();
            for e in &h {
                assert_eq!(
                    bucket.entry_at(&k, e.revision).unwrap().as_ref(),
                    Some(e),
                    "entry_at({k}, {})",
                    e.revision
                );
            }
            (k, (latest, h))
        })
        .collect();
    State {
        entries,
        history,
        keys: bucket.keys(">").unwrap(),
        status: bucket.status().unwrap().into(),
    }
}

/// A short description of an entry (values can be long).
fn brief(e: &Entry) -> String {
    format!(
        "{}@{} {:?} {}B crc {:08x} created {} expires {}",
        e.key,
        e.revision,
        e.op,
        e.value.len(),
        crc32(&e.value),
        e.created_ms,
        e.expires_ms
    )
}

fn crc32(b: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE); only used to tell values apart in messages.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Asserts two states are equal, naming the first differences briefly.
fn assert_same_state(got: &State, want: &State, ctx: &str) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    if got.status != want.status {
        diffs.push(format!(
            "status: got {:?}, want {:?}",
            got.status, want.status
        ));
    }
    if got.keys != want.keys {
        diffs.push(format!(
            "live keys differ: got {} keys, want {}",
            got.keys.len(),
            want.keys.len()
        ));
    }
    let all: BTreeSet<&String> = got.entries.keys().chain(want.entries.keys()).collect();
    for k in all {
        let g = got.entries.get(k);
        let w = want.entries.get(k);
        if g != w {
            let show = |x: Option<&(Option<Entry>, Vec<Entry>)>| match x {
                None => "absent".to_string(),
                Some((latest, h)) => format!(
                    "latest {:?}, history [{}]",
                    latest.as_ref().map(brief),
                    h.iter().map(brief).collect::<Vec<_>>().join("; ")
                ),
            };
            diffs.push(format!("{k}: got {}, want {}", show(g), show(w)));
        }
    }
    if got.history != want.history {
        diffs.push(format!(
            "history(\">\"): got {} entries, want {}",
            got.history.len(),
            want.history.len()
        ));
    }
    let n = diffs.len();
    diffs.truncate(12);
    panic!("{ctx}: {n} differences:\n  {}", diffs.join("\n  "));
}

/// A value with no zero byte, so that zeroing any suffix of its record changes it.
fn nonzero_value(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| b'!' + (rng.next_u64() % 90) as u8)
        .collect()
}

fn expect_corrupt(r: logkv::Result<Store>, ctx: &str) -> (PathBuf, u64, String) {
    match r {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            let Error::Corrupt { path, offset, .. } = e else {
                unreachable!()
            };
            assert!(
                msg.contains(&path.display().to_string()),
                "{ctx}: message {msg:?} does not name {}",
                path.display()
            );
            (path, offset, msg)
        }
        Err(e) => panic!("{ctx}: expected Error::Corrupt, got {e:?}"),
        Ok(_) => panic!("{ctx}: expected Error::Corrupt, the store opened"),
    }
}

// ---------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------

#[test]
fn round_trip_every_record_kind_through_reopen() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let cfg = BucketConfig {
        history: 10,
        ..Default::default()
    };
    let mut written = 0u64; // records in bucket "rt"
    let long_key = format!("long.{}", "x".repeat(1000));
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let rt_keys: Vec<String> = [
        "a", "b", "c", "d", "e", "f", "gone", "batch.1", "batch.2", "batch.3", "ttl", "empty",
        "bin",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long_key.clone()])
    .collect();
    let (before_rt, before_default, last_rt) = {
        let store = Store::open(&path, opts(1 << 20)).unwrap();
        let rt = store.create_bucket("rt", cfg).unwrap();
        let r_a1 = rt.put("a", "one").unwrap();
        let r_a2 = rt.update("a", "two", r_a1).unwrap();
        rt.create("b", "bee").unwrap();
        rt.put("c", "sea").unwrap();
        let r_c_del = rt.delete("c").unwrap();
        rt.put("d", "dee-1").unwrap();
        rt.put("d", "dee-2").unwrap();
        let r_d_purge = rt.purge("d").unwrap();
        rt.put("e", "e-1").unwrap();
        rt.purge("e").unwrap();
        rt.put("e", "e-after-purge").unwrap();
        rt.delete("gone").unwrap(); // a marker for a key that never had a value
        rt.put("f", "f-1").unwrap();
        written += 13;
        let w = rt
            .write(&[
                WriteOp::put("batch.1", "b1"),
                WriteOp::put("batch.2", "b2"),
                WriteOp::delete("f"),
                WriteOp::purge("b"),
                WriteOp::put("batch.3", "b3"),
            ])
            .unwrap();
        written += 5;
        let revs: Vec<u64> = w.iter().map(|w| w.revision).collect();
        assert!(
            revs.windows(2).all(|p| p[1] == p[0] + 1),
            "batch revisions not consecutive: {revs:?}"
        );
        rt.put_with_ttl("ttl", "lives an hour", Duration::from_secs(3600))
            .unwrap();
        rt.put("empty", "").unwrap();
        rt.put("bin", big.clone()).unwrap();
        rt.put(&long_key, "long").unwrap();
        rt.revert("a", r_a1).unwrap();
        written += 5;
        let last = rt.status().unwrap().last_revision;
        assert_eq!(last, written);
        let def = store.default_bucket().unwrap();
        def.put("x", "in default").unwrap();
        def.delete("y").unwrap();
        let before_rt = state_of(&rt, &rt_keys);
        let before_default = state_of(&def, &["x".into(), "y".into()]);
        // Sanity of the state being round-tripped.
        assert_eq!(rt.history("a").unwrap().len(), 3, "two puts and a revert");
        assert_eq!(rt.entry_at("a", r_a2).unwrap().unwrap().value, "two");
        assert_eq!(rt.entry_at("c", r_c_del).unwrap().unwrap().op, Op::Del);
        let hd = rt.history("d").unwrap();
        assert_eq!(hd.len(), 1);
        assert_eq!((hd[0].op, hd[0].revision), (Op::Purge, r_d_purge));
        drop((rt, def));
        store.close().unwrap();
        (before_rt, before_default, last)
    };

    // Reopen after the clean close (index snapshot), and from the log alone
    // (as after a crash: no snapshot covers the writes).
    let replay = dir.path().join("replay");
    copy_dir_all(&path, &replay);
    remove_snapshots(&replay);
    for (path, snapshot_kept) in [(&path, true), (&replay, false)] {
        let variant = if snapshot_kept {
            "reopen with the snapshot"
        } else {
            "reopen from the log alone"
        };
        let store = Store::open(path, opts(1 << 20)).unwrap();
        assert_clean(&store, "first reopen");
        assert_eq!(
            store.bucket_names(),
            vec!["default".to_string(), "rt".to_string()]
        );
        if !snapshot_kept {
            assert_eq!(
                report(&store, "rt").records,
                written,
                "every record replayed"
            );
        }
        let rt = store.bucket("rt").unwrap();
        let def = store.default_bucket().unwrap();
        assert_eq!(rt.config(), cfg, "bucket.conf round trip");
        let after_rt = state_of(&rt, &rt_keys);
        assert_same_state(&after_rt, &before_rt, variant);
        assert_same_state(
            &state_of(&def, &["x".into(), "y".into()]),
            &before_default,
            variant,
        );

        // Explicit expectations, independent of the pre-close snapshot.
        assert_eq!(
            rt.get("a").unwrap().as_deref(),
            Some(&b"one"[..]),
            "revert survives"
        );
        assert_eq!(rt.history("a").unwrap().len(), 3);
        assert_eq!(rt.get("b").unwrap(), None, "purged in the batch");
        assert_eq!(ops(&rt, "b"), vec![Op::Purge]);
        assert_eq!(ops(&rt, "c"), vec![Op::Put, Op::Del]);
        assert_eq!(ops(&rt, "d"), vec![Op::Purge]);
        assert_eq!(ops(&rt, "e"), vec![Op::Purge, Op::Put]);
        assert_eq!(rt.get("e").unwrap().as_deref(), Some(&b"e-after-purge"[..]));
        assert_eq!(ops(&rt, "gone"), vec![Op::Del]);
        assert_eq!(rt.get("f").unwrap(), None, "deleted in the batch");
        for k in ["batch.1", "batch.2", "batch.3"] {
            assert!(rt.get(k).unwrap().is_some(), "{k}");
        }
        let ttl = rt.entry("ttl").unwrap().unwrap();
        assert!(ttl.expires_ms > 0, "per-key expiry survives: {ttl:?}");
        assert!(matches!(rt.ttl("ttl").unwrap(), logkv::Ttl::Remaining(ms) if ms > 3_000_000));
        assert_eq!(rt.get("empty").unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(rt.get("bin").unwrap().as_deref(), Some(&big[..]));
        assert_eq!(rt.get(&long_key).unwrap().as_deref(), Some(&b"long"[..]));
        assert_eq!(after_rt.status.last_revision, last_rt);

        // Writing after the reopen continues the revisions, and survives another reopen.
        let r = rt.put("a", "three").unwrap();
        assert!(r > last_rt, "revision {r} reused (last was {last_rt})");
        let before2 = state_of(&rt, &rt_keys);
        drop((rt, def));
        drop(store);
        if !snapshot_kept {
            remove_snapshots(path);
        }
        let store = Store::open(path, opts(1 << 20)).unwrap();
        assert_clean(&store, "second reopen");
        if !snapshot_kept {
            assert_eq!(report(&store, "rt").records, written + 1);
        }
        assert_same_state(
            &state_of(&store.bucket("rt").unwrap(), &rt_keys),
            &before2,
            variant,
        );
    }
}

/// Random puts, deletes, purges and batches over `keys`; returns the number of records written.
fn random_writes(b: &Bucket, rng: &mut Rng, keys: &[String], n: usize) -> u64 {
    let mut records = 0;
    let pick = |rng: &mut Rng| keys[rng.range(0, keys.len() as u64) as usize].clone();
    for _ in 0..n {
        let k = pick(rng);
        let len = rng.range(0, 300) as usize;
        match rng.range(0, 100) {
            0..=69 => {
                b.put(&k, rng.bytes(len)).unwrap();
                records += 1;
            }
            70..=79 => {
                b.delete(&k).unwrap();
                records += 1;
            }
            80..=84 => {
                b.purge(&k).unwrap();
                records += 1;
            }
            _ => {
                let n = rng.range(2, 5) as usize;
                let mut batch_keys = BTreeSet::new();
                while batch_keys.len() < n {
                    batch_keys.insert(pick(rng));
                }
                let ops: Vec<WriteOp> = batch_keys
                    .iter()
                    .map(|k| {
                        if rng.range(0, 4) == 0 {
                            WriteOp::delete(k.as_str())
                        } else {
                            WriteOp::put(k.as_str(), rng.bytes(len))
                        }
                    })
                    .collect();
                let w = b.write(&ops).unwrap();
                assert!(w.windows(2).all(|p| p[1].revision == p[0].revision + 1));
                records += n as u64;
            }
        }
    }
    records
}

#[test]
fn rotation_across_many_segments_round_trips() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut rng = Rng::new(1);
    let cfg = BucketConfig {
        history: 3,
        ..Default::default()
    };
    let all_keys: Vec<String> = (0..200).map(|i| format!("key.{i}")).collect();
    let mut records = 0u64;
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.create_bucket("rot", cfg).unwrap();
        records += random_writes(&b, &mut rng, &all_keys, 3000);
        let snap = state_of(&b, &all_keys);
        drop(b);
        drop(store);
        snap
    };
    let segs = seg_files(&bucket_dir(&path, "rot"));
    assert!(
        segs.len() >= 20,
        "expected many segments, found {}",
        segs.len()
    );
    for s in &segs[..segs.len() - 1] {
        let len = fs::metadata(s).unwrap().len();
        assert!(
            len <= SEG,
            "{} is {len} bytes, more than the segment size",
            s.display()
        );
        assert_eq!(
            parse_segment(s).data_end,
            len,
            "a sealed segment is cut to its data"
        );
    }

    // Reopen with the index snapshot of the clean close, then from the log alone
    // (as after a crash), with the same and with a different segment size.
    for (round, size, snapshot_kept) in [(1, SEG, true), (2, SEG, false), (3, 1 << 16, false)] {
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let store = Store::open(&path, opts(size)).unwrap();
        assert_clean(&store, "reopen");
        if !snapshot_kept {
            let r = report(&store, "rot");
            assert_eq!(
                r.segments,
                seg_files(&bucket_dir(&path, "rot")).len(),
                "round {round}"
            );
            assert_eq!(r.records, records, "round {round}: records replayed");
        }
        let b = store.bucket("rot").unwrap();
        assert_same_state(&state_of(&b, &all_keys), &before, &format!("round {round}"));
    }

    // Keep writing across more rotations, then reopen again.
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.bucket("rot").unwrap();
        let last = b.status().unwrap().last_revision;
        let r = b.put("key.0", "after reopen").unwrap();
        records += 1;
        assert_eq!(r, last + 1, "revisions continue after reopen");
        records += random_writes(&b, &mut rng, &all_keys, 1000);
        state_of(&b, &all_keys)
    };
    for snapshot_kept in [true, false] {
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let store = Store::open(&path, opts(SEG)).unwrap();
        assert_clean(&store, "final reopen");
        if !snapshot_kept {
            assert_eq!(report(&store, "rot").records, records);
        }
        assert_same_state(
            &state_of(&store.bucket("rot").unwrap(), &all_keys),
            &before,
            &format!("final, snapshot kept: {snapshot_kept}"),
        );
    }
}

/// A log rewritten by compaction reads back the same, with the snapshot the
/// compaction left and from the log alone, and keeps taking writes.
#[test]
fn compacted_log_round_trips() {
    let _gate = shared_gate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut rng = Rng::new(2);
    let cfg = BucketConfig {
        history: 2,
        ..Default::default()
    };
    let all_keys: Vec<String> = (0..50).map(|i| format!("key.{i}")).collect();
    let before = {
        let store = Store::open(&path, opts(SEG)).unwrap();
        let b = store.create_bucket("c", cfg).unwrap();
        random_writes(&b, &mut rng, &all_keys, 2000);
        let segs_before = seg_files(&bucket_dir(&path, "c")).len();
        let before = state_of(&b, &all_keys);
        let report = b.compact().unwrap();
        assert!(report.records_dropped > 0, "{report:?}");
        let segs_after = seg_files(&bucket_dir(&path, "c")).len();
        assert!(
            segs_after < segs_before,
            "{segs_before} segments before compaction, {segs_after} after"
        );
        let mut after = state_of(&b, &all_keys);
        // Compaction changes where records are, not what they are.
        assert!(after.status.segments < before.status.segments);
        after.status.segments = before.status.segments;
        after.status.dead_bytes = before.status.dead_bytes;
        assert_same_state(&after, &before, "compaction changed the bucket's contents");
        // Another write after the compaction, then a clean close.
        b.put("key.0", "after compaction").unwrap();
        state_of(&b, &all_keys)
    };
    let replay = dir.path().join("replay");
    copy_dir_all(&path, &replay);
    remove_snapshots(&replay);
    for (p, snapshot_kept) in [(&path, true), (&replay, false)] {
        let store = Store::open(p, opts(SEG)).unwrap();
        assert_clean(&store, "reopen after compaction");
        let b = store.bucket("c").unwrap();
        let got = state_of(&b, &all_keys);
        assert_same_state(
            &got,
            &before,
            &format!("reopen after compaction, snapshot kept: {snapshot_kept}"),
        );
        let last = b.status().unwrap().last_revision;
        assert_eq!(b.put("key.1", "more").unwrap(), last + 1);
    }
}

// ---------------------------------------------------------------------------
// 2. Torn tails at every byte offset
// ---------------------------------------------------------------------------

/// A store as a crash right after its last write (one record or a batch)
/// leaves it: that write is the one to tear.
struct TornSetup {
    _tmp: tempfile::TempDir,
    pristine: PathBuf,
    /// State with the last write absent.
    model: Model,
    /// Keys of the last write.
    torn_keys: Vec<String>,
    last_seg_name: std::ffi::OsString,
    /// Byte range of the last write in the last segment.
    start: u64,
    end: u64,
}

/// The index snapshot a crash finds next to the log.
#[derive(Clone, Copy, Debug)]
enum SnapState {
    /// None: the store was never closed cleanly.
    Absent,
    /// One from a clean close before the last write (the store was then reopened).
    Older,
}

#[derive(Clone, Copy, Debug)]
enum LastWrite {
    /// Overwrites an existing key.
    Single,
    /// A put over an existing key, a delete of an existing key, and a new key.
    Batch,
    /// A single record that is the first one of a freshly rotated segment.
    FirstInSegment,
}

fn torn_setup(kind: LastWrite, snap: SnapState) -> TornSetup {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let mut rng = Rng::new(kind as u64 + 10);
    let mut model = Model::new();
    let store = Store::open(&pristine, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    let bdir = bucket_dir(&pristine, "default");
    let mut i = 0;
    while seg_files(&bdir).len() < 3 || i < 60 {
        let k = format!("k.{:03}", i % 80);
        let len = rng.range(1, 60) as usize;
        let v = nonzero_value(&mut rng, len);
        if i % 13 == 12 {
            let r = b.delete(&k).unwrap();
            model.insert(k, (r, Op::Del, Vec::new()));
        } else {
            let r = b.put(&k, v.clone()).unwrap();
            model.insert(k, (r, Op::Put, v));
        }
        i += 1;
    }
    // Make sure the keys the last write touches hold values.
    for k in ["k.005", "k.010"] {
        let v = nonzero_value(&mut rng, 20);
        let r = b.put(k, v.clone()).unwrap();
        model.insert(k.to_string(), (r, Op::Put, v));
    }
    // A clean close (it writes an index snapshot), then a reopen for the last write.
    drop(b);
    drop(store);
    let old_snap = fs::read(snap_path(&pristine, "default")).unwrap();
    let store = Store::open(&pristine, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    let torn_keys: Vec<String> = match kind {
        LastWrite::Single => {
            b.put("k.007", nonzero_value(&mut rng, 33)).unwrap();
            vec!["k.007".into()]
        }
        LastWrite::Batch => {
            b.write(&[
                WriteOp::put("k.005", nonzero_value(&mut rng, 25)),
                WriteOp::delete("k.010"),
                WriteOp::put("new.key", nonzero_value(&mut rng, 31)),
            ])
            .unwrap();
            vec!["k.005".into(), "k.010".into(), "new.key".into()]
        }
        LastWrite::FirstInSegment => {
            // Fill the last segment with small records (at most 60 bytes each)
            // until 60..120 bytes are left, then write one record a byte longer
            // than what is left: it rotates and starts a fresh segment.
            let free = |bdir: &Path| SEG - parse_segment(&seg_files(bdir).pop().unwrap()).data_end;
            let mut j = 0;
            while free(&bdir) >= 120 {
                let k = format!("fill.{j:03}");
                let v = nonzero_value(&mut rng, 10);
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
                j += 1;
            }
            let left = free(&bdir);
            assert!((60..120).contains(&left), "{left} bytes left");
            b.put(
                "k.007",
                nonzero_value(&mut rng, (left + 1) as usize - HEADER_LEN - 5),
            )
            .unwrap();
            vec!["k.007".into()]
        }
    };
    drop(b);
    // The drop writes a snapshot covering the last write; a crash would not have.
    drop(store);
    match snap {
        SnapState::Absent => remove_snapshots(&pristine),
        SnapState::Older => fs::write(snap_path(&pristine, "default"), old_snap).unwrap(),
    }

    let last = seg_files(&bdir).pop().unwrap();
    let parsed = parse_segment(&last);
    let n = torn_keys.len();
    let tail = &parsed.records[parsed.records.len() - n..];
    assert_eq!(
        tail.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        torn_keys
    );
    let last_rev = model_last_rev(&model);
    for (j, r) in tail.iter().enumerate() {
        assert_eq!(r.revision, last_rev + 1 + j as u64);
        assert_eq!(
            r.batch_more,
            j + 1 < n,
            "BATCH_MORE on all but the last record of a batch"
        );
    }
    if let LastWrite::FirstInSegment = kind {
        assert_eq!(
            tail[0].offset, parsed.data_start,
            "the last write should start a fresh segment"
        );
    }
    TornSetup {
        pristine,
        model,
        torn_keys,
        last_seg_name: last.file_name().unwrap().to_os_string(),
        start: tail[0].offset,
        end: parsed.data_end,
        _tmp: tmp,
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The file ends at the cut.
    SetLen,
    /// Bytes from the cut to the end of the write are zeros (the file keeps its length).
    Zeros,
}

fn torn_every_offset(kind: LastWrite) {
    for snap in [SnapState::Absent, SnapState::Older] {
        torn_every_offset_with(kind, snap);
    }
}

fn torn_every_offset_with(kind: LastWrite, snap: SnapState) {
    let setup = torn_setup(kind, snap);
    let pristine_seg =
        fs::read(bucket_dir(&setup.pristine, "default").join(&setup.last_seg_name)).unwrap();
    let last_rev = model_last_rev(&setup.model);
    let mut cases = 0;
    for cut in setup.start..setup.end {
        for damage in [Damage::SetLen, Damage::Zeros] {
            let ctx = format!(
                "{kind:?}, snapshot {snap:?}, {damage:?} at {cut} (write spans {}..{})",
                setup.start, setup.end
            );
            let work = tempfile::tempdir().unwrap();
            let dir = work.path().join("s");
            copy_dir_all(&setup.pristine, &dir);
            let seg = bucket_dir(&dir, "default").join(&setup.last_seg_name);
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            match damage {
                Damage::SetLen => f.set_len(cut).unwrap(),
                Damage::Zeros => f
                    .write_all_at(&vec![0; (setup.end - cut) as usize], cut)
                    .unwrap(),
            }
            drop(f);
            let left_nonzero = pristine_seg[setup.start as usize..cut as usize]
                .iter()
                .any(|&b| b != 0);

            let store =
                Store::open(&dir, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            let r = report(&store, "default");
            assert!(r.skipped.is_empty(), "{ctx}: {r:?}");
            if left_nonzero {
                assert!(
                    r.truncated_bytes > 0,
                    "{ctx}: torn bytes were left but nothing was truncated: {r:?}"
                );
            } else {
                assert_eq!(
                    r.truncated_bytes, 0,
                    "{ctx}: nothing but zeros was left: {r:?}"
                );
            }
            assert!(
                r.truncated_bytes <= cut - setup.start,
                "{ctx}: truncated more than the torn write: {r:?}"
            );
            let b = store.default_bucket().unwrap();
            check_model(&b, &setup.model, last_rev, &ctx);

            // Write again: visible, above every surviving revision, and it survives a reopen.
            let v = format!("after {cut}");
            let rev = b.put("after", v.clone()).unwrap();
            assert!(
                rev > last_rev,
                "{ctx}: new write got revision {rev}, last surviving is {last_rev}"
            );
            let mut model = setup.model.clone();
            model.insert("after".into(), (rev, Op::Put, v.into_bytes()));
            check_model(&b, &model, rev, &ctx);
            drop(b);
            drop(store);
            let store = Store::open(&dir, opts(SEG))
                .unwrap_or_else(|e| panic!("{ctx}: second open failed: {e}"));
            assert_clean(&store, &ctx);
            check_model(
                &store.default_bucket().unwrap(),
                &model,
                rev,
                &format!("{ctx}, after second reopen"),
            );
            for k in &setup.torn_keys {
                if k != "after" && !setup.model.contains_key(k) {
                    assert!(
                        store
                            .default_bucket()
                            .unwrap()
                            .history(k)
                            .unwrap()
                            .is_empty(),
                        "{ctx}: {k} invented"
                    );
                }
            }
            cases += 1;
        }
    }
    assert_eq!(cases as u64, 2 * (setup.end - setup.start));
}

#[test]
fn torn_last_record_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::Single);
}

#[test]
fn torn_last_batch_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::Batch);
}

#[test]
fn torn_first_record_of_a_fresh_segment_at_every_offset() {
    let _gate = shared_gate();
    torn_every_offset(LastWrite::FirstInSegment);
}

/// A store whose last record ("blob") carries, inside its value, the bytes of
/// a complete valid record (as a stored backup of a logkv log would); no
/// snapshot (the state a crash leaves). Returns the directory, the model
/// without the blob, the blob record, and where the embedded record ends.
fn store_with_embedded_record(tmp: &Path, more_after: bool) -> (PathBuf, Model, Rec, u64) {
    let path = tmp.join("pristine");
    let mut model = Model::new();
    let store = Store::open(&path, opts(1 << 16)).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..5 {
        let k = format!("k.{i}");
        let v = format!("value {i}").into_bytes();
        let r = b.put(&k, v.clone()).unwrap();
        model.insert(k, (r, Op::Put, v));
    }
    let mut embedded = Vec::new();
    let rev = model_last_rev(&model) + 2;
    // The attacker knows the format but not the segment's salt.
    encode(
        &mut embedded,
        0,
        RecOp::Put,
        0,
        rev,
        1_700_000_000_000,
        0,
        b"evil.key",
        b"injected",
    );
    let prefix = b"blob:".to_vec();
    let mut value = prefix.clone();
    value.extend_from_slice(&embedded);
    value.extend_from_slice(b":end");
    b.put("blob", value).unwrap();
    if more_after {
        for i in 5..8 {
            let k = format!("k.{i}");
            let v = format!("value {i}").into_bytes();
            let r = b.put(&k, v.clone()).unwrap();
            model.insert(k, (r, Op::Put, v));
        }
    }
    drop(b);
    drop(store);
    remove_snapshots(&path);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    let rec = parse_segment(&seg)
        .records
        .into_iter()
        .find(|r| r.key == "blob")
        .unwrap();
    let embedded_end = rec.offset + (HEADER_LEN + 4 + prefix.len() + embedded.len()) as u64;
    (path, model, rec, embedded_end)
}

/// A crash that tears the last record after the part of its value that holds
/// an encoded record: the torn record is cut like any other torn tail, and the
/// record inside its value is not taken for a real one.
#[test]
fn torn_record_holding_an_encoded_record_is_cut_not_replayed() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, model, rec, embedded_end) = store_with_embedded_record(tmp.path(), false);
    let seg_name = seg_files(&bucket_dir(&pristine, "default"))
        .pop()
        .unwrap()
        .file_name()
        .unwrap()
        .to_owned();
    let last_rev = model_last_rev(&model);
    for cut in [embedded_end, embedded_end + 1, rec.offset + rec.len - 1] {
        for damage in [Damage::SetLen, Damage::Zeros] {
            let ctx = format!(
                "{damage:?} at {cut} (blob record {}..{})",
                rec.offset,
                rec.offset + rec.len
            );
            for repair in [false, true] {
                // A fresh damaged copy per mode: the first open cuts the tail.
                let work = tempfile::tempdir().unwrap();
                let dir = work.path().join("s");
                copy_dir_all(&pristine, &dir);
                let seg = bucket_dir(&dir, "default").join(&seg_name);
                let f = OpenOptions::new().write(true).open(&seg).unwrap();
                match damage {
                    Damage::SetLen => f.set_len(cut).unwrap(),
                    Damage::Zeros => f
                        .write_all_at(&vec![0; (rec.offset + rec.len - cut) as usize], cut)
                        .unwrap(),
                }
                drop(f);
                let ctx = format!("{ctx}, repair {repair}");
                let o = if repair {
                    repair_opts(1 << 16)
                } else {
                    opts(1 << 16)
                };
                let store = Store::open(&dir, o)
                    .unwrap_or_else(|e| panic!("{ctx}: a torn tail must not stop the open: {e}"));
                let r = report(&store, "default");
                assert!(r.truncated_bytes > 0, "{ctx}: {r:?}");
                check_model(&store.default_bucket().unwrap(), &model, last_rev, &ctx);
            }
        }
    }
}

/// Repair skips a damaged record; it must not replay the bytes of a record
/// that sit inside the damaged record's value as if they were a record.
#[test]
fn repair_does_not_replay_records_embedded_in_a_damaged_value() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, rec, _) = store_with_embedded_record(tmp.path(), true);
    let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
    // Damage the blob's checksum.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, rec.offset).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], rec.offset).unwrap();
    drop(f);
    let (p, offset, msg) = expect_corrupt(Store::open(&path, opts(1 << 16)), "damaged blob");
    assert_eq!((p, offset), (seg.clone(), rec.offset), "{msg}");
    let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
    let r = report(&store, "default");
    check_model(
        &store.default_bucket().unwrap(),
        &model,
        model_last_rev(&model),
        &format!("repair: {r:?}"),
    );
}

// ---------------------------------------------------------------------------
// 3. Garbage after the last record
// ---------------------------------------------------------------------------

/// A closed store with some records; returns (tempdir, store dir, model).
fn filled_store(seed: u64, n: usize) -> (tempfile::TempDir, PathBuf, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let store = Store::open(&path, opts(SEG)).unwrap();
    let b = store.default_bucket().unwrap();
    for i in 0..n {
        let k = format!("k.{i:04}");
        let len = rng.range(1, 80) as usize;
        let v = nonzero_value(&mut rng, len);
        let r = b.put(&k, v.clone()).unwrap();
        model.insert(k, (r, Op::Put, v));
    }
    drop(b);
    drop(store);
    (tmp, path, model)
}

#[test]
fn garbage_after_the_last_record_is_cut_and_nothing_is_invented() {
    let _gate = shared_gate();
    for seed in 0..32u64 {
        let (_tmp, path, model) = filled_store(100 + seed, 40 + seed as usize * 7);
        // With the snapshot of the clean close, or without (as after a crash).
        let snapshot_kept = (seed / 4) % 2 == 0;
        if !snapshot_kept {
            remove_snapshots(&path);
        }
        let mut rng = Rng::new(seed);
        let last = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let parsed = parse_segment(&last);
        let file_len = fs::metadata(&last).unwrap().len();
        assert!(file_len >= parsed.data_end);
        let glen = rng.range(1, 300) as usize;
        let mut garbage = rng.bytes(glen);
        let variant = seed % 4;
        let at = match variant {
            // Right at the end of the data.
            0 => parsed.data_end,
            // Somewhere in the pre-written zeros (possibly running past the file end).
            1 => rng.range(parsed.data_end, file_len.max(parsed.data_end + 1)),
            // Past the end of the file.
            2 => file_len + rng.range(0, 100),
            // Something that looks like the start of a record, with a bad checksum.
            _ => {
                garbage.clear();
                let rev = model_last_rev(&model) + 1;
                encode(
                    &mut garbage,
                    0,
                    RecOp::Put,
                    0,
                    rev,
                    1_700_000_000_000,
                    0,
                    b"k.1",
                    b"hello",
                );
                garbage[0] ^= 0xff;
                parsed.data_end
            }
        };
        if garbage.iter().all(|&b| b == 0) {
            garbage[0] = 1;
        }
        let ctx = format!(
            "seed {seed}, variant {variant}, snapshot kept {snapshot_kept}, {} garbage bytes at {at} \
             (data ends at {}, file at {file_len})",
            garbage.len(),
            parsed.data_end
        );
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .write_all_at(&garbage, at)
            .unwrap();

        let store = Store::open(&path, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let r = report(&store, "default");
        assert!(
            r.truncated_bytes > 0,
            "{ctx}: the garbage was not reported: {r:?}"
        );
        assert!(r.skipped.is_empty(), "{ctx}: {r:?}");
        if !snapshot_kept {
            assert_eq!(r.records, model.len() as u64, "{ctx}");
        }
        let b = store.default_bucket().unwrap();
        let last_rev = model_last_rev(&model);
        check_model(&b, &model, last_rev, &ctx);
        let rev = b.put("after", "garbage").unwrap();
        assert!(rev > last_rev);
        drop(b);
        drop(store);
        let store =
            Store::open(&path, opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: second open: {e}"));
        assert_clean(&store, &ctx);
        let mut model = model;
        model.insert("after".into(), (rev, Op::Put, b"garbage".to_vec()));
        check_model(&store.default_bucket().unwrap(), &model, rev, &ctx);
    }
}

// ---------------------------------------------------------------------------
// 4. Corruption before the tail
// ---------------------------------------------------------------------------

/// Positions inside a record to damage.
fn flip_positions(len: u64) -> Vec<u64> {
    // Checksum, version, kind, key length, value length (low and second
    // byte), revision, created, expires, the first key byte, the last byte.
    let h = HEADER_LEN as u64;
    vec![0, 4, 5, 6, 8, 9, 12, 20, 26, h, len - 1]
}

#[derive(Clone, Copy, Debug)]
enum Where {
    /// A record in the middle of the last (active) segment.
    LastSegment,
    /// A record in the middle of a sealed segment.
    SealedMiddle,
    /// The last record of a sealed segment.
    SealedLast,
}

#[test]
fn corruption_before_the_tail_fails_open_and_repair_keeps_the_rest() {
    let _gate = shared_gate();
    let (_tmp, pristine, model) = filled_store(7, 150);
    let bdir = bucket_dir(&pristine, "default");
    let segs = seg_files(&bdir);
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let last_rev = model_last_rev(&model);
    for place in [Where::LastSegment, Where::SealedMiddle, Where::SealedLast] {
        let seg_path = match place {
            Where::LastSegment => segs.last().unwrap().clone(),
            _ => segs[1].clone(),
        };
        let parsed = parse_segment(&seg_path);
        assert!(parsed.records.len() >= 3);
        let rec = match place {
            Where::SealedLast => parsed.records.last().unwrap().clone(),
            _ => parsed.records[parsed.records.len() / 2].clone(),
        };
        for (pos, snapshot_kept) in flip_positions(rec.len)
            .into_iter()
            .flat_map(|p| [(p, false), (p, true)])
        {
            let flip_at = rec.offset + pos;
            let ctx = format!(
                "{place:?}, snapshot kept {snapshot_kept}: {} record {} ({}..{}), byte {flip_at} flipped",
                seg_path.display(),
                rec.key,
                rec.offset,
                rec.offset + rec.len
            );
            let work = tempfile::tempdir().unwrap();
            let dir = work.path().join("s");
            copy_dir_all(&pristine, &dir);
            if !snapshot_kept {
                remove_snapshots(&dir);
            }
            let seg = bucket_dir(&dir, "default").join(seg_path.file_name().unwrap());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&seg)
                .unwrap();
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, flip_at).unwrap();
            f.write_all_at(&[byte[0] ^ 0x40], flip_at).unwrap();
            drop(f);

            let opened = Store::open(&dir, opts(SEG));
            if let (true, Ok(store)) = (snapshot_kept, &opened) {
                // The snapshot of a clean close spares reopening from reading
                // every record, so the damage may go unseen at open. Reads must
                // then still never return wrong data: the damaged record is an
                // error naming the file, every other record reads back intact.
                let b = store.default_bucket().unwrap();
                for (k, (rev, _, v)) in &model {
                    match b.entry(k) {
                        Err(Error::Corrupt { path, .. }) if *k == rec.key => {
                            assert_eq!(path, seg, "{ctx}")
                        }
                        Ok(Some(e)) if *k != rec.key => {
                            assert_eq!((e.revision, &e.value[..]), (*rev, &v[..]), "{ctx}: {k}")
                        }
                        other => panic!("{ctx}: reading {k} gave {other:?}"),
                    }
                }
                drop(b);
                drop(opened);
            } else {
                let (path, offset, msg) = expect_corrupt(opened, &ctx);
                assert_eq!(path, seg, "{ctx}: {msg}");
                assert!(
                    offset >= rec.offset && offset <= flip_at,
                    "{ctx}: offset {offset} is not at the damaged record: {msg}"
                );
                assert!(
                    msg.contains("repair"),
                    "{ctx}: the message should say how to get the data back: {msg}"
                );
            }

            let store = Store::open(&dir, repair_opts(SEG))
                .unwrap_or_else(|e| panic!("{ctx}: repair open: {e}"));
            let r = report(&store, "default");
            assert_eq!(r.skipped.len(), 1, "{ctx}: {r:?}");
            let s = &r.skipped[0];
            assert_eq!(s.path, seg, "{ctx}");
            assert_eq!(
                (s.offset, s.bytes),
                (rec.offset, rec.len),
                "{ctx}: the skipped region is the damaged record: {s:?}"
            );
            assert_eq!(r.records, model.len() as u64 - 1, "{ctx}");
            let mut expect = model.clone();
            expect.remove(&rec.key);
            let b = store.default_bucket().unwrap();
            check_model(&b, &expect, last_rev, &ctx);

            // The repaired store takes writes, and a second repair open sees them.
            let rev = b.put("after", "repair").unwrap();
            assert!(rev > last_rev, "{ctx}");
            drop(b);
            drop(store);
            let store = Store::open(&dir, repair_opts(SEG))
                .unwrap_or_else(|e| panic!("{ctx}: second repair open: {e}"));
            expect.insert("after".into(), (rev, Op::Put, b"repair".to_vec()));
            check_model(&store.default_bucket().unwrap(), &expect, rev, &ctx);
        }
    }
}

#[test]
fn garbage_appended_to_a_sealed_segment_is_corruption() {
    let _gate = shared_gate();
    let (_tmp, path, model) = filled_store(8, 120);
    let segs = seg_files(&bucket_dir(&path, "default"));
    assert!(segs.len() >= 2);
    let sealed = &segs[0];
    let len = fs::metadata(sealed).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(sealed)
        .unwrap()
        .write_all(&[0x5a; 10])
        .unwrap();
    let (p, offset, msg) = expect_corrupt(
        Store::open(&path, opts(SEG)),
        "garbage after a sealed segment",
    );
    assert_eq!(&p, sealed, "{msg}");
    assert_eq!(offset, len, "{msg}");
    let store = Store::open(&path, repair_opts(SEG)).unwrap();
    let r = report(&store, "default");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert_eq!(
        (&r.skipped[0].path, r.skipped[0].offset, r.skipped[0].bytes),
        (sealed, len, 10)
    );
    check_model(
        &store.default_bucket().unwrap(),
        &model,
        model_last_rev(&model),
        "repair",
    );
}

/// A batch damaged before the tail of the log must still be applied whole or
/// not at all, in repair mode too: a repair must not make half a batch visible.
#[test]
fn repair_never_applies_part_of_a_damaged_batch() {
    let _gate = shared_gate();
    for damaged in 0..3usize {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let mut model = Model::new();
        {
            let store = Store::open(&path, opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            for i in 0..5 {
                let k = format!("before.{i}");
                let r = b.put(&k, format!("v{i}")).unwrap();
                model.insert(k, (r, Op::Put, format!("v{i}").into_bytes()));
            }
            b.write(&[
                WriteOp::put("batch.0", "x0"),
                WriteOp::put("batch.1", "x1"),
                WriteOp::put("batch.2", "x2"),
            ])
            .unwrap();
            for i in 0..5 {
                let k = format!("after.{i}");
                let r = b.put(&k, format!("w{i}")).unwrap();
                model.insert(k, (r, Op::Put, format!("w{i}").into_bytes()));
            }
        }
        remove_snapshots(&path);
        let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let parsed = parse_segment(&seg);
        let rec = parsed
            .records
            .iter()
            .find(|r| r.key == format!("batch.{damaged}"))
            .unwrap()
            .clone();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let at = rec.offset + rec.len - 1;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(f);
        let ctx = format!("record batch.{damaged} of a 3-record batch damaged");

        let (p, offset, msg) = expect_corrupt(Store::open(&path, opts(1 << 16)), &ctx);
        assert_eq!(p, seg, "{msg}");
        assert_eq!(offset, rec.offset, "{ctx}: {msg}");

        let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
        let b = store.default_bucket().unwrap();
        let visible: Vec<String> = (0..3)
            .map(|j| format!("batch.{j}"))
            .filter(|k| b.get(k).unwrap().is_some())
            .collect();
        assert!(
            visible.is_empty(),
            "{ctx}: repair applied part of the batch: {visible:?} visible; report {:?}",
            report(&store, "default")
        );
        // Everything outside the batch is kept.
        for (k, (rev, _, v)) in &model {
            let e = b
                .entry(k)
                .unwrap()
                .unwrap_or_else(|| panic!("{ctx}: {k} lost"));
            assert_eq!((e.revision, &e.value[..]), (*rev, &v[..]), "{ctx}: {k}");
        }
    }
}

/// After a repair open cut a damaged record off the end of the log, the
/// writes of that session land where the damaged record was. If the process
/// then crashes, the next (normal) open must still find every write the
/// repair session acknowledged. (The crash is simulated by copying the store
/// directory while the store is open, after a sync: a killed process leaves
/// exactly those file contents behind.)
#[test]
fn writes_acknowledged_after_a_repair_open_survive_a_crash() {
    let _gate = shared_gate();
    for new_value_len in [20usize, 300] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let mut model = Model::new();
        {
            let store = Store::open(&path, opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            for i in 0..10 {
                let k = format!("k.{i}");
                let v = format!("value-{i}-{}", "v".repeat(20)).into_bytes();
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
            }
            b.put("x", vec![b'x'; 400]).unwrap();
        } // clean close
        let seg = seg_files(&bucket_dir(&path, "default")).pop().unwrap();
        let x = parse_segment(&seg).records.pop().unwrap();
        assert_eq!(x.key, "x");
        // Damage the last record (as a bad sector would).
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let at = x.offset + x.len - 1;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(f);

        let ctx = format!("new values of {new_value_len} bytes");
        let crashed = tmp.path().join("crashed");
        {
            let store = Store::open(&path, repair_opts(1 << 16)).unwrap();
            let b = store.default_bucket().unwrap();
            assert_eq!(
                b.get("x").unwrap(),
                None,
                "{ctx}: the damaged record is gone"
            );
            for i in 0..3 {
                let k = format!("y.{i}");
                let v = vec![b'a' + i as u8; new_value_len];
                let r = b.put(&k, v.clone()).unwrap();
                model.insert(k, (r, Op::Put, v));
            }
            b.sync().unwrap();
            check_model(&b, &model, model_last_rev(&model), &ctx);
            copy_dir_all(&path, &crashed);
        }
        let store = Store::open(&crashed, opts(1 << 16))
            .unwrap_or_else(|e| panic!("{ctx}: open after the crash failed: {e}"));
        let b = store.default_bucket().unwrap();
        for (k, (rev, _, v)) in &model {
            let got = b.entry(k);
            assert!(
                matches!(&got, Ok(Some(e)) if e.revision == *rev && e.value[..] == v[..]),
                "{ctx}: acknowledged write {k} (revision {rev}) after the crash: {got:?}"
            );
        }
        check_model(&b, &model, model_last_rev(&model), &ctx);
    }
}

// ---------------------------------------------------------------------------
// 6. Locks
// ---------------------------------------------------------------------------

#[test]
fn second_open_in_the_same_process_is_locked() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let store = Store::open(&path, opts(SEG)).unwrap();
    store.default_bucket().unwrap().put("k", "v").unwrap();
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Locked(_)) => {
            let msg = e.to_string();
            let Error::Locked(p) = e else { unreachable!() };
            assert_eq!(p, path);
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(Error::Locked(p).code(), "BUSY");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // The failed open left the first store working.
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );

    // The lock is held until the last clone and the last bucket handle are gone.
    let clone = store.clone();
    let bucket = store.default_bucket().unwrap();
    drop(store);
    assert!(
        matches!(Store::open(&path, opts(SEG)), Err(Error::Locked(_))),
        "a clone still holds the store"
    );
    drop(clone);
    assert!(
        matches!(Store::open(&path, opts(SEG)), Err(Error::Locked(_))),
        "a bucket handle still holds the store"
    );
    drop(bucket);
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

fn spawn_holder(path: &Path) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg("--hold")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "the holder did not open the store");
    (child, out)
}

#[test]
fn open_locked_by_another_process() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    {
        let store = Store::open(&path, opts(SEG)).unwrap();
        store.default_bucket().unwrap().put("k", "v").unwrap();
    }
    let (mut child, mut out) = spawn_holder(&path);
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Locked(_)) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(matches!(e, Error::Locked(p) if p == path));
        }
        other => panic!("expected Locked while another process holds the store, got {other:?}"),
    }
    // Let the holder close the store and exit.
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "closed\n");
    assert!(child.wait().unwrap().success());
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(
        store.default_bucket().unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn lock_is_released_when_the_holder_is_killed() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let (mut child, _out) = spawn_holder(&path);
    assert!(matches!(
        Store::open(&path, opts(SEG)),
        Err(Error::Locked(_))
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_eq!(store.bucket_names(), vec!["default".to_string()]);
}

// ---------------------------------------------------------------------------
// 7. Stray files
// ---------------------------------------------------------------------------

#[test]
fn stray_files_are_ignored_and_unfinished_segments_removed() {
    let _gate = shared_gate();
    let (_tmp, path, model) = filled_store(9, 100);
    let bdir = bucket_dir(&path, "default");
    let segs = seg_files(&bdir);
    let last_seq = segs.len() as u64;
    let junk = b"not a segment\n";
    fs::write(path.join("junk.txt"), junk).unwrap();
    fs::write(path.join("buckets").join("junk.txt"), junk).unwrap();
    fs::write(bdir.join("junk.txt"), junk).unwrap();
    fs::write(bdir.join("notes.seg.bak"), junk).unwrap();
    fs::create_dir(bdir.join("subdir")).unwrap();
    // Unfinished segment creations: one for the next segment, one named after an existing one.
    let tmp_next = bdir.join(format!("{:016x}-00000000.seg.tmp", last_seq + 1));
    let tmp_existing = bdir.join(format!(
        "{}.tmp",
        segs[0].file_name().unwrap().to_str().unwrap()
    ));
    fs::write(&tmp_next, Rng::new(3).bytes(500)).unwrap();
    fs::copy(&segs[0], &tmp_existing).unwrap();

    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_clean(&store, "stray files");
    let r = report(&store, "default");
    let removed: BTreeSet<&PathBuf> = r.removed_files.iter().collect();
    assert_eq!(removed, BTreeSet::from([&tmp_next, &tmp_existing]), "{r:?}");
    assert!(!tmp_next.exists() && !tmp_existing.exists());
    assert_eq!(seg_files(&bdir), segs, "real segments untouched");
    for p in [
        path.join("junk.txt"),
        path.join("buckets/junk.txt"),
        bdir.join("junk.txt"),
        bdir.join("notes.seg.bak"),
    ] {
        assert_eq!(
            fs::read(&p).unwrap(),
            junk,
            "{} should be left alone",
            p.display()
        );
    }
    assert_eq!(store.bucket_names(), vec!["default".to_string()]);
    check_model(
        &store.default_bucket().unwrap(),
        &model,
        model_last_rev(&model),
        "stray files",
    );
}

#[test]
fn file_with_a_segment_name_that_is_not_a_segment_is_corruption() {
    let _gate = shared_gate();
    let (_tmp, pristine, model) = filled_store(11, 100);
    let segs = seg_files(&bucket_dir(&pristine, "default"));
    let next = segs.len() as u64 + 1;
    let variants: Vec<(String, Vec<u8>)> = vec![
        (format!("{next:016x}-00000000.seg"), Vec::new()),
        (format!("{next:016x}-00000000.seg"), Rng::new(5).bytes(300)),
        (
            format!("{:016x}-00000000.seg", 0),
            b"LOGKVSEG but nothing else".to_vec(),
        ),
        // A valid segment under another segment's name.
        (
            format!("{next:016x}-00000000.seg"),
            fs::read(&segs[0]).unwrap(),
        ),
    ];
    for (name, contents) in variants {
        let ctx = format!("{name} with {} bytes", contents.len());
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("s");
        copy_dir_all(&pristine, &dir);
        let bdir = bucket_dir(&dir, "default");
        let bad = bdir.join(&name);
        fs::write(&bad, &contents).unwrap();

        let (p, offset, msg) = expect_corrupt(Store::open(&dir, opts(SEG)), &ctx);
        assert_eq!((p, offset), (bad.clone(), 0), "{ctx}: {msg}");

        let store =
            Store::open(&dir, repair_opts(SEG)).unwrap_or_else(|e| panic!("{ctx}: repair: {e}"));
        let r = report(&store, "default");
        assert_eq!(r.skipped.len(), 1, "{ctx}: {r:?}");
        assert_eq!(r.skipped[0].path, bad, "{ctx}");
        assert!(!bad.exists(), "{ctx}: the file should be moved aside");
        let aside: Vec<_> = fs::read_dir(&bdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&name) && n != &name)
            .collect();
        assert_eq!(aside.len(), 1, "{ctx}: moved-aside copy: {aside:?}");
        assert_eq!(
            fs::read(bdir.join(&aside[0])).unwrap(),
            contents,
            "{ctx}: the moved file keeps its bytes"
        );
        let b = store.default_bucket().unwrap();
        check_model(&b, &model, model_last_rev(&model), &ctx);
        let rev = b.put("after", "x").unwrap();
        drop(b);
        drop(store);
        // Once moved aside, the store opens without repair.
        let store = Store::open(&dir, opts(SEG))
            .unwrap_or_else(|e| panic!("{ctx}: open after repair: {e}"));
        assert_clean(&store, &ctx);
        let mut m = model.clone();
        m.insert("after".into(), (rev, Op::Put, b"x".to_vec()));
        check_model(&store.default_bucket().unwrap(), &m, rev, &ctx);
    }
}

#[test]
fn damaged_bucket_conf_is_a_clear_error() {
    let _gate = shared_gate();
    let (_tmp, path, _model) = filled_store(12, 5);
    let conf = bucket_dir(&path, "default").join("bucket.conf");
    fs::write(&conf, "history=banana\n").unwrap();
    match Store::open(&path, opts(SEG)) {
        Err(Error::Config(msg)) => assert!(msg.contains(&conf.display().to_string()), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 8. Permissions
// ---------------------------------------------------------------------------

#[test]
fn store_dir_under_a_file_is_an_io_error_naming_it() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let path = file.join("store");
    match Store::open(&path, opts(SEG)) {
        Err(e @ Error::Io { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(matches!(e, Error::Io { path: p, .. } if p == path));
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

/// Whether permission bits bind this process (they do not for root).
fn permissions_enforced(ro_dir: &Path) -> bool {
    let probe = ro_dir.join("probe");
    match fs::write(&probe, "x") {
        Ok(()) => {
            fs::remove_file(&probe).unwrap();
            false
        }
        Err(_) => true,
    }
}

#[test]
fn permission_denied_is_an_io_error_naming_the_path() {
    let _gate = exclusive_gate();
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path();
    fs::set_permissions(outer, fs::Permissions::from_mode(0o755)).unwrap();
    let ro = outer.join("ro");
    fs::create_dir(&ro).unwrap();
    // An existing store directory that became read-only.
    let ro_store = outer.join("ro_store");
    Store::open(&ro_store, opts(SEG)).unwrap();
    fs::remove_file(ro_store.join("LOCK")).unwrap();
    for d in [&ro, &ro_store] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let restore = || {
        for d in [&ro, &ro_store] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
    };
    let cannot_create = ro.join("store");
    let cannot_lock = ro_store.join("LOCK");

    if permissions_enforced(&ro) {
        for (dir, named) in [(&cannot_create, &cannot_create), (&ro_store, &cannot_lock)] {
            match Store::open(dir, opts(SEG)) {
                Err(e @ Error::Io { .. }) => {
                    assert!(e.to_string().contains(&named.display().to_string()), "{e}");
                    let Error::Io { path, source } = e else {
                        unreachable!()
                    };
                    assert_eq!(&path, named);
                    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
                }
                other => panic!(
                    "expected an I/O error on {}, got {other:?}",
                    named.display()
                ),
            }
        }
        restore();
        return;
    }

    // Running as root: permission bits do not bind us, so try as an unprivileged user.
    use std::os::unix::process::CommandExt;
    for (dir, named) in [(&cannot_create, &cannot_create), (&ro_store, &cannot_lock)] {
        let out = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .arg("--try-open")
            .arg(dir)
            .uid(65534)
            .gid(65534)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                eprintln!(
                    "SKIPPED permission_denied_is_an_io_error_naming_the_path: running as root and the helper \
                     could not run as uid 65534: {:?} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                restore();
                return;
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED permission_denied_is_an_io_error_naming_the_path: running as root (chmod has no \
                     effect) and could not start a helper as uid 65534: {e}"
                );
                restore();
                return;
            }
        };
        let line = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<&str> = line.trim_end().splitn(3, '\t').collect();
        assert_eq!(fields.len(), 3, "unexpected helper output {line:?}");
        assert_eq!(fields[0], "err Io", "{line}");
        assert_eq!(fields[1], named.display().to_string(), "{line}");
        assert!(fields[2].contains(&named.display().to_string()), "{line}");
        assert!(
            fields[2].to_lowercase().contains("permission denied"),
            "{line}"
        );
    }
    restore();
}
