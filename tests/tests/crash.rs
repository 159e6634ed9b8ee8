//! Crash test: a child process writes with `FsyncPolicy::Always` and is killed
//! with SIGKILL at random moments; every write it acknowledged must survive, with
//! exactly the revision it was acknowledged with.
//!
//! The child is `src/bin/crash_writer.rs`. Rounds: `LOGKV_CRASH_ROUNDS`
//! (default 30); seed: `LOGKV_CRASH_SEED`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom"
)]

mod common;

use common::{durable_opts, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use logkv::{Bucket, Op, Store};

/// Must match the child's segment size (it does not matter for correctness,
/// only for how the parent re-opens the active segment).
const SEGMENT_SIZE: u64 = 8192;

/// One write as the child announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct W {
    put: bool,
    key: String,
    value: String,
}

/// When the parent starts the random delay after which it kills the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillTimer {
    /// From the spawn: the kill may land while the store opens and recovers, and the
    /// round may acknowledge nothing.
    FromSpawn,
    /// From the first acknowledgement: the round acknowledges at least one write.
    FromFirstAck,
}

/// What one child printed before it was killed.
#[derive(Debug, Default)]
struct Output {
    calls: Vec<Call>,
    /// Compaction passes the child completed since its open (the last `compactions` line).
    compaction_passes: u64,
}

/// One call of `Bucket::write` (a batch when it has several writes).
#[derive(Debug, Default)]
struct Call {
    index: u64,
    declared: usize,
    writes: Vec<W>,
    acks: BTreeMap<String, u64>,
}

/// What the store must hold for a key: its latest revision, and the value (None: a DEL marker).
type Model = BTreeMap<String, (u64, Option<String>)>;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn parse_output(lines: &[String]) -> Output {
    let mut out = Output::default();
    let calls = &mut out.calls;
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["intent", i, n] => calls.push(Call {
                index: i.parse().unwrap(),
                declared: n.parse().unwrap(),
                ..Default::default()
            }),
            ["w", op, key, value] => {
                let c = calls.last_mut().expect("w before intent");
                c.writes.push(W {
                    put: *op == "put",
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
            ["ack", key, rev] => {
                let c = calls.last_mut().expect("ack before intent");
                assert!(
                    c.writes.iter().any(|w| w.key == *key),
                    "ack of {key} not in call {c:?}"
                );
                c.acks.insert(key.to_string(), rev.parse().unwrap());
            }
            ["compactions", passes] => {
                let passes = passes.parse().unwrap();
                assert!(
                    passes > out.compaction_passes,
                    "compaction passes went from {} to {passes}",
                    out.compaction_passes
                );
                out.compaction_passes = passes;
            }
            _ => panic!("unexpected line from crash_writer: {line:?}"),
        }
    }
    out
}

/// The single retained entry of `key` (history 1), as (revision, value or None for a marker).
fn stored(b: &Bucket, key: &str) -> Option<(u64, Option<String>)> {
    let h = b.history(key).unwrap();
    assert!(
        h.len() <= 1,
        "{key}: history 1 but {} entries retained",
        h.len()
    );
    h.first().map(|e| {
        let v = match e.op {
            Op::Put => Some(String::from_utf8(e.value.to_vec()).unwrap()),
            Op::Del => None,
            Op::Purge => panic!("{key}: the writer never purges"),
        };
        (e.revision, v)
    })
}

/// Runs one child until it is killed; returns its complete output lines and when the
/// delay to the kill started.
fn run_child(dir: &Path, start: u64, compact: bool, rng: &mut Rng) -> (Vec<String>, KillTimer) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg(dir)
        .arg(start.to_string())
        .args(compact.then_some("compact"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crash_writer");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A line cut short by the kill has no newline: it was never completed.
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    line.pop();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    // Half the rounds count the delay from the spawn (so some kills land while the
    // store opens and recovers), half from the first acknowledgement (so every such
    // round has acknowledged writes to check).
    let timer = if rng.range(0, 2) == 0 {
        KillTimer::FromFirstAck
    } else {
        KillTimer::FromSpawn
    };
    if timer == KillTimer::FromFirstAck {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let ack = l.starts_with("ack ");
                    lines.push(l);
                    if ack {
                        break;
                    }
                }
                // The child ended on its own: the signal check below says so.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("crash_writer (start {start}) acknowledged no write within 60 s");
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(rng.range(5, 80)));
    let _ = child.kill();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "crash_writer (start {start}) stopped on its own ({status:?}) instead of being killed; stderr: {stderr}"
    );
    (lines, timer)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    crash_rounds(false);
}

