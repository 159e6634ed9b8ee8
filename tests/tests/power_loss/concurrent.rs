//! Group commit under power cuts: several threads write at once with
//! `FsyncPolicy::Always` (so fsyncs are shared by many waiters), the power is
//! cut at a random change, and after each restart:
//!
//! - every acknowledged write is there, with its revision and value;
//! - every write there was issued (nothing invented) and its batch is there whole;
//! - the revisions are exactly 1..=last (the log is a prefix: no hole);
//! - a write that was lost never comes back in a later round;
//! - revisions go on from the last one recovered.
//!
//! `LOGKV_SIM_RUNS` sets the number of runs (rounds of cuts each); `LOGKV_SEED` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use logkv::io::{CutStyle, SimFs, Storage};
use logkv::{FsyncPolicy, ManualClock, Options, Store, WriteOp};

use crate::common::{Rng, T0};

const THREADS: u64 = 6;
const ROUNDS: u64 = 6;

/// What the threads said about their writes.
#[derive(Default)]
struct Log {
    /// key → (revision, value) of acknowledged writes.
    acked: BTreeMap<String, (u64, Vec<u8>)>,
    /// key → value of every write issued; batches: each key → the keys of its batch.
    issued: BTreeMap<String, Vec<u8>>,
    batch_of: BTreeMap<String, Vec<String>>,
}

fn value_of(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(20 + key.len() % 300, b'.');
    v
}

fn options(sim: &SimFs, clock: &ManualClock) -> Options {
    Options {
        storage: Storage::simulated(sim),
        fsync: FsyncPolicy::Always,
        background: false,
        segment_size: 16 * 1024,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

fn round(store: &Store, log: &Arc<Mutex<Log>>, round: u64, seed: u64) {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let bucket = store.default_bucket().expect("default");
            let log = Arc::clone(log);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ ((t + 1) * 7919));
                for n in 0.. {
                    let keys: Vec<String> = if rng.below(4) == 0 {
                        (0..2).map(|j| format!("r{round}.t{t}.n{n}.b{j}")).collect()
                    } else {
                        vec![format!("r{round}.t{t}.n{n}")]
                    };
                    {
                        let mut l = log.lock().expect("log");
                        for k in &keys {
                            l.issued.insert(k.clone(), value_of(k));
                            l.batch_of.insert(k.clone(), keys.clone());
                        }
                    }
                    let ops: Vec<WriteOp> =
                        keys.iter().map(|k| WriteOp::put(k, value_of(k))).collect();
                    match bucket.write(&ops) {
                        Ok(written) => {
                            let mut l = log.lock().expect("log");
                            for (k, w) in keys.iter().zip(written) {
                                l.acked.insert(k.clone(), (w.revision, value_of(k)));
                            }
                        }
                        Err(_) => return, // the power is off
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
}

fn check(store: &Store, log: &Log, lost: &mut BTreeSet<String>, last_round_max: u64) -> u64 {
    let b = store.default_bucket().expect("default");
    let entries = b.history(">").expect("history");
    let mut present: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for e in entries {
        present.insert(e.key.clone(), (e.revision, e.value.to_vec()));
    }
    for (k, (rev, value)) in &log.acked {
        assert_eq!(
            present.get(k),
            Some(&(*rev, value.clone())),
            "acknowledged write {k} lost or changed"
        );
    }
    for (k, (_, value)) in &present {
        assert_eq!(
            log.issued.get(k),
            Some(value),
            "{k} was never written with this value"
        );
        assert!(
            !lost.contains(k),
            "{k} was lost in an earlier cut and came back"
        );
        for other in &log.batch_of[k] {
            assert!(
                present.contains_key(other),
                "{k} is here without {other} of its batch"
            );
        }
    }
    let revisions: BTreeSet<u64> = present.values().map(|(r, _)| *r).collect();
    let max = revisions.iter().next_back().copied().unwrap_or(0);
    assert_eq!(
        revisions.len() as u64,
        max,
        "revisions are not 1..={max}: a hole"
    );
    assert!(
        max >= last_round_max,
        "revisions went back: {max} < {last_round_max}"
    );
    for k in log.issued.keys() {
        if !present.contains_key(k) {
            lost.insert(k.clone());
        }
    }
    max
}

fn run(seed: u64) -> (u64, usize) {
    eprintln!("power_loss concurrent: seed {seed} (replay with LOGKV_SEED={seed})");
    let mut rng = Rng::new(seed);
    let root = tempfile::tempdir().expect("tempdir");
    let sim = SimFs::new(root.path(), rng.next_u64()).expect("sim");
    let dir = sim.root().join("store");
    let clock = ManualClock::new(T0);
    let log = Arc::new(Mutex::new(Log::default()));
    let mut lost = BTreeSet::new();
    let mut max = 0;
    for r in 0..ROUNDS {
        let store = Store::open(&dir, options(&sim, &clock)).expect("the store opens after a cut");
        max = check(&store, &log.lock().expect("log"), &mut lost, max);
        sim.crash_after(20 + rng.below(400));
        round(&store, &log, r, rng.next_u64());
        drop(store);
        let style = match rng.below(3) {
            0 => CutStyle::LoseAll,
            1 => CutStyle::KeepAll,
            _ => CutStyle::Random,
        };
        sim.restart_with(style).expect("restart");
    }
    let store = Store::open(&dir, options(&sim, &clock)).expect("the store opens after a cut");
    check(&store, &log.lock().expect("log"), &mut lost, max);
    let acked = log.lock().expect("log").acked.len();
    (sim.stats().crashes, acked)
}

#[test]
fn concurrent_writers_lose_nothing_acknowledged() {
    let runs = std::env::var("LOGKV_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seeds: Vec<u64> = match std::env::var("LOGKV_SEED") {
        Ok(s) => vec![s.parse().expect("LOGKV_SEED is a number")],
        Err(_) => (0..runs)
            .map(|_| crate::common::seed_from_env("LOGKV_CONCURRENT_SEED"))
            .collect(),
    };
    let (mut cuts, mut acked) = (0, 0);
    for seed in seeds {
        let (c, a) = run(seed);
        cuts += c;
        acked += a;
    }
    eprintln!("power_loss concurrent: {cuts} cuts, {acked} acknowledged writes checked");
    assert!(
        acked > 0,
        "no write was acknowledged: the cuts came too early"
    );
}
