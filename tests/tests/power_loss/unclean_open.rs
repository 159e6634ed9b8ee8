//! A store opened after an unclean stop makes what recovery read durable with
//! two syncs of the file system for all its buckets (see the store's open):
//! the data, then each bucket's mark and list of lost revisions. Where the
//! file system cannot be synced whole, each bucket syncs its own files. These
//! tests cut the power at every step of such an open, both ways, and fail its
//! syncs.

use std::collections::BTreeMap;
use std::time::Duration;

use logkv::io::CutStyle;
use logkv::{BucketConfig, FsyncPolicy, Options, Store, WatchEvent, WatchOptions};

use crate::sim::Sim;

const BUCKETS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Every key and value of every bucket.
type Contents = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

fn contents(store: &Store) -> Contents {
    BUCKETS
        .iter()
        .map(|&name| {
            let b = store.bucket(name).expect("bucket");
            let keys = b.keys("*").expect("keys");
            let values = keys
                .into_iter()
                .map(|k| {
                    let v = b.get(&k).expect("get").expect("a listed key has a value");
                    (k, v.to_vec())
                })
                .collect();
            (name.to_string(), values)
        })
        .collect()
}

/// Writes to every bucket: `durable` keys made durable by a sync, then
/// `recent` keys (under `never`, visible and not yet durable). Returns the
/// highest revision each bucket gave out.
fn fill(store: &Store, durable: usize, recent: usize) -> BTreeMap<String, u64> {
    let mut highest = BTreeMap::new();
    for name in BUCKETS {
        store
            .create_bucket(name, BucketConfig::default())
            .expect("create");
    }
    for name in BUCKETS {
        let b = store.bucket(name).expect("bucket");
        for i in 0..durable {
            b.put(&format!("d{i}"), format!("{name}-durable-{i}"))
                .expect("put");
        }
    }
    store.sync().expect("sync");
    for name in BUCKETS {
        let b = store.bucket(name).expect("bucket");
        let mut last = 0;
        for i in 0..recent {
            last = b
                .put(&format!("r{i}"), format!("{name}-recent-{i}"))
                .expect("put");
        }
        highest.insert(name.to_string(), last);
    }
    highest
}

/// Each bucket's next write gets a revision above every one given out
/// before (revisions that may have been seen are never given again).
fn assert_no_revision_reused(store: &Store, highest: &BTreeMap<String, u64>, what: &str) {
    for (name, &seen) in highest {
        let rev = store
            .bucket(name)
            .expect("bucket")
            .put("after", "x")
            .expect("put");
        assert!(
            rev > seen,
            "{what}: bucket {name} gave revision {rev} again (revisions up to {seen} were seen)"
        );
    }
}

/// A kill (the page cache survives) of a store written under `written`, then
/// a power cut after each number of changes made by the open that follows,
/// under `policy`. An open the cut
/// interrupts serves nothing; the one after it must still hold everything
/// durable before the kill and give no revision again. An open the cut does
/// not interrupt serves everything the kill left, and all of it survives a
/// power cut that loses every unsynced write.
fn cut_at_every_step_of_an_unclean_open(
    written: FsyncPolicy,
    policy: FsyncPolicy,
    whole: SyncWhole,
) {
    let mut completed = false;
    for step in 0..400 {
        let t = sim(step, whole);
        let store = t.open(written);
        let highest = fill(&store, 3, 4);
        let before = contents(&store);
        t.kill(store);
        let syncs_before = t.fs.stats().syncs;
        t.fs.crash_after(step);
        let opened = Store::open(&t.dir, t.options(policy));
        let interrupted = t.fs.is_crashed();
        match opened {
            Ok(store) if !interrupted => {
                let syncs = t.fs.stats().syncs - syncs_before;
                if whole == SyncWhole::Yes {
                    // Two syncs of the file system for the buckets, not syncs for each.
                    assert_eq!(syncs, 2, "{policy:?}: the unclean open made {syncs} syncs");
                } else {
                    // Each bucket written: its data, then its mark.
                    let least = 2 * BUCKETS.len() as u64;
                    assert!(
                        syncs >= least,
                        "{policy:?}: {syncs} syncs, fewer than {least}"
                    );
                }
                assert_eq!(
                    contents(&store),
                    before,
                    "{policy:?}: the kill lost nothing"
                );
                t.cut(store, CutStyle::LoseAll);
                let store = t.open(policy);
                assert_eq!(
                    contents(&store),
                    before,
                    "{policy:?}: what the unclean open served survives a power cut"
                );
                assert_no_revision_reused(&store, &highest, "after the served open");
                completed = true;
                break;
            }
            Ok(_) => panic!("{policy:?}: the cut after {step} changes failed none of the open's"),
            Err(e) => {
                assert!(
                    interrupted,
                    "{policy:?}, cut after {step} changes: the open failed on its own: {e}"
                );
                t.cut_idle(CutStyle::Random);
            }
        }
        let store = t.open(policy);
        let got = contents(&store);
        for (name, values) in &before {
            let kept = got.get(name).expect("bucket kept");
            for (k, v) in values {
                if k.starts_with('d') || written == FsyncPolicy::Always {
                    assert_eq!(
                        kept.get(k),
                        Some(v),
                        "{policy:?}, cut after {step} changes of the open: {name}/{k} was durable"
                    );
                }
            }
        }
        assert_no_revision_reused(&store, &highest, &format!("cut after {step} changes"));
    }
    assert!(completed, "{policy:?}: no open ran to its end");
}

