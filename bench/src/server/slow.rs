//! S6, slow consumer: what one watcher costs the writers.
//!
//! The load: `redis-benchmark -c 50 -P 16 SET s6.<run>.__rand_int__ <256 bytes>` with
//! `-r 2000000000`, so keys are (all but) unique and nothing is overwritten or compacted,
//! against logkv-server with `--fsync never`. Each variant is measured against the same load
//! with no watcher, in pairs ordered A B B A A B B A (A: no watcher, B: with it):
//! - `stalled`: one connection `WATCH > UPDATESONLY` that never reads its socket;
//! - `active`: one connection `WATCH > UPDATESONLY` read by a thread of the harness, which
//!   skims its frames as S5's receivers do (no value built).
//!
//! Rows: `S6.none`, `S6.slow`, `S6.active` (ops/s, the median run), and `S6` and
//! `S6.active.ratio`: the median over the pairs of (with / without).
//!
//! What the active watcher's events cost in CPU, per write (each write is one event),
//! medians over the pairs: `S6.active.server_cpu_per_event` (the server's CPU per write with
//! the watcher less without it: encoding and sending the events, and waking for them),
//! `S6.active.reader_cpu_per_event` (the harness's reading thread) and
//! `S6.active.cpu_per_event` (the two). `S6.busy` is how many cores the server and
//! redis-benchmark kept busy with no watcher. `S6.active.predicted` is the ratio the active
//! runs would give if they lost exactly that CPU and nothing else: the CPU per write without
//! the watcher over the CPU per write with it (server, redis-benchmark and reader), which
//! holds on a machine whose cores the load keeps busy (`S6.busy` near their number);
//! `S6.active.predicted_server` the ratio if the server's own CPU per write were the bound
//! (its CPU without the watcher over its CPU with it, for the same writes).

use std::io::{ErrorKind, Read as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{expect_ok, row, Config};
use crate::redisbench::{self, Load};
use crate::report::{Extra, Reporter, Row};
use crate::resp::Client;
use crate::stores::BoxError;
use crate::{skim, sys};

/// Pairs (with / without) per variant.
const PAIRS: usize = 4;
const DEPTH: u32 = 16;
/// `-r`: random keys drawn from two billion, so a run of a million repeats almost none.
const KEYSPACE: u64 = 2_000_000_000;

/// A watcher under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Stalled,
    Active,
}

fn watcher(addr: &str) -> Result<Client, BoxError> {
    let mut c = Client::connect(addr)?;
    expect_ok(c.call(&[b"WATCH", b">", b"UPDATESONLY"])?, "WATCH")?;
    Ok(c)
}

/// Reads every frame on `c` until `stop`, skimmed as S5's receivers read them (building
/// each event's value would take from the server's core on 2 cores what the harness
/// spends); counts the entries. A `lost` fails the run.
/// Returns the CPU time the reading took.
fn drain(c: Client, stop: &AtomicBool, events: &AtomicU64) -> Result<Duration, String> {
    let started = sys::thread_cpu();
    let (mut stream, inbox) = c.into_parts();
    let mut buf = inbox.into_unread();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut chunk = vec![0u8; 256 << 10];
    while !stop.load(Ordering::Relaxed) {
        let mut used = 0;
        while let Some((frame, n)) = skim::frame(buf.get(used..).unwrap_or_default())? {
            used += n;
            match frame {
                skim::Frame::Entry(_) => {
                    events.fetch_add(1, Ordering::Relaxed);
                }
                skim::Frame::Lost => return Err("the active watcher's watch was lost".into()),
                skim::Frame::Ready | skim::Frame::Message(_) => {}
            }
        }
        buf.drain(..used);
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the server closed the active watcher".into()),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("active watcher: {e}")),
        }
    }
    Ok(sys::thread_cpu().saturating_sub(started))
}

/// One run's rate and CPU: the server's, redis-benchmark's and the reading thread's.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    server: Duration,
    bench: Duration,
    reader: Duration,
}

impl Run {
    /// CPU seconds per write of everything measured.
    fn cpu_per_write(&self, n: u64) -> f64 {
        (self.server + self.bench + self.reader).as_secs_f64() / n.max(1) as f64
    }

    /// Cores busy on average: CPU over the run's wall-clock time.
    fn busy(&self, n: u64) -> f64 {
        self.cpu_per_write(n) * self.rps
    }
}

/// One redis-benchmark run of the S6 load against the server `pid`: its ops/s, and the
/// CPU the server and redis-benchmark used.
fn load_run(cfg: &Config, bench: &Path, port: u16, pid: u32, run: usize) -> Result<Run, BoxError> {
    let (server0, bench0) = (sys::process_cpu(pid), sys::children_cpu());
    let rps = load_rps(cfg, bench, port, run)?;
    let server = match (server0, sys::process_cpu(pid)) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => return Err("S6: cannot read the server's CPU time in /proc".into()),
    };
    Ok(Run {
        rps,
        server,
        bench: sys::children_cpu().saturating_sub(bench0),
        reader: Duration::ZERO,
    })
}

/// One redis-benchmark run of the S6 load; returns its ops/s.
fn load_rps(cfg: &Config, bench: &Path, port: u16, run: usize) -> Result<f64, BoxError> {
    let load = Load {
        tests: "set",
        clients: cfg.clients,
        requests: cfg.s6_requests,
        pipeline: DEPTH,
        keyspace: Some(KEYSPACE),
        value_size: cfg.value_size,
        command: vec![
            "SET".into(),
            format!("s6.{run}.__rand_int__"),
            "x".repeat(cfg.value_size),
        ],
    };
    let r = redisbench::run(bench, port, &load, cfg.bench_timeout)?;
    Ok(r.first().ok_or("redis-benchmark printed no result")?.rps)
}

