//! A node's state machine cut by a power loss between its bucket writes and its durable
//! point: the store sits on the engine's simulated page cache, entries are applied after
//! the last durable point without any fsync, the power is cut (every unsynced write lost,
//! kept, or torn at random), and the node resumes as openraft drives it — from the durable
//! point, applying every later entry again. Its buckets must end exactly as on a node that
//! never stopped: same contents, same revisions, same outcomes for the entries it really
//! applied again.

mod support;

use std::time::Duration;

use logkv::io::{CutStyle, SimFs, Storage};
use logkv_cluster::command::{BucketSpec, Command, Op, Response};
use logkv_cluster::sm::store_applier::StoreApplier;
use logkv_cluster::sm::{Applied, Applier};
use support::log_id;

const T0: u64 = 1_700_000_000_000;

fn write(bucket: &str, atomic: bool, ops: Vec<Op>) -> Command {
    Command::Write {
        bucket: bucket.into(),
        atomic,
        ops,
    }
}

/// The log: entry `i + 1` is `entries()[i]`, with time `T0 + 100 * i`.
fn entries() -> Vec<Command> {
    let spec = BucketSpec {
        history: 3,
        ttl_ms: 0,
        max_bytes: 0,
        max_value_size: 0,
    };
    let mut out = vec![Command::CreateBucket {
        bucket: "b".into(),
        config: spec,
    }];
    for i in 0..40u64 {
        let key = format!("k{}", i % 5);
        out.push(match i % 8 {
            0 => write(
                "b",
                true,
                vec![Op::put(&key, vec![b'x'; 300]), Op::put("a", "1")],
            ),
            1 => write(
                "b",
                false,
                vec![Op::create(&key, "c"), Op::update("a", "u", i)],
            ),
            2 => write(
                "default",
                false,
                vec![Op::put(&key, "d").with_ttl(Duration::from_millis(150))],
            ),
            3 => Command::Sweep {
                bucket: "default".into(),
            },
            4 => Command::DeleteGlob {
                bucket: "b".into(),
                glob: "k1*".into(),
            },
            5 if i == 13 => Command::DropBucket { bucket: "b".into() },
            5 if i == 21 => Command::CreateBucket {
                bucket: "b".into(),
                config: spec,
            },
            _ => write("b", false, vec![Op::put(&key, vec![b'y'; 200])]),
        });
    }
    out
}

fn apply(a: &StoreApplier, entries: &[Command], index: u64) -> Response {
    let i = usize::try_from(index - 1).unwrap();
    let response = a
        .apply(log_id(index), T0 + 100 * (index - 1), &entries[i])
        .unwrap();
    let applied = Applied {
        log_id: Some(log_id(index)),
        time_ms: T0 + 100 * (index - 1),
        ..Applied::default()
    };
    a.set_applied(&applied, false).unwrap();
    response
}

/// Every bucket's retained entries and last revision.
type State = Vec<(String, u64, Vec<(String, Vec<u8>, u64)>)>;

fn state(a: &StoreApplier) -> State {
    let store = a.cell().get();
    store
        .bucket_names()
        .into_iter()
        .map(|name| {
            let b = store.bucket(&name).unwrap();
            let entries = b
                .history("*")
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.value.to_vec(), e.revision))
                .collect();
            (name, b.stats().last_revision, entries)
        })
        .collect()
}

#[test]
fn a_power_cut_after_the_durable_point_resumes_with_the_same_revisions() {
    let log = entries();
    let n = log.len() as u64;
    let refdir = tempfile::tempdir().unwrap();
    let reference = StoreApplier::open(refdir.path(), &logkv::Options::default()).unwrap();
    let want: Vec<Response> = (1..=n).map(|i| apply(&reference, &log, i)).collect();
    let want_state = state(&reference);
    let mut resumed_from = std::collections::BTreeSet::new();
    for seed in 0..24u64 {
        // The store's directory (the first generation) is on the simulated page cache;
        // the applied record beside it is on the real disk (written with an fsync).
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().canonicalize().unwrap().join("sm");
        std::fs::create_dir_all(dir.join("gen-1")).unwrap();
        let fs = SimFs::new(&dir.join("gen-1"), seed).unwrap();
        let options = logkv::Options {
            storage: Storage::simulated(&fs),
            segment_size: 4096,
            ..logkv::Options::default()
        };
        let durable = 1 + seed % (n - 1);
        {
            let a = StoreApplier::open(&dir, &options).unwrap();
            for i in 1..=n {
                assert_eq!(apply(&a, &log, i), want[usize::try_from(i - 1).unwrap()]);
                if i == durable {
                    a.persist().unwrap();
                }
            }
            fs.crash_now();
        }
        let style = match seed % 3 {
            0 => CutStyle::LoseAll,
            1 => CutStyle::KeepAll,
            _ => CutStyle::Random,
        };
        fs.restart_with(style).unwrap();

        let a = StoreApplier::open(&dir, &options).unwrap();
        let recovered = a.recovered().unwrap();
        assert_eq!(recovered.log_id, Some(log_id(durable)), "seed {seed}");
        for i in durable + 1..=n {
            let got = apply(&a, &log, i);
            // An entry a bucket still held is skipped (`Done`); any other gives its reply again.
            if got != Response::Done || want[usize::try_from(i - 1).unwrap()] == Response::Done {
                assert_eq!(
                    got,
                    want[usize::try_from(i - 1).unwrap()],
                    "seed {seed}: entry {i} applied again"
                );
            } else {
                resumed_from.insert(i);
            }
        }
        assert_eq!(state(&a), want_state, "seed {seed} ({style:?})");
    }
    assert!(
        !resumed_from.is_empty(),
        "some runs kept entries past the durable point (and skipped them)"
    );
}
