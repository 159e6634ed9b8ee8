//! C1: a three-node logkv cluster on loopback at `--fsync always`, against a single node in
//! the same run (docs/BENCHMARKS.md).
//!
//! Throughput: both are preloaded with the keyspace (as in [`super::compare`]), then
//! `redis-benchmark -t set -c clients -P p -r keyspace -d value-size` at `-P 1` and `-P 16`
//! goes to the single node, to the cluster's leader and to a follower (which forwards each
//! write to the leader), taking turns for `--rounds` rounds; rows are the median round, and
//! `cluster/single` rows are the leader's and the follower's ops/s over the single node's.
//! A run against the cluster counts only if the node that led it at its start still leads,
//! in the same term, at its end (no election in between: its rate would mix a leader's work
//! with an election's); otherwise it is made again, up to [`RUN_ATTEMPTS`] times.
//!
//! A reference in the same rounds, `three-singles`: three more single nodes, preloaded
//! alike, and the same load sent to all three at once, one redis-benchmark each, after the
//! single node's, the leader's and the follower's runs of the round. Every member of a
//! cluster stores every write, so it shows what three nodes that each do a single node's
//! work, with nothing replicated, reach on the machine's cores. It is not a strict bound:
//! it runs three clients where the cluster has one, and a follower parses no client
//! requests. Its row is each node's share of the writes over the time from the first
//! run's start to the last one's end (so that no node's rate counts time it ran alone),
//! and `three-singles/single` divides it by the single node's alone.
//!
//! Failover: while writers load a fresh cluster, its leader is killed (SIGKILL)
//! `--c1-kills` times.
//! Each time a probe writes to the surviving nodes until one acknowledges a write; the time
//! from the kill to that acknowledgement is one sample. The killed node is restarted on its
//! data, and the cluster has caught up (every node has applied what the leader had) before
//! the next kill.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::compare::{preload, quiet};
use super::process::{free_port, start_logkv, start_logkv_with, Running};
use super::{percentile, row, Config};
use crate::embedded::medians;
use crate::redisbench::{self, BenchResult, Load};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{Client, Value};
use crate::stores::BoxError;

const NODES: u64 = 3;
const PIPELINES: [u32; 2] = [1, 16];
/// Longest the cluster may take to elect a leader or to catch a node up.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// Runs against the cluster made before the part fails because each saw an election.
const RUN_ATTEMPTS: usize = 3;
/// Longest a failover may take before the run is called failed.
const FAILOVER_WITHIN: Duration = Duration::from_secs(60);

/// One member: its id, Raft port and data directory stay across restarts.
struct Node {
    id: u64,
    raft_port: u16,
    dir: PathBuf,
    process: Option<Running>,
}

/// Three `logkv-server --node-id …` processes on loopback.
struct Cluster<'a> {
    bin: &'a Path,
    base: PathBuf,
    initial: String,
    nodes: Vec<Node>,
}

