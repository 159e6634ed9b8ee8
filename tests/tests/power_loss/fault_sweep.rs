//! A fixed workload (writes that rotate segments, syncs, compactions, a bucket created
//! and dropped, a clean close and reopen) run once for every sync, every write and
//! every file removal that an injected fault can fail: the fault strikes there, the workload goes
//! on for none, two or all of its remaining steps whatever fails in them, and the
//! power is cut (two of the cuts tear every unsynced write). The random harness cuts the power at the first error; this goes on
//! writing after it, where a log that took the wrong turn on a failure (a rotation that
//! went back to the segment it had sealed) shows only at the next open.
//!
//! After every cut the store must open; every write acknowledged as durable (returned
//! under `always`; followed by a sync or a clean close that returned under `never`) is
//! there with its value; a bucket whose drop returned is not; and no revision a write
//! returned, durable or not, is given again.

use std::collections::BTreeMap;

use logkv::io::CutStyle;
use logkv::{BucketConfig, FsyncPolicy, Store};

use crate::sim::Sim;

const BUCKETS: [&str; 2] = ["default", "b1"];

/// What the workload was told.
#[derive(Default)]
struct Told {
    /// Writes acknowledged as durable: (bucket, key) to value.
    durable: BTreeMap<(&'static str, String), Vec<u8>>,
    /// Writes returned but not yet covered by a sync (under `never`).
    unsynced: Vec<((&'static str, String), Vec<u8>)>,
    /// The highest revision a write returned, per bucket.
    revisions: BTreeMap<&'static str, u64>,
    /// Buckets whose drop returned.
    dropped: Vec<&'static str>,
    /// Errors the workload saw.
    errors: usize,
}

impl Told {
    fn put(
        &mut self,
        store: &Store,
        fsync: FsyncPolicy,
        bucket: &'static str,
        key: String,
        value: Vec<u8>,
    ) {
        let written = store
            .bucket(bucket)
            .and_then(|b| b.put(&key, value.clone()));
        match written {
            Ok(revision) => {
                let top = self.revisions.entry(bucket).or_insert(0);
                *top = (*top).max(revision);
                if fsync == FsyncPolicy::Always {
                    self.durable.insert((bucket, key), value);
                } else {
                    self.unsynced.push(((bucket, key), value));
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Drops `bucket`: its writes are no longer checked, and once the drop
    /// returned, the bucket must never come back. A drop that failed leaves it
    /// unknown (it may or may not be there after the cut).
    fn drop_bucket(&mut self, store: &Store, bucket: &'static str) {
        let dropped = store.drop_bucket(bucket);
        self.durable.retain(|(b, _), _| *b != bucket);
        self.unsynced.retain(|((b, _), _)| *b != bucket);
        match dropped {
            Ok(()) => self.dropped.push(bucket),
            Err(_) => self.errors += 1,
        }
    }

    fn sync(&mut self, store: &Store) {
        match store.sync() {
            Ok(()) => self.durable.extend(self.unsynced.drain(..)),
            Err(_) => self.errors += 1,
        }
    }
}

/// The workload: 28 writes of 100 B to 1.5 KiB (4 KiB segments: a rotation every few
/// writes), a key overwritten each step (dead bytes for compaction), a sync every
/// fourth step, a compaction every ninth, the second bucket written every fifth, a
/// third bucket created at step 6, written, and dropped at step 16, and a clean close
/// and reopen at step 21. Goes on for `after` steps once the fault struck (to the end
/// if `None`); the store, unless a close or an open failed.
fn workload(
    t: &Sim,
    mut store: Store,
    fsync: FsyncPolicy,
    told: &mut Told,
    after: Option<u32>,
) -> Option<Store> {
    let mut steps_left = after;
    for i in 0..28u32 {
        if struck(t) {
            match steps_left {
                Some(0) => return Some(store),
                Some(n) => steps_left = Some(n - 1),
                None => {}
            }
        }
        let size = 100 + (i as usize * 397) % 1400;
        let value = vec![b'a' + (i % 26) as u8; size];
        told.put(&store, fsync, "default", format!("k{i}"), value);
        let hot = i.to_le_bytes().to_vec();
        told.put(&store, fsync, "default", "hot".into(), hot);
        if i % 5 == 0 {
            told.put(&store, fsync, "b1", format!("k{i}"), vec![b'z'; 300]);
        }
        match i {
            6 if store.create_bucket("b2", BucketConfig::default()).is_err() => {
                told.errors += 1;
            }
            7..16 if i % 2 == 0 => {
                told.put(&store, fsync, "b2", format!("k{i}"), vec![b'y'; 200]);
            }
            16 => told.drop_bucket(&store, "b2"),
            _ => {}
        }
        if i % 4 == 3 {
            told.sync(&store);
        }
        if i % 9 == 8 && store.bucket("default").and_then(|b| b.compact()).is_err() {
            told.errors += 1;
        }
        if i == 21 {
            if store.close().is_err() {
                told.errors += 1;
                return None;
            }
            told.durable.extend(told.unsynced.drain(..));
            let Ok(reopened) = Store::open(&t.dir, t.options(fsync)) else {
                told.errors += 1;
                return None;
            };
            store = reopened;
        }
    }
    // Left unsynced under `never`: a cut may lose, keep or tear it.
    told.put(&store, fsync, "default", "tail".into(), vec![b't'; 200]);
    Some(store)
}

/// Whether the armed fault has struck.
fn struck(t: &Sim) -> bool {
    let stats = t.fs.stats();
    stats.sync_errors + stats.write_errors + stats.remove_errors > 0
}

/// Runs the workload with one fault armed by `arm`, going on for `after` more steps once
/// it struck (to the end if `None`), cuts the power as `style` says, and checks the
/// store that opens. Whether the fault struck (the workload reached it).
fn run_one(
    fsync: FsyncPolicy,
    seed: u64,
    (after, style): (Option<u32>, CutStyle),
    case: &str,
    arm: impl Fn(&Sim),
) -> bool {
    let t = Sim::new(seed);
    let store = t.open(fsync);
    store
        .create_bucket("b1", BucketConfig::default())
        .expect("create");
    arm(&t);
    let mut told = Told::default();
    let store = workload(&t, store, fsync, &mut told, after);
    let struck = struck(&t);
    match store {
        Some(store) => t.cut(store, style),
        None => t.cut_idle(style),
    }
    let case = format!(
        "{fsync:?}, {case}, {after:?} more steps, {style:?} (seed {seed}, {} errors)",
        told.errors
    );
    let store = Store::open(&t.dir, t.options(fsync))
        .unwrap_or_else(|e| panic!("{case}: the store does not open: {e}"));
    for ((bucket, key), value) in &told.durable {
        let got = store
            .bucket(bucket)
            .and_then(|b| b.get(key))
            .unwrap_or_else(|e| panic!("{case}: {bucket}/{key}: {e}"));
        if key == "hot" {
            // Overwritten at every step: a later write the cut kept may hold it now.
            assert!(got.is_some(), "{case}: {bucket}/{key} lost");
        } else {
            assert!(
                got.as_deref() == Some(value.as_slice()),
                "{case}: {bucket}/{key} lost: {:?}",
                got.map(|g| g.len())
            );
        }
    }
    for bucket in &told.dropped {
        assert!(
            !store.bucket_names().iter().any(|b| b == bucket),
            "{case}: the dropped bucket {bucket} came back"
        );
    }
    for bucket in BUCKETS {
        let next = store
            .bucket(bucket)
            .and_then(|b| b.put("probe", "p"))
            .unwrap_or_else(|e| panic!("{case}: a write to {bucket} after the open: {e}"));
        let top = told.revisions.get(bucket).copied().unwrap_or(0);
        assert!(
            next > top,
            "{case}: {bucket} gave revision {next} again (a write had returned {top})"
        );
    }
    struck
}

/// How each case ends: the steps the workload goes on for once the fault struck (to its
/// end if `None`), and the cut.
const ENDINGS: [(Option<u32>, CutStyle); 6] = [
    (Some(0), CutStyle::TearAll),
    (None, CutStyle::TearAll),
    (Some(2), CutStyle::Random),
    (None, CutStyle::KeepAll),
    (None, CutStyle::LoseAll),
    (None, CutStyle::Random),
];

/// Fails the `k`th call of a kind, for every `k` the workload reaches, with each cut.
fn sweep(fsync: FsyncPolicy, cuts: usize, what: &str, arm: impl Fn(&Sim, u32)) {
    for k in 0.. {
        let mut struck = false;
        for (i, &ending) in ENDINGS.iter().enumerate().take(cuts) {
            let case = format!("{what} {k} failed");
            let seed = u64::from(k) * 100 + i as u64;
            struck |= run_one(fsync, seed, ending, &case, |t| arm(t, k));
        }
        if !struck {
            assert!(k > 3, "{fsync:?}: the workload made only {k} {what}s");
            return;
        }
    }
}

#[test]
fn a_failed_sync_anywhere_then_more_work_then_a_power_cut() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        sweep(fsync, ENDINGS.len(), "sync", |t, k| t.fs.fail_syncs(k, 1));
    }
}

#[test]
fn a_failed_removal_anywhere_then_more_work_then_a_power_cut() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        sweep(fsync, 4, "removal", |t, k| t.fs.fail_removes(k, 1));
    }
}

#[test]
fn a_failed_write_anywhere_then_more_work_then_a_power_cut() {
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        sweep(fsync, 4, "write", |t, k| t.fs.fail_writes(k, 1));
    }
}
