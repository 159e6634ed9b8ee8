//! Compaction: retained state is unchanged, space comes back, and readers and
//! writers go on during a pass. (Power cuts during a pass are tested in
//! `tests/tests/power_loss/`.)

use std::sync::Arc;

use logkv::io::{SimFs, Storage};
use logkv::{Bucket, BucketConfig, Entry, FsyncPolicy, Options, Store};

fn opts() -> Options {
    Options {
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size: 16 * 1024,
        ..Default::default()
    }
}

/// Everything a client can observe about a bucket.
fn state(b: &Bucket) -> (Vec<Entry>, u64) {
    (b.history(">").unwrap(), b.status().unwrap().last_revision)
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// An empty bucket `c` keeping two revisions per key.
fn history_2(store: &Store) -> Bucket {
    store
        .create_bucket(
            "c",
            BucketConfig {
                history: 2,
                ..Default::default()
            },
        )
        .unwrap()
}

/// A bucket with history 2, overwrites, deletes and purges over many segments.
fn populate(store: &Store) -> Bucket {
    let b = history_2(store);
    for round in 0..6u32 {
        for k in 0..200u32 {
            b.put(
                &format!("k.{k}"),
                format!("v{round}-{k}-{}", "x".repeat(40)),
            )
            .unwrap();
        }
    }
    for k in (0..200u32).step_by(7) {
        b.delete(&format!("k.{k}")).unwrap();
    }
    for k in (0..200u32).step_by(11) {
        b.purge(&format!("k.{k}")).unwrap();
    }
    b
}

#[test]
fn compaction_keeps_state_and_reclaims_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = populate(&store);
    let before = state(&b);
    let bucket_dir = dir.path().join("buckets/c");
    let disk_before = disk_bytes(&bucket_dir);
    let report = b.compact().unwrap();
    assert!(report.segments_in > 1, "{report:?}");
    assert!(report.records_dropped > 0);
    assert_eq!(state(&b), before);
    let disk_after = disk_bytes(&bucket_dir);
    assert!(
        disk_after < disk_before / 2,
        "{disk_before} -> {disk_after}"
    );
    let st = b.status().unwrap();
    assert_eq!(st.compactions, 1);
    assert!(st.reclaimed_bytes > 0);
    // Writes go on after compaction, with revisions continuing.
    let r = b.put("after", "x").unwrap();
    assert_eq!(r, before.1 + 1);
    drop((b, store));
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.bucket("c").unwrap();
    let (entries, last) = state(&b);
    assert_eq!(last, before.1 + 1);
    assert_eq!(&entries[..entries.len() - 1], &before.0[..]);
}

#[test]
fn readers_and_writers_run_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.create_bucket("rw", BucketConfig::default()).unwrap();
    for round in 0..5u32 {
        for k in 0..300u32 {
            b.put(&format!("k.{k}"), format!("{round}")).unwrap();
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let b = b.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // At least one whole pass, however the threads are scheduled.
                let mut reads = 0u64;
                loop {
                    for k in (t..300u32).step_by(2) {
                        let v = b
                            .get(&format!("k.{k}"))
                            .unwrap()
                            .expect("key present throughout");
                        assert!(!v.is_empty());
                        reads += 1;
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
                reads
            })
        })
        .collect();
    for _ in 0..5 {
        for k in 0..300u32 {
            b.put(&format!("k.{k}"), "5").unwrap();
        }
        b.compact().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    for k in 0..300u32 {
        assert_eq!(
            b.get(&format!("k.{k}")).unwrap().as_deref(),
            Some(&b"5"[..])
        );
    }
}

