//! The server suite: logkv-server against redis-server on loopback (docs/BENCHMARKS.md).
//!
//! | part | module | what |
//! |---|---|---|
//! | `compare` | [`compare`] | redis-benchmark SET/GET, `-P 1` and `-P 16`, `-c 50`, over a preloaded keyspace of `--keyspace` random keys, at both durability pairs |
//! | `onekey` | [`compare`] | the same without `-r` (one key): rows `*.onekey` |
//! | `S5` | [`fanout`], [`floor`] | watch fan-out latency, with redis PUBLISH/SUBSCRIBE as the anchor and a server that only sends as the floor |
//! | `S6` | [`slow`] | a stalled and an active watcher under redis-benchmark SET load |
//! | `S7` | [`buckets`] | many buckets: disk, threads, memory, files, restart |
//! | `verbs` | [`verbs`] | PUT, UPDATE and HISTORY, with redis SET and GET from the same client as anchors |
//! | `gateway` | [`gateway`] | the HTTP gateway's GET and SSE fan-out against the RESP port's |
//! | `C1` | [`cluster`] | a 3-node cluster against a single node: SET at the leader and a follower, failover time |

pub mod buckets;
pub mod cluster;
pub mod compare;
pub mod fanout;
pub mod floor;
pub mod gateway;
pub mod load;
pub mod process;
pub mod slow;
pub mod verbs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use self::fanout::{Latencies, Side};
use self::floor::FloorProcess;
use self::process::{default_server_bin, start_logkv, start_redis, which};
use crate::report::{Reporter, Row};
use crate::resp::Value;
use crate::stores::BoxError;
use crate::sys;

/// Options of one server run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests per redis-benchmark run at interval/everysec durability.
    pub n: u64,
    /// Requests per redis-benchmark run at `always` durability.
    pub n_durable: u64,
    /// Keys preloaded and drawn from (`-r`).
    pub keyspace: u64,
    /// Bytes of each value (preload and `-d`).
    pub value_size: usize,
    /// The logkv-server binary (default: next to this binary, i.e. target/release).
    pub server_bin: Option<PathBuf>,
    /// The redis-server program.
    pub redis_server: String,
    /// The redis-benchmark program.
    pub redis_benchmark: String,
    /// redis-benchmark clients (`-c`).
    pub clients: u32,
    /// S5 watchers (and redis subscribers).
    pub watchers: usize,
    /// S5 measured writes per round.
    pub s5_writes: usize,
    /// S6 requests per redis-benchmark run.
    pub s6_requests: u64,
    /// S7 buckets.
    pub s7_buckets: usize,
    /// C1: requests per run against each of the single node, the leader and a follower.
    pub c1_requests: u64,
    /// C1: SIGKILLs of the leader measured.
    pub c1_kills: usize,
    /// C1: writer threads loading the cluster while its leader is killed.
    pub c1_writers: usize,
    /// Which parts to run (from [`PARTS`]).
    pub parts: Vec<String>,
    /// Where the servers' directories go.
    pub dir: Option<PathBuf>,
    /// Longest a single redis-benchmark run may take.
    pub bench_timeout: Duration,
    /// Rounds of the redis-benchmark comparison (rows report the median round).
    pub rounds: usize,
}

impl Config {
    /// Whether part `p` is to run.
    pub fn wants(&self, p: &str) -> bool {
        self.parts.iter().any(|x| x.eq_ignore_ascii_case(p))
    }
}

/// The parts of the server suite.
pub const PARTS: &[&str] = &[
    "compare", "onekey", "verbs", "S5", "S6", "S7", "gateway", "C1",
];

fn row(store: &str, workload: &str, value: f64, unit: &str, n: u64) -> Row {
    Row::new("server", store, workload, value, unit, n)
}

/// The programs the suite runs; `None` where one is missing (said on stderr).
struct Programs {
    logkv: Option<PathBuf>,
    redis: Option<PathBuf>,
    bench: Option<PathBuf>,
}

fn find_programs(cfg: &Config) -> Programs {
    let logkv = match cfg.server_bin.clone().or_else(default_server_bin) {
        Some(p) if p.is_file() => Some(p),
        p => {
            eprintln!(
                "logkv-server not found{}: skipping every logkv row and ratio \
                 (build it with `cargo build --release -p logkv-server`, or pass --server-bin)",
                p.map(|p| format!(" at {}", p.display()))
                    .unwrap_or_default()
            );
            None
        }
    };
    let redis = which(&cfg.redis_server);
    if redis.is_none() {
        eprintln!(
            "{} not found: skipping the redis rows and the logkv/redis ratios \
             (Debian: apt-get install redis-server)",
            cfg.redis_server
        );
    }
    let bench = which(&cfg.redis_benchmark);
    if bench.is_none() {
        eprintln!(
            "{} not found: skipping every redis-benchmark row (compare, onekey, S6) \
             (Debian: apt-get install redis-tools)",
            cfg.redis_benchmark
        );
    }
    Programs {
        logkv,
        redis,
        bench,
    }
}

