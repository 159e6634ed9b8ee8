//! The applier on `logkv::Store`: commands at the leader's time, the durable point and the
//! resume after a crash (`tests/power_cut.rs` cuts the power), checkpoints and installs.

mod support;

use logkv_cluster::command::{BucketSpec, Command, Op, OpError, Response};
use logkv_cluster::sm::store_applier::StoreApplier;
use logkv_cluster::sm::{Applied, Applier};
use support::log_id;

fn applied(index: u64) -> Applied {
    Applied {
        log_id: Some(log_id(index)),
        time_ms: 1_000,
        ..Applied::default()
    }
}

fn write(bucket: &str, ops: Vec<Op>) -> Command {
    Command::Write {
        bucket: bucket.into(),
        atomic: false,
        ops,
    }
}

#[test]
fn commands_apply_at_the_entry_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
    assert_eq!(a.recovered(), Some(Applied::default()));
    let r = a
        .apply(log_id(1), 1_000, &write("default", vec![Op::put("k", "v")]))
        .unwrap();
    let Response::Each(results) = r else {
        panic!("{r:?}")
    };
    assert_eq!(results[0].as_ref().unwrap().revision, 1);
    let e = a.cell().get().default_bucket().unwrap().entry("k").unwrap();
    assert_eq!(e.unwrap().created_ms, 1_000, "created at the leader's time");
    // Preconditions are outcomes, not failures.
    let r = a
        .apply(
            log_id(2),
            1_001,
            &write("default", vec![Op::create("k", "w")]),
        )
        .unwrap();
    assert_eq!(r, Response::Each(vec![Err(OpError::Exists)]));
    let r = a
        .apply(log_id(3), 1_002, &write("nope", vec![Op::put("k", "w")]))
        .unwrap();
    assert_eq!(r, Response::Failed(OpError::NoBucket("nope".into())));
    let spec = BucketSpec {
        history: 2,
        ttl_ms: 0,
        max_bytes: 0,
        max_value_size: 0,
    };
    let create = Command::CreateBucket {
        bucket: "b".into(),
        config: spec,
    };
    assert_eq!(a.apply(log_id(4), 1_003, &create).unwrap(), Response::Done);
    assert_eq!(
        a.apply(log_id(5), 1_003, &create).unwrap(),
        Response::Failed(OpError::BucketExists("b".into()))
    );
    let atomic = Command::Write {
        bucket: "b".into(),
        atomic: true,
        ops: vec![Op::put("x", "1"), Op::update("x", "2", 9)],
    };
    let r = a.apply(log_id(6), 1_004, &atomic).unwrap();
    assert!(
        matches!(r, Response::Atomic(Err(OpError::Batch { index: 1, .. }))),
        "{r:?}"
    );
}

#[test]
fn a_restart_resumes_from_the_durable_point_and_skips_what_buckets_hold() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
        a.apply(log_id(1), 5, &write("default", vec![Op::put("k", "v")]))
            .unwrap();
        a.set_applied(&applied(1), false).unwrap();
        a.persist().unwrap();
        // Past the durable point: applied and in the bucket's log (a process crash keeps
        // it in the page cache), its entry not recorded durable.
        a.apply(log_id(2), 6, &write("default", vec![Op::put("k", "w")]))
            .unwrap();
        a.set_applied(&applied(2), false).unwrap();
    }
    let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
    assert_eq!(a.recovered(), Some(applied(1)), "the durable point");
    // openraft applies entry 2 again: the bucket's tag says it is there already.
    a.apply(log_id(2), 6, &write("default", vec![Op::put("k", "w")]))
        .unwrap();
    let b = a.cell().get().default_bucket().unwrap();
    assert_eq!(b.stats().last_revision, 2, "not applied twice");
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"w"[..]));
    // The next entry goes on as on every other node.
    let r = a
        .apply(log_id(3), 7, &write("default", vec![Op::put("k", "x")]))
        .unwrap();
    let Response::Each(results) = r else {
        panic!("{r:?}")
    };
    assert_eq!(results[0].as_ref().unwrap().revision, 3);
}

