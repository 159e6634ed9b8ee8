//! The server suite: logkv-server against redis-server on loopback (docs/BENCHMARKS.md).
//!
//! Both servers run in fresh temporary directories at matched durability (logkv
//! `--fsync interval=1000` against redis `appendfsync everysec`, and `always` against
//! `always`) and are loaded by the same client, `redis-benchmark -t set,get -c 50` at
//! `-P 1` and `-P 16`, the two servers alternating, for `--rounds` rounds (default 3). Rows:
//! the median round's ops/s per server, p50/p99 latency when redis-benchmark prints them, and
//! `logkv/redis` ratios of the medians.
//!
//! The harness's own RESP client ([`crate::resp`]) measures the logkv-only rows:
//! - `S5.p50` / `S5.p99`: W watchers (connections, each `WATCH >` on a fresh bucket), one
//!   writer doing PUTs one at a time; the time from the PUT's reply to the moment the last
//!   watcher has the event. `S5.each.p50` / `.p99`: the same per (write, watcher) pair.
//! - `S6`: writer throughput (PUTs pipelined 16 deep) with one watcher connection that never
//!   reads, over the same without it (`S6.slow` / `S6.none`, medians of 3 alternating runs).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::embedded::medians;
use crate::redisbench::{parse_csv, BenchResult};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{watch_frame, Client, Inbox, Value, WatchFrame};
use crate::stores::BoxError;
use crate::sys;
use crate::watchbench::median;

/// Options of one server run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests per redis-benchmark run at interval/everysec durability.
    pub n: u64,
    /// Requests per redis-benchmark run at `always` durability.
    pub n_durable: u64,
    /// The logkv-server binary (default: next to this binary, i.e. target/release).
    pub server_bin: Option<PathBuf>,
    /// The redis-server program.
    pub redis_server: String,
    /// The redis-benchmark program.
    pub redis_benchmark: String,
    /// redis-benchmark clients (`-c`).
    pub clients: u32,
    /// S5 watchers.
    pub watchers: usize,
    /// S5 measured writes.
    pub s5_writes: usize,
    /// S6 writes per run.
    pub s6_writes: usize,
    /// Which parts to run: `compare`, `S5`, `S6`.
    pub parts: Vec<String>,
    /// Where the servers' directories go.
    pub dir: Option<PathBuf>,
    /// Longest a single redis-benchmark run may take.
    pub bench_timeout: Duration,
    /// Rounds of the redis-benchmark comparison (rows report the median round).
    pub rounds: usize,
}

/// The parts of the server suite.
pub const PARTS: &[&str] = &["compare", "S5", "S6"];

const PIPELINES: [u32; 2] = [1, 16];
const S6_ROUNDS: usize = 3;
const S6_DEPTH: usize = 16;
const S5_WARMUP: usize = 5;
const VALUE: [u8; 100] = [b'v'; 100];

fn row(store: &str, workload: &str, value: f64, unit: &str, n: u64) -> Row {
    Row::new("server", store, workload, value, unit, n)
}

/// A server process in its own temporary directory; stopped on drop.
struct Running {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            sys::terminate(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "    {} did not stop on SIGTERM within 15 s: killing it",
                self.name
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// logkv-server next to this binary, else in the release directory beside it (so a debug
/// build of the harness still finds `target/release/logkv-server`).
fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let here = dir.join("logkv-server");
    let release = dir.parent()?.join("release").join("logkv-server");
    Some(if here.is_file() || !release.is_file() {
        here
    } else {
        release
    })
}

/// Finds a program on PATH (or takes a path as given).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn start(
    name: &'static str,
    program: &Path,
    args: impl Fn(u16, &Path) -> Vec<String>,
    base: &Path,
) -> Result<Running, BoxError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)?;
    let port = free_port()?;
    let log = base.join(format!("{name}-{port}.log"));
    let logf = std::fs::File::create(&log)?;
    let child = Command::new(program)
        .args(args(port, dir.path()))
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let mut r = Running {
        name,
        child,
        port,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Err(format!("{name} exited at start ({status}):\n{}", r.log_tail()).into());
        }
        if let Ok(mut c) = Client::connect(&r.addr()) {
            if let Ok(v) = c.call(&[b"PING"]) {
                if v.is_str("PONG") {
                    return Ok(r);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not answer PING in 20 s:\n{}", r.log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_logkv(bin: &Path, fsync: &str, base: &Path) -> Result<Running, BoxError> {
    let fsync = fsync.to_string();
    start(
        "logkv-server",
        bin,
        move |port, dir| {
            vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                dir.display().to_string(),
                "--fsync".into(),
                fsync.clone(),
            ]
        },
        base,
    )
}

fn start_redis(bin: &Path, appendfsync: &str, base: &Path) -> Result<Running, BoxError> {
    let appendfsync = appendfsync.to_string();
    start(
        "redis-server",
        bin,
        move |port, dir| {
            vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                appendfsync.clone(),
                "--dir".into(),
                dir.display().to_string(),
                "--save".into(),
                String::new(),
                "--daemonize".into(),
                "no".into(),
            ]
        },
        base,
    )
}

