//! Opening a store's buckets: the `buckets/` directory is listed, what unfinished
//! creations and drops left behind is removed, and every bucket's log is replayed
//! into its index (`bucket/open.rs`).
//!
//! Each bucket's recovery touches only its own directory, so a store of many
//! buckets opens them on several threads; a store of few buckets, or one on a
//! simulated file system (whose runs must replay in one call order), opens them
//! on the calling thread. Either way the outcome is the same: buckets are
//! listed in name order, and if some cannot be opened, the error reported is
//! that of the first of them by name.
//!
//! After an unclean stop (a crash, a kill, a power cut) what recovery read in
//! a bucket may still be only in the page cache, and it must be durable before
//! it is served. Rather than each bucket syncing its own files (two fdatasyncs,
//! and two fsyncs more if it records skipped revisions in `lost.revs`), the
//! store syncs the file system once for all of them, lets each write its
//! durability mark (which records the revisions it skipped, if any), and
//! syncs once more
//! ([`make_recovery_durable`]); then it serves them. Where the file system
//! cannot be trusted to be synced whole (see `Storage::can_sync_file_system`),
//! each bucket syncs its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{CREATING_SUFFIX, DROPPED_SUFFIX};
use parking_lot::Mutex;

use crate::bucket::{BucketCore, Recovered};
use crate::config::{BucketConfig, Options, CONFIG_FILE};
use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, sync_file_systems};
use crate::io::Storage;
use crate::key::validate_bucket_name;
use crate::log::recovery::RecoveryReport;
use crate::log::segment::SegmentId;
use crate::log::AfterUnclean;

/// Buckets each opening thread should have, at least, to be worth starting.
const BUCKETS_PER_THREAD: usize = 64;
/// Most threads opening buckets at once. More than the cores: a bucket's open
/// waits on the disk as much as it computes (a cold page cache reads; where
/// the file system cannot be synced whole, each bucket syncs what it read
/// after an unclean stop). Measured on 2 cores, 10,000 one-key buckets after
/// a kill under `interval`, when each bucket synced its own: 8.7-9.9 s with 2
/// threads, 4.9-5.5 s with 8, 3.6-3.7 s with 16 or 32; after a clean stop
/// 0.29-0.44 s with 2 to 16.
const MAX_THREADS: usize = 16;

/// The buckets of a store, opened.
#[derive(Default)]
pub(super) struct OpenedBuckets {
    pub(super) buckets: BTreeMap<String, Arc<BucketCore>>,
    /// What recovery found in each bucket, in name order.
    pub(super) recovery: Vec<(String, RecoveryReport)>,
}

/// A bucket directory found by the listing.
struct Found {
    name: String,
    path: PathBuf,
}

/// What became of one bucket directory.
enum Outcome {
    /// Opened, ready to serve; `skipped`: the revisions its open skipped.
    Opened {
        core: Arc<BucketCore>,
        report: RecoveryReport,
        skipped: Option<(u64, u64)>,
    },
    /// Read back after an unclean stop; waits for the store's syncs.
    Awaiting(Box<Recovered>),
    /// Its creation never finished (no configuration): removed.
    Removed,
}