/// The same with background compaction running in the child, so that kills
/// also land in the middle of compaction passes.
#[test]
fn acknowledged_writes_survive_sigkill_during_compaction() {
    crash_rounds(true);
}

/// Both tests spawn processes all the time. A spawned process holds copies of
/// this process's open files until it execs, so a store the other test just
/// closed could still look locked to its child: run the two one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn crash_rounds(compact: bool) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rounds = env_u64("LOGKV_CRASH_ROUNDS", 30);
    let seed = env_u64("LOGKV_CRASH_SEED", 0x0010_c417) ^ u64::from(compact);
    println!("crash test (compaction {compact}): {rounds} rounds, seed {seed} (LOGKV_CRASH_ROUNDS, LOGKV_CRASH_SEED)");
    let mut rng = Rng::new(seed);
    let mut compacted_segments = 0usize;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let opts = durable_opts(SEGMENT_SIZE);

    let mut model = Model::new();
    let mut last_rev = 0u64;
    let mut next_index = 0u64;
    let mut total_acks = 0usize;
    let mut compaction_passes = 0u64;
    let mut rounds_from_spawn = 0usize;
    let mut rounds_without_acks = 0usize;
    let mut in_flight_applied = 0usize;
    let mut in_flight_absent = 0usize;
    let mut truncations = 0usize;

    for round in 0..rounds {
        let (lines, timer) = run_child(&dir, next_index, compact, &mut rng);
        let Output {
            calls,
            compaction_passes: passes,
        } = parse_output(&lines);
        let start = next_index;
        let ctx = |what: &str| format!("round {round} (start index {start}, {timer:?}): {what}");
        compaction_passes += passes;
        if timer == KillTimer::FromSpawn {
            rounds_from_spawn += 1;
        }
        let mut round_acks = 0usize;

        // Apply the acknowledged calls to the model; find the one in flight.
        let mut in_flight: Option<&Call> = None;
        for (n, call) in calls.iter().enumerate() {
            assert_eq!(call.index, next_index + n as u64, "{}", ctx("indexes"));
            let complete_intent = call.writes.len() == call.declared;
            if call.acks.is_empty() {
                assert_eq!(
                    n + 1,
                    calls.len(),
                    "{}",
                    ctx("only the last call can be unacknowledged")
                );
                if complete_intent {
                    in_flight = Some(call);
                }
                // An intent cut short means the write was never started.
                continue;
            }
            // The call returned: all its writes are durable, with consecutive revisions
            // that follow the last one without a gap (the child is the only writer, and
            // every write takes one revision).
            let first = call
                .writes
                .iter()
                .enumerate()
                .find_map(|(j, w)| call.acks.get(&w.key).map(|r| r - j as u64))
                .unwrap();
            assert_eq!(
                first,
                last_rev + 1,
                "{}",
                ctx("the call's first revision follows the last one")
            );
            for (j, w) in call.writes.iter().enumerate() {
                let rev = first + j as u64;
                if let Some(acked) = call.acks.get(&w.key) {
                    assert_eq!(*acked, rev, "{}", ctx("batch revisions are consecutive"));
                }
                model.insert(w.key.clone(), (rev, w.put.then(|| w.value.clone())));
                last_rev = rev;
            }
            round_acks += call.acks.len();
        }
        next_index += calls.len() as u64;
        total_acks += round_acks;
        if timer == KillTimer::FromFirstAck {
            assert!(
                round_acks > 0,
                "{}",
                ctx("waited for an acknowledgement, yet none was parsed")
            );
        } else if round_acks == 0 {
            rounds_without_acks += 1;
        }

        // Reopen in this process and check.
        let store = Store::open(&dir, opts.clone())
            .unwrap_or_else(|e| panic!("{}", ctx(&format!("reopen failed: {e}"))));
        for (name, r) in store.recovery_reports() {
            assert!(
                r.skipped.is_empty(),
                "{}",
                ctx(&format!("bucket {name}: {r:?}"))
            );
            if r.truncated_bytes > 0 {
                truncations += 1;
            }
        }
        let b = store.default_bucket().unwrap();
        let bucket_dir = dir.join("buckets").join("default");
        compacted_segments += std::fs::read_dir(&bucket_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .is_some_and(|stem| !stem.ends_with("-00000000"))
            })
            .count();

        // The write in flight is there whole, or not at all.
        if let Some(call) = in_flight {
            let states: Vec<bool> = call
                .writes
                .iter()
                .map(|w| {
                    let now = stored(&b, &w.key);
                    let before = model.get(&w.key).cloned();
                    if now == before {
                        return false;
                    }
                    let (rev, value) =
                        now.unwrap_or_else(|| panic!("{}", ctx(&format!("{} vanished", w.key))));
                    assert!(
                        rev > last_rev,
                        "{}",
                        ctx(&format!("{}: revision {rev} from nowhere", w.key))
                    );
                    assert_eq!(
                        value,
                        w.put.then(|| w.value.clone()),
                        "{}",
                        ctx(&format!("{}: value", w.key))
                    );
                    true
                })
                .collect();
            let applied = states.iter().all(|&s| s);
            assert!(
                applied || states.iter().all(|&s| !s),
                "{}",
                ctx(&format!(
                    "write in flight applied in part: {states:?} for {call:?}"
                ))
            );
            if applied {
                in_flight_applied += 1;
                let first = last_rev + 1;
                for (j, w) in call.writes.iter().enumerate() {
                    assert_eq!(
                        stored(&b, &w.key).unwrap().0,
                        first + j as u64,
                        "{}",
                        ctx("in-flight revisions")
                    );
                    model.insert(
                        w.key.clone(),
                        (first + j as u64, w.put.then(|| w.value.clone())),
                    );
                }
                last_rev = first + call.writes.len() as u64 - 1;
            } else {
                in_flight_absent += 1;
            }
        }

        // Every acknowledged write is there (or superseded by a later one), nothing else is.
        for (key, want) in &model {
            assert_eq!(stored(&b, key).as_ref(), Some(want), "{}", ctx(key));
            let live = b
                .get(key)
                .unwrap()
                .map(|v| String::from_utf8(v.to_vec()).unwrap());
            assert_eq!(
                live.as_ref(),
                want.1.as_ref(),
                "{}",
                ctx(&format!("{key}: live value"))
            );
        }
        let present: BTreeSet<String> =
            b.history(">").unwrap().into_iter().map(|e| e.key).collect();
        let modelled: BTreeSet<String> = model.keys().cloned().collect();
        assert_eq!(present, modelled, "{}", ctx("keys in the store"));
        assert_eq!(
            b.status().unwrap().last_revision,
            last_rev,
            "{}",
            ctx("last revision")
        );
        drop(b);
        // The clean close writes an index snapshot; a third of the time the next
        // child finds none (as after a crash of the parent too).
        drop(store);
        if rng.range(0, 3) == 0 {
            let snap = bucket_dir.join("index.snap");
            if snap.exists() {
                std::fs::remove_file(snap).unwrap();
            }
        }
    }
    println!(
        "crash test (compaction {compact}): {total_acks} acknowledged writes, {} keys, last revision {last_rev}; \
         {rounds_from_spawn} rounds timed from the spawn ({rounds_without_acks} of them killed before an \
         acknowledgement); in-flight writes found applied {in_flight_applied}, absent {in_flight_absent}; \
         {truncations} torn tails cut; {compaction_passes} compaction passes completed, their outputs seen \
         {compacted_segments} times",
        model.len()
    );
    assert!(total_acks > 0, "no round acknowledged any write");
    if compact {
        assert!(
            compaction_passes > 0,
            "no compaction pass completed in {rounds} rounds: the compaction variant tested nothing"
        );
    } else {
        assert_eq!(
            compaction_passes, 0,
            "compaction passes ran with the background thread off"
        );
    }
}
