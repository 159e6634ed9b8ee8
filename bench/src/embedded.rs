//! The embedded suite: logkv against redb, fjall and sled (docs/BENCHMARKS.md).
//!
//! The parent process runs nothing itself: for each store (and each group of workloads
//! that needs a fresh process) it starts its own binary again with the hidden `__child`
//! subcommand, reads the JSON rows the child prints, and prints them in turn. A child
//! measures one store in a fresh process, so `RssAnon` (W6) is that store's alone, and a
//! store's background threads or leaked memory cannot disturb the next one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::keys::{self, check_value, DURABLE_OPS, ENTRY_LEN, KEY_LEN, VALUE_LEN};
use crate::report::{out, Extra, Reporter, Row};
use crate::stores::{self, BoxError, KvStore};
use crate::sys;

/// The workloads of the embedded suite, in the order they run.
pub const WORKLOADS: &[&str] = &[
    "W1",
    "W2",
    "W3",
    "W4",
    "W5",
    "W6",
    "limit-append",
    "limit-btreemap",
    "limit-fdatasync",
    "watch-fanout",
    "watch-slow",
];

/// Workloads that run in one child per store, on the data W1 loads.
const LOADED: &[&str] = &["W1", "W2", "W3", "W5", "W6"];

/// Threads of W4.t16.
pub const DURABLE_THREADS: u32 = 16;

/// Options of one embedded run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys.
    pub n: u32,
    /// Stores to compare.
    pub stores: Vec<String>,
    /// Workloads (from [`WORKLOADS`]; `W2.t2` runs with `W2`, `W4.t16` with `W4`).
    pub workloads: Vec<String>,
    /// Where the stores' directories go (a fresh temporary directory inside it).
    pub dir: Option<PathBuf>,
    /// Seed of the key orders.
    pub seed: u64,
}

/// Normalises a workload name given on the command line (`w2.t2` → `W2`).
pub fn normalise_workload(w: &str) -> Option<&'static str> {
    let base = w.split('.').next().unwrap_or(w);
    WORKLOADS
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(base))
}

/// Runs the embedded suite; rows go to `rep`. Returns false if something failed.
#[allow(
    clippy::too_many_lines,
    reason = "the plan of the run (stores, jobs, rounds) reads best in one piece"
)]
pub fn run(cfg: &Config, rep: &mut Reporter) -> bool {
    let mut ok = true;
    let base = match &cfg.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("logkv-bench-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("logkv-bench-").tempdir(),
    };
    let base = match base {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return false;
        }
    };
    let wants = |w: &str| cfg.workloads.iter().any(|x| x == w);
    note_load();
    let available = stores::available();
    let mut stores_to_run = Vec::new();
    for s in &cfg.stores {
        if available.contains(&s.as_str()) {
            stores_to_run.push(s.clone());
        } else if stores::ALL.contains(&s.as_str()) {
            eprintln!(
                "skipping {s}: peers are built only with `--features peers` \
                 (cargo run --release -p logkv-bench --features peers -- embedded)"
            );
        } else {
            eprintln!(
                "error: unknown store {s:?} (known: {})",
                stores::ALL.join(", ")
            );
            ok = false;
        }
    }
    let loaded: Vec<&str> = LOADED.iter().copied().filter(|w| wants(w)).collect();
    let mut jobs: Vec<(String, Vec<String>)> = Vec::new();
    if !loaded.is_empty() {
        for s in &stores_to_run {
            jobs.push((
                s.clone(),
                loaded
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect(),
            ));
        }
    }
    for limit in ["limit-append", "limit-btreemap"] {
        if wants(limit) {
            jobs.push(("limit".into(), vec![limit.into()]));
        }
    }
    for w in ["watch-fanout", "watch-slow"] {
        if wants(w) {
            if stores_to_run.iter().any(|s| s == "logkv") {
                jobs.push(("logkv".into(), vec![w.into()]));
            } else {
                eprintln!("skipping {w}: it measures logkv only, which is not among --stores");
            }
        }
    }
    // The fsync-bound jobs are the noisiest on a shared disk: they run FSYNC_ROUNDS times,
    // the stores taking turns, and each row reports the median round.
    let mut fsync_jobs: Vec<(String, Vec<String>)> = Vec::new();
    if wants("W4") {
        for s in &stores_to_run {
            fsync_jobs.push((s.clone(), vec!["W4".into()]));
        }
    }
    if wants("limit-fdatasync") {
        fsync_jobs.push(("limit".into(), vec!["limit-fdatasync".into()]));
    }
    let total = jobs.len() + fsync_jobs.len() * FSYNC_ROUNDS;
    let mut step = 0;
    let mut launch = |store: &str, workloads: &[String], on_row: &mut dyn FnMut(Row)| -> bool {
        step += 1;
        let dir = base.path().join(format!("{step:03}-{store}"));
        eprintln!(
            "[{step}/{total}] {store}: {} (n = {})",
            workloads.join(","),
            cfg.n
        );
        let started = Instant::now();
        let r = run_child(store, workloads, cfg.n, cfg.seed, &dir, on_row);
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Ok(()) => {
                eprintln!("    done in {:.1} s", started.elapsed().as_secs_f64());
                true
            }
            Err(e) => {
                eprintln!("error: {store} {}: {e}", workloads.join(","));
                false
            }
        }
    };
    for (store, workloads) in &jobs {
        ok &= launch(store, workloads, &mut |r| rep.emit(r));
    }
    let mut rounds: Vec<Row> = Vec::new();
    for round in 0..FSYNC_ROUNDS {
        for k in 0..fsync_jobs.len() {
            let (store, workloads) = &fsync_jobs[(k + round) % fsync_jobs.len()];
            ok &= launch(store, workloads, &mut |r| rounds.push(r));
        }
    }
    for r in medians(rounds) {
        rep.emit(r);
    }
    rep.print_table("embedded");
    note_load();
    ok
}