/// Opens every bucket under `buckets_dir`.
pub(super) fn open_buckets(buckets_dir: &Path, opts: &Options) -> Result<OpenedBuckets> {
    let started = Instant::now();
    let storage = &opts.storage;
    let (found, mut cleaned) = list(storage, buckets_dir)?;
    let threads = threads_for(storage, found.len());
    let results = on_threads(found.len(), threads, |i| {
        found.get(i).map_or_else(
            || Err(Error::Internal(format!("no bucket number {i}"))),
            |f| open_one(f, opts),
        )
    });
    let mut opened = OpenedBuckets::default();
    let mut awaiting = Vec::new();
    let mut skipped = Vec::new();
    for (f, result) in found.into_iter().zip(results) {
        // A bucket is skipped only after one before it failed (see `on_threads`).
        let outcome = result.ok_or_else(|| Error::Internal("a bucket was not opened".into()))?;
        match outcome? {
            Outcome::Opened {
                core,
                report,
                skipped: range,
            } => {
                skipped.extend(range.map(|r| (f.name.clone(), r)));
                opened.add(f.name, core, report);
            }
            Outcome::Awaiting(r) => {
                skipped.extend(r.skipped().map(|range| (f.name.clone(), range)));
                awaiting.push((f.name, r));
            }
            Outcome::Removed => cleaned = true,
        }
    }
    if cleaned {
        sync_dir(storage, buckets_dir)?;
    }
    let unclean = awaiting.len();
    let awaiting = make_recovery_durable(storage, awaiting, threads)?;
    for (name, core, report) in each_owned(awaiting, threads, |(name, r)| {
        finish(*r, opts).map(|(core, report)| (name, core, report))
    })? {
        opened.add(name, core, report);
    }
    opened.recovery.sort_by(|a, b| a.0.cmp(&b.0));
    log_skipped_revisions(&skipped);
    let segments: usize = opened.recovery.iter().map(|(_, r)| r.segments).sum();
    let records: u64 = opened.recovery.iter().map(|(_, r)| r.records).sum();
    tracing::info!(
        buckets = opened.buckets.len(),
        segments,
        records,
        unclean,
        threads,
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "buckets opened"
    );
    Ok(opened)
}

impl OpenedBuckets {
    fn add(&mut self, name: String, core: Arc<BucketCore>, report: RecoveryReport) {
        self.recovery.push((name.clone(), report));
        self.buckets.insert(name, core);
    }
}

/// A recovered bucket, ready to serve (moved to the heap here: a bucket is
/// large, and results are gathered by value).
fn finish(r: Recovered, opts: &Options) -> Result<(Arc<BucketCore>, RecoveryReport)> {
    r.finish(opts)
        .map(|(core, report)| (Arc::new(core), report))
}

/// After an unclean stop, makes durable what recovery read in every bucket
/// that left it to the store (see [`Recovered`]): syncs the file systems of
/// their directories, writes each bucket's durability mark (which records the
/// revisions it skipped), and syncs again. Two syncs in all, where each bucket
/// would make two fdatasyncs and (if it skipped revisions) create, sync and
/// rename a `lost.revs`. Returns the buckets, ready to finish.
fn make_recovery_durable(
    storage: &Storage,
    awaiting: Vec<(String, Box<Recovered>)>,
    threads: usize,
) -> Result<Vec<(String, Box<Recovered>)>> {
    if awaiting.is_empty() {
        return Ok(awaiting);
    }
    let dirs: Vec<PathBuf> = awaiting
        .iter()
        .map(|(_, r)| r.dir().to_path_buf())
        .collect();
    sync_file_systems(storage, dirs.iter().map(PathBuf::as_path))?;
    let mut synced = each_owned(awaiting, threads, |(name, mut r)| {
        r.data_synced().map(|()| (name, r))
    })?;
    sync_file_systems(storage, dirs.iter().map(PathBuf::as_path))?;
    for (_, r) in &mut synced {
        r.marks_synced()?;
    }
    Ok(synced)
}

/// Runs `work` on each of `items` (taking it) on up to `threads` threads, and
/// returns the results in the items' order, or the first error in that order
/// (see [`on_threads`]).
fn each_owned<T: Send, U: Send>(
    items: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    on_threads(slots.len(), threads, |i| {
        let item = slots
            .get(i)
            .and_then(|slot| slot.lock().take())
            .ok_or_else(|| Error::Internal(format!("no item number {i}")))?;
        work(item)
    })
    .into_iter()
    .map(|r| r.unwrap_or_else(|| Err(Error::Internal("an item was not run".into()))))
    .collect()
}

/// One line for every bucket whose revision counter skipped what an unclean
/// stop may have taken back (each bucket's range is logged at debug level):
/// a store of ten thousand buckets logs one line, not ten thousand.
fn log_skipped_revisions(skipped: &[(String, (u64, u64))]) {
    let Some((name, (first, last))) = skipped.first() else {
        return;
    };
    tracing::warn!(
        buckets = skipped.len(),
        bucket = %name,
        first,
        last,
        "unclean stop: revisions that may have been seen and then lost are skipped (the first bucket's range shown)"
    );
}

