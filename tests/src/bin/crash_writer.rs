//! Helper process for the crash and lock tests in `tests/tests/`.
//!
//! Modes:
//!
//! * `crash_writer <dir> <start>` — opens the store in `<dir>` (fsync `Always`,
//!   small segments) and writes forever, starting at operation index `<start>`.
//!   Before each write it prints what it is about to write:
//!
//!   ```text
//!   intent <i> <n>
//!   w put <key> <value>      (n lines; values are printable ASCII without spaces)
//!   w del <key> -
//!   ```
//!
//!   and after the write returns (so after it is durable) one line per key:
//!
//!   ```text
//!   ack <key> <revision>
//!   ```
//!
//!   Every line is flushed at once. The parent kills the process at a random
//!   moment and checks that every acknowledged write survived. Each write takes
//!   the next revision: the writer is the store's only writer, and nothing else
//!   (no TTL, no sweep marker) takes one.
//!
//! * `crash_writer <dir> <start> compact` — the same, with the background
//!   thread on and sweeping every 5 ms, so that compaction passes run (and get
//!   killed) while writes go on. After the acks of a write, when the number of
//!   compaction passes completed since the open has grown, it prints
//!
//!   ```text
//!   compactions <passes>
//!   ```
//!
//! * `crash_writer --hold <dir>` — opens the store, prints `ready`, and keeps it
//!   open until its stdin is closed; then prints `closed` and exits.
//!
//! * `crash_writer --try-open <dir>` — tries to open the store once and prints
//!   `ok`, or `err <variant>\t<path or ->\t<message>`.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use logkv::{Error, FsyncPolicy, Options, Store, WriteOp};

/// Segment size used by the writer (small, so the log rotates often).
const SEGMENT_SIZE: u64 = 8192;
/// Number of distinct keys the writer uses.
const KEYS: u64 = 300;

fn options(compact: bool) -> Options {
    Options {
        background: compact,
        sweep_interval: Duration::from_millis(5),
        fsync: FsyncPolicy::Always,
        segment_size: SEGMENT_SIZE,
        ..Default::default()
    }
}

fn key(j: u64) -> String {
    format!("k.{}", j % KEYS)
}

/// A value derived from the operation index and the key: printable, no spaces,
/// 16 to 215 bytes.
fn value(i: u64, key: &str) -> String {
    let mut v = format!("{key}={i}|");
    let len = 16 + (i.wrapping_mul(13) % 200) as usize;
    let fill = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // Any bits of i do: they only pick filler characters.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "truncation is harmless here"
    )]
    let mut n = i as usize;
    while v.len() < len {
        v.push(fill[n % fill.len()] as char);
        n = n.wrapping_mul(31).wrapping_add(7);
    }
    v
}

/// The writes of operation `i`: (`is_put`, key, value).
fn schedule(i: u64) -> Vec<(bool, String, String)> {
    match i % 10 {
        4 => {
            let (a, b, c) = (key(i), key(i + 100), key(i + 200));
            let (va, vb) = (value(i, &a), value(i, &b));
            vec![(true, a, va), (true, b, vb), (false, c, String::new())]
        }
        9 => vec![(false, key(i.wrapping_mul(31)), String::new())],
        _ => {
            let k = key(i.wrapping_mul(7919));
            let v = value(i, &k);
            vec![(true, k, v)]
        }
    }
}

fn write_mode(dir: &str, start: u64, compact: bool) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir, options(compact))?;
    let bucket = store.default_bucket()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut passes_reported = 0;
    // Bounded so that a child whose parent vanished cannot run forever.
    for i in start..start + 1_000_000 {
        let writes = schedule(i);
        let mut intent = format!("intent {i} {}\n", writes.len());
        let mut ops = Vec::with_capacity(writes.len());
        for (put, k, v) in &writes {
            if *put {
                writeln!(intent, "w put {k} {v}")?;
                ops.push(WriteOp::put(k.as_str(), v.clone()));
            } else {
                writeln!(intent, "w del {k} -")?;
                ops.push(WriteOp::delete(k.as_str()));
            }
        }
        out.write_all(intent.as_bytes())?;
        out.flush()?;
        let written = bucket.write(&ops)?;
        let mut acks = String::new();
        for ((_, k, _), w) in writes.iter().zip(&written) {
            writeln!(acks, "ack {k} {}", w.revision)?;
        }
        let passes = bucket.stats().compactions;
        if passes > passes_reported {
            writeln!(acks, "compactions {passes}")?;
            passes_reported = passes;
        }
        out.write_all(acks.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

fn hold_mode(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(
        dir,
        Options {
            background: false,
            ..Default::default()
        },
    )?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    // Wait for the parent to close our stdin.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(store);
    writeln!(out, "closed")?;
    out.flush()?;
    Ok(())
}

fn try_open_mode(dir: &str) {
    let line = match Store::open(
        dir,
        Options {
            background: false,
            ..Default::default()
        },
    ) {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            let (variant, path) = match &e {
                Error::Io { path, .. } => ("Io", path.display().to_string()),
                Error::Locked(path) => ("Locked", path.display().to_string()),
                Error::Corrupt { path, .. } => ("Corrupt", path.display().to_string()),
                other => ("Other", format!("{other:?}")),
            };
            format!("err {variant}\t{path}\t{e}")
        }
    };
    println!("{line}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, dir] if flag == "--hold" => hold_mode(dir),
        [flag, dir] if flag == "--try-open" => {
            try_open_mode(dir);
            Ok(())
        }
        [dir, start] => match start.parse() {
            Ok(start) => write_mode(dir, start, false),
            Err(e) => Err(format!("bad start index {start:?}: {e}").into()),
        },
        [dir, start, mode] if mode == "compact" => match start.parse() {
            Ok(start) => write_mode(dir, start, true),
            Err(e) => Err(format!("bad start index {start:?}: {e}").into()),
        },
        _ => Err(
            "usage: crash_writer <dir> <start> [compact] | --hold <dir> | --try-open <dir>".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash_writer: {e}");
            ExitCode::FAILURE
        }
    }
}
