//! Engine-level watch workloads (logkv only).
//!
//! - `watch-fanout.K` (K = 0, 100, 10,000): writer ops/s (puts, `FsyncPolicy::Never`) while
//!   K `Watch`es on `>` are polled by 2 reader threads with `try_next`; the readers sleep on
//!   the bucket's change listener when a sweep finds nothing, as an event loop would. With
//!   K = 0 no reader runs. `watch-fanout.K.delivered`: events delivered to all watches per
//!   second, from the first write until every watch has seen every write (or 30 s; then the
//!   row says `"complete":false`).
//! - `watch-slow`: writer ops/s with one `Watch` that is never read over writer ops/s with
//!   none (the medians of 3 alternating runs each, `watch-slow.one` / `watch-slow.none`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use logkv::{Bucket, FsyncPolicy, Options, Store, Watch, WatchEvent, WatchOptions};

use crate::keys::{self, KEY_LEN, VALUE_LEN};
use crate::report::{out, Extra, Row};
use crate::stores::BoxError;

/// Watch counts of `watch-fanout`.
pub const FANOUT: &[usize] = &[0, 100, 10_000];
const READERS: usize = 2;
const DELIVERY_CAP: Duration = Duration::from_secs(30);
const SLOW_ROUNDS: usize = 3;

fn row(workload: &str, value: f64, unit: &str, n: u64) -> Row {
    Row::new("embedded", "logkv", workload, value, unit, n)
}

fn open(dir: &Path) -> Result<(Store, Bucket), BoxError> {
    let store = Store::open(
        dir,
        Options {
            fsync: FsyncPolicy::Never,
            ..Options::default()
        },
    )?;
    let bucket = store.default_bucket()?;
    Ok((store, bucket))
}

fn write_n(bucket: &Bucket, m: u32, round: u32) -> Result<Duration, BoxError> {
    let (mut kb, mut vb) = ([0u8; KEY_LEN], [0u8; VALUE_LEN]);
    let t = Instant::now();
    for i in 0..u64::from(m) {
        bucket.put(
            keys::key(i, &mut kb),
            keys::value(i, round, &mut vb).to_vec(),
        )?;
    }
    Ok(t.elapsed())
}

/// `watch-fanout.0`, `.100`, `.10000`.
pub fn fanout(n: u32, dir: &Path) -> Result<(), BoxError> {
    let m = n.clamp(1, 200_000);
    for &k in FANOUT {
        let (store, bucket) = open(&dir.join(format!("fanout-{k}")))?;
        let opts = WatchOptions {
            updates_only: true,
            ..WatchOptions::default()
        };
        let mut watches = (0..k)
            .map(|_| bucket.watch(">", opts.clone()))
            .collect::<Result<Vec<Watch>, _>>()?;
        let stop = AtomicBool::new(false);
        let delivered = AtomicU64::new(0);
        let expected = k as u64 * u64::from(m);
        let (write, deliver) = std::thread::scope(|sc| -> Result<_, BoxError> {
            let mut readers = Vec::new();
            if k > 0 {
                let per = k.div_ceil(READERS);
                while !watches.is_empty() {
                    let group: Vec<Watch> = watches.drain(..per.min(watches.len())).collect();
                    let listener = bucket.change_listener();
                    let (stop, delivered) = (&stop, &delivered);
                    readers.push(sc.spawn(move || {
                        poll_watches(group, &listener, u64::from(m), stop, delivered)
                    }));
                }
            }
            let started = Instant::now();
            let write = write_n(&bucket, m, 0)?;
            while delivered.load(Ordering::Relaxed) < expected && started.elapsed() < DELIVERY_CAP {
                std::thread::sleep(Duration::from_millis(1));
            }
            let deliver = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            for r in readers {
                r.join().map_err(|_| "watch reader panicked")??;
            }
            Ok((write, deliver))
        })?;
        let got = delivered.load(Ordering::Relaxed);
        eprintln!(
            "    watch-fanout.{k}: writer {:.2} s for {m} puts; {got} of {expected} events delivered in {:.2} s",
            write.as_secs_f64(),
            deliver.as_secs_f64()
        );
        out(&row(
            &format!("watch-fanout.{k}"),
            f64::from(m) / write.as_secs_f64(),
            "ops/s",
            u64::from(m),
        )
        .with("watches", Extra::count(k)));
        if k > 0 {
            out(&row(
                &format!("watch-fanout.{k}.delivered"),
                got as f64 / deliver.as_secs_f64(),
                "ops/s",
                got,
            )
            .with("watches", Extra::count(k))
            .with("complete", Extra::Bool(got >= expected)));
        }
        drop(bucket);
        drop(store);
    }
    Ok(())
}

/// One reader thread: sweeps its watches with `try_next` until each has seen `per_watch`
/// entries (or `stop`), sleeping on the change listener when a sweep finds nothing.
fn poll_watches(
    mut watches: Vec<Watch>,
    listener: &crossbeam_channel::Receiver<()>,
    per_watch: u64,
    stop: &AtomicBool,
    delivered: &AtomicU64,
) -> Result<(), String> {
    let mut seen = vec![0u64; watches.len()];
    let mut left = watches.len();
    while left > 0 && !stop.load(Ordering::Relaxed) {
        let mut got = 0u64;
        for (w, seen) in watches.iter_mut().zip(seen.iter_mut()) {
            if *seen >= per_watch {
                continue;
            }
            // A bounded drain per sweep keeps the watches fair to each other.
            for _ in 0..1024 {
                match w.try_next().map_err(|e| e.to_string())? {
                    Some(WatchEvent::Entry(_)) => {
                        got += 1;
                        *seen += 1;
                        if *seen == per_watch {
                            left -= 1;
                            break;
                        }
                    }
                    Some(WatchEvent::Ready) => {}
                    Some(WatchEvent::Lost { .. }) => return Err("a watch lost events".into()),
                    None => break,
                }
            }
        }
        if got > 0 {
            delivered.fetch_add(got, Ordering::Relaxed);
        } else {
            let _ = listener.recv_timeout(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// `watch-slow`: one never-read watch against none.
pub fn slow(n: u32, dir: &Path) -> Result<(), BoxError> {
    let m = n.clamp(1, 200_000);
    let mut none = Vec::new();
    let mut one = Vec::new();
    for round in 0..SLOW_ROUNDS {
        for with_watch in [false, true] {
            let (store, bucket) = open(&dir.join(format!("slow-{round}-{with_watch}")))?;
            let mut watch = if with_watch {
                Some(bucket.watch(">", WatchOptions::default())?)
            } else {
                None
            };
            let d = write_n(&bucket, m, 0)?;
            let r = f64::from(m) / d.as_secs_f64();
            if let Some(w) = watch.as_mut() {
                one.push(r);
                if round == 0 {
                    // The log was the buffer: the late reader still gets every write.
                    let mut entries = 0u32;
                    while let Some(ev) = w.try_next()? {
                        if let WatchEvent::Entry(_) = ev {
                            entries += 1;
                        }
                    }
                    if entries != m {
                        return Err(format!("the slow watch read {entries} of {m} writes").into());
                    }
                }
            } else {
                none.push(r);
            }
            drop(watch);
            drop(bucket);
            drop(store);
        }
    }
    let (a, b) = (median(&mut none), median(&mut one));
    out(&row("watch-slow.none", a, "ops/s", u64::from(m)));
    out(&row("watch-slow.one", b, "ops/s", u64::from(m)));
    out(&row("watch-slow", b / a, "ratio", u64::from(m)));
    Ok(())
}

/// The median (the upper one of an even count).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