/// The bucket directories under `buckets_dir`, in name order, after removing
/// the leftovers of unfinished drops and creations; and whether anything was
/// removed (the directory then needs a sync).
fn list(storage: &Storage, buckets_dir: &Path) -> Result<(Vec<Found>, bool)> {
    let entries = std::fs::read_dir(buckets_dir).map_err(|e| Error::io(buckets_dir, e))?;
    let mut found = Vec::new();
    let mut cleaned = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(buckets_dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %path.display(), "ignoring a file with a non-UTF-8 name");
            continue;
        };
        // The listing's file type saves a `stat` per bucket; a symbolic link is
        // followed, as a bucket directory may be one.
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => path.is_dir(),
        };
        if !is_dir {
            tracing::warn!(path = %path.display(), "ignoring a file that is not a bucket");
            continue;
        }
        if name.ends_with(DROPPED_SUFFIX) || name.ends_with(CREATING_SUFFIX) {
            let what = if name.ends_with(DROPPED_SUFFIX) {
                "finishing the removal of a dropped bucket"
            } else {
                "removing a bucket whose creation never finished"
            };
            tracing::info!(path = %path.display(), "{what}");
            storage
                .remove_dir_all(&path)
                .map_err(|e| Error::io(&path, e))?;
            cleaned = true;
            continue;
        }
        if validate_bucket_name(&name).is_err() {
            tracing::warn!(path = %path.display(), "ignoring a directory that is not a bucket");
            continue;
        }
        found.push(Found { name, path });
    }
    found.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok((found, cleaned))
}

/// The first segment file in a bucket directory, if any.
fn first_segment(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .and_then(SegmentId::parse)
            .is_some()
        {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Recovers one bucket directory (or removes it, if its creation never finished).
fn open_one(f: &Found, opts: &Options) -> Result<Outcome> {
    let Some(config) = BucketConfig::load(&f.path.join(CONFIG_FILE))? else {
        // No operation leaves a bucket directory with segments and no
        // configuration (a creation writes it before the directory gets its
        // name): that is damage, and the segments are data. Refused, never removed.
        if let Some(segment) = first_segment(&f.path)? {
            return Err(Error::Corrupt {
                path: f.path.join(CONFIG_FILE),
                offset: 0,
                reason: format!(
                    "missing, while the bucket directory holds segments ({}): restore \
                     {CONFIG_FILE} (docs/FORMAT.md), or move the directory out of buckets/",
                    segment.display()
                ),
            });
        }
        tracing::info!(path = %f.path.display(), "removing a bucket whose creation never finished");
        opts.storage
            .remove_dir_all(&f.path)
            .map_err(|e| Error::io(&f.path, e))?;
        return Ok(Outcome::Removed);
    };
    let started = Instant::now();
    // After an unclean stop every bucket has bytes to make durable: one sync of
    // the file system for them all costs what one bucket's fsync does. (Asked
    // per bucket: a bucket's directory may be a link to another file system.)
    let after_unclean = if opts.storage.can_sync_file_system(&f.path) {
        AfterUnclean::CallerSyncs
    } else {
        AfterUnclean::OpenSyncs
    };
    let recovered = BucketCore::recover(&f.path, &f.name, config, opts, after_unclean)?;
    // One line per bucket only on request: a store may have tens of thousands.
    // What recovery cut or skipped is reported by whoever reads the reports.
    let report = recovered.report();
    tracing::debug!(
        bucket = %f.name,
        segments = report.segments,
        records = report.records,
        truncated_bytes = report.truncated_bytes,
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "bucket recovered"
    );
    if recovered.awaits_sync() {
        return Ok(Outcome::Awaiting(Box::new(recovered)));
    }
    let skipped = recovered.skipped();
    let (core, report) = finish(recovered, opts)?;
    Ok(Outcome::Opened {
        core,
        report,
        skipped,
    })
}

/// How many threads should open `buckets` buckets.
fn threads_for(storage: &Storage, buckets: usize) -> usize {
    if !storage.allows_parallel_work() {
        return 1;
    }
    buckets.div_ceil(BUCKETS_PER_THREAD).clamp(1, MAX_THREADS)
}

/// Runs `work(i)` for every `i` in `0..n` on up to `threads` threads (the
/// calling one included), taking the numbers in increasing order, and returns
/// the results by number. After a failure no further number is taken, so a
/// `None` (not run) always comes after an error: every number below a taken
/// one was taken too, and a taken number is always run.
fn on_threads<T: Send>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Vec<Option<Result<T>>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let run = || {
        // A panic in `work` stops the other threads too (it is resumed below).
        let stop_on_panic = StopOnPanic(&failed);
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let result = work(i);
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            done.push((i, result));
        }
        drop(stop_on_panic);
        done
    };
    let mut results: Vec<Option<Result<T>>> = std::iter::repeat_with(|| None).take(n).collect();
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("logkv-open".into())
                    .spawn_scoped(s, run)
                    .map_err(|e| {
                        tracing::warn!(error = %e, "could not start a thread to open buckets");
                    })
                    .ok()
            })
            .collect();
        let mut done = run();
        for helper in helpers {
            match helper.join() {
                Ok(more) => done.extend(more),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, result) in done {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
        }
    });
    results
}