/// Says on stderr how busy the machine is (other work makes the numbers noisy).
pub fn note_load() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one: f64 = load
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    eprintln!(
        "load average {one:.2} on {cores} cores{}",
        if one > 0.5 * cores as f64 {
            ": other work is running, so absolute numbers are noisy (compare ratios within the run)"
        } else {
            ""
        }
    );
}

/// Rounds of W4 and limit-fdatasync.
pub const FSYNC_ROUNDS: usize = 5;

/// For each (store, workload), in first-seen order, the row of the median round, with
/// `"rounds"` added.
pub fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for r in rows {
        match groups
            .iter_mut()
            .find(|g| g[0].store == r.store && g[0].workload == r.workload)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            let rounds = g.len();
            g.sort_by(|a, b| a.value.total_cmp(&b.value));
            g.swap_remove(rounds / 2)
                .with("rounds", Extra::count(rounds))
        })
        .collect()
}

/// Runs one child process and hands its rows to `on_row`.
fn run_child(
    store: &str,
    workloads: &[String],
    n: u32,
    seed: u64,
    dir: &Path,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("__child")
        .arg("--store")
        .arg(store)
        .arg("--workloads")
        .arg(workloads.join(","))
        .arg("--n")
        .arg(n.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().ok_or("no child stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        match Row::from_json(&line) {
            Some(row) => on_row(row),
            None => eprintln!("    (child said on stdout: {line})"),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("child process failed: {status}").into());
    }
    Ok(())
}

/// Prints a row from a child: JSON on stdout for the parent.
fn row(store: &str, workload: &str, value: f64, unit: &str, n: u64) -> Row {
    Row::new("embedded", store, workload, value, unit, n)
}

fn rate(ops: u64, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64().max(1e-9)
}

/// The body of the hidden `__child` subcommand.
pub fn child(
    store: &str,
    workloads: &[String],
    n: u32,
    seed: u64,
    dir: &Path,
) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    let wants = |w: &str| workloads.iter().any(|x| x == w);
    match store {
        "limit" => {
            for w in workloads {
                crate::limits::run(w, n, seed, dir)?;
            }
            Ok(())
        }
        _ if wants("W4") => durable(store, dir, seed),
        "logkv" if wants("watch-fanout") || wants("watch-slow") => {
            if wants("watch-fanout") {
                crate::watchbench::fanout(n, dir)?;
            }
            if wants("watch-slow") {
                crate::watchbench::slow(n, dir)?;
            }
            Ok(())
        }
        _ => loaded(store, workloads, n, seed, dir),
    }
}

