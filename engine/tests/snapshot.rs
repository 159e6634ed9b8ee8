//! Index snapshots: used on a clean reopen; any damage or staleness falls back
//! to scanning the log and gives exactly the same state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use logkv::{Bucket, BucketConfig, Entry, FsyncPolicy, ManualClock, Options, Store};

fn opts() -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size: 8 * 1024,
        ..Default::default()
    }
}

/// Creates bucket `s`, keeping `history` revisions per key.
fn create(store: &Store, history: u8) -> Bucket {
    store
        .create_bucket(
            "s",
            BucketConfig {
                history,
                ..Default::default()
            },
        )
        .unwrap()
}

fn state(b: &Bucket) -> (Vec<Entry>, u64) {
    (b.history(">").unwrap(), b.status().unwrap().last_revision)
}

fn snap_path(dir: &Path) -> PathBuf {
    dir.join("buckets/s/index.snap")
}

/// Enough writes that the log passes the size below which no snapshot is kept (64 KiB).
fn write_some(b: &Bucket, round: u32) {
    let pad = "p".repeat(400);
    for k in 0..150u32 {
        b.put(&format!("k.{}", k % 60), format!("r{round}-{k}-{pad}"))
            .unwrap();
    }
    b.delete("k.3").unwrap();
    b.purge("k.4").unwrap();
}

/// How many records the recovery of bucket `s` scanned when `store` opened.
fn scanned(store: &Store) -> u64 {
    store
        .recovery_reports()
        .iter()
        .find(|(n, _)| n == "s")
        .map(|(_, r)| r.records)
        .unwrap()
}

/// Opens the store, reads the bucket state and how many records recovery scanned.
fn reopen(dir: &Path) -> ((Vec<Entry>, u64), u64) {
    let store = Store::open(dir, opts()).unwrap();
    let scanned = scanned(&store);
    let b = store.bucket("s").unwrap();
    (state(&b), scanned)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn clean_close_writes_a_snapshot_that_reopen_uses() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = create(&store, 3);
        write_some(&b, 0);
        state(&b)
    };
    assert!(snap_path(dir.path()).exists());
    let (got, scanned) = reopen(dir.path());
    assert_eq!(got, expected);
    assert_eq!(scanned, 0, "a fresh snapshot leaves nothing to scan");
    // Writes after the snapshot, then a crash (no clean close: the drop of a
    // store writes a snapshot, so keep an old copy of it to put back).
    let old_snap = std::fs::read(snap_path(dir.path())).unwrap();
    let expected = {
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = store.bucket("s").unwrap();
        b.put("after.snapshot", "x").unwrap();
        state(&b)
    };
    std::fs::write(snap_path(dir.path()), &old_snap).unwrap();
    let (got, scanned) = reopen(dir.path());
    assert_eq!(got, expected, "snapshot plus the log after it");
    assert_eq!(scanned, 1, "only the record after the snapshot is scanned");
}

#[test]
fn damaged_or_stale_snapshots_fall_back_to_the_log() {
    let base = tempfile::tempdir().unwrap();
    let (older_snap, expected) = {
        let store = Store::open(base.path(), opts()).unwrap();
        let b = create(&store, 2);
        write_some(&b, 0);
        drop(b);
        drop(store); // snapshot of the older state
        let older = std::fs::read(snap_path(base.path())).unwrap();
        let store = Store::open(base.path(), opts()).unwrap();
        let b = store.bucket("s").unwrap();
        write_some(&b, 1);
        b.compact().unwrap(); // the older snapshot now names segments that are gone
        write_some(&b, 2);
        (older, state(&b))
    };
    let good = std::fs::read(snap_path(base.path())).unwrap();

    let mut damages: Vec<(String, Option<Vec<u8>>)> = vec![
        ("missing".into(), None),
        ("empty".into(), Some(Vec::new())),
        ("older state".into(), Some(older_snap)),
        ("garbage".into(), Some(vec![0x5A; 300])),
    ];
    for cut in [1, 8, good.len() / 2, good.len() - 1] {
        damages.push((format!("truncated to {cut}"), Some(good[..cut].to_vec())));
    }
    // One flipped bit at many places (every byte of the header, then a stride).
    let mut places: Vec<usize> = (0..64.min(good.len())).collect();
    places.extend((64..good.len()).step_by(97));
    for at in places {
        let mut bad = good.clone();
        bad[at] ^= 1 << (at % 8);
        damages.push((format!("bit flip at {at}"), Some(bad)));
    }
    for (what, contents) in damages {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        match contents {
            None => std::fs::remove_file(snap_path(dir.path())).unwrap(),
            Some(c) => std::fs::write(snap_path(dir.path()), c).unwrap(),
        }
        let (got, scanned) = reopen(dir.path());
        assert_eq!(
            got, expected,
            "state differs with a snapshot that is {what}"
        );
        assert!(scanned > 0, "{what}: the log must have been scanned");
    }
}