#[test]
fn checkpoints_install_into_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let a = StoreApplier::open(dir.path().join("a"), &logkv::Options::default()).unwrap();
    a.apply(log_id(1), 5, &write("default", vec![Op::put("k", "v")]))
        .unwrap();
    a.set_applied(&applied(1), false).unwrap();
    let cp = dir.path().join("cp");
    assert_eq!(a.checkpoint(&cp).unwrap(), applied(1));
    // Writes after the checkpoint are not in it.
    a.apply(log_id(2), 6, &write("default", vec![Op::put("k", "later")]))
        .unwrap();

    let b = StoreApplier::open(dir.path().join("b"), &logkv::Options::default()).unwrap();
    let old = b.cell().get().default_bucket().unwrap();
    let mut watch = old.watch(">", logkv::WatchOptions::default()).unwrap();
    let generation = b.cell().generation();
    b.install(Some(&cp), &applied(1)).unwrap();
    assert_eq!(b.cell().generation(), generation + 1);
    let got = b.cell().get().default_bucket().unwrap().get("k").unwrap();
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
    drop(watch.try_next());
    drop(b);
    let b = StoreApplier::open(dir.path().join("b"), &logkv::Options::default()).unwrap();
    assert_eq!(b.recovered(), Some(applied(1)));
    let got = b.cell().get().default_bucket().unwrap().get("k").unwrap();
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_checkpoint_taken_inside_a_batch_is_installed_without_applying_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = StoreApplier::open(dir.path().join("a"), &logkv::Options::default()).unwrap();
    a.apply(log_id(1), 5, &write("default", vec![Op::put("k", "1")]))
        .unwrap();
    a.set_applied(&applied(1), false).unwrap();
    // Entries 2 and 3 are applied, their batch not finished: the checkpoint says 1.
    for i in 2..=3 {
        a.apply(log_id(i), 5, &write("default", vec![Op::put("k", "more")]))
            .unwrap();
    }
    let cp = dir.path().join("cp");
    assert_eq!(a.checkpoint(&cp).unwrap(), applied(1));

    let b = StoreApplier::open(dir.path().join("b"), &logkv::Options::default()).unwrap();
    b.install(Some(&cp), &applied(1)).unwrap();
    // openraft applies 2 and 3 after the snapshot: the store already holds them.
    for i in 2..=3 {
        b.apply(log_id(i), 5, &write("default", vec![Op::put("k", "more")]))
            .unwrap();
    }
    let stats = |x: &StoreApplier| x.cell().get().default_bucket().unwrap().stats();
    assert_eq!(stats(&b).last_revision, 3);
    assert_eq!(stats(&b).last_revision, stats(&a).last_revision);
}

/// A sweep's age-out writes no record, yet every node must hold the same entries: a node
/// restarted after a sweep redoes its age-out from the sweep time in its buckets' tags
/// (else the aged entries come back from its log, and a `MAXBYTES` precondition could
/// decide differently than on the nodes that did not restart).
#[test]
fn a_restart_keeps_what_sweeps_aged_out() {
    let dir = tempfile::tempdir().unwrap();
    // Entry times a day ahead of the clock that reads use: nothing looks expired to a
    // read, only the sweeps (at the entries' times) age anything out.
    let t0 = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 86_400_000;
    let create = Command::CreateBucket {
        bucket: "aged".into(),
        config: BucketSpec {
            history: 5,
            ttl_ms: 1_000,
            max_bytes: 0,
            max_value_size: 0,
        },
    };
    let state = |a: &StoreApplier| {
        let b = a.cell().get().bucket("aged").unwrap();
        let history: Vec<(String, u64)> = b
            .history(">")
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.revision))
            .collect();
        (history, b.stats().bytes)
    };
    let before = {
        let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
        a.apply(log_id(1), t0, &create).unwrap();
        // Two old revisions of `k`, then a newer one; `j` written once, late.
        a.apply(log_id(2), t0, &write("aged", vec![Op::put("k", "old-1")]))
            .unwrap();
        a.apply(
            log_id(3),
            t0 + 100,
            &write("aged", vec![Op::put("k", "old-2")]),
        )
        .unwrap();
        a.apply(
            log_id(4),
            t0 + 900,
            &write("aged", vec![Op::put("k", "new")]),
        )
        .unwrap();
        a.apply(log_id(5), t0 + 950, &write("aged", vec![Op::put("j", "x")]))
            .unwrap();
        // At t0 + 1,500 the two old revisions are past the max age; the latest values are not.
        a.apply(
            log_id(6),
            t0 + 1_500,
            &Command::Sweep {
                bucket: "aged".into(),
            },
        )
        .unwrap();
        a.set_applied(&applied(6), false).unwrap();
        a.persist().unwrap();
        let s = state(&a);
        assert_eq!(
            s.0.iter()
                .map(|(k, r)| (k.as_str(), *r))
                .collect::<Vec<_>>(),
            vec![("k", 3), ("j", 4)],
            "the sweep aged out revisions 1 and 2"
        );
        s
    };
    // A crash: the process ends without a clean close of the store (its log is in the
    // page cache), and the node opens again.
    let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
    assert_eq!(
        state(&a),
        before,
        "the aged-out revisions stay out after a restart"
    );
    // The sweeps to come carry the same time on: a write after the restart keeps it.
    a.apply(
        log_id(7),
        t0 + 1_600,
        &write("aged", vec![Op::put("k", "newer")]),
    )
    .unwrap();
    drop(a);
    let a = StoreApplier::open(dir.path(), &logkv::Options::default()).unwrap();
    let (history, _) = state(&a);
    assert_eq!(
        history
            .iter()
            .map(|(k, r)| (k.as_str(), *r))
            .collect::<Vec<_>>(),
        vec![("k", 3), ("j", 4), ("k", 5)]
    );
}