impl<'a> Cluster<'a> {
    /// Starts the nodes in fresh directories under `base/name`.
    fn start(bin: &'a Path, base: &Path, name: &str) -> Result<Cluster<'a>, BoxError> {
        let base = base.join(name);
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let dir = base.join(format!("node{id}"));
            std::fs::create_dir_all(&dir)?;
            nodes.push(Node {
                id,
                raft_port: free_port(),
                dir,
                process: None,
            });
        }
        let initial = nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.raft_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            bin,
            base,
            initial,
            nodes,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Starts node `i` on its data directory (a new client port each time).
    fn spawn(&mut self, i: usize) -> Result<(), BoxError> {
        let n = &self.nodes[i];
        let extra = [
            "--node-id".to_string(),
            n.id.to_string(),
            "--raft-listen".to_string(),
            format!("127.0.0.1:{}", n.raft_port),
            "--initial-cluster".to_string(),
            self.initial.clone(),
        ];
        let p = start_logkv_with(
            self.bin,
            "always",
            &extra,
            &self.base,
            &n.dir,
            Duration::from_secs(30),
        )?;
        self.nodes[i].process = Some(p);
        Ok(())
    }

    /// SIGKILLs node `i`.
    fn kill(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    fn running(&self, i: usize) -> Result<&Running, BoxError> {
        self.nodes[i]
            .process
            .as_ref()
            .ok_or_else(|| format!("node {} is not running", self.nodes[i].id).into())
    }

    /// The client addresses of the running nodes (`None` for a stopped one).
    fn addrs(&self) -> Vec<Option<String>> {
        self.nodes
            .iter()
            .map(|n| n.process.as_ref().map(Running::addr))
            .collect()
    }

    /// `CLUSTER INFO` of node `i`, if it answers.
    fn info(&self, i: usize) -> Option<Value> {
        let mut c = Client::connect(&self.running(i).ok()?.addr()).ok()?;
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .ok()?;
        match c.call(&[b"CLUSTER", b"INFO"]).ok()? {
            Value::Error(_) => None,
            v => Some(v),
        }
    }

    fn field(&self, i: usize, name: &str) -> Option<i64> {
        self.info(i)?.field(name)?.as_int()
    }

    /// Waits until every node runs, they all name the same leader, and each has applied what
    /// the leader had applied when they first agreed. Returns the leader's index.
    fn settle(&self) -> Result<usize, BoxError> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        let mut target: Option<(usize, i64)> = None;
        loop {
            let leaders: Vec<Option<i64>> = (0..self.nodes.len())
                .map(|i| self.field(i, "leader"))
                .collect();
            let agreed = leaders[0].filter(|l| leaders.iter().all(|x| *x == Some(*l)));
            let leader =
                agreed.and_then(|l| self.nodes.iter().position(|n| i64::try_from(n.id) == Ok(l)));
            if let Some(l) = leader {
                match target {
                    Some((t, applied)) if t == l => {
                        let caught_up = (0..self.nodes.len())
                            .all(|i| self.field(i, "applied").is_some_and(|a| a >= applied));
                        if caught_up {
                            return Ok(l);
                        }
                    }
                    _ => target = self.field(l, "applied").map(|a| (l, a)),
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not settle in {SETTLE_WITHIN:?} (leaders seen: {leaders:?})\n{}",
                    self.log_tails()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The settled leader's index and its Raft term.
    fn leadership(&self) -> Result<(usize, i64), BoxError> {
        let leader = self.settle()?;
        let term = self
            .field(leader, "term")
            .ok_or("the leader did not say its term")?;
        Ok((leader, term))
    }

    /// Whether node `leader` still leads in `term`: every node names it, and its term is
    /// the same (no election since, even one it won again). A node that does not answer
    /// counts as a change.
    fn still_led_by(&self, leader: usize, term: i64) -> bool {
        let id = self
            .nodes
            .get(leader)
            .and_then(|n| i64::try_from(n.id).ok());
        id.is_some()
            && (0..self.nodes.len()).all(|i| self.field(i, "leader") == id)
            && self.field(leader, "term") == Some(term)
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| {
                let p = n.process.as_ref()?;
                Some(format!("node {}:\n{}", n.id, p.log_tail()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Both halves of C1 (throughput needs redis-benchmark; failover does not).
pub fn c1(
    cfg: &Config,
    bench: Option<&Path>,
    bin: &Path,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    if let Some(bench) = bench {
        throughput(cfg, bench, bin, base, rep)?;
    }
    failover(cfg, bin, base, rep)
}

/// SET throughput at a single node, the leader and a follower; ratios to the single node.
fn throughput(
    cfg: &Config,
    bench: &Path,
    bin: &Path,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let single = start_logkv(bin, "always", base)?;
    let three = [
        start_logkv(bin, "always", base)?,
        start_logkv(bin, "always", base)?,
        start_logkv(bin, "always", base)?,
    ];
    let cluster = Cluster::start(bin, base, "c1-throughput")?;
    let leader = cluster.settle()?;
    eprintln!(
        "C1: a single node and a 3-node cluster (leader: node {}), --fsync always",
        cluster.nodes[leader].id
    );
    preload(&single, cfg.keyspace, cfg.value_size)?;
    for node in &three {
        preload(node, cfg.keyspace, cfg.value_size)?;
    }
    preload(cluster.running(leader)?, cfg.keyspace, cfg.value_size)
        .map_err(|e| format!("{e}\n{}", cluster.log_tails()))?;
    let mut runs = Vec::new();
    for round in 0..cfg.rounds {
        for (i, p) in PIPELINES.into_iter().enumerate() {
            let mut order = ["single", "leader", "follower"];
            order.rotate_left((round + i) % 3);
            for target in order.into_iter().chain(["three-singles"]) {
                let load = Load {
                    tests: "set",
                    clients: cfg.clients,
                    requests: cfg.c1_requests,
                    pipeline: p,
                    keyspace: Some(cfg.keyspace),
                    value_size: cfg.value_size,
                    command: Vec::new(),
                };
                eprintln!(
                    "[round {}/{}] redis-benchmark -h 127.0.0.1 {} against the {target}",
                    round + 1,
                    cfg.rounds,
                    load.args().join(" ")
                );
                let at = target_server(target, &single)?;
                let results = run_target(cfg, bench, &load, target, at, &three, &cluster)?;
                for r in results
                    .iter()
                    .filter(|r| r.test.eq_ignore_ascii_case("set"))
                {
                    let w = format!("C1.set.P{p}.{target}");
                    let tag = |row: Row| {
                        row.with("clients", Extra::count(cfg.clients))
                            .with("pipeline", Extra::count(p))
                            .with("fsync", Extra::Str("always".into()))
                            .with("keyspace", Extra::count(cfg.keyspace))
                            .with("value_size", Extra::count(cfg.value_size))
                    };
                    runs.push(tag(row("logkv", &w, r.rps, "ops/s", cfg.c1_requests)));
                    if let Some(x) = r.p50_ms {
                        runs.push(tag(row(
                            "logkv",
                            &format!("{w}.p50"),
                            x,
                            "ms",
                            cfg.c1_requests,
                        )));
                    }
                    if let Some(x) = r.p99_ms {
                        runs.push(tag(row(
                            "logkv",
                            &format!("{w}.p99"),
                            x,
                            "ms",
                            cfg.c1_requests,
                        )));
                    }
                }
            }
        }
    }
    let med = medians(runs);
    for r in &med {
        rep.emit(r.clone());
    }
    for r in ratios(&med) {
        rep.emit(r);
    }
    Ok(())
}

/// One run of `load` against `at` (named `target` in the rows).
fn run_target(
    cfg: &Config,
    bench: &Path,
    load: &Load,
    target: &str,
    at: Target<'_>,
    three: &[Running; 3],
    cluster: &Cluster<'_>,
) -> Result<Vec<BenchResult>, BoxError> {
    match at {
        Target::ThreeSingles => {
            for node in three {
                quiet(node)?;
            }
            at_once(bench, three, load, cfg.bench_timeout)
        }
        Target::Single(server) => {
            quiet(server)?;
            redisbench::run(bench, server.port, load, cfg.bench_timeout)
        }
        Target::Cluster(member) => run_while_led(
            || {
                for i in 0..cluster.nodes.len() {
                    quiet(cluster.running(i)?)?;
                }
                let (leader, term) = cluster.leadership()?;
                let server = cluster.running(member.node(leader, cluster.nodes.len()))?;
                let results = redisbench::run(bench, server.port, load, cfg.bench_timeout)
                    .map_err(|e| format!("{target}: {e}\n{}", cluster.log_tails()))?;
                Ok((results, cluster.still_led_by(leader, term)))
            },
            |attempt| {
                eprintln!(
                    "    an election during the run against the {target}, or a node that \
                     did not answer (attempt {attempt} of {RUN_ATTEMPTS}): made again"
                );
            },
        ),
    }
}

/// What a C1 run loads.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The single node.
    Single(&'a Running),
    /// A node of the cluster, picked once it has settled (caught up, so that a follower's
    /// run is not a catch-up).
    Cluster(Member),
    /// The reference, whose three nodes are loaded at once.
    ThreeSingles,
}

/// A member of the cluster by its role.
#[derive(Clone, Copy)]
enum Member {
    Leader,
    Follower,
}

impl Member {
    /// The index of this member among `nodes` nodes led by node `leader`.
    fn node(self, leader: usize, nodes: usize) -> usize {
        match self {
            Member::Leader => leader,
            Member::Follower => (leader + 1) % nodes,
        }
    }
}

/// The target named `target` in the rows.
fn target_server<'a>(target: &str, single: &'a Running) -> Result<Target<'a>, BoxError> {
    Ok(match target {
        "three-singles" => Target::ThreeSingles,
        "single" => Target::Single(single),
        "leader" => Target::Cluster(Member::Leader),
        "follower" => Target::Cluster(Member::Follower),
        other => return Err(format!("no C1 target {other}").into()),
    })
}

/// Makes a run against the cluster (`run`: its results, and whether the leader of its start
/// still led at its end, in the same term) until one saw no election, at most
/// [`RUN_ATTEMPTS`] times; `again` is told of each run made again.
fn run_while_led<T>(
    mut run: impl FnMut() -> Result<(T, bool), BoxError>,
    mut again: impl FnMut(usize),
) -> Result<T, BoxError> {
    for attempt in 1..=RUN_ATTEMPTS {
        let (results, led) = run()?;
        if led {
            return Ok(results);
        }
        if attempt < RUN_ATTEMPTS {
            again(attempt);
        }
    }
    Err(format!(
        "C1: an election during each of {RUN_ATTEMPTS} runs against the cluster, or a node \
         that did not answer CLUSTER INFO after one: its leader does not hold (see the \
         nodes' logs)"
    )
    .into())
}

/// The same load sent to the single nodes `nodes` at once, one redis-benchmark each: one
/// result whose rate is each node's share of the writes over the time from the first run's
/// start to the last one's end (`three-singles`; its latencies are left out).
fn at_once(
    bench: &Path,
    nodes: &[Running; 3],
    load: &Load,
    timeout: Duration,
) -> Result<Vec<BenchResult>, BoxError> {
    type Timed = Result<(Instant, Instant, Vec<BenchResult>), String>;
    let runs: Vec<Timed> = std::thread::scope(|sc| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                sc.spawn(move || {
                    let start = Instant::now();
                    redisbench::run(bench, node.port, load, timeout)
                        .map(|r| (start, Instant::now(), r))
                        .map_err(|e| format!("three-singles: {e}\n{}", node.log_tail()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a redis-benchmark thread panicked".into()))
            })
            .collect()
    });
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for run in runs {
        let (start, end, results) = run?;
        if !results.iter().any(|r| r.test.eq_ignore_ascii_case("set")) {
            return Err("three-singles: a redis-benchmark run reported no SET".into());
        }
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => return Err("three-singles: no run".into()),
    };
    #[allow(
        clippy::cast_precision_loss,
        reason = "request counts are far below 2^52"
    )]
    let per_node = load.requests as f64 / span;
    Ok(vec![BenchResult {
        test: "SET".into(),
        rps: per_node,
        p50_ms: None,
        p99_ms: None,
    }])
}

/// `cluster/single` rows: the leader's and the follower's SET ops/s over the single node's;
/// `three-singles/single`: the reference's over the single node's.
fn ratios(rows: &[Row]) -> Vec<Row> {
    let mut out = Vec::new();
    for p in PIPELINES {
        let ops = |target: &str| {
            let w = format!("C1.set.P{p}.{target}");
            rows.iter()
                .find(|r| r.workload == w && r.unit == "ops/s")
                .map(|r| r.value)
        };
        let Some(single) = ops("single") else {
            continue;
        };
        for target in ["leader", "follower", "three-singles"] {
            if let Some(v) = ops(target) {
                let w = format!("C1.set.P{p}.{target}");
                let store = if target == "three-singles" {
                    "three-singles/single"
                } else {
                    "cluster/single"
                };
                out.push(
                    Row::new("server", store, &w, v / single, "ratio", 0)
                        .with("pipeline", Extra::count(p)),
                );
            }
        }
    }
    out
}

/// Writers that keep the cluster busy: each SETs its own keys, one at a time, on one node
/// after another (moving on when its node dies). Returns the acknowledged writes.
fn load_writer(id: usize, addrs: &Mutex<Vec<Option<String>>>, stop: &AtomicBool, acks: &AtomicU64) {
    let value = vec![b'v'; 256];
    let mut target = id;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        target += 1;
        let addr = {
            let a = addrs.lock().unwrap_or_else(PoisonError::into_inner);
            a[target % a.len()].clone()
        };
        let Some(mut c) = addr.and_then(|a| Client::connect(&a).ok()) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        while !stop.load(Ordering::Acquire) {
            n += 1;
            let key = format!("c1:load:{id}:{n}");
            match c.call(&[b"SET", key.as_bytes(), &value]) {
                Ok(v) if v.is_str("OK") => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
    }
}

/// Writes to the nodes in `addrs` until one acknowledges; the time since `killed_at`.
fn first_ack(addrs: &[String], killed_at: Instant) -> Result<Duration, BoxError> {
    let mut n = 0u64;
    for addr in addrs.iter().cycle() {
        if killed_at.elapsed() > FAILOVER_WITHIN {
            break;
        }
        let Ok(mut c) = Client::connect(addr) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        c.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        loop {
            n += 1;
            let key = format!("c1:probe:{n}");
            match c.call(&[b"SET", key.as_bytes(), b"x"]) {
                Ok(v) if v.is_str("OK") => return Ok(killed_at.elapsed()),
                // NOLEADER or INDOUBT: the new leader is not there yet.
                Ok(Value::Error(_)) if killed_at.elapsed() < FAILOVER_WITHIN => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
    Err(format!("no write was acknowledged within {FAILOVER_WITHIN:?} of the kill").into())
}

/// `--c1-kills` SIGKILLs of the leader under `--c1-writers` writers.
fn failover(cfg: &Config, bin: &Path, base: &Path, rep: &mut Reporter) -> Result<(), BoxError> {
    let mut cluster = Cluster::start(bin, base, "c1-failover")?;
    cluster.settle()?;
    eprintln!(
        "C1 failover: {} SIGKILLs of the leader under {} writers",
        cfg.c1_kills, cfg.c1_writers
    );
    let addrs = Arc::new(Mutex::new(cluster.addrs()));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..cfg.c1_writers)
        .map(|id| {
            let (addrs, stop, acks) = (Arc::clone(&addrs), Arc::clone(&stop), Arc::clone(&acks));
            std::thread::spawn(move || load_writer(id, &addrs, &stop, &acks))
        })
        .collect();
    let mut samples = Vec::new();
    let result = (|| -> Result<(), BoxError> {
        for k in 0..cfg.c1_kills {
            let leader = cluster.settle()?;
            std::thread::sleep(Duration::from_millis(500));
            let survivors: Vec<String> = cluster
                .addrs()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .filter_map(|(_, a)| a)
                .collect();
            let killed_at = Instant::now();
            cluster.kill(leader);
            let took = first_ack(&survivors, killed_at)
                .map_err(|e| format!("{e}\n{}", cluster.log_tails()))?;
            eprintln!(
                "    kill {}/{}: node {}; first acknowledged write {:.0} ms after the kill",
                k + 1,
                cfg.c1_kills,
                cluster.nodes[leader].id,
                took.as_secs_f64() * 1000.0
            );
            samples.push(took.as_secs_f64() * 1000.0);
            cluster.spawn(leader)?;
            *addrs.lock().unwrap_or_else(PoisonError::into_inner) = cluster.addrs();
        }
        Ok(())
    })();
    stop.store(true, Ordering::Release);
    for w in writers {
        let _ = w.join();
    }
    result?;
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as u64;
    let tag = |row: Row| {
        row.with("kills", Extra::count(n))
            .with("writers", Extra::count(cfg.c1_writers))
            .with("fsync", Extra::Str("always".into()))
    };
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        let w = format!("C1.failover.{name}");
        rep.emit(tag(row("logkv", &w, percentile(&samples, p), "ms", n)));
    }
    #[allow(
        clippy::cast_precision_loss,
        reason = "a count of writes in one run is far below 2^52"
    )]
    let acknowledged = acks.load(Ordering::Relaxed) as f64;
    let w = "C1.failover.load_writes";
    rep.emit(tag(row("logkv", w, acknowledged, "count", n)));
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "a ratio of two exact binary fractions is exact"
)]
mod tests {
    use super::*;

    /// A run that saw an election is made again; one that did not is kept; runs that
    /// all saw one fail the part after `RUN_ATTEMPTS`.
    #[test]
    fn a_run_that_saw_an_election_is_made_again() {
        let mut runs = 0;
        let mut retold = Vec::new();
        let got = run_while_led(
            || {
                runs += 1;
                Ok((runs, runs == 2))
            },
            |a| retold.push(a),
        )
        .unwrap();
        assert_eq!(
            (got, retold),
            (2, vec![1]),
            "the second run, the first one made again"
        );

        let mut runs = 0;
        let err = run_while_led(
            || {
                runs += 1;
                Ok(((), false))
            },
            |_| {},
        )
        .unwrap_err();
        assert_eq!(runs, RUN_ATTEMPTS);
        assert!(err.to_string().contains("election"), "{err}");

        let err = run_while_led(|| Err::<((), bool), _>("down".into()), |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "down", "an error is not retried");
    }

    #[test]
    fn ratios_divide_by_the_single_node() {
        let r = |w: &str, v: f64| Row::new("server", "logkv", w, v, "ops/s", 10);
        let rows = vec![
            r("C1.set.P16.single", 400.0),
            r("C1.set.P16.leader", 200.0),
            r("C1.set.P16.follower", 100.0),
            r("C1.set.P16.three-singles", 150.0),
            r("C1.set.P1.leader", 50.0),
        ];
        let out = ratios(&rows);
        assert_eq!(
            out.len(),
            3,
            "no ratio without the single node's row: {out:?}"
        );
        assert_eq!(out[0].workload, "C1.set.P16.leader");
        assert_eq!(out[0].value, 0.5);
        assert_eq!(out[1].workload, "C1.set.P16.follower");
        assert_eq!(out[1].value, 0.25);
        assert!(out[..2]
            .iter()
            .all(|r| r.store == "cluster/single" && r.unit == "ratio"));
        assert_eq!(out[2].workload, "C1.set.P16.three-singles");
        assert_eq!(out[2].store, "three-singles/single");
        assert_eq!(out[2].value, 0.375);
    }
}