/// Runs redis-benchmark against `port` and parses its CSV.
fn redis_benchmark(
    program: &Path,
    port: u16,
    clients: u32,
    n: u64,
    pipeline: u32,
    timeout: Duration,
) -> Result<Vec<BenchResult>, BoxError> {
    let mut child = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get"])
        .args(["-c", &clients.to_string(), "-n", &n.to_string()])
        .args(["-P", &pipeline.to_string(), "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().ok_or("no stdout")?;
    let mut se = child.stderr.take().ok_or("no stderr")?;
    let ho = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let he = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-benchmark took longer than {timeout:?}: killed").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = ho.join().unwrap_or_default();
    let stderr = he.join().unwrap_or_default();
    let results = parse_csv(&stdout);
    if !status.success() || results.is_empty() {
        return Err(format!(
            "redis-benchmark failed ({status}); stdout: {stdout:?}; stderr: {stderr:?}"
        )
        .into());
    }
    Ok(results)
}

/// Runs the server suite; rows go to `rep`. Returns false if something failed.
pub fn run(cfg: &Config, rep: &mut Reporter) -> bool {
    sys::raise_nofile_limit();
    crate::embedded::note_load();
    let mut ok = true;
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
    let logkv_bin = cfg.server_bin.clone().or_else(default_server_bin);
    let logkv_bin = match logkv_bin {
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
    let redis_bin = which(&cfg.redis_server);
    if redis_bin.is_none() {
        eprintln!(
            "{} not found: skipping the redis rows and the logkv/redis ratios \
             (Debian: apt-get install redis-server)",
            cfg.redis_server
        );
    }
    let bench_bin = which(&cfg.redis_benchmark);
    let wants = |p: &str| cfg.parts.iter().any(|x| x.eq_ignore_ascii_case(p));
    if wants("compare") {
        match &bench_bin {
            None => eprintln!(
                "{} not found: skipping every redis-benchmark row, for both servers \
                 (Debian: apt-get install redis-tools)",
                cfg.redis_benchmark
            ),
            Some(bench) if logkv_bin.is_some() || redis_bin.is_some() => {
                if let Err(e) = compare(
                    cfg,
                    bench,
                    logkv_bin.as_deref(),
                    redis_bin.as_deref(),
                    base.path(),
                    rep,
                ) {
                    eprintln!("error: server comparison: {e}");
                    ok = false;
                }
            }
            Some(_) => {}
        }
    }
    if let Some(bin) = &logkv_bin {
        if wants("S5") || wants("S6") {
            match start_logkv(bin, "interval=1000", base.path()) {
                Ok(server) => {
                    if wants("S5") {
                        eprintln!("S5: {} watchers, {} writes", cfg.watchers, cfg.s5_writes);
                        if let Err(e) = s5(&server.addr(), cfg.watchers, cfg.s5_writes, rep) {
                            eprintln!("error: S5: {e}");
                            ok = false;
                        }
                    }
                    if wants("S6") {
                        eprintln!("S6: slow consumer, {} writes per run", cfg.s6_writes);
                        if let Err(e) = s6(&server.addr(), cfg.s6_writes, rep) {
                            eprintln!("error: S6: {e}");
                            ok = false;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: starting logkv-server: {e}");
                    ok = false;
                }
            }
        }
    }
    rep.print_table("server");
    crate::embedded::note_load();
    ok
}

/// The redis-benchmark comparison at both durability levels.
fn compare(
    cfg: &Config,
    bench: &Path,
    logkv_bin: Option<&Path>,
    redis_bin: Option<&Path>,
    base: &Path,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let levels = [
        ("everysec", "interval=1000", "everysec", cfg.n),
        ("always", "always", "always", cfg.n_durable),
    ];
    for (label, logkv_fsync, redis_fsync, n) in levels {
        let logkv = logkv_bin
            .map(|b| start_logkv(b, logkv_fsync, base))
            .transpose()?;
        let redis = redis_bin
            .map(|b| start_redis(b, redis_fsync, base))
            .transpose()?;
        let mut runs: Vec<Row> = Vec::new();
        for round in 0..cfg.rounds {
            for (i, p) in PIPELINES.into_iter().enumerate() {
                let mut servers: Vec<(&str, &Running, &str)> = Vec::new();
                if let Some(s) = &logkv {
                    servers.push(("logkv", s, logkv_fsync));
                }
                if let Some(s) = &redis {
                    servers.push(("redis", s, redis_fsync));
                }
                // Alternate which server goes first.
                if (round + i) % 2 == 1 {
                    servers.reverse();
                }
                for (store, server, fsync) in servers {
                    eprintln!(
                        "[round {}/{}] redis-benchmark -t set,get -c {} -n {n} -P {p} against {store} ({fsync})",
                        round + 1,
                        cfg.rounds,
                        cfg.clients
                    );
                    let results =
                        redis_benchmark(bench, server.port, cfg.clients, n, p, cfg.bench_timeout)
                            .map_err(|e| format!("{store}: {e}\n{}", server.log_tail()))?;
                    for r in results {
                        let w = format!("{}.P{p}.{label}", r.test.to_ascii_lowercase());
                        let tag = |row: Row| {
                            row.with("clients", Extra::Int(i64::from(cfg.clients)))
                                .with("pipeline", Extra::Int(i64::from(p)))
                                .with("fsync", Extra::Str(fsync.to_string()))
                        };
                        runs.push(tag(row(store, &w, r.rps, "ops/s", n)));
                        if let Some(x) = r.p50_ms {
                            runs.push(tag(row(store, &format!("{w}.p50"), x, "ms", n)));
                        }
                        if let Some(x) = r.p99_ms {
                            runs.push(tag(row(store, &format!("{w}.p99"), x, "ms", n)));
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
    }
    Ok(())
}

/// `logkv/redis` rows: for each logkv ops/s row, its ratio to redis's row of the same workload.
pub fn ratios(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .filter(|r| r.store == "logkv" && r.unit == "ops/s")
        .filter_map(|r| {
            let other = rows
                .iter()
                .find(|o| o.store == "redis" && o.workload == r.workload && o.unit == "ops/s")?;
            let mut ratio = Row::new(
                "server",
                "logkv/redis",
                &r.workload,
                r.value / other.value,
                "ratio",
                r.n,
            );
            for k in ["pipeline", "rounds"] {
                if let Some(v) = r.extra(k) {
                    ratio = ratio.with(k, v.clone());
                }
            }
            Some(ratio)
        })
        .collect()
}

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

fn expect_ok(v: Value, what: &str) -> Result<Value, BoxError> {
    match v {
        Value::Error(e) => Err(format!("{what}: -{e}").into()),
        v => Ok(v),
    }
}

/// Opens a watcher connection on bucket `bucket`: `USE`, `WATCH >`, then reads up to `ready`.
fn watcher(addr: &str, bucket: &str) -> Result<Client, BoxError> {
    let mut c = Client::connect(addr)?;
    expect_ok(c.call(&[b"USE", bucket.as_bytes()])?, "USE")?;
    let id = expect_ok(c.call(&[b"WATCH", b">"])?, "WATCH")?;
    if id.as_int().is_none() {
        return Err(format!("WATCH replied {id:?}").into());
    }
    loop {
        if let Some(WatchFrame::Ready(_)) = watch_frame(&c.read()?) {
            return Ok(c);
        }
    }
}

/// Per watcher thread: what arrived when.
struct Arrivals {
    events: Vec<(u64, Instant)>,
}

fn receive(
    conns: Vec<(TcpStream, Inbox)>,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Result<Arrivals, String> {
    let mut conns = conns;
    for (s, _) in &conns {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|(s, _)| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut out = Arrivals { events: Vec::new() };
    let mut chunk = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of fds.len() pollfd structs for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if r == 0 {
            continue;
        }
        let now = Instant::now();
        for (pfd, (sock, inbox)) in fds.iter_mut().zip(conns.iter_mut()) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            loop {
                match sock.read(&mut chunk) {
                    Ok(0) => return Err("a watcher connection was closed by the server".into()),
                    Ok(n) => inbox.extend(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("watcher read: {e}")),
                }
            }
            while let Some(v) = inbox.next_value().map_err(|e| e.to_string())? {
                match watch_frame(&v) {
                    Some(WatchFrame::Entry { revision, .. }) => {
                        out.events.push((revision, now));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(WatchFrame::Lost(_)) => return Err("a watch was lost".into()),
                    Some(WatchFrame::Ready(_)) => {}
                    None => return Err(format!("unexpected frame on a watcher: {v:?}")),
                }
            }
        }
    }
    Ok(out)
}

/// S5: watch fan-out latency.
#[allow(
    clippy::too_many_lines,
    reason = "setup, measurement and rows of one workload, in order"
)]
fn s5(addr: &str, watchers: usize, writes: usize, rep: &mut Reporter) -> Result<(), BoxError> {
    let mut w = Client::connect(addr)?;
    expect_ok(w.call(&[b"BUCKET", b"CREATE", b"s5"])?, "BUCKET CREATE")?;
    expect_ok(w.call(&[b"USE", b"s5"])?, "USE")?;
    let t = Instant::now();
    let mut conns = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let c = watcher(addr, "s5").map_err(|e| format!("watcher {i}: {e}"))?;
        conns.push(c.into_parts());
    }
    eprintln!(
        "    {watchers} watchers connected in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let total = S5_WARMUP + writes;
    let mut acks: Vec<(u64, Instant)> = Vec::with_capacity(total);
    let mut incomplete = None;
    let arrivals = std::thread::scope(|sc| -> Result<Vec<Arrivals>, BoxError> {
        let per = watchers.div_ceil(2).max(1);
        let mut handles = Vec::new();
        while !conns.is_empty() {
            let group: Vec<_> = conns.drain(..per.min(conns.len())).collect();
            let (stop, count) = (&stop, &count);
            handles.push(sc.spawn(move || receive(group, stop, count)));
        }
        let mut result = Ok(());
        for i in 0..total {
            let before = count.load(Ordering::Relaxed);
            let reply = w.call(&[b"PUT", b"fan.out", &VALUE]);
            let ack = Instant::now();
            let rev = match reply.map_err(BoxError::from).and_then(|v| {
                let r = expect_ok(v, "PUT")?
                    .as_int()
                    .ok_or_else(|| BoxError::from("PUT did not reply a revision"))?;
                u64::try_from(r).map_err(|_| BoxError::from(format!("PUT replied revision {r}")))
            }) {
                Ok(r) => r,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            acks.push((rev, ack));
            let deadline = ack + Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < before + watchers as u64 {
                if Instant::now() > deadline {
                    incomplete = Some(i);
                    break;
                }
                // Sleeping here costs no accuracy (arrival times are taken by the
                // receivers) and leaves the 2 cores to the server and the receivers.
                std::thread::sleep(Duration::from_micros(200));
            }
            if incomplete.is_some() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in handles {
            all.push(h.join().map_err(|_| "receiver panicked")??);
        }
        result.map(|()| all)
    })?;
    if let Some(i) = incomplete {
        return Err(format!(
            "write {i}: only {} events of {} arrived within 10 s",
            count.load(Ordering::Relaxed),
            (i + 1) * watchers
        )
        .into());
    }
    let ack_of: std::collections::HashMap<u64, Instant> =
        acks.iter().skip(S5_WARMUP).copied().collect();
    let mut each = Vec::new();
    let mut last: std::collections::HashMap<u64, f64> = std::collections::HashMap::new();
    for a in &arrivals {
        for (rev, at) in &a.events {
            if let Some(ack) = ack_of.get(rev) {
                let ms = at.saturating_duration_since(*ack).as_secs_f64() * 1e3;
                each.push(ms);
                let m = last.entry(*rev).or_insert(0.0);
                *m = m.max(ms);
            }
        }
    }
    let mut all: Vec<f64> = last.into_values().collect();
    all.sort_by(f64::total_cmp);
    each.sort_by(f64::total_cmp);
    let n = writes as u64;
    let tag = |r: Row| r.with("watchers", Extra::count(watchers));
    rep.emit(tag(row("logkv", "S5.p50", percentile(&all, 50.0), "ms", n)));
    rep.emit(tag(row("logkv", "S5.p99", percentile(&all, 99.0), "ms", n)));
    rep.emit(tag(row(
        "logkv",
        "S5.each.p50",
        percentile(&each, 50.0),
        "ms",
        each.len() as u64,
    )));
    rep.emit(tag(row(
        "logkv",
        "S5.each.p99",
        percentile(&each, 99.0),
        "ms",
        each.len() as u64,
    )));
    Ok(())
}

/// Pipelined PUTs on `c`; returns ops/s.
fn put_burst(c: &mut Client, m: usize, round: usize) -> Result<f64, BoxError> {
    let t = Instant::now();
    let mut i = 0;
    while i < m {
        let k = S6_DEPTH.min(m - i);
        for j in 0..k {
            let key = format!("slow.{round}.{}", i + j);
            c.queue(&[b"PUT", key.as_bytes(), &VALUE]);
        }
        c.flush()?;
        for _ in 0..k {
            let v = expect_ok(c.read()?, "PUT")?;
            if v.as_int().is_none() {
                return Err(format!("PUT replied {v:?}").into());
            }
        }
        i += k;
    }
    Ok(m as f64 / t.elapsed().as_secs_f64())
}

/// S6: a watcher that never reads, against none.
fn s6(addr: &str, m: usize, rep: &mut Reporter) -> Result<(), BoxError> {
    let mut w = Client::connect(addr)?;
    expect_ok(w.call(&[b"BUCKET", b"CREATE", b"s6"])?, "BUCKET CREATE")?;
    expect_ok(w.call(&[b"USE", b"s6"])?, "USE")?;
    let (mut none, mut slow) = (Vec::new(), Vec::new());
    for round in 0..S6_ROUNDS {
        for with_slow in [false, true] {
            let idle = if with_slow {
                let mut c = Client::connect(addr)?;
                expect_ok(c.call(&[b"USE", b"s6"])?, "USE")?;
                // Only the WATCH reply is read; the events are never read.
                expect_ok(c.call(&[b"WATCH", b">", b"UPDATESONLY"])?, "WATCH")?;
                Some(c)
            } else {
                None
            };
            let r = put_burst(&mut w, m, round * 2 + usize::from(with_slow))?;
            if with_slow {
                slow.push(r);
            } else {
                none.push(r);
            }
            drop(idle);
        }
    }
    let (a, b) = (median(&mut none), median(&mut slow));
    let n = m as u64;
    let tag = |r: Row| r.with("pipeline", Extra::count(S6_DEPTH));
    rep.emit(tag(row("logkv", "S6.none", a, "ops/s", n)));
    rep.emit(tag(row("logkv", "S6.slow", b, "ops/s", n)));
    rep.emit(tag(row("logkv", "S6", b / a, "ratio", n)));
    Ok(())
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

    #[test]
    fn ratios_pair_logkv_with_redis() {
        let r = |store: &str, w: &str, v: f64, unit: &str| {
            Row::new("server", store, w, v, unit, 10).with("pipeline", Extra::Int(16))
        };
        let rows = vec![
            r("logkv", "set.P16.always", 300.0, "ops/s"),
            r("logkv", "set.P16.always.p99", 2.0, "ms"),
            r("redis", "set.P16.always.p99", 1.0, "ms"),
            r("redis", "set.P16.always", 200.0, "ops/s"),
            r("logkv", "get.P16.always", 5.0, "ops/s"),
        ];
        let out = ratios(&rows);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].store, "logkv/redis");
        assert_eq!(out[0].workload, "set.P16.always");
        assert_eq!(out[0].value, 1.5);
        assert_eq!(out[0].unit, "ratio");
        assert_eq!(out[0].extra("pipeline"), Some(&Extra::Int(16)));
    }

    #[test]
    fn which_finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-here").is_none());
        assert!(which("/no/such/path").is_none());
    }
}