/// A pass finds what is retained either by a lookup per record (a run small
/// next to the index) or by one scan of the index (a run large next to it);
/// both keep exactly the same state, through a reopen.
#[test]
fn lookup_and_index_scan_passes_keep_the_same_state() {
    // 3,000 keys written once and 40 of them rewritten: each run holds
    // little next to the index (lookups). 60 keys rewritten 40 times: a run
    // holds far more than 16 bytes per entry (a scan).
    for (keys, rounds, hot) in [(3000u32, 1u32, 40u32), (60, 40, 60)] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = history_2(&store);
        for k in 0..keys {
            b.put(&format!("k.{k}"), format!("first-{k}")).unwrap();
        }
        for round in 0..rounds.max(8) {
            for k in 0..hot {
                b.put(&format!("k.{k}"), format!("r{round}-{}", "y".repeat(30)))
                    .unwrap();
            }
        }
        for k in (0..hot).step_by(5) {
            b.delete(&format!("k.{k}")).unwrap();
        }
        let before = state(&b);
        let report = b.compact().unwrap();
        assert!(report.records_dropped > 0, "{report:?}");
        assert_eq!(state(&b), before, "{report:?}");
        if keys > 1000 {
            assert_eq!(report.runs_listed, 0, "lookups: {report:?}");
        } else {
            assert!(report.runs_listed > 0, "a scan: {report:?}");
        }
        // The moved entries read back, and a second pass moves them again.
        b.put("after", "x").unwrap();
        let before = state(&b);
        b.compact().unwrap();
        assert_eq!(state(&b), before);
        drop(b);
        drop(store);
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = store.bucket("c").unwrap();
        assert_eq!(state(&b), before);
    }
}

/// A bucket `big` of 4 MiB segments whose first segments keep about half
/// their records (every even key rewritten once), with a key per 600 bytes.
fn half_dead_big_segments(store: &Store) -> Bucket {
    let b = store.create_bucket("big", BucketConfig::default()).unwrap();
    let value = |round: u32, k: u32| format!("{round}-{k}-{}", "v".repeat(580));
    for k in 0..12_000u32 {
        b.put(&format!("k.{k}"), value(0, k)).unwrap();
    }
    for k in (0..12_000u32).step_by(2) {
        b.put(&format!("k.{k}"), value(1, k)).unwrap();
    }
    b
}

fn big_opts(storage: Option<Storage>) -> Options {
    Options {
        segment_size: 4 << 20,
        storage: storage.unwrap_or_default(),
        ..opts()
    }
}

fn tmp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            std::path::Path::new(n)
                .extension()
                .is_some_and(|e| e == "tmp")
        })
        .collect()
}

/// An output of several MiB is written to its file a piece at a time as
/// records are copied (4 KiB pieces in test builds, 1 MiB otherwise): the
/// copies land at the offsets the index is moved to, across the pieces,
/// through a reopen.
#[test]
fn an_output_larger_than_the_copy_buffer_keeps_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), big_opts(None)).unwrap();
    let b = half_dead_big_segments(&store);
    let before = state(&b);
    let report = b.compact().unwrap();
    assert!(report.records_dropped > 0, "{report:?}");
    assert!(
        report.bytes_after > 3 << 20,
        "an output of several MiB: {report:?}"
    );
    assert_eq!(state(&b), before);
    assert_eq!(
        tmp_files(&dir.path().join("buckets/big")),
        Vec::<String>::new()
    );
    drop((b, store));
    let store = Store::open(dir.path(), big_opts(None)).unwrap();
    let b = store.bucket("big").unwrap();
    assert_eq!(state(&b), before);
}

/// A write of the output that fails (a full disk) fails the pass: nothing
/// changes, the unfinished file is removed at once, and a later pass succeeds.
#[test]
fn a_pass_whose_output_cannot_be_written_changes_nothing_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimFs::new(dir.path(), 0).unwrap();
    let store = Store::open(dir.path(), big_opts(Some(Storage::simulated(&sim)))).unwrap();
    let b = half_dead_big_segments(&store);
    let before = state(&b);
    // The header fails, then the mark area's zeros, then the first piece of
    // records, then a later one.
    for ok in [0, 1, 2, 40] {
        sim.fail_writes(ok, 1);
        let err = b.compact().expect_err("the output's write fails");
        assert!(err.to_string().contains(".tmp"), "{err}");
        assert_eq!(state(&b), before);
        assert_eq!(
            tmp_files(&dir.path().join("buckets/big")),
            Vec::<String>::new(),
            "after a failure at write {ok}"
        );
    }
    sim.fail_writes(0, 0);
    let report = b.compact().unwrap();
    assert!(report.records_dropped > 0, "{report:?}");
    assert_eq!(state(&b), before);
}
