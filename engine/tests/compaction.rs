//! Compaction: retained state is unchanged, space comes back, and a crash at
//! any step of a pass reopens to the same logical state.

use std::sync::Arc;

use logkv::{Bucket, BucketConfig, CrashPoint, Entry, FsyncPolicy, Options, Store};

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

/// A bucket with history 2, overwrites, deletes and purges over many segments.
fn populate(store: &Store) -> Bucket {
    let b = store
        .create_bucket(
            "c",
            BucketConfig {
                history: 2,
                ..Default::default()
            },
        )
        .unwrap();
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
#[allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "the store names its own files, in lower case"
)]
fn crash_at_every_compaction_step_reopens_to_the_same_state() {
    for point in [
        CrashPoint::AfterTmpWritten,
        CrashPoint::AfterInstall,
        CrashPoint::AfterRelocate,
        CrashPoint::AfterFirstDelete,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = populate(&store);
        let before = state(&b);
        b.set_compaction_crash_point(point);
        let err = b.compact().unwrap_err();
        assert!(
            err.to_string().contains("injected crash"),
            "{point:?}: {err}"
        );
        // The "crash": drop everything without any further work, then reopen.
        drop((b, store));
        let store = Store::open(dir.path(), opts()).unwrap();
        let b = store.bucket("c").unwrap();
        assert_eq!(
            state(&b),
            before,
            "state differs after a crash at {point:?}"
        );
        // A full pass afterwards still works and changes nothing visible.
        b.compact().unwrap();
        assert_eq!(state(&b), before, "after the second pass ({point:?})");
        let names: Vec<String> = std::fs::read_dir(dir.path().join("buckets/c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}

#[test]
fn purged_values_never_come_back_after_compaction_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store
        .create_bucket(
            "p",
            BucketConfig {
                history: 5,
                ..Default::default()
            },
        )
        .unwrap();
    for i in 0..300u32 {
        b.put(
            &format!("secret.{}", i % 10),
            format!("classified-{i}-{}", "y".repeat(60)),
        )
        .unwrap();
    }
    for k in 0..10u32 {
        b.purge(&format!("secret.{k}")).unwrap();
    }
    for i in 0..300u32 {
        b.put(&format!("other.{}", i % 50), "z".repeat(80)).unwrap();
    }
    b.compact().unwrap();
    // Crash (no close), reopen.
    drop((b, store));
    let store = Store::open(dir.path(), opts()).unwrap();
    let b = store.bucket("p").unwrap();
    for k in 0..10u32 {
        let h = b.history(&format!("secret.{k}")).unwrap();
        assert_eq!(h.len(), 1, "only the purge marker is left: {h:?}");
        assert_eq!(h[0].op, logkv::Op::Purge);
        assert_eq!(b.get(&format!("secret.{k}")).unwrap(), None);
    }
    // And the bytes are gone from disk too.
    for e in std::fs::read_dir(dir.path().join("buckets/p")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"classified-1"),
            "purged bytes still on disk"
        );
    }
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
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for k in (t..300u32).step_by(2) {
                        let v = b
                            .get(&format!("k.{k}"))
                            .unwrap()
                            .expect("key present throughout");
                        assert!(!v.is_empty());
                        reads += 1;
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