/// Raises the flag it holds if dropped while its thread panics.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_threads_runs_every_number_once_in_its_place() {
        for threads in [1, 2, 5] {
            let got = on_threads(300, threads, |i| Ok(i * 2));
            let want: Vec<usize> = (0..300).map(|i| i * 2).collect();
            let got: Vec<usize> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn a_panic_on_one_thread_stops_the_others_and_reaches_the_caller() {
        /// Set when the panicking call's frame is unwound (the panic hook, which may
        /// print a backtrace for a long time, has run by then).
        struct SetOnDrop<'a>(&'a AtomicBool);
        impl Drop for SetOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let ran = AtomicUsize::new(0);
        let unwinding = AtomicBool::new(false);
        let caught = std::panic::catch_unwind(|| {
            on_threads(10_000, 4, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                if i == 10 {
                    let _unwound = SetOnDrop(&unwinding);
                    panic!("a panic opening bucket {i}");
                }
                if i > 10 {
                    // The numbers after the panic wait for its unwinding: the others
                    // must not run everything while the hook prints (as it did under
                    // RUST_BACKTRACE=1, failing this test).
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while !unwinding.load(Ordering::SeqCst) && std::time::Instant::now() < deadline
                    {
                        std::thread::yield_now();
                    }
                }
                // As a bucket's open would take.
                std::thread::sleep(std::time::Duration::from_micros(200));
                Ok(i)
            })
        });
        assert!(caught.is_err(), "the panic reaches the caller");
        let ran = ran.load(Ordering::Relaxed);
        // The other threads take at most a few numbers each after the panic; without
        // the stop they would run all 10,000.
        assert!(ran < 10_000, "{ran} numbers run after a panic at the 11th");
    }

    #[test]
    fn on_threads_stops_after_a_failure_and_never_skips_below_it() {
        for threads in [1, 2, 4] {
            let got = on_threads(500, threads, |i| {
                if i == 100 || i == 400 {
                    Err(Error::Internal(format!("number {i}")))
                } else {
                    Ok(i)
                }
            });
            let first_failure = got.iter().position(|r| matches!(r, Some(Err(_)))).unwrap();
            assert_eq!(first_failure, 100, "{threads} threads");
            assert!(
                got[..100].iter().all(|r| matches!(r, Some(Ok(_)))),
                "{threads} threads: every number below the first failure was run"
            );
            let first_skipped = got.iter().position(Option::is_none);
            if threads == 1 {
                assert_eq!(first_skipped, Some(101), "one thread stops at the failure");
                assert!(got[101..].iter().all(Option::is_none));
            } else {
                assert!(
                    first_skipped.is_none_or(|s| s > 100),
                    "{threads} threads: no number below the failure is skipped"
                );
            }
        }
    }
}