/// S6 against the logkv-server at `addr` (started with `--fsync never`), process `pid`.
pub fn s6(
    cfg: &Config,
    bench: &Path,
    addr: &str,
    port: u16,
    pid: u32,
    rep: &mut Reporter,
) -> Result<(), BoxError> {
    let mut run = 0;
    let n = cfg.s6_requests;
    for variant in [Variant::Stalled, Variant::Active] {
        let (mut none, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // Per pair: server CPU per event, reader CPU per event, predicted ratio, cores busy.
        let (mut server_cpu, mut reader_cpu, mut predicted, mut busy) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Per pair: the ratio if the server's own CPU per write were the bound.
        let mut server_bound = Vec::new();
        for pair in 0..PAIRS {
            // A B B A: the pairs alternate which run goes first.
            let order = if pair % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut got = [Run::default(); 2];
            for watched in order {
                run += 1;
                let r = if watched {
                    measured_with(cfg, bench, addr, port, pid, run, variant)?
                } else {
                    load_run(cfg, bench, port, pid, run)?
                };
                eprintln!(
                    "    S6 {variant:?} pair {}: {} {:.0} ops/s (CPU s: server {:.2}, redis-benchmark {:.2}, reader {:.2})",
                    pair + 1,
                    if watched {
                        "with the watcher"
                    } else {
                        "no watcher"
                    },
                    r.rps,
                    r.server.as_secs_f64(),
                    r.bench.as_secs_f64(),
                    r.reader.as_secs_f64(),
                );
                got[usize::from(watched)] = r;
            }
            let [without, watched] = got;
            none.push(without.rps);
            with.push(watched.rps);
            ratios.push(watched.rps / without.rps);
            let per = |d: Duration| d.as_secs_f64() / n.max(1) as f64 * 1e6;
            server_cpu.push(per(watched.server) - per(without.server));
            reader_cpu.push(per(watched.reader));
            predicted.push(without.cpu_per_write(n) / watched.cpu_per_write(n));
            server_bound.push(without.server.as_secs_f64() / watched.server.as_secs_f64());
            busy.push(without.busy(n));
        }
        let tag = |r: Row| {
            r.with("pipeline", Extra::count(DEPTH))
                .with("clients", Extra::count(cfg.clients))
                .with("rounds", Extra::count(PAIRS))
                .with("fsync", Extra::Str("never".into()))
        };
        let (name, ratio_name) = match variant {
            Variant::Stalled => ("S6.slow", "S6"),
            Variant::Active => ("S6.active", "S6.active.ratio"),
        };
        // The same median as the ratio's (of an even count: the mean of the middle two).
        if variant == Variant::Stalled {
            rep.emit(tag(row("logkv", "S6.none", middle(&mut none), "ops/s", n)));
        }
        rep.emit(tag(row("logkv", name, middle(&mut with), "ops/s", n)));
        rep.emit(tag(row(
            "logkv",
            ratio_name,
            middle(&mut ratios),
            "ratio",
            n,
        )));
        if variant == Variant::Active {
            let mut both: Vec<f64> = server_cpu
                .iter()
                .zip(&reader_cpu)
                .map(|(a, b)| a + b)
                .collect();
            for (name, v, unit) in [
                ("S6.active.server_cpu_per_event", &mut server_cpu, "us"),
                ("S6.active.reader_cpu_per_event", &mut reader_cpu, "us"),
                ("S6.active.cpu_per_event", &mut both, "us"),
                ("S6.active.predicted", &mut predicted, "ratio"),
                ("S6.active.predicted_server", &mut server_bound, "ratio"),
                ("S6.busy", &mut busy, "cores"),
            ] {
                rep.emit(tag(row("logkv", name, middle(v), unit, n)));
            }
        }
    }
    Ok(())
}

/// One run with the watcher of `variant` in place.
fn measured_with(
    cfg: &Config,
    bench: &Path,
    addr: &str,
    port: u16,
    pid: u32,
    run: usize,
    variant: Variant,
) -> Result<Run, BoxError> {
    let w = watcher(addr)?;
    match variant {
        Variant::Stalled => {
            let r = load_run(cfg, bench, port, pid, run);
            drop(w);
            r
        }
        Variant::Active => {
            let stop = AtomicBool::new(false);
            let events = AtomicU64::new(0);
            std::thread::scope(|sc| {
                let reader = sc.spawn(|| drain(w, &stop, &events));
                let r = load_run(cfg, bench, port, pid, run);
                stop.store(true, Ordering::Relaxed);
                let read = reader.join().map_err(|_| "active watcher panicked")?;
                let reader_cpu = read?;
                let mut r = r?;
                r.reader = reader_cpu;
                Ok(r)
            })
        }
    }
}

/// The median; the mean of the middle two for an even count.
pub fn middle(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "halves of small integers are exact")]
mod tests {
    use super::*;

    #[test]
    fn middle_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(
            middle(&mut [0.64, 0.94, 0.67, 0.77]),
            f64::midpoint(0.67, 0.77)
        );
        assert_eq!(middle(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(middle(&mut []).is_nan());
    }
}