/// Whether the simulated file system can be synced whole (`syncfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncWhole {
    Yes,
    No,
}

fn sim(seed: u64, whole: SyncWhole) -> Sim {
    let t = Sim::new(seed);
    if whole == SyncWhole::No {
        t.fs.without_syncfs();
    }
    t
}

use FsyncPolicy::{Always, Never};

#[test]
fn a_power_cut_at_every_step_of_an_unclean_open_under_never() {
    cut_at_every_step_of_an_unclean_open(Never, Never, SyncWhole::Yes);
}

#[test]
fn a_power_cut_at_every_step_of_an_unclean_open_under_always() {
    cut_at_every_step_of_an_unclean_open(Always, Always, SyncWhole::Yes);
}

/// The policy changed across the kill: revisions seen under `never` are
/// skipped by an open under `always`, and stay skipped after a cut.
#[test]
fn a_power_cut_at_every_step_of_an_unclean_open_under_another_policy() {
    cut_at_every_step_of_an_unclean_open(Never, Always, SyncWhole::Yes);
    cut_at_every_step_of_an_unclean_open(Always, Never, SyncWhole::Yes);
}

#[test]
fn a_power_cut_at_every_step_of_an_unclean_open_that_syncs_bucket_by_bucket() {
    cut_at_every_step_of_an_unclean_open(Never, Never, SyncWhole::No);
    cut_at_every_step_of_an_unclean_open(Always, Always, SyncWhole::No);
    cut_at_every_step_of_an_unclean_open(Never, Always, SyncWhole::No);
}

/// A failed sync of the file system (or, where it cannot be synced whole, of
/// a bucket's file) fails the open (nothing is served whose durability is
/// unknown), and the next open, after a power cut that loses whatever the
/// failed sync did not write, still holds everything durable before the kill
/// and gives no revision again, under the policy it was written with or
/// under `always`, after a kill or after a power cut that took back what was
/// seen. (A failed sync writes each changed range or not: a mark
/// written before the data were durable could reach the disk without them,
/// and the next open would refuse the log; one that says writes were durable
/// when seen, without the list of the revisions skipped, would let the next
/// open give those again.)
#[test]
fn a_failed_sync_fails_the_unclean_open() {
    for seed in 0..80 {
        let failing = u32::try_from(seed % 2).expect("small");
        let whole = if seed % 4 < 2 {
            SyncWhole::Yes
        } else {
            SyncWhole::No
        };
        let policy = if seed % 8 < 4 { Never } else { Always };
        // A kill (the unsynced writes stay in the page cache), or a power cut
        // that takes back the writes seen but not durable.
        let killed = seed % 16 < 8;
        let stop = if killed { "kill" } else { "power cut" };
        let t = sim(100 + seed, whole);
        let store = t.open(Never);
        let highest = fill(&store, 2, 3);
        let before = contents(&store);
        if killed {
            t.kill(store);
        } else {
            t.cut(store, CutStyle::LoseAll);
        }
        // The open's first sync or its second.
        t.fs.fail_syncs(failing, 1);
        let failed = Store::open(&t.dir, t.options(policy));
        assert!(
            failed.is_err(),
            "seed {seed} ({whole:?}, {policy:?}, {stop}): sync {failing} of the open failed, yet the store opened"
        );
        t.cut_idle(CutStyle::LoseAll);
        let store = t.open(policy);
        let got = contents(&store);
        for (name, values) in &before {
            for (k, v) in values.iter().filter(|(k, _)| k.starts_with('d')) {
                assert_eq!(
                    got[name].get(k),
                    Some(v),
                    "seed {seed}: {name}/{k} was durable"
                );
            }
        }
        assert_no_revision_reused(
            &store,
            &highest,
            &format!("seed {seed}, after a failed sync"),
        );
    }
}

