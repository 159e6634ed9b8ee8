//! Replicated applies (`Bucket::apply_replicated`) cut by a power loss: tagged
//! batches applied without an fsync, some `Store::sync`s and compactions, then
//! the power cut (between steps or in the middle of one, every way the
//! simulated page cache can lose, keep or tear what was not synced).
//!
//! After the cut the bucket must hold exactly the batches up to its recovered
//! tag (no more, no less, nothing torn), that tag must be at least the last
//! one synced, and applying the later batches again — as a cluster node
//! re-applies its Raft log — must give the same outcomes and revisions as a
//! run that was never cut.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use logkv::io::{CutStyle, SimFs, Storage};
use logkv::{ApplyMode, BucketConfig, Error, ManualClock, Op, Options, Store, WriteOp};

use crate::common::{Rng, T0};

const KEYS: &[&str] = &["a", "b", "c.d", "e"];
const STEPS: usize = 60;

/// One replicated step.
#[derive(Debug, Clone)]
enum Step {
    Write(Vec<WriteOp>, ApplyMode),
    DeleteGlob(&'static str),
    Sweep,
}

/// What a step answered: each write's revision or error, or a count.
type Outcome = Vec<Result<u64, String>>;

/// Every retained entry of the bucket.
type Contents = Vec<(String, Vec<u8>, u64, Op)>;

fn tag(i: usize) -> [u8; 8] {
    (i as u64).to_be_bytes()
}

fn untag(t: &[u8]) -> usize {
    let bytes: [u8; 8] = t.try_into().expect("an 8-byte tag");
    usize::try_from(u64::from_be_bytes(bytes)).expect("small")
}

fn steps(rng: &mut Rng) -> Vec<Step> {
    (0..STEPS)
        .map(|_| match rng.below(10) {
            0 => Step::DeleteGlob(if rng.below(2) == 0 { "c.*" } else { "*" }),
            1 => Step::Sweep,
            _ => {
                let n = rng.range_usize(1, 5);
                let ops = (0..n)
                    .map(|_| {
                        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                        let len = rng.range_usize(1, 600);
                        let value = rng.bytes(len);
                        match rng.below(6) {
                            0 => WriteOp::create(key, value),
                            1 => WriteOp::update(key, value, rng.below(20)),
                            2 => WriteOp::delete(key),
                            3 => WriteOp::put(key, value).with_ttl(Duration::from_millis(250)),
                            _ => WriteOp::put(key, value),
                        }
                    })
                    .collect();
                let mode = if rng.below(3) == 0 {
                    ApplyMode::Atomic
                } else {
                    ApplyMode::Each
                };
                Step::Write(ops, mode)
            }
        })
        .collect()
}

fn options(storage: Storage, clock: &ManualClock) -> Options {
    Options {
        storage,
        replicated: true,
        fsync: logkv::FsyncPolicy::Never,
        background: false,
        segment_size: 4096,
        snapshot_min_bytes: 0,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

fn config() -> BucketConfig {
    BucketConfig {
        history: 3,
        ..Default::default()
    }
}

/// Applies step `i` (tagged `i + 1`; the bucket's creation is tag 0), at its time.
fn apply(store: &Store, steps: &[Step], i: usize) -> logkv::Result<Outcome> {
    let b = store.bucket("b")?;
    let now = T0 + 100 * i as u64;
    let t = tag(i + 1);
    Ok(match &steps[i] {
        Step::Write(ops, mode) => match b.apply_replicated(ops, *mode, now, &t) {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map(|w| w.revision).map_err(|e| e.to_string()))
                .collect(),
            // An atomic batch whose precondition failed: an outcome, not a failure.
            Err(
                e @ (Error::Batch { .. }
                | Error::WrongRevision { .. }
                | Error::Exists
                | Error::NotFound),
            ) => {
                vec![Err(e.to_string())]
            }
            Err(e) => return Err(e),
        },
        Step::DeleteGlob(glob) => vec![Ok(b.delete_glob_replicated(glob, now, &t)? as u64)],
        Step::Sweep => vec![Ok(b.sweep_replicated(now, &t)? as u64)],
    })
}

fn contents(store: &Store) -> Contents {
    let b = store.bucket("b").expect("bucket b");
    b.history("*")
        .expect("history")
        .into_iter()
        .map(|e| (e.key, e.value.to_vec(), e.revision, e.op))
        .collect()
}

/// The run never cut: each step's outcome, and the contents after each
/// number of steps (`contents[n]`: after steps `0..n`).
struct Reference {
    outcomes: Vec<Outcome>,
    contents: Vec<Contents>,
    /// The bucket's tag after each number of steps (a step that wrote nothing logs none).
    tags: Vec<usize>,
    last_revision: u64,
}

fn reference(dir: &Path, steps: &[Step]) -> Reference {
    let clock = ManualClock::new(T0);
    let store = Store::open(dir, options(Storage::os(), &clock)).expect("open");
    store
        .create_bucket_at("b", config(), T0, &tag(0))
        .expect("create");
    let mut outcomes = Vec::new();
    let mut after = vec![contents(&store)];
    let tag_now = || untag(&store.bucket("b").expect("b").replica_tag().expect("a tag"));
    let mut tags = vec![tag_now()];
    for i in 0..steps.len() {
        outcomes.push(apply(&store, steps, i).expect("apply"));
        after.push(contents(&store));
        tags.push(tag_now());
    }
    let last_revision = store.bucket("b").expect("b").stats().last_revision;
    Reference {
        outcomes,
        contents: after,
        tags,
        last_revision,
    }
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let steps = steps(&mut rng);
    let refdir = tempfile::tempdir().expect("tempdir");
    let want = reference(refdir.path(), &steps);

    let root = tempfile::tempdir().expect("tempdir");
    let fs = SimFs::new(root.path(), seed).expect("sim");
    let dir = fs.root().join("store");
    let clock = ManualClock::new(T0);
    let store = Store::open(&dir, options(Storage::simulated(&fs), &clock)).expect("open");
    store
        .create_bucket_at("b", config(), T0, &tag(0))
        .expect("create");
    let cut_after = rng.range_usize(1, steps.len());
    let mut synced = 0; // every step below this is durable
    let mut applied = 0;
    for i in 0..cut_after {
        assert_eq!(apply(&store, &steps, i).expect("apply"), want.outcomes[i]);
        applied = i + 1;
        match rng.below(10) {
            0 => {
                store.sync().expect("sync");
                synced = applied;
            }
            1 => {
                store.bucket("b").expect("b").compact().expect("compact");
            }
            _ => {}
        }
    }
    if rng.below(2) == 0 {
        // Cut in the middle of what follows: a step, a sync, a compaction.
        fs.crash_after(rng.below(12));
        while applied < steps.len() {
            if apply(&store, &steps, applied).is_err() {
                break;
            }
            applied += 1;
            if rng.below(4) == 0 && store.bucket("b").and_then(|b| b.compact()).is_err() {
                break;
            }
        }
    }
    fs.crash_now();
    drop(store);
    let style = match rng.below(3) {
        0 => CutStyle::LoseAll,
        1 => CutStyle::KeepAll,
        _ => CutStyle::Random,
    };
    fs.restart_with(style).expect("restart");

    let store = Store::open(&dir, options(Storage::simulated(&fs), &clock)).expect("reopen");
    let recovered = store.replica_tags()["b"].clone();
    let at = untag(&recovered.expect("the creation's tag is durable"));
    assert!(
        (want.tags[synced]..=applied).contains(&at) && want.tags[at] == at,
        "seed {seed}: recovered tag {at}, synced {synced}, applied {applied}"
    );
    assert_eq!(
        contents(&store),
        want.contents[at],
        "seed {seed}: the bucket is not the batches up to its tag {at}"
    );
    for i in at..steps.len() {
        assert_eq!(
            apply(&store, &steps, i).expect("apply again"),
            want.outcomes[i],
            "seed {seed}: step {i} applied again after the cut"
        );
    }
    assert_eq!(contents(&store), want.contents[steps.len()], "seed {seed}");
    let b = store.bucket("b").expect("b");
    assert_eq!(b.stats().last_revision, want.last_revision, "seed {seed}");
    assert_eq!(
        b.lost_revisions(),
        Vec::new(),
        "seed {seed}: a replica skips no revision"
    );
}

#[test]
fn replicated_batches_resume_after_a_power_cut_with_the_same_revisions() {
    let runs = std::env::var("LOGKV_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40u64);
    let base = crate::common::seed_from_env("LOGKV_SIM_SEED");
    for i in 0..runs {
        let seed = base.wrapping_add(i.wrapping_mul(0x9E37_79B9));
        println!("seed {seed}");
        run(seed);
    }
}
