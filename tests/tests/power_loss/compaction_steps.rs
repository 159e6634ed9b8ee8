//! Power cuts in the middle of a compaction pass, at each of its steps: the
//! store reopens to the same logical state, and a purged value never comes back.

use std::sync::Arc;

use logkv::io::{CutStyle, SimFs, Storage};
use logkv::{Bucket, BucketConfig, CrashPoint, Entry, FsyncPolicy, ManualClock, Options, Store};

use crate::common::T0;

fn opts(sim: &SimFs) -> Options {
    Options {
        storage: Storage::simulated(sim),
        background: false,
        fsync: FsyncPolicy::Never,
        segment_size: 16 * 1024,
        clock: Arc::new(ManualClock::new(T0)),
        ..Default::default()
    }
}

/// Everything a client can observe about a bucket: its entries and its last
/// revision. After an unclean stop under `never` the revision counter skips
/// the revisions the lost writes may have had (`Bucket::lost_revisions`): the
/// last revision is then the end of the skipped range.
fn state(b: &Bucket) -> (Vec<Entry>, u64) {
    let last = b.status().expect("status").last_revision;
    let skipped = b.lost_revisions().last().map_or(0, |r| r.1);
    let last = if skipped == last { 0 } else { last };
    (b.history(">").expect("history"), last)
}

/// Whether two states are the same, the entries compared whole (the last
/// revision as [`state`] gives it, 0 when it stands at a skipped range).
fn same(a: &(Vec<Entry>, u64), b: &(Vec<Entry>, u64)) -> bool {
    if a.0 != b.0 {
        let at = a.0.iter().zip(&b.0).position(|(x, y)| x != y);
        eprintln!(
            "entries differ: {} vs {}, first at {at:?}: {:?} vs {:?}",
            a.0.len(),
            b.0.len(),
            at.map(|i| &a.0[i]),
            at.map(|i| &b.0[i])
        );
    }
    a.0 == b.0 && (a.1 == b.1 || a.1 == 0 || b.1 == 0)
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
        .expect("create");
    for round in 0..6u32 {
        for k in 0..200u32 {
            b.put(
                &format!("k.{k}"),
                format!("v{round}-{k}-{}", "x".repeat(40)),
            )
            .expect("put");
        }
    }
    for k in (0..200u32).step_by(7) {
        b.delete(&format!("k.{k}")).expect("delete");
    }
    for k in (0..200u32).step_by(11) {
        b.purge(&format!("k.{k}")).expect("purge");
    }
    b
}

#[test]
#[allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "the store names its own files, in lower case"
)]
fn a_power_cut_at_every_compaction_step_reopens_to_the_same_state() {
    for (i, point) in [
        CrashPoint::AfterTmpWritten,
        CrashPoint::AfterInstall,
        CrashPoint::AfterRelocate,
        CrashPoint::AfterFirstDelete,
    ]
    .into_iter()
    .enumerate()
    {
        for style in [CutStyle::LoseAll, CutStyle::KeepAll, CutStyle::Random] {
            let root = tempfile::tempdir().expect("tempdir");
            let sim = SimFs::new(root.path(), i as u64).expect("sim");
            let dir = sim.root().join("store");
            let store = Store::open(&dir, opts(&sim)).expect("open");
            let b = populate(&store);
            store.sync().expect("sync"); // everything before the pass is durable
            let before = state(&b);
            b.set_compaction_crash_point(point);
            let err = b.compact().expect_err("the pass stops");
            assert!(
                matches!(err, logkv::Error::InjectedCrash(_)),
                "{point:?}: {err}"
            );
            // The power goes at that step: nothing more reaches the disk.
            sim.crash_now();
            drop((b, store));
            sim.restart_with(style).expect("restart");
            let store = Store::open(&dir, opts(&sim)).expect("reopen");
            let b = store.bucket("c").expect("bucket");
            assert!(
                same(&state(&b), &before),
                "state differs after a cut at {point:?} ({style:?})"
            );
            // A full pass afterwards still works and changes nothing visible.
            b.compact().expect("compact");
            assert!(
                same(&state(&b), &before),
                "after the second pass ({point:?}, {style:?})"
            );
            let names: Vec<String> = std::fs::read_dir(dir.join("buckets/c"))
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                .collect();
            assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        }
    }
}

#[test]
fn purged_values_never_come_back_after_compaction_and_a_power_cut() {
    for style in [CutStyle::LoseAll, CutStyle::KeepAll, CutStyle::Random] {
        let root = tempfile::tempdir().expect("tempdir");
        let sim = SimFs::new(root.path(), 7).expect("sim");
        let dir = sim.root().join("store");
        let store = Store::open(&dir, opts(&sim)).expect("open");
        let b = store
            .create_bucket(
                "p",
                BucketConfig {
                    history: 5,
                    ..Default::default()
                },
            )
            .expect("create");
        for i in 0..300u32 {
            b.put(
                &format!("secret.{}", i % 10),
                format!("classified-{i}-{}", "y".repeat(60)),
            )
            .expect("put");
        }
        for k in 0..10u32 {
            b.purge(&format!("secret.{k}")).expect("purge");
        }
        for i in 0..300u32 {
            b.put(&format!("other.{}", i % 50), "z".repeat(80))
                .expect("put");
        }
        b.compact().expect("compact");
        sim.crash_now();
        drop((b, store));
        sim.restart_with(style).expect("restart");
        let store = Store::open(&dir, opts(&sim)).expect("reopen");
        let b = store.bucket("p").expect("bucket");
        for k in 0..10u32 {
            let h = b.history(&format!("secret.{k}")).expect("history");
            assert_eq!(h.len(), 1, "only the purge marker is left: {h:?}");
            assert_eq!(h[0].op, logkv::Op::Purge);
            assert_eq!(b.get(&format!("secret.{k}")).expect("get"), None);
        }
        // And the bytes are gone from disk too.
        for e in std::fs::read_dir(dir.join("buckets/p")).expect("read_dir") {
            let bytes = std::fs::read(e.expect("entry").path()).expect("read");
            assert!(
                !bytes.windows(12).any(|w| w == b"classified-1"),
                "purged bytes still on disk ({style:?})"
            );
        }
    }
}
