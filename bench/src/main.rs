//! `logkv-bench`: the side-by-side comparison harness (docs/BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p logkv-bench -- embedded [--n N] [--stores logkv,...] [--workloads W1,...]
//! cargo run --release -p logkv-bench --features peers -- embedded
//! cargo run --release -p logkv-bench -- server [--n N] [--server-bin PATH] ...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use logkv_bench::report::Reporter;
use logkv_bench::{embedded, server, stores};

/// Measures logkv against its peers side by side; prints one JSON object per line on stdout.
#[derive(Debug, Parser)]
#[command(name = "logkv-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// logkv against redb, fjall and sled (peers need `--features peers`).
    Embedded(EmbeddedArgs),
    /// logkv-server against redis-server, loaded by redis-benchmark, plus S5, S6, S7, the
    /// HTTP gateway against the RESP port, and C1.
    Server(ServerArgs),
    /// Runs one store's workloads in a fresh process (used by `embedded`).
    #[command(name = "__child", hide = true)]
    Child(ChildArgs),
    /// Runs S5's floor server (used by `server`): prints its address, serves until stdin
    /// closes.
    #[command(name = "__floor", hide = true)]
    Floor,
}

#[derive(Debug, Args)]
struct EmbeddedArgs {
    /// Keys loaded (W1) and read/overwritten (W2, W3).
    #[arg(long, default_value_t = 1_000_000)]
    n: u32,
    /// Stores to compare (default: all built in: logkv, and redb, fjall, sled with `peers`).
    #[arg(long, value_delimiter = ',')]
    stores: Vec<String>,
    /// Workloads (default: all): W1..W6, limit-append, limit-btreemap, limit-fdatasync,
    /// watch-fanout, watch-slow. W2 includes W2.t2 and W4 includes W4.t16.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Directory for the stores' files (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the key orders.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Requests per redis-benchmark run at interval/everysec durability.
    #[arg(long, default_value_t = 200_000)]
    n: u64,
    /// Requests per redis-benchmark run at `always` durability.
    #[arg(long, default_value_t = 50_000)]
    n_durable: u64,
    /// Keys preloaded into both servers and drawn from at random (`redis-benchmark -r`).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    keyspace: u64,
    /// Bytes of each value (the preload's and redis-benchmark's `-d`).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Rounds of the redis-benchmark comparison; rows report the median round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// The logkv-server binary (default: next to this binary, e.g. target/release/logkv-server).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The redis-server program.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// The redis-benchmark program.
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark: String,
    /// redis-benchmark clients (-c).
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// S5: watcher connections.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// S5: measured writes per round (2 rounds per server).
    #[arg(long, default_value_t = 500)]
    s5_writes: usize,
    /// S6: requests per redis-benchmark run.
    #[arg(long, default_value_t = 500_000)]
    s6_requests: u64,
    /// S7: buckets, one key each.
    #[arg(long, default_value_t = 10_000)]
    s7_buckets: usize,
    /// C1: requests per redis-benchmark run against the single node, the leader and a
    /// follower (longer than `--n-durable`: runs of 50,000 SETs at -P 16 lasted a fraction of
    /// a second, and their ratio moved from 0.40 to 0.76 between runs of the same build).
    #[arg(long, default_value_t = 300_000)]
    c1_requests: u64,
    /// C1: SIGKILLs of the cluster's leader whose failover time is measured.
    #[arg(long, default_value_t = 20)]
    c1_kills: usize,
    /// C1: writer threads loading the cluster while its leader is killed.
    #[arg(long, default_value_t = 2)]
    c1_writers: usize,
    /// Parts to run (default: all): compare, onekey, verbs, S5, S6, S7, gateway, C1.
    #[arg(long, value_delimiter = ',')]
    parts: Vec<String>,
    /// Directory for the servers' files (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Longest one redis-benchmark run may take, in seconds.
    #[arg(long, default_value_t = 600)]
    bench_timeout: u64,
}

#[derive(Debug, Args)]
struct ChildArgs {
    #[arg(long)]
    store: String,
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    #[arg(long)]
    n: u32,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = match cli.cmd {
        Cmd::Embedded(a) => run_embedded(a),
        Cmd::Server(a) => run_server(a),
        Cmd::Child(a) => match embedded::child(&a.store, &a.workloads, a.n, a.seed, &a.dir) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: {} {}: {e}", a.store, a.workloads.join(","));
                false
            }
        },
        Cmd::Floor => match server::floor::serve_until_stdin_closes() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: floor server: {e}");
                false
            }
        },
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_embedded(a: EmbeddedArgs) -> bool {
    let stores = if a.stores.is_empty() {
        stores::available()
            .iter()
            .map(std::string::ToString::to_string)
            .collect()
    } else {
        a.stores
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect()
    };
    let mut workloads = Vec::new();
    if a.workloads.is_empty() {
        workloads = embedded::WORKLOADS
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
    } else {
        for w in &a.workloads {
            match embedded::normalise_workload(w.trim()) {
                Some(k) if !workloads.iter().any(|x| x == k) => workloads.push(k.to_string()),
                Some(_) => {}
                None => {
                    eprintln!(
                        "error: unknown workload {w:?} (known: {})",
                        embedded::WORKLOADS.join(", ")
                    );
                    return false;
                }
            }
        }
    }
    let cfg = embedded::Config {
        n: a.n,
        stores,
        workloads,
        dir: a.dir,
        seed: a.seed,
    };
    let mut rep = Reporter::new();
    embedded::run(&cfg, &mut rep)
}

fn run_server(a: ServerArgs) -> bool {
    let Ok(rounds) = usize::try_from(a.rounds) else {
        eprintln!("error: --rounds {} is too large", a.rounds);
        return false;
    };
    let parts = if a.parts.is_empty() {
        server::PARTS
            .iter()
            .map(std::string::ToString::to_string)
            .collect()
    } else {
        for p in &a.parts {
            if !server::PARTS.iter().any(|k| k.eq_ignore_ascii_case(p)) {
                eprintln!(
                    "error: unknown part {p:?} (known: {})",
                    server::PARTS.join(", ")
                );
                return false;
            }
        }
        a.parts
    };
    let cfg = server::Config {
        n: a.n,
        n_durable: a.n_durable,
        keyspace: a.keyspace,
        value_size: a.value_size,
        server_bin: a.server_bin,
        redis_server: a.redis_server,
        redis_benchmark: a.redis_benchmark,
        clients: a.clients,
        watchers: a.watchers,
        s5_writes: a.s5_writes,
        s6_requests: a.s6_requests,
        s7_buckets: a.s7_buckets,
        c1_requests: a.c1_requests,
        c1_kills: a.c1_kills,
        c1_writers: a.c1_writers,
        parts,
        dir: a.dir,
        bench_timeout: Duration::from_secs(a.bench_timeout),
        rounds,
    };
    let mut rep = Reporter::new();
    server::run(&cfg, &mut rep)
}
