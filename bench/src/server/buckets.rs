//! S7, many buckets: B buckets (default 10,000) holding one key each, in one logkv-server
//! with `--fsync always` (its default). What they cost, read from the outside:
//! - `S7.create`: seconds to create the buckets and write their key (pipelined 100 buckets
//!   at a time: `BUCKET CREATE`, `USE`, `SET`);
//! - `S7.disk`: bytes allocated under the data directory (like `du`);
//! - `S7.threads`, `S7.fds`: the server's threads (/proc/pid/status) and open files
//!   (/proc/pid/fd), unit `count`; `S7.rss`: its resident memory (`VmRSS`), and
//!   `S7.rss.anon` the part of it that is the process's own (`RssAnon`; the rest is
//!   mapped pages of files, such as the pages of each bucket's newest segment that
//!   recovery read, shared with the page cache);
//! - `S7.restart`: seconds from starting the server again on the same directory (after
//!   a clean stop) to the answer of the first GET (of the last bucket's key), and
//!   `S7.restart.threads`, `.fds`, `.rss` right after it;
//! - `S7.restart.kill`: the same after that server has written every bucket's key
//!   again and is killed (SIGKILL): every bucket is then recovered from an unclean
//!   stop, and what recovery read is made durable before anything is served;
//! - `S7.restart.kill.interval`: the same with the server at `--fsync interval=1000`,
//!   where the open after the kill also skips in every bucket the revisions that may
//!   have been seen and lost.

use std::path::Path;
use std::time::{Duration, Instant};

use super::process::{start_logkv_in, Running};
use super::{expect_ok, row};
use crate::report::{Extra, Reporter, Row};
use crate::resp::{Client, Value};
use crate::stores::BoxError;
use crate::sys;

const FSYNC: &str = "always";
/// The policy of the last restart after a kill.
const INTERVAL: &str = "interval=1000";
/// Buckets per pipelined batch.
const BATCH: usize = 100;
const VALUE: [u8; 100] = [b'v'; 100];

fn name(i: usize) -> String {
    format!("b{i:05}")
}

/// Creates `buckets` buckets with one key each (`create`), or writes that key again.
fn write_each(server: &Running, buckets: usize, create: bool) -> Result<(), BoxError> {
    let mut c = Client::connect(&server.addr())?;
    let mut i = 0;
    while i < buckets {
        let end = (i + BATCH).min(buckets);
        for b in i..end {
            let n = name(b);
            if create {
                c.queue(&[b"BUCKET", b"CREATE", n.as_bytes()]);
            }
            c.queue(&[b"USE", n.as_bytes()]);
            c.queue(&[b"SET", b"k", &VALUE]);
        }
        c.flush()?;
        let per_bucket = if create { 3 } else { 2 };
        for _ in 0..(end - i) * per_bucket {
            expect_ok(c.read()?, "BUCKET CREATE / USE / SET")?;
        }
        i = end;
    }
    Ok(())
}

fn emit_process(server: &Running, prefix: &str, buckets: usize, rep: &mut Reporter) {
    let pid = server.pid();
    let tag = |r: Row| {
        r.with("buckets", Extra::count(buckets))
            .with("fsync", Extra::Str(FSYNC.into()))
    };
    let n = buckets as u64;
    let counts = [
        ("threads", sys::proc_status_field(pid, "Threads:"), "count"),
        ("fds", sys::open_fds(pid), "count"),
        ("rss", sys::proc_status_field(pid, "VmRSS:"), "bytes"),
        ("rss.anon", sys::proc_status_field(pid, "RssAnon:"), "bytes"),
    ];
    for (what, value, unit) in counts {
        if let Some(v) = value {
            let w = format!("{prefix}.{what}");
            rep.emit(tag(row("logkv", &w, v as f64, unit, n)));
        }
    }
}

/// S7 with logkv-server `bin`; files under `base`.
pub fn s7(bin: &Path, base: &Path, buckets: usize, rep: &mut Reporter) -> Result<(), BoxError> {
    let data = tempfile::Builder::new().prefix("s7-").tempdir_in(base)?;
    let tag = |r: Row| {
        r.with("buckets", Extra::count(buckets))
            .with("fsync", Extra::Str(FSYNC.into()))
    };
    let n = buckets as u64;
    let server = start_logkv_in(bin, FSYNC, base, data.path(), Duration::from_secs(20))?;
    let t = Instant::now();
    write_each(&server, buckets, true).map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    let took = t.elapsed().as_secs_f64();
    eprintln!("    S7: {buckets} buckets created in {took:.1} s");
    rep.emit(tag(row("logkv", "S7.create", took, "s", n)));
    emit_process(&server, "S7", buckets, rep);
    let disk = sys::disk_usage(data.path())?;
    rep.emit(tag(row("logkv", "S7.disk", disk as f64, "bytes", n)));
    server.stop();

    // After a clean stop; then after every bucket was written again and the server
    // killed (SIGKILL): the open finds each bucket's durability mark behind its end, and
    // makes what it read durable before it serves anything.
    let restart = |fsync: &str, what: &str, rep: &mut Reporter| {
        first_get_after_restart(bin, fsync, base, data.path(), buckets, what, rep)
    };
    let server = restart(FSYNC, "S7.restart", rep)?;
    emit_process(&server, "S7.restart", buckets, rep);
    write_each(&server, buckets, false).map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    server.kill();
    let server = restart(FSYNC, "S7.restart.kill", rep)?;
    server.stop();
    // The same under `interval`, where writes are visible before they are durable: the
    // open after the kill also skips, in every bucket, the revisions that may have been
    // seen and lost.
    let server = start_logkv_in(bin, INTERVAL, base, data.path(), Duration::from_secs(600))?;
    write_each(&server, buckets, false).map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    server.kill();
    drop(restart(INTERVAL, "S7.restart.kill.interval", rep)?);
    Ok(())
}

/// Starts the server again on `data` under `fsync` and emits, as `what`, the seconds
/// from its start to the answer of the first GET (of the last bucket's key).
fn first_get_after_restart(
    bin: &Path,
    fsync: &str,
    base: &Path,
    data: &Path,
    buckets: usize,
    what: &str,
    rep: &mut Reporter,
) -> Result<Running, BoxError> {
    let server = start_logkv_in(bin, fsync, base, data, Duration::from_secs(600))?;
    let last = name(buckets.saturating_sub(1));
    let mut c = Client::connect(&server.addr())?;
    expect_ok(c.call(&[b"USE", last.as_bytes()])?, "USE")?;
    let got = c.call(&[b"GET", b"k"])?;
    let took = server.spawned.elapsed().as_secs_f64();
    if got != Value::Bulk(VALUE.to_vec()) {
        return Err(format!("GET after the restart ({what}) replied {got:?}").into());
    }
    eprintln!("    {what}: first GET answered {took:.2} s after the start");
    let row = row("logkv", what, took, "s", buckets as u64)
        .with("buckets", Extra::count(buckets))
        .with("fsync", Extra::Str(fsync.into()));
    rep.emit(row);
    Ok(server)
}