/// Once the revisions an unclean open skipped are durable, the log's marks
/// carry its own policy's flags again: a log written under `never`, cut, and
/// opened under `always` skips once, and a kill after writes under `always`
/// skips nothing more (the marks no longer say writes were seen before durable).
#[test]
fn marks_lose_the_eager_flag_once_the_skipped_revisions_are_durable() {
    for whole in [SyncWhole::Yes, SyncWhole::No] {
        let t = sim(7, whole);
        let store = t.open(Never);
        fill(&store, 2, 3);
        t.cut(store, CutStyle::LoseAll);
        // A mark after every fsync, so that each write leaves one.
        let every_fsync = || Options {
            durability_mark_interval: Duration::ZERO,
            ..t.options(Always)
        };
        let store = Store::open(&t.dir, every_fsync()).expect("open");
        let skipped: BTreeMap<&str, Vec<(u64, u64)>> = BUCKETS
            .iter()
            .map(|&name| (name, store.bucket(name).expect("bucket").lost_revisions()))
            .collect();
        for (name, ranges) in &skipped {
            assert_eq!(
                ranges.len(),
                1,
                "{whole:?}: {name} skipped once: {ranges:?}"
            );
        }
        // Two durable writes each: the second's fsync makes durable the mark
        // written after the first's.
        for name in BUCKETS {
            let b = store.bucket(name).expect("bucket");
            b.put("x", "1").expect("put");
            b.put("y", "2").expect("put");
        }
        t.kill(store);
        let store = Store::open(&t.dir, every_fsync()).expect("open");
        for (name, ranges) in &skipped {
            assert_eq!(
                &store.bucket(name).expect("bucket").lost_revisions(),
                ranges,
                "{whole:?}: {name} skipped again after a kill under always"
            );
        }
    }
}

/// Each bucket's lost ranges.
fn lost_of(store: &Store) -> BTreeMap<&'static str, Vec<(u64, u64)>> {
    BUCKETS
        .iter()
        .map(|&name| (name, store.bucket(name).expect("bucket").lost_revisions()))
        .collect()
}

/// Every range of `before` lies inside a range of `now`, bucket by bucket.
fn assert_still_lost(
    before: &BTreeMap<&'static str, Vec<(u64, u64)>>,
    now: &BTreeMap<&'static str, Vec<(u64, u64)>>,
    what: &str,
) {
    for (name, ranges) in before {
        for &(a, b) in ranges {
            assert!(
                now[name].iter().any(|&(x, y)| x <= a && b <= y),
                "{what}: {name} no longer counts {a}-{b} as lost: {:?}",
                now[name]
            );
        }
    }
}

/// The file of a bucket's lost revisions.
fn lost_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join("buckets").join(name).join("lost.revs")
}

