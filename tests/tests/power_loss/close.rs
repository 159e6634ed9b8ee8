//! A clean close that finds its mark and its index snapshot already on disk writes
//! nothing: a store opened clean and closed without a write makes no sync, and a power
//! cut after that close loses nothing, skips no revision and finds the stop clean. A
//! write, or another fsync policy (another mark), still gets its mark.

use logkv::io::CutStyle;
use logkv::{BucketConfig, FsyncPolicy, Store};

use crate::sim::Sim;

const BUCKETS: usize = 5;

/// Opens the store, which must find it closed cleanly: an open after an unclean stop
/// syncs what it read before serving it, a clean one syncs nothing.
fn open_clean(sim: &Sim, fsync: FsyncPolicy, ctx: &str) -> Store {
    let mut store = None;
    let syncs = sim.syncs_during(|| store = Some(sim.open(fsync)));
    assert_eq!(syncs, 0, "{ctx}: the store was not closed cleanly");
    store.expect("opened")
}

/// A power cut with no store open: whatever was not synced may go.
fn cut(sim: &Sim, seed: u64) {
    sim.cut_idle(if seed.is_multiple_of(2) {
        CutStyle::LoseAll
    } else {
        CutStyle::Random
    });
}

/// Whether `bucket` was opened from its index snapshot with no record after it.
fn from_snapshot_alone(store: &Store, bucket: &str) -> bool {
    store
        .recovery_reports()
        .iter()
        .any(|(n, r)| n == bucket && r.records == 0)
}

fn name(i: usize) -> String {
    format!("b{i}")
}

/// Every bucket's keys with their value and revision, and its lost revisions.
type Seen = Vec<(String, Vec<(String, Vec<u8>, u64)>, Vec<(u64, u64)>)>;

fn seen(store: &Store) -> Seen {
    store
        .bucket_names()
        .into_iter()
        .map(|n| {
            let b = store.bucket(&n).expect("bucket");
            let entries = b
                .keys(">")
                .expect("keys")
                .into_iter()
                .map(|k| {
                    let e = b.entry(&k).expect("entry").expect("live");
                    (k, e.value.to_vec(), e.revision)
                })
                .collect();
            (n, entries, b.lost_revisions())
        })
        .collect()
}

#[test]
fn a_close_with_nothing_to_mark_syncs_nothing_and_a_power_cut_after_it_loses_nothing() {
    for (seed, fsync) in [
        (1, FsyncPolicy::Always),
        (2, FsyncPolicy::Interval(std::time::Duration::from_secs(1))),
        (3, FsyncPolicy::Never),
    ] {
        let sim = Sim::new(seed);
        let store = sim.open(fsync);
        for i in 0..BUCKETS {
            let b = store
                .create_bucket(&name(i), BucketConfig::default())
                .expect("create");
            // The last bucket holds enough (120 KiB) to keep an index snapshot.
            let (keys, len) = if i + 1 == BUCKETS {
                (300, 400)
            } else {
                (i + 1, 4)
            };
            for k in 0..keys {
                b.put(&format!("k{k}"), "v".repeat(len)).expect("put");
            }
        }
        drop(store);
        let big = name(BUCKETS - 1);
        let snapshot = sim.dir.join("buckets").join(&big).join("index.snap");
        assert!(
            snapshot.exists(),
            "{fsync:?}: {big} keeps an index snapshot"
        );
        let store = sim.open(fsync);
        assert!(
            from_snapshot_alone(&store, &big),
            "{fsync:?}: {big} opened from its snapshot"
        );
        let want = seen(&store);
        assert!(want.iter().all(|(_, _, lost)| lost.is_empty()), "{fsync:?}");
        let syncs = sim.syncs_during(|| drop(store));
        assert_eq!(
            syncs, 0,
            "{fsync:?}: a close with nothing new syncs nothing"
        );

        cut(&sim, seed);
        // The snapshot the first close synced is still there (the idle close
        // neither rewrote nor removed it), and still matches the log: each
        // sealed segment's cut to its data end was fsynced when it was sealed.
        assert!(
            snapshot.exists(),
            "{fsync:?}: {big}'s snapshot survives the cut"
        );
        let store = open_clean(
            &sim,
            fsync,
            &format!("{fsync:?}, a cut after an idle close"),
        );
        assert!(
            from_snapshot_alone(&store, &big),
            "{fsync:?}: {big} opened from its snapshot after the cut"
        );
        assert_eq!(seen(&store), want, "{fsync:?}: after a power cut");
        for (bucket, report) in store.recovery_reports() {
            assert_eq!(report.truncated_bytes, 0, "{fsync:?}: {bucket}");
        }

        // One write: that bucket's close marks it again, the others' do not.
        store
            .bucket(&name(2))
            .expect("bucket")
            .put("new", "value")
            .expect("put");
        let want = seen(&store);
        let syncs = sim.syncs_during(|| drop(store));
        assert!(
            syncs > 0,
            "{fsync:?}: the written bucket is synced at close"
        );
        cut(&sim, seed + 1);
        let store = open_clean(&sim, fsync, &format!("{fsync:?}, a cut after a write"));
        assert_eq!(seen(&store), want, "{fsync:?}: the write survives the cut");

        // Another policy writes other marks (whether writes were visible before they
        // were durable): every bucket is marked again.
        let other = if fsync == FsyncPolicy::Always {
            FsyncPolicy::Never
        } else {
            FsyncPolicy::Always
        };
        drop(store);
        let store = sim.open(other);
        let syncs = sim.syncs_during(|| drop(store));
        assert!(
            syncs >= BUCKETS as u64,
            "{fsync:?} then {other:?}: {syncs} syncs"
        );
        cut(&sim, seed + 2);
        drop(open_clean(
            &sim,
            other,
            &format!("{fsync:?} then {other:?}, a cut"),
        ));
    }
}

#[test]
fn a_close_whose_index_snapshot_cannot_be_written_still_marks_the_stop_clean() {
    let sim = Sim::new(11);
    let store = sim.open(FsyncPolicy::Never);
    let b = store.default_bucket().expect("default");
    // 120 KiB: enough to keep an index snapshot.
    for k in 0..300 {
        b.put(&format!("k{k}"), "v".repeat(400)).expect("put");
    }
    drop(b);
    let want = seen(&store);
    // Everything synced first, so that the clean close's first write is the
    // snapshot's: it fails, as on a full disk.
    store.sync().expect("sync");
    sim.fs.fail_writes(0, 1);
    drop(store);
    let snapshot = sim.dir.join("buckets").join("default").join("index.snap");
    assert!(!snapshot.exists(), "no snapshot was written");
    let store = open_clean(
        &sim,
        FsyncPolicy::Never,
        "after a close whose snapshot failed",
    );
    assert_eq!(seen(&store), want, "nothing lost, no revision given up");
}
