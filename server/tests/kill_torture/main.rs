//! SIGKILL torture of the real `logkv-server` under concurrent clients.
//!
//! Each cycle starts the binary on a fresh port over the same data directory, runs
//! client threads (raw RESP over TCP: PUT with unique values, CREATE, UPDATE and CAS
//! with preconditions, DEL, MULTI/EXEC batches, reads, the odd COMPACT, alone or
//! pipelined, over two buckets, one of them with HISTORY 3), and kills the server with
//! SIGKILL a random few to a few hundred milliseconds after the load starts (and one
//! start in eight is also killed while it opens the store and recovers). Every
//! request's outcome is recorded: acknowledged with its revision, refused, or unknown
//! (the connection died first). The next start must succeed, and what it serves is
//! checked against the model (`model.rs`):
//!
//! - `--fsync always`: every acknowledged write, and every write a client read, is
//!   there with its revision and value, or superseded by later writes of its key;
//! - `--fsync interval=<ms>`: acknowledged writes may be lost (a tail of the log), but
//!   never in part or out of order, and their revisions are never given to other data;
//! - both: every stored value was sent by a client, in a request that was not refused;
//!   batches are all or nothing, at consecutive revisions; no revision is held twice;
//!   the first write after the restart gets a revision above every one given before.
//!
//! Cycles: `LOGKV_KILL_CYCLES` (default 10); seed: `LOGKV_KILL_SEED` (printed, the
//! two modes derive theirs from it). The seed replays every choice (requests, kill
//! delays, sync intervals), not the threads' interleaving. The figures of the run are
//! printed at the end (`--nocapture` to see them).

#[path = "../common/mod.rs"]
mod common;
mod load;
mod model;
mod resp;
#[allow(
    dead_code,
    reason = "the tests crate's generator, of which this uses a part"
)]
#[path = "../../../tests/tests/common/rng.rs"]
mod rng;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::BinaryServer;
use load::{Entry, BUCKETS};
use model::{Figures, Mode, Model};
use resp::{Conn, Reply};
use rng::Rng;

/// Client threads per cycle.
const CLIENTS: u64 = 4;

#[test]
fn acknowledged_writes_survive_sigkill_under_fsync_always() {
    torture(Mode::Always);
}

#[test]
fn revisions_are_never_reused_after_sigkill_under_fsync_interval() {
    torture(Mode::Interval);
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn torture(mode: Mode) {
    let cycles = env_u64("LOGKV_KILL_CYCLES", 10);
    let seed = rng::seed_from_env("LOGKV_KILL_SEED");
    let mut rng = Rng::new(seed ^ if mode == Mode::Always { 0 } else { 0x0001_e7e4 });
    println!("kill torture ({mode:?}): {cycles} cycles (LOGKV_KILL_CYCLES)");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut model = Model::new(mode);

    for cycle in 0..=cycles {
        let fsync = match mode {
            Mode::Always => "always".to_string(),
            Mode::Interval => format!("interval={}", rng.range(5, 200)),
        };
        if cycle > 0 && rng.below(8) == 0 {
            let delay = Duration::from_millis(rng.range(0, 30));
            kill_while_starting(dir, &fsync, delay, cycle);
            model.figures.starts_killed += 1;
        }
        let mut server = restart(dir, &fsync, cycle, &mut model.figures);
        let mut admin = Conn::connect(server.addr).unwrap();
        if cycle == 0 {
            for (name, history) in &BUCKETS[1..] {
                let history = history.to_string();
                let reply = admin.call(&["BUCKET", "CREATE", name, "HISTORY", &history]);
                assert_eq!(reply.unwrap(), Reply::Status("OK".into()));
            }
        } else {
            let found: Vec<Vec<Entry>> = (0..BUCKETS.len())
                .map(|b| retained(&mut admin, b))
                .collect();
            model.check(&found);
            let probes = probe(&mut admin, &mut model, cycle);
            if mode == Mode::Interval {
                for (b, rev) in probes.into_iter().enumerate() {
                    watch_from_skipped_is_lost(server.addr, b, rev);
                }
            }
        }
        drop(admin);
        if cycle == cycles {
            break;
        }
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (addr, seed) = (server.addr, rng.next_u64());
                std::thread::spawn(move || load::run(addr, id, cycle, seed))
            })
            .collect();
        let delay = if rng.below(2) == 0 {
            rng.range(2, 40)
        } else {
            rng.range(40, 400)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let status = server.kill();
        assert_eq!(
            status.signal(),
            Some(9),
            "cycle {cycle}: the server ended on its own ({status:?}) before the kill; its log:\n{}",
            server.log_lines().join("\n")
        );
        let requests: Vec<load::Request> = clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread panicked"))
            .collect();
        model.record(&requests);
        model.figures.cycles += 1;
        if model.figures.cycles.is_multiple_of(100) {
            let (files, bytes, allocated) = disk_usage(dir);
            println!(
                "{mode:?}: {} cycles, {:.0} s; data directory: {files} files, {bytes} bytes \
                 ({allocated} allocated)",
                model.figures.cycles,
                started.elapsed().as_secs_f64()
            );
        }
    }
    report(mode, &model.figures, started.elapsed());
    let f = &model.figures;
    assert!(
        f.writes_acked > 0 && f.acked_checked > 0,
        "the run acknowledged or checked nothing: {f:?}"
    );
    if mode == Mode::Always {
        assert_eq!(f.lost_acked + f.lost_read + f.lost_found, 0, "{f:?}");
    }
}

