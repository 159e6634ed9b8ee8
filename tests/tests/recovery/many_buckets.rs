//! A store of many buckets: `Store::open` opens them on several threads (one per 64
//! buckets), and the outcome is the one a single thread gives — every bucket whole, the
//! recovery reports in name order, leftovers of unfinished creations and drops removed,
//! and of two damaged buckets next to each other (opened at the same moment by two
//! threads), always the first by name reported.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use logkv::log::record::HEADER_LEN;
use logkv::{BucketConfig, Store};

use crate::common::{copy_store_dir, opts, Rng};
use crate::fixtures::{crash, nonzero_value};
use crate::oracle::{assert_same_state, expect_corrupt, state_of, State};
use crate::segments::{bucket_dir, flip_byte, parse_segment, remove_snapshots, seg_files, SEG};
use crate::shared_gate;

/// Enough buckets for the open to use more than one thread (64 per thread).
const BUCKETS: usize = 300;

fn name(i: usize) -> String {
    format!("b{i:03}")
}

/// Writes to bucket `i`: a few keys, overwritten; one deleted in every fourth bucket;
/// two buckets in every fifty (b000, b001, b050, b051, ...) get enough to fill several
/// segments.
fn fill(store: &Store, i: usize, rng: &mut Rng) {
    let b = store.bucket(&name(i)).unwrap();
    let writes = if i % 50 < 2 { 60 } else { 1 + i % 7 };
    for w in 0..writes {
        let key = format!("k{}", w % 5);
        let len = rng.range_usize(1, 200);
        b.put(&key, nonzero_value(rng, len)).unwrap();
    }
    if i.is_multiple_of(4) {
        b.delete("k0").unwrap();
    }
}

/// A store at `path` with [`BUCKETS`] buckets, keeping 1 to 3 revisions per key, each
/// given [`fill`].
fn filled_store(path: &Path, rng: &mut Rng) -> Store {
    let store = Store::open(path, opts(SEG)).unwrap();
    for i in 0..BUCKETS {
        let history = u8::try_from(1 + i % 3).unwrap();
        store
            .create_bucket(
                &name(i),
                BucketConfig {
                    history,
                    ..BucketConfig::default()
                },
            )
            .unwrap();
        fill(&store, i, rng);
    }
    store
}

/// Every bucket's state, by name.
fn states(store: &Store) -> BTreeMap<String, State> {
    store
        .bucket_names()
        .into_iter()
        .map(|n| {
            let s = state_of(&store.bucket(&n).unwrap(), &[]);
            (n, s)
        })
        .collect()
}

/// Asserts `store` holds `want`, bucket by bucket: with `status`, the buckets' status
/// too (after an unclean stop it may differ: revisions that may have been seen are
/// skipped).
fn assert_holds(store: &Store, want: &BTreeMap<String, State>, status: bool, ctx: &str) {
    let got = states(store);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{ctx}: bucket names"
    );
    for (bucket, w) in want {
        let mut g = got[bucket].clone();
        if !status {
            g.status = w.status.clone();
        }
        assert_same_state(&g, w, &format!("{ctx}: bucket {bucket}"));
    }
    let reported: Vec<&String> = store.recovery_reports().iter().map(|(n, _)| n).collect();
    assert_eq!(
        reported,
        want.keys().collect::<Vec<_>>(),
        "{ctx}: one recovery report per bucket, in name order"
    );
}

/// Leaves what interrupted creations and drops leave behind.
fn add_leftovers(path: &Path) {
    let buckets = path.join("buckets");
    for dir in ["zz.creating", "b007.dropped", "b999"] {
        fs::create_dir(buckets.join(dir)).unwrap();
        fs::write(buckets.join(dir).join("junk"), b"left behind").unwrap();
    }
}

fn assert_leftovers_gone(path: &Path) {
    for dir in ["zz.creating", "b007.dropped", "b999"] {
        assert!(
            !path.join("buckets").join(dir).exists(),
            "{dir} should have been removed"
        );
    }
}

#[test]
fn many_buckets_open_whole_in_name_order_after_a_clean_close_and_a_crash() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s");
    let mut rng = Rng::new(41);
    let store = filled_store(&path, &mut rng);
    let want = states(&store);
    assert!(
        seg_files(&bucket_dir(&path, &name(0))).len() >= 3,
        "a bucket spans several segments"
    );
    drop(store);
    add_leftovers(&path);

    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_leftovers_gone(&path);
    assert_holds(&store, &want, true, "after a clean close");

    // More writes to every third bucket, then a stop that leaves them unsynced.
    for i in (0..BUCKETS).step_by(3) {
        fill(&store, i, &mut rng);
    }
    let want = states(&store);
    crash(store, &path);
    add_leftovers(&path);
    let store = Store::open(&path, opts(SEG)).unwrap();
    assert_leftovers_gone(&path);
    assert_holds(&store, &want, false, "after a crash");
}

#[test]
fn of_two_damaged_buckets_the_first_by_name_is_reported_every_time() {
    let _gate = shared_gate();
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    drop(filled_store(&pristine, &mut Rng::new(43)));
    // A key byte of a record in the middle of a sealed segment: corruption, not a tail.
    let damage = |store: &Path, bucket: &str| {
        let seg = seg_files(&bucket_dir(store, bucket))[0].clone();
        let parsed = parse_segment(&seg);
        let rec = &parsed.records[parsed.records.len() / 2];
        flip_byte(&seg, rec.offset + HEADER_LEN as u64);
        seg
    };
    for round in 0..6 {
        let copy = tmp.path().join(format!("damaged-{round}"));
        copy_store_dir(&pristine, &copy);
        // Without index snapshots, so that the open reads the sealed segments.
        remove_snapshots(&copy);
        let first = damage(&copy, &name(100));
        damage(&copy, &name(101));
        let (path, _, msg) =
            expect_corrupt(Store::open(&copy, opts(SEG)), &format!("round {round}"));
        assert_eq!(path, first, "round {round}: {msg}");
        // Without the first, the second is reported.
        fs::remove_dir_all(bucket_dir(&copy, &name(100))).unwrap();
        let (path, _, msg) = expect_corrupt(
            Store::open(&copy, opts(SEG)),
            &format!("round {round}, the first damaged bucket removed"),
        );
        assert!(
            path.starts_with(bucket_dir(&copy, &name(101))),
            "round {round}: {msg}"
        );
    }
}