/// Runs the server suite; rows go to `rep`. Returns false if something failed.
pub fn run(cfg: &Config, rep: &mut Reporter) -> bool {
    sys::raise_nofile_limit();
    crate::embedded::note_load();
    let base = match &cfg.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("logkv-bench-server-")
            .tempdir_in(d),
        None => tempfile::Builder::new()
            .prefix("logkv-bench-server-")
            .tempdir(),
    };
    let base = match base {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return false;
        }
    };
    let progs = find_programs(cfg);
    let mut ok = true;
    let mut check = |what: &str, r: Result<(), BoxError>| {
        if let Err(e) = r {
            eprintln!("error: {what}: {e}");
            ok = false;
        }
    };
    let (logkv, redis) = (progs.logkv.as_deref(), progs.redis.as_deref());
    if let Some(bench) = &progs.bench {
        if (cfg.wants("compare") || cfg.wants("onekey")) && (logkv.is_some() || redis.is_some()) {
            let r = compare::compare(cfg, bench, logkv, redis, base.path(), rep);
            check("server comparison", r);
        }
    }
    if let (true, Some(bin)) = (cfg.wants("verbs"), logkv) {
        check("verbs", verbs::verbs(cfg, bin, redis, base.path(), rep));
    }
    if cfg.wants("S5") {
        check("S5", s5(cfg, logkv, redis, base.path(), rep));
    }
    if let (true, Some(bin), Some(bench)) = (cfg.wants("S6"), logkv, &progs.bench) {
        let r = start_logkv(bin, "never", base.path()).and_then(|server| {
            eprintln!(
                "S6: redis-benchmark SET -c {} -P 16, {} requests per run, --fsync never",
                cfg.clients, cfg.s6_requests
            );
            slow::s6(cfg, bench, &server.addr(), server.port, server.pid(), rep)
        });
        check("S6", r);
    }
    if let (true, Some(bin)) = (cfg.wants("S7"), logkv) {
        eprintln!("S7: {} buckets with one key each", cfg.s7_buckets);
        check("S7", buckets::s7(bin, base.path(), cfg.s7_buckets, rep));
    }
    if let (true, Some(bin)) = (cfg.wants("gateway"), logkv) {
        check("gateway", gateway::gateway(cfg, bin, base.path(), rep));
    }
    if let (true, Some(bin)) = (cfg.wants("C1"), logkv) {
        let r = cluster::c1(cfg, progs.bench.as_deref(), bin, base.path(), rep);
        check("C1", r);
    }
    rep.print_table("server");
    crate::embedded::note_load();
    ok
}

/// S5 on both servers and on the floor server ([`floor`]), rounds A B C C B A.
fn s5(
    cfg: &Config,
    logkv: Option<&Path>,
    redis: Option<&Path>,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let logkv = logkv
        .map(|b| start_logkv(b, "interval=1000", base))
        .transpose()?;
    let redis = redis
        .map(|b| start_redis(b, "everysec", base))
        .transpose()?;
    eprintln!(
        "S5: {} subscribers, {} writes per round, rounds logkv, redis, floor, floor, redis, logkv",
        cfg.watchers, cfg.s5_writes
    );
    let mut lat = [
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    ];
    let mut rounds = [0, 0, 0];
    // The floor is a reference: if it fails, its rows are left out, not the servers'.
    let mut floor_failed = false;
    for i in [0, 1, 2, 2, 1, 0] {
        let (store, _) = S5_SERVERS[i];
        if i == 2 {
            if floor_failed {
                continue;
            }
            // Started for each of its rounds: its subscribers are the round's connections.
            let result = FloorProcess::spawn().and_then(|floor| {
                fanout::round(
                    store,
                    Side::Redis,
                    floor.addr(),
                    cfg.watchers,
                    cfg.s5_writes,
                    &mut lat[i],
                )
            });
            match result {
                Ok(()) => rounds[i] += 1,
                Err(e) => {
                    eprintln!("S5: the floor server failed ({e}); its rows are left out");
                    floor_failed = true;
                    rounds[i] = 0;
                }
            }
            continue;
        }
        let (side, server) = if i == 0 {
            (Side::Logkv, logkv.as_ref())
        } else {
            (Side::Redis, redis.as_ref())
        };
        let Some(server) = server else { continue };
        fanout::round(
            store,
            side,
            &server.addr(),
            cfg.watchers,
            cfg.s5_writes,
            &mut lat[i],
        )
        .map_err(|e| format!("{store}: {e}\n{}", server.log_tail()))?;
        rounds[i] += 1;
    }
    let mut p = [None, None, None];
    for (i, (store, prefix)) in S5_SERVERS.iter().enumerate() {
        if rounds[i] > 0 {
            p[i] = Some(fanout::emit(
                store,
                prefix,
                &mut lat[i],
                cfg.watchers,
                rounds[i],
                rep,
            ));
        }
    }
    let n = lat[0].last.len() as u64;
    if let (Some((l50, l99)), Some((r50, r99))) = (p[0], p[1]) {
        rep.emit(row("logkv/redis", "S5.p50", l50 / r50, "ratio", n));
        rep.emit(row("logkv/redis", "S5.p99", l99 / r99, "ratio", n));
    }
    if let (Some((l50, l99)), Some((f50, f99))) = (p[0], p[2]) {
        rep.emit(row("logkv/floor", "S5.p50", l50 / f50, "ratio", n));
        rep.emit(row("logkv/floor", "S5.p99", l99 / f99, "ratio", n));
    }
    Ok(())
}

/// S5's servers in the order of its latency pools: (the rows' store, their prefix).
const S5_SERVERS: [(&str, &str); 3] = [
    ("logkv", "S5"),
    ("redis", "S5.redis"),
    ("floor", "S5.floor"),
];

/// p-th percentile (0–100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "p is 0..=100, so the rank lies within 0..=len"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn expect_ok(v: Value, what: &str) -> Result<Value, BoxError> {
    match v {
        Value::Error(e) => Err(format!("{what}: -{e}").into()),
        v => Ok(v),
    }
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "nearest-rank percentiles return elements of the input: exact"
)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