/// What an idle bucket costs on disk follows its use: a few KiB of pre-written
/// segment, and no index snapshot for a log that small (scanning it is cheaper).
#[test]
fn a_small_bucket_costs_a_few_kib_and_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let b = store.create_bucket("s", BucketConfig::default()).unwrap();
    b.put("k", "v").unwrap();
    drop(b);
    store.close().unwrap();
    assert!(!snap_path(dir.path()).exists(), "no snapshot of a tiny log");
    let seg_bytes = segment_bytes(dir.path());
    assert!(
        seg_bytes <= 4096,
        "{seg_bytes} bytes of segment for one key"
    );
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        store.bucket("s").unwrap().get("k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// The segment files of bucket `s` in the store at `dir`.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("buckets/s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

/// The segment bytes of bucket `s` in the store at `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .into_iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// After an unclean stop under a policy that shows writes before they are durable,
/// the next write starts a new segment (the revisions the old one reserved may have
/// been seen). That segment's pre-written zeros follow the bucket's use, as a new
/// bucket's do: a few KiB for a bucket of one key, not the largest step (1 MiB).
#[test]
fn a_small_bucket_stays_small_after_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let opts = || Options {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(1)),
        ..Options::default()
    };
    let store = Store::open(&live, opts()).unwrap();
    let b = store.create_bucket("s", BucketConfig::default()).unwrap();
    b.put("k", "v").unwrap();
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    drop(b);
    drop(store);
    let store = Store::open(&crashed, opts()).unwrap();
    let b = store.bucket("s").unwrap();
    assert!(!b.lost_revisions().is_empty(), "the stop was unclean");
    b.put("k2", "v2").unwrap();
    drop(b);
    store.close().unwrap();
    let segments = segment_files(&crashed).len();
    assert_eq!(
        segments, 2,
        "the write after the unclean stop started a segment"
    );
    let bytes = segment_bytes(&crashed);
    assert!(bytes <= 3 * 4096, "{bytes} bytes of segments for two keys");
    let store = Store::open(&crashed, opts()).unwrap();
    let b = store.bucket("s").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(b.get("k2").unwrap().as_deref(), Some(&b"v2"[..]));
}

/// The snapshot file's inode: every write of it makes a new file (written aside,
/// then renamed into place), even with the same bytes.
fn snapshot_inode(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(snap_path(dir)).unwrap().ino()
}

/// A clean close of a bucket opened from its snapshot, with nothing written since,
/// leaves the snapshot file as it is; a write or a compaction pass since makes the
/// close (or the pass) write it again. Every reopen reads only the snapshot.
#[test]
fn a_close_with_nothing_new_keeps_the_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = create(&store, 1);
    // 120 KiB live, written twice: a snapshot is kept, and compaction has work.
    let pad = "p".repeat(400);
    for round in 0..2 {
        for k in 0..300u32 {
            b.put(&format!("k.{k}"), format!("r{round}-{pad}")).unwrap();
        }
    }
    let expected = state(&b);
    drop(b);
    drop(store);
    let written = snapshot_inode(dir.path());

    for round in 0..2 {
        let (got, scanned) = reopen(dir.path());
        assert_eq!(got, expected, "round {round}");
        assert_eq!(scanned, 0, "round {round}: opened from the snapshot alone");
        assert_eq!(
            snapshot_inode(dir.path()),
            written,
            "round {round}: an idle open and close leaves the snapshot file"
        );
    }

    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.bucket("s").unwrap();
    b.put("k.new", "v").unwrap();
    let expected = state(&b);
    drop(b);
    drop(store);
    let after_write = snapshot_inode(dir.path());
    assert_ne!(
        after_write, written,
        "a write since the open: written again"
    );
    let (got, scanned) = reopen(dir.path());
    assert_eq!((got, scanned), (expected, 0), "after the write");

    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.bucket("s").unwrap();
    assert!(
        b.compact().unwrap().segments_in > 0,
        "the pass rewrote segments"
    );
    let expected = state(&b);
    drop(b);
    drop(store);
    assert_ne!(
        snapshot_inode(dir.path()),
        after_write,
        "a compaction pass since the open: written again"
    );
    let (got, scanned) = reopen(dir.path());
    assert_eq!((got, scanned), (expected, 0), "after compaction");
}