/// A store's unclean open records what each bucket skips in the mark of its
/// active segment, and creates no file for it. The range comes back from that
/// mark through reopens without a write: unclean ones (a second kill, a power
/// cut, an open that syncs bucket by bucket and writes the mark again), a clean
/// close, a change of policy, and a checkpoint; a watch resumed inside it
/// reports `lost`. The first write, which starts a new segment, writes
/// `lost.revs` before it.
#[test]
fn the_skipped_revisions_live_in_the_mark_until_the_first_write() {
    let t = sim(11, SyncWhole::Yes);
    let store = t.open(Never);
    let mut highest = fill(&store, 2, 3);
    t.kill(store);
    let store = t.open(Never);
    let skipped = lost_of(&store);
    for (name, ranges) in &skipped {
        assert_eq!(ranges.len(), 1, "{name} skipped once: {ranges:?}");
        let seen = highest[*name];
        assert!(
            ranges[0].0 <= seen + 1 && ranges[0].1 > seen,
            "{name}: {ranges:?} after {seen}"
        );
        assert!(
            !lost_file(&t.dir, name).exists(),
            "{name}: the open wrote no list"
        );
    }
    // Unclean reopens: each finds the count in the newest mark (and writes it again).
    t.kill(store);
    let store = t.open(Never);
    assert_eq!(lost_of(&store), skipped, "after a second kill");
    t.cut(store, CutStyle::LoseAll);
    let store = t.open(Always);
    assert_eq!(lost_of(&store), skipped, "after a power cut, under always");
    t.kill(store);
    t.fs.without_syncfs();
    let store = t.open(Never);
    assert_eq!(lost_of(&store), skipped, "after an open bucket by bucket");
    t.cut(store, CutStyle::LoseAll);
    let store = t.open(Never);
    assert_eq!(
        lost_of(&store),
        skipped,
        "after the mark it wrote and a cut"
    );
    let copy = t.fs.root().join("copy");
    store.checkpoint(&copy).expect("checkpoint");
    store.close().expect("close");
    let checkpoint = Store::open(&copy, t.options(Never)).expect("open the checkpoint");
    assert_eq!(lost_of(&checkpoint), skipped, "in the checkpoint");
    checkpoint.close().expect("close the checkpoint");
    let store = t.open(Always);
    assert_eq!(
        lost_of(&store),
        skipped,
        "after a clean close, under always"
    );
    let alpha = store.bucket("alpha").expect("bucket");
    let inside = skipped["alpha"][0].0 + 1;
    let from = WatchOptions {
        from_revision: Some(inside),
        ..Default::default()
    };
    let mut resumed = alpha.watch(">", from).expect("watch");
    assert!(
        matches!(
            resumed.try_next().expect("watch"),
            Some(WatchEvent::Lost { .. })
        ),
        "a watch resumed at {inside}, inside the skipped range"
    );
    for name in BUCKETS {
        assert!(
            !lost_file(&t.dir, name).exists(),
            "{name}: no write, no list"
        );
        let rev = store
            .bucket(name)
            .expect("bucket")
            .put("first", "x")
            .expect("put");
        assert!(rev > skipped[name][0].1, "{name}: {rev} was skipped");
        highest.insert(name.to_string(), rev);
        assert!(
            lost_file(&t.dir, name).exists(),
            "{name}: the first write wrote the list"
        );
    }
    t.cut(store, CutStyle::LoseAll);
    let store = t.open(Never);
    assert_still_lost(
        &skipped,
        &lost_of(&store),
        "after the first writes and a cut",
    );
    assert_no_revision_reused(&store, &highest, "after the first writes and a cut");
}

/// A power cut at every step of the first write after a skip recorded in the
/// mark (it writes `lost.revs`, then starts a new segment): the skipped
/// revisions stay lost and none is given again.
#[test]
fn a_power_cut_at_every_step_of_the_first_write_after_a_skip() {
    let mut completed = false;
    for step in 0..80 {
        let t = sim(300 + step, SyncWhole::Yes);
        let store = t.open(Never);
        let mut highest = fill(&store, 2, 3);
        t.kill(store);
        let store = t.open(Never);
        let skipped = lost_of(&store);
        t.fs.crash_after(step);
        let wrote = store.bucket("alpha").expect("bucket").put("first", "x");
        let interrupted = t.fs.is_crashed();
        match wrote {
            Ok(rev) => {
                assert!(rev > skipped["alpha"][0].1, "{rev} was skipped");
                highest.insert("alpha".to_string(), rev);
            }
            Err(e) => assert!(interrupted, "the write failed on its own: {e}"),
        }
        t.cut(store, CutStyle::Random);
        let store = t.open(Never);
        assert_still_lost(&skipped, &lost_of(&store), &format!("cut after {step}"));
        assert_no_revision_reused(&store, &highest, &format!("cut after {step}"));
        if !interrupted {
            completed = true;
            break;
        }
    }
    assert!(completed, "no write ran to its end");
}

/// Compaction that seals the active segment (it holds a dead record) after a
/// skip recorded in that segment's mark writes `lost.revs` first.
#[test]
fn compaction_records_a_skip_before_it_seals_the_segment() {
    let t = sim(21, SyncWhole::Yes);
    let store = t.open(Never);
    let mut highest = fill(&store, 2, 3);
    for name in BUCKETS {
        let rev = store
            .bucket(name)
            .expect("bucket")
            .put("r0", "again")
            .expect("put");
        highest.insert(name.to_string(), rev);
    }
    t.kill(store);
    let store = t.open(Never);
    let skipped = lost_of(&store);
    for name in BUCKETS {
        let report = store
            .bucket(name)
            .expect("bucket")
            .compact()
            .expect("compact");
        assert!(report.segments_in > 0, "{name}: {report:?}");
        assert!(lost_file(&t.dir, name).exists(), "{name}: the list");
    }
    t.cut(store, CutStyle::LoseAll);
    let store = t.open(Never);
    assert_still_lost(&skipped, &lost_of(&store), "after compaction and a cut");
    assert_no_revision_reused(&store, &highest, "after compaction and a cut");
}