/// W1, W6, W2, W2.t2, W5, W3 on one store, in one process.
#[allow(
    clippy::too_many_lines,
    reason = "the workloads one after the other, in the order they run"
)]
fn loaded(name: &str, workloads: &[String], n: u32, seed: u64, dir: &Path) -> Result<(), BoxError> {
    let wants = |w: &str| workloads.iter().any(|x| x == w);
    let n64 = u64::from(n);
    // The key orders exist before the memory baseline, so they do not count in W6.
    let insert_order = keys::permutation(n, seed);
    let read_order = keys::permutation(n, seed ^ 0x5EED_0001);
    let overwrite_order = keys::permutation(n, seed ^ 0x5EED_0002);
    let rss_before = sys::rss_anon();
    let mut s = stores::open(name, dir, false)?;
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);

    // W1: load.
    let t = Instant::now();
    for &i in &insert_order {
        let k = keys::key(u64::from(i), &mut kb).as_bytes();
        s.put(k, keys::value(u64::from(i), 0, &mut vb))?;
    }
    s.flush()?;
    let load = t.elapsed();
    eprintln!("    {name} W1 load: {:.2} s", load.as_secs_f64());
    if wants("W1") {
        out(&row(name, "W1", rate(n64, load), "ops/s", n64));
    }
    // W6: memory after the load.
    if wants("W6") {
        match (rss_before, sys::rss_anon()) {
            (Some(a), Some(b)) => out(&row(
                name,
                "W6",
                b.saturating_sub(a) as f64 / n64.max(1) as f64,
                "bytes/key",
                n64,
            )),
            _ => eprintln!("    W6 skipped: /proc/self/status has no RssAnon here"),
        }
    }
    // W2: random point gets, 1 and 2 threads.
    if wants("W2") {
        let t = Instant::now();
        read_all(&*s, &read_order, 0)?;
        let d = t.elapsed();
        out(&row(name, "W2", rate(n64, d), "ops/s", n64));
        let t = Instant::now();
        let half = read_order.len() / 2;
        let (a, b) = read_order.split_at(half);
        let sref: &dyn KvStore = &*s;
        std::thread::scope(|sc| -> Result<(), BoxError> {
            let ha = sc.spawn(|| read_all(sref, a, 0).map_err(|e| e.to_string()));
            let hb = sc.spawn(|| read_all(sref, b, 0).map_err(|e| e.to_string()));
            ha.join().map_err(|_| "reader panicked")??;
            hb.join().map_err(|_| "reader panicked")??;
            Ok(())
        })?;
        let d = t.elapsed();
        out(&row(name, "W2.t2", rate(n64, d), "ops/s", n64).with("threads", Extra::Int(2)));
    }
    // W5: close, reopen, read one key.
    if wants("W5") {
        let t = Instant::now();
        s.close()?;
        let close = t.elapsed();
        let t = Instant::now();
        s = stores::open(name, dir, false)?;
        let first = u64::from(insert_order.first().copied().unwrap_or(0));
        let mut v = Vec::new();
        let found = s.get(keys::key(first, &mut kb).as_bytes(), &mut v)?;
        let reopen = t.elapsed();
        if n > 0 && !(found && check_value(&v, first, 0)) {
            return Err(format!("{name}: W5 read the wrong value after reopen").into());
        }
        out(&row(name, "W5", reopen.as_secs_f64(), "s", n64));
        out(&row(name, "W5.close", close.as_secs_f64(), "s", n64));
        // The three steps together, as the benchmark contract words W5.
        let total = close + reopen;
        out(&row(name, "W5.total", total.as_secs_f64(), "s", n64));
    }
    // W3: overwrite everything, then compact.
    if wants("W3") {
        let t = Instant::now();
        for &i in &overwrite_order {
            let k = keys::key(u64::from(i), &mut kb).as_bytes();
            s.put(k, keys::value(u64::from(i), 1, &mut vb))?;
        }
        s.flush()?;
        let d = t.elapsed();
        out(&row(name, "W3", rate(n64, d), "ops/s", n64));
        let before = sys::disk_usage(dir)?;
        let t = Instant::now();
        s.compact()?;
        s.flush()?;
        let d = t.elapsed();
        out(&row(name, "W3.compact", d.as_secs_f64(), "s", n64));
        let after = settled_disk_usage(dir)?;
        eprintln!(
            "    {name} W3 disk: {:.1} MiB before compaction, {:.1} MiB after",
            before as f64 / f64::from(1 << 20),
            after as f64 / f64::from(1 << 20)
        );
        out(&row(
            name,
            "W3.space",
            after as f64 / (n64 * ENTRY_LEN).max(1) as f64,
            "ratio",
            n64,
        ));
        out(&row(name, "W3.disk", after as f64, "bytes", n64));
        // Spot-check that the overwrites won.
        for &i in overwrite_order.iter().step_by(997) {
            let mut v = Vec::new();
            if !s.get(keys::key(u64::from(i), &mut kb).as_bytes(), &mut v)?
                || !check_value(&v, u64::from(i), 1)
            {
                return Err(format!("{name}: W3 lost the overwrite of item {i}").into());
            }
        }
    }
    s.close()?;
    if wants("W3") {
        // Some stores delete replaced files only later (fjall keeps the tables a major
        // compaction replaced until a later version GC): the same measure after close.
        let closed = settled_disk_usage(dir)?;
        out(&row(
            name,
            "W3.space.closed",
            closed as f64 / (n64 * ENTRY_LEN).max(1) as f64,
            "ratio",
            n64,
        ));
    }
    Ok(())
}