#[test]
fn compaction_passes_in_a_row_rewrite_the_snapshot_once_and_a_crash_then_scans() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = Store::open(&live, opts()).unwrap();
    let b = create(&store, 1);
    // More live bytes than the size below which no snapshot is kept (64 KiB).
    let overwrite_all = |round: u32| {
        let pad = "p".repeat(500);
        for k in 0..200u32 {
            b.put(&format!("k.{k}"), format!("r{round}-{k}-{pad}"))
                .unwrap();
        }
    };
    overwrite_all(0);
    overwrite_all(1);
    assert!(
        b.compact().unwrap().segments_in > 0,
        "the first pass rewrote segments"
    );
    let after_first = std::fs::read(snap_path(&live)).expect("the first pass writes a snapshot");
    overwrite_all(2);
    overwrite_all(3);
    let second = b.compact().unwrap();
    assert!(second.segments_in > 0, "the second pass rewrote segments");
    assert_eq!(
        std::fs::read(snap_path(&live)).unwrap(),
        after_first,
        "a pass within 30 s of the last snapshot leaves it as it was (stale)"
    );
    // A crash now: copy the directory as it is (the store is still open).
    let expected = state(&b);
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    let (got, scanned) = reopen(&crashed);
    // An unclean stop under `never` skips the revisions that may have been
    // seen, so only the entries are the same.
    assert_eq!(
        got.0, expected.0,
        "the stale snapshot is not used: the log is"
    );
    assert!(scanned > 0, "the whole log is scanned");
    // A clean close writes a fresh one.
    drop(b);
    drop(store);
    let (got, scanned) = reopen(&live);
    assert_eq!(got, expected);
    assert_eq!(
        scanned, 0,
        "the snapshot written at close covers everything"
    );
}

/// The clock of the version-2 fixture's writes.
const FIXTURE_MS: u64 = 1_700_000_000_000;

fn fixture_opts(clock: &ManualClock) -> Options {
    Options {
        clock: Arc::new(clock.clone()),
        snapshot_min_bytes: 0,
        ..opts()
    }
}

/// The writes of `tests/data/snapshot-v2`: keys inline and on the heap,
/// history, markers, expiries, over several segments. (That directory is
/// what a store opened with [`fixture_opts`] at [`FIXTURE_MS`] held once a
/// bucket `s` with history 3 had taken these writes and the store was
/// closed, made by the code of the commit before snapshot version 3.)
fn fixture_writes(b: &Bucket, clock: &ManualClock) {
    for i in 0..120u32 {
        b.put(
            &format!("user.{i:04}.name"),
            format!("name-{i}-{}", "n".repeat((i % 7) as usize)),
        )
        .unwrap();
        clock.advance(3);
    }
    for i in 0..40u32 {
        b.put(
            &format!("a.much.longer.key.than.fits.inline.{i:03}"),
            "v".repeat(100 + i as usize),
        )
        .unwrap();
    }
    for i in (0..120u32).step_by(3) {
        b.put(&format!("user.{i:04}.name"), format!("renamed-{i}"))
            .unwrap();
        clock.advance(1);
    }
    for i in (0..120u32).step_by(10) {
        b.delete(&format!("user.{i:04}.name")).unwrap();
    }
    b.purge("user.0005.name").unwrap();
    for i in 0..10u32 {
        b.put_with_ttl(
            &format!("session.{i}"),
            "s",
            std::time::Duration::from_secs(3_600 * u64::from(i + 1)),
        )
        .unwrap();
    }
}