/// Starts the server over `dir` (it must start, whatever the kill left), and checks
/// what its log says about the recovery.
fn restart(dir: &Path, fsync: &str, cycle: u64, figures: &mut Figures) -> BinaryServer {
    let server = BinaryServer::start_in(dir, &["--fsync", fsync]);
    figures.restarts += 1;
    let log = server.log_lines();
    let count = |text: &str| log.iter().filter(|l| l.contains(text)).count() as u64;
    figures.counter_skips += count("unclean stop: revisions that may have been seen");
    figures.tails_cut += count("recovery cut the unsynced tail");
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" ERROR ") || l.contains("repair") || l.contains("unusable"))
        .collect();
    assert!(
        bad.is_empty(),
        "cycle {cycle}: the restart logged {bad:#?}\nits log:\n{}",
        log.join("\n")
    );
    server
}

/// Starts the server over `dir` and kills it `delay` after the spawn, while it opens
/// the store and recovers (or just after); it must not have failed on its own.
fn kill_while_starting(dir: &Path, fsync: &str, delay: Duration, cycle: u64) {
    let mut child = common::binary(dir)
        .args(["--listen", "127.0.0.1:0", "--fsync", fsync])
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "cycle {cycle}: the start killed after {delay:?} had ended on its own ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files under `dir`, their bytes, and the bytes the file system allocated for them.
fn disk_usage(dir: &Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut usage = (0, 0, 0);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (f, b, a) = disk_usage(&entry.path());
            usage = (usage.0 + f, usage.1 + b, usage.2 + a);
        } else {
            usage = (
                usage.0 + 1,
                usage.1 + meta.len(),
                usage.2 + meta.blocks() * 512,
            );
        }
    }
    usage
}

/// Every retained entry of bucket `b` (`HISTORY >`).
fn retained(conn: &mut Conn, b: usize) -> Vec<Entry> {
    assert_eq!(
        conn.call(&["USE", BUCKETS[b].0]).unwrap(),
        Reply::Status("OK".into())
    );
    Entry::parse_all(&conn.call(&["HISTORY", ">"]).unwrap())
}

/// One write per bucket after the restart: its revision is above every revision given
/// out before, lost ones included. Returns the revision of each.
fn probe(conn: &mut Conn, model: &mut Model, cycle: u64) -> Vec<u64> {
    let mut revs = Vec::new();
    for (b, (name, _)) in BUCKETS.iter().enumerate() {
        assert_eq!(
            conn.call(&["USE", name]).unwrap(),
            Reply::Status("OK".into())
        );
        let value = format!("probe.{cycle}.{name}");
        let reply = conn.call(&["PUT", "probe", &value]).unwrap();
        let rev = reply
            .int()
            .and_then(|r| u64::try_from(r).ok())
            .unwrap_or_else(|| panic!("PUT probe: {reply:?}"));
        let highest = model.highest_given(b);
        assert!(
            rev > highest,
            "cycle {cycle}: bucket {name}: the first write after the restart got revision \
             {rev}, but {highest} was given out before"
        );
        model.acked_put(b, "probe", &value, rev);
        revs.push(rev);
    }
    revs
}

/// Under `interval`, a restart after a kill skips the revisions the log had reserved
/// (some may have been seen, then lost): the first write after it, `first_rev`, lies
/// just past them, so a watch resumed from it (`rev - 1` skipped) must get `lost`
/// rather than a history that does not say what it missed.
fn watch_from_skipped_is_lost(addr: std::net::SocketAddr, b: usize, first_rev: u64) {
    let mut conn = Conn::connect(addr).unwrap();
    assert_eq!(
        conn.call(&["USE", BUCKETS[b].0]).unwrap(),
        Reply::Status("OK".into())
    );
    let from = first_rev.to_string();
    assert_eq!(
        conn.call(&["WATCH", ">", "FROM", &from]).unwrap(),
        Reply::Int(1)
    );
    let frame = conn.read().unwrap();
    let Reply::Array(Some(items)) = &frame else {
        panic!("bucket {}: WATCH > FROM {from}: {frame:?}", BUCKETS[b].0);
    };
    let words: Vec<Option<String>> = items.iter().take(3).map(Reply::text).collect();
    assert!(
        items.len() == 4
            && words == [Some("watch".into()), None, Some("lost".into())]
            && items[1] == Reply::Int(1),
        "bucket {}: WATCH > FROM {from} after a restart that skipped revisions: {frame:?}",
        BUCKETS[b].0
    );
}

fn report(mode: Mode, f: &Figures, took: Duration) {
    println!(
        "kill torture ({mode:?}) figures: {} cycles, {} restarts (all succeeded) in {:.1} s; \
         writes: {} acknowledged, {} acknowledged checked after a restart, {} refused by \
         preconditions ({:?}), {} of unknown outcome ({} of them found applied); entries read by \
         clients {}, entries found after restarts {}; batches: {} acknowledged, {} aborted, \
         {} unknown ({} found applied, whole); lost: {} acknowledged, {} read, {} found \
         earlier; COMPACT passes {}; starts killed while recovering {}; restarts that skipped revisions {}, that cut a torn tail {}",
        f.cycles,
        f.restarts,
        took.as_secs_f64(),
        f.writes_acked,
        f.acked_checked,
        f.writes_refused,
        f.refusals,
        f.writes_unknown,
        f.unknown_found_applied,
        f.entries_read,
        f.entries_found,
        f.batches_acked,
        f.batches_aborted,
        f.batches_unknown,
        f.batches_unknown_applied,
        f.lost_acked,
        f.lost_read,
        f.lost_found,
        f.compactions,
        f.starts_killed,
        f.counter_skips,
        f.tails_cut,
    );
}