/// Disk usage once background work (e.g. deleting files after a compaction) has settled:
/// two equal readings 250 ms apart, or the last of 5 s of readings.
fn settled_disk_usage(dir: &Path) -> Result<u64, BoxError> {
    let mut last = sys::disk_usage(dir)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = sys::disk_usage(dir)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// Gets every item in `order` and checks its value.
fn read_all(s: &dyn KvStore, order: &[u32], round: u32) -> Result<(), BoxError> {
    let mut kb = [0u8; KEY_LEN];
    let mut v = Vec::with_capacity(VALUE_LEN);
    for &i in order {
        let k = keys::key(u64::from(i), &mut kb).as_bytes();
        if !s.get(k, &mut v)? || !check_value(&v, u64::from(i), round) {
            return Err(format!("get of item {i} returned the wrong value").into());
        }
    }
    Ok(())
}

/// W4 and W4.t16: durable puts, in a fresh process and directory.
fn durable(name: &str, dir: &Path, seed: u64) -> Result<(), BoxError> {
    let order = keys::permutation(2 * DURABLE_OPS, seed);
    let s = stores::open(name, dir, true)?;
    let real = stores::durable_is_real(name);
    let mark = |r: Row, fsyncs: Option<u64>| {
        let mut r = r;
        if !real {
            r = r.with("durable", Extra::Bool(false));
        }
        if let Some(f) = fsyncs {
            r = r.with("fsyncs", Extra::count(f));
        }
        r
    };
    let (first, second) = order.split_at(DURABLE_OPS as usize);
    let f0 = s.fsyncs();
    let t = Instant::now();
    put_durable_all(&*s, first)?;
    let d = t.elapsed();
    let f1 = s.fsyncs();
    out(&mark(
        row(
            name,
            "W4",
            rate(u64::from(DURABLE_OPS), d),
            "ops/s",
            u64::from(DURABLE_OPS),
        ),
        f1.zip(f0).map(|(b, a)| b - a),
    ));
    let per = second.len().div_ceil(DURABLE_THREADS as usize);
    let sref: &dyn KvStore = &*s;
    let t = Instant::now();
    std::thread::scope(|sc| -> Result<(), BoxError> {
        let handles: Vec<_> = second
            .chunks(per)
            .map(|chunk| sc.spawn(move || put_durable_all(sref, chunk).map_err(|e| e.to_string())))
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer panicked")??;
        }
        Ok(())
    })?;
    let d = t.elapsed();
    let f2 = s.fsyncs();
    out(&mark(
        row(
            name,
            "W4.t16",
            rate(u64::from(DURABLE_OPS), d),
            "ops/s",
            u64::from(DURABLE_OPS),
        )
        .with("threads", Extra::Int(i64::from(DURABLE_THREADS))),
        f2.zip(f1).map(|(b, a)| b - a),
    ));
    s.close()?;
    Ok(())
}

fn put_durable_all(s: &dyn KvStore, items: &[u32]) -> Result<(), BoxError> {
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
    for &i in items {
        let k = keys::key(u64::from(i), &mut kb).as_bytes();
        s.put_durable(k, keys::value(u64::from(i), 0, &mut vb))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_pick_the_middle_round_per_store_and_workload() {
        let r = |store: &str, w: &str, v: f64| Row::new("embedded", store, w, v, "ops/s", 1);
        let rows = vec![
            r("a", "W4", 3.0),
            r("b", "W4", 10.0),
            r("a", "W4", 1.0),
            r("b", "W4", 30.0),
            r("a", "W4", 2.0),
            r("b", "W4", 20.0),
        ];
        let m = medians(rows);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].store.as_str(), m[0].value), ("a", 2.0));
        assert_eq!((m[1].store.as_str(), m[1].value), ("b", 20.0));
        assert_eq!(m[0].extra("rounds"), Some(&Extra::Int(3)));
    }

    #[test]
    fn workload_names_normalise() {
        assert_eq!(normalise_workload("w2.t2"), Some("W2"));
        assert_eq!(normalise_workload("W4.t16"), Some("W4"));
        assert_eq!(
            normalise_workload("limit-btreemap.get"),
            Some("limit-btreemap")
        );
        assert_eq!(normalise_workload("watch-fanout.100"), Some("watch-fanout"));
        assert_eq!(normalise_workload("W9"), None);
    }
}