/// Snapshots of older versions still open: used, not scanned around, with the
/// same contents as the same writes give now; the close after it writes the
/// current version, which opens the same. `tests/data/snapshot-v2` was made
/// by the code before version 3 (`fixture_writes`, then a clean close);
/// `snapshot-v3` is that directory opened and closed by the code before
/// version 4 (keys ascending, fixed-width fields).
#[test]
fn snapshots_of_versions_2_and_3_still_open_with_the_same_contents() {
    for version in [2u32, 3] {
        older_snapshot_opens(version);
    }
}

fn older_snapshot_opens(version: u32) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/snapshot-v{version}"));
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let old = std::fs::read(snap_path(dir.path())).unwrap();
    assert_eq!(
        &old[8..12],
        &version.to_le_bytes(),
        "the fixture is version {version}"
    );

    let clock = ManualClock::new(FIXTURE_MS);
    let expected = {
        let fresh = tempfile::tempdir().unwrap();
        let store = Store::open(fresh.path(), fixture_opts(&clock)).unwrap();
        let b = create(&store, 3);
        fixture_writes(&b, &clock);
        state(&b)
    };
    assert!(expected.0.len() > 200, "{} entries", expected.0.len());
    for round in ["the fixture's version", "rewritten at close"] {
        let store = Store::open(dir.path(), fixture_opts(&clock)).unwrap();
        let scanned = scanned(&store);
        let b = store.bucket("s").unwrap();
        assert_eq!(state(&b), expected, "version {version}: {round}");
        assert_eq!(
            scanned, 0,
            "version {version}: {round}: the snapshot was used"
        );
        assert_eq!(
            b.get("session.3").unwrap().as_deref(),
            Some(&b"s"[..]),
            "{round}"
        );
        drop(b);
        store.close().unwrap();
    }
    let new = std::fs::read(snap_path(dir.path())).unwrap();
    assert_eq!(
        &new[8..12],
        &4u32.to_le_bytes(),
        "the close after version {version} wrote the current version"
    );
}

/// Opens a copy of `dir` (without its snapshot if `scan`): the bucket's dead
/// bytes and the records recovery scanned.
fn dead_bytes(dir: &Path, scan: bool) -> (u64, u64) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir, copy.path());
    if scan {
        std::fs::remove_file(snap_path(copy.path())).unwrap();
    }
    let store = Store::open(copy.path(), opts()).unwrap();
    let scanned = scanned(&store);
    let dead = store.bucket("s").unwrap().status().unwrap().dead_bytes;
    (dead, scanned)
}

/// Opening from a snapshot counts the dead bytes of each segment from what
/// the snapshot holds (no second walk of the index): the same as a scan of
/// the whole log gives, with and without records after the snapshot.
#[test]
fn dead_bytes_after_a_snapshot_open_are_those_a_full_scan_counts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = create(&store, 2);
        for round in 0..3 {
            write_some(&b, round);
        }
    }
    let (from_snapshot, scanned) = dead_bytes(dir.path(), false);
    assert_eq!(scanned, 0, "the snapshot was used");
    let (from_scan, scanned) = dead_bytes(dir.path(), true);
    assert!(scanned > 0);
    assert!(from_scan > 0, "overwrites left dead records");
    assert_eq!(from_snapshot, from_scan);

    // Records after the snapshot: put the snapshot of before them back.
    let old_snap = std::fs::read(snap_path(dir.path())).unwrap();
    {
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = store.bucket("s").unwrap();
        write_some(&b, 3);
    }
    std::fs::write(snap_path(dir.path()), &old_snap).unwrap();
    let (from_snapshot, scanned) = dead_bytes(dir.path(), false);
    assert!(scanned > 0, "the records after the snapshot were read");
    let (from_scan, _) = dead_bytes(dir.path(), true);
    assert!(from_scan > 0);
    assert_eq!(from_snapshot, from_scan);
}
