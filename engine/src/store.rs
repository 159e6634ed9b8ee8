//! The store: a directory of buckets, its lock, and its background work.
//!
//! Layout of a store directory:
//!
//! ```text
//! <dir>/LOCK                          the directory lock
//! <dir>/buckets/<name>/bucket.conf    the bucket's configuration
//! <dir>/buckets/<name>/*.seg          the bucket's log segments
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

use crate::bucket::{BucketCore, CONFIG_FILE};
use crate::compact::{CompactionReport, CrashPoint};
use crate::config::{BucketConfig, Options};
use crate::entry::{
    BucketStats, BucketStatus, DurabilityTicket, Entry, Page, Ttl, WriteOp, Written,
};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::fsync::FsyncPolicy;
use crate::key::{validate_bucket_name, Glob};
use crate::lock::DirLock;
use crate::log::recovery::RecoveryReport;
use crate::watch::{Watch, WatchOptions};

/// The bucket that always exists.
pub const DEFAULT_BUCKET: &str = "default";
const BUCKETS_DIR: &str = "buckets";
const DROPPED_SUFFIX: &str = ".dropped";

struct StoreInner {
    dir: PathBuf,
    opts: Options,
    buckets: RwLock<BTreeMap<String, Arc<BucketCore>>>,
    /// Serialises bucket creation and removal.
    catalog: Mutex<()>,
    recovery: Vec<(String, RecoveryReport)>,
    stop: Mutex<Option<Sender<()>>>,
    background: Mutex<Option<JoinHandle<()>>>,
    _lock: DirLock,
}

/// An open store. Cheap to clone; every clone is the same store, and the
/// directory stays locked until the last clone (and every [`Bucket`]) is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Store {
    /// Opens the store in `dir`, creating the directory if it is missing.
    ///
    /// Fails with [`Error::Locked`] if another store has it open, and with
    /// [`Error::Corrupt`] if a log is damaged before its tail (unless
    /// [`Options::repair`] is set).
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock = DirLock::acquire(&dir)?;
        let buckets_dir = dir.join(BUCKETS_DIR);
        std::fs::create_dir_all(&buckets_dir).map_err(|e| Error::io(&buckets_dir, e))?;
        let mut buckets = BTreeMap::new();
        let mut recovery = Vec::new();
        let entries = std::fs::read_dir(&buckets_dir).map_err(|e| Error::io(&buckets_dir, e))?;
        let mut cleaned = false;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&buckets_dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %path.display(), "ignoring a file with a non-UTF-8 name");
                continue;
            };
            if !path.is_dir() {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a bucket");
                continue;
            }
            if name.ends_with(DROPPED_SUFFIX) {
                tracing::info!(path = %path.display(), "finishing the removal of a dropped bucket");
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                cleaned = true;
                continue;
            }
            if validate_bucket_name(&name).is_err() {
                tracing::warn!(path = %path.display(), "ignoring a directory that is not a bucket");
                continue;
            }
            if !path.join(CONFIG_FILE).exists() {
                tracing::info!(path = %path.display(), "removing a bucket whose creation never finished");
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                cleaned = true;
                continue;
            }
            let config = BucketConfig::load(&path.join(CONFIG_FILE))?;
            let started = Instant::now();
            let (core, report) = BucketCore::open(&path, &name, config, &opts)?;
            tracing::info!(
                bucket = %name,
                segments = report.segments,
                records = report.records,
                truncated_bytes = report.truncated_bytes,
                ms = started.elapsed().as_millis() as u64,
                "bucket recovered"
            );
            recovery.push((name.clone(), report));
            buckets.insert(name, Arc::new(core));
        }
        if cleaned {
            sync_dir(&buckets_dir)?;
        }
        let store = Store {
            inner: Arc::new(StoreInner {
                dir,
                opts,
                buckets: RwLock::new(buckets),
                catalog: Mutex::new(()),
                recovery,
                stop: Mutex::new(None),
                background: Mutex::new(None),
                _lock: lock,
            }),
        };
        if !store.inner.buckets.read().contains_key(DEFAULT_BUCKET) {
            store.create_bucket(DEFAULT_BUCKET, BucketConfig::default())?;
        }
        if store.inner.opts.background {
            store.start_background();
        }
        Ok(store)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// What recovery found in each bucket when the store was opened.
    pub fn recovery_reports(&self) -> &[(String, RecoveryReport)] {
        &self.inner.recovery
    }

    /// Creates a bucket. [`Error::BucketExists`] if it exists.
    pub fn create_bucket(&self, name: &str, config: BucketConfig) -> Result<Bucket> {
        validate_bucket_name(name)?;
        config.validate()?;
        let _g = self.inner.catalog.lock();
        if self.inner.buckets.read().contains_key(name) {
            return Err(Error::BucketExists(name.to_string()));
        }
        let parent = self.inner.dir.join(BUCKETS_DIR);
        let dir = parent.join(name);
        if dir.exists() {
            // Left by a creation that failed part-way in this process.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        config.save(&dir.join(CONFIG_FILE))?;
        sync_dir(&parent)?;
        let (core, _) = BucketCore::open(&dir, name, config, &self.inner.opts)?;
        let core = Arc::new(core);
        self.inner
            .buckets
            .write()
            .insert(name.to_string(), Arc::clone(&core));
        Ok(Bucket {
            core,
            _store: Arc::clone(&self.inner),
        })
    }

    /// Drops a bucket and removes its data from disk. The `default` bucket cannot be dropped.
    pub fn drop_bucket(&self, name: &str) -> Result<()> {
        validate_bucket_name(name)?;
        if name == DEFAULT_BUCKET {
            return Err(Error::BadArgument(
                "the default bucket cannot be dropped".into(),
            ));
        }
        let _g = self.inner.catalog.lock();
        let core = self
            .inner
            .buckets
            .write()
            .remove(name)
            .ok_or_else(|| Error::NoBucket(name.to_string()))?;
        core.dropped.store(true, Ordering::Release);
        // Wait for a write in progress to finish before the files go.
        let _w = core.writer.lock();
        let parent = self.inner.dir.join(BUCKETS_DIR);
        let doomed = parent.join(format!("{name}{DROPPED_SUFFIX}"));
        std::fs::rename(&core.dir, &doomed).map_err(|e| Error::io(&core.dir, e))?;
        sync_dir(&parent)?;
        std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))?;
        sync_dir(&parent)?;
        core.hub.close();
        Ok(())
    }

    /// Names of all buckets, sorted.
    pub fn bucket_names(&self) -> Vec<String> {
        self.inner.buckets.read().keys().cloned().collect()
    }

    /// A handle on a bucket. [`Error::NoBucket`] if there is none by that name.
    pub fn bucket(&self, name: &str) -> Result<Bucket> {
        match self.inner.buckets.read().get(name) {
            Some(core) => Ok(Bucket {
                core: Arc::clone(core),
                _store: Arc::clone(&self.inner),
            }),
            None => Err(Error::NoBucket(name.to_string())),
        }
    }

    /// The `default` bucket.
    pub fn default_bucket(&self) -> Result<Bucket> {
        self.bucket(DEFAULT_BUCKET)
    }

    /// Latest live entries of keys matching `glob`, in every bucket whose name
    /// matches `bucket_glob`, bucket by bucket in name order; at most `limit` (0: no limit).
    pub fn search(&self, glob: &str, bucket_glob: &str, limit: usize) -> Result<Vec<Entry>> {
        let glob = Glob::new(glob)?;
        let bucket_glob = Glob::new(bucket_glob)?;
        let cores: Vec<Arc<BucketCore>> = self
            .inner
            .buckets
            .read()
            .iter()
            .filter(|(n, _)| bucket_glob.matches(n))
            .map(|(_, c)| Arc::clone(c))
            .collect();
        let mut out = Vec::new();
        for core in cores {
            let left = if limit == 0 { 0 } else { limit - out.len() };
            out.extend(core.search(&glob, left)?);
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Makes every write acknowledged so far durable, in every bucket.
    pub fn sync(&self) -> Result<()> {
        for core in self.cores() {
            core.log.sync()?;
        }
        Ok(())
    }

    /// Syncs and closes this handle. The directory lock is released when the
    /// last clone of the store and of its buckets is gone.
    pub fn close(self) -> Result<()> {
        self.sync()
    }

    fn cores(&self) -> Vec<Arc<BucketCore>> {
        self.inner.buckets.read().values().cloned().collect()
    }

    fn start_background(&self) {
        let (tx, rx) = bounded::<()>(1);
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        let opts = &self.inner.opts;
        let fsync_every = match opts.fsync {
            FsyncPolicy::Interval(d) => Some(d),
            _ => None,
        };
        let tick = fsync_every
            .unwrap_or(opts.sweep_interval)
            .min(opts.sweep_interval)
            .max(Duration::from_millis(5));
        let sweep_every = opts.sweep_interval;
        let handle = std::thread::Builder::new().name("logkv-background".into()).spawn(move || {
            let mut last_sweep = Instant::now();
            loop {
                match rx.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                let sweep = last_sweep.elapsed() >= sweep_every;
                if sweep {
                    last_sweep = Instant::now();
                }
                for core in store.cores() {
                    if fsync_every.is_some() && core.log.dirty() {
                        if let Err(e) = core.log.sync() {
                            tracing::error!(bucket = %core.name, error = %e, "background fsync failed");
                        }
                    }
                    if sweep {
                        if let Err(e) = core.sweep_expired() {
                            tracing::warn!(bucket = %core.name, error = %e, "TTL sweep failed");
                        }
                        if core.needs_compaction() {
                            if let Err(e) = core.compact(false) {
                                tracing::warn!(bucket = %core.name, error = %e, "background compaction failed");
                            }
                        }
                    }
                }
            }
        });
        match handle {
            Ok(h) => {
                *self.inner.stop.lock() = Some(tx);
                *self.inner.background.lock() = Some(h);
            }
            Err(e) => tracing::error!(error = %e, "could not start the background thread"),
        }
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.lock().take() {
            let _ = tx.try_send(());
        }
        if let Some(h) = self.background.lock().take() {
            // The background thread may itself hold the last reference.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        for core in self.buckets.read().values() {
            // A clean close leaves a synced log and an index snapshot for a fast reopen.
            if let Err(e) = core.write_snapshot() {
                tracing::error!(bucket = %core.name, error = %e, "sync or snapshot at close failed");
            }
        }
    }
}

/// A handle on one bucket. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Bucket {
    core: Arc<BucketCore>,
    _store: Arc<StoreInner>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.core.name)
            .finish()
    }
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The bucket's configuration.
    pub fn config(&self) -> BucketConfig {
        self.core.config
    }

    /// The value of `key`, if it has a live one.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.core.get(key)?.map(|e| e.value))
    }

    /// Calls `f` with the live value of `key` read in place (no copy);
    /// `None` if the key has no live value.
    pub fn get_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.core.get_with(key, f)
    }

    /// Whether the bucket still exists (it has not been dropped).
    pub fn is_open(&self) -> bool {
        self.core.check_open().is_ok()
    }

    /// Counters that cost nothing to read (no walk of the index).
    pub fn stats(&self) -> BucketStats {
        self.core.stats()
    }

    /// Applies independent writes — each succeeds or fails on its own, in
    /// order — under one lock hold and one append, without waiting for
    /// durability (not a batch: see [`Bucket::write`] for that). Returns each
    /// result and a ticket for [`Bucket::wait_durable`].
    pub fn write_each(&self, ops: &[WriteOp]) -> Result<(Vec<Result<Written>>, DurabilityTicket)> {
        self.core.write_each(ops)
    }

    /// Like [`Bucket::delete_glob`] without waiting for durability: returns the
    /// count and a ticket for [`Bucket::wait_durable`].
    pub fn delete_glob_nowait(&self, glob: &str) -> Result<(usize, DurabilityTicket)> {
        self.core.delete_glob_nowait(&Glob::new(glob)?)
    }

    /// The latest entry of `key`, if it is a live value.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>> {
        self.core.get(key)
    }

    /// Retained revision `revision` of `key` — a DEL or PURGE marker is returned
    /// as such — or `None` if it is not retained or has expired.
    pub fn entry_at(&self, key: &str, revision: u64) -> Result<Option<Entry>> {
        self.core.get_revision(key, revision)
    }

    /// Applies writes as one atomic batch: all or none, consecutive revisions,
    /// durable together, visible at once. If one precondition fails nothing is
    /// written and the error is [`Error::Batch`] naming the write (a single
    /// write returns its error unwrapped).
    pub fn write(&self, ops: &[WriteOp]) -> Result<Vec<Written>> {
        self.core.write(ops)
    }

    /// Like [`Bucket::write`], but returns as soon as the writes are visible,
    /// with a ticket to pass to [`Bucket::wait_durable`]. A server uses this to
    /// apply a whole pipeline of writes and then wait for one shared fsync.
    pub fn write_nowait(&self, ops: &[WriteOp]) -> Result<(Vec<Written>, DurabilityTicket)> {
        self.core.write_nowait(ops)
    }

    /// Waits until every write whose ticket is at most `ticket` is durable
    /// (returns at once unless the fsync policy is [`FsyncPolicy::Always`]).
    pub fn wait_durable(&self, ticket: DurabilityTicket) -> Result<()> {
        self.core.wait_durable(ticket)
    }

    fn write_one(&self, op: WriteOp) -> Result<Written> {
        let mut out = self.core.write(std::slice::from_ref(&op))?;
        out.pop().ok_or(Error::Closed)
    }

    /// Stores a value; returns its revision.
    pub fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        Ok(self.write_one(WriteOp::put(key, value))?.revision)
    }

    /// Stores a value that expires after `ttl`; returns its revision.
    pub fn put_with_ttl(&self, key: &str, value: impl Into<Bytes>, ttl: Duration) -> Result<u64> {
        Ok(self
            .write_one(WriteOp::put(key, value).with_ttl(ttl))?
            .revision)
    }

    /// Stores a value and returns the live entry it replaced.
    pub fn put_returning_previous(
        &self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<(u64, Option<Entry>)> {
        let w = self.write_one(WriteOp::put(key, value).returning_previous())?;
        Ok((w.revision, w.previous))
    }

    /// Stores a value only if the key has no live value; [`Error::Exists`] otherwise.
    pub fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        Ok(self.write_one(WriteOp::create(key, value))?.revision)
    }

    /// Stores a value only if `revision` is the key's latest (see [`WriteOp::update`]).
    pub fn update(&self, key: &str, value: impl Into<Bytes>, revision: u64) -> Result<u64> {
        Ok(self
            .write_one(WriteOp::update(key, value, revision))?
            .revision)
    }

    /// Compare-and-swap by value (see [`WriteOp::cas`]).
    pub fn cas(&self, key: &str, new: impl Into<Bytes>, expected: Option<&[u8]>) -> Result<u64> {
        let expected = expected.map(Bytes::copy_from_slice);
        Ok(self.write_one(WriteOp::cas(key, new, expected))?.revision)
    }

    /// Writes a DEL marker; returns its revision.
    pub fn delete(&self, key: &str) -> Result<u64> {
        Ok(self.write_one(WriteOp::delete(key))?.revision)
    }

    /// Writes a DEL marker if `revision` is the key's latest; [`Error::WrongRevision`] otherwise.
    pub fn delete_at(&self, key: &str, revision: u64) -> Result<u64> {
        Ok(self.write_one(WriteOp::delete_at(key, revision))?.revision)
    }

    /// Writes a DEL marker and returns the live entry it deleted.
    pub fn delete_returning(&self, key: &str) -> Result<(u64, Option<Entry>)> {
        let w = self.write_one(WriteOp::delete(key).returning_previous())?;
        Ok((w.revision, w.previous))
    }

    /// Writes a PURGE marker; every earlier revision of the key is dropped.
    pub fn purge(&self, key: &str) -> Result<u64> {
        Ok(self.write_one(WriteOp::purge(key))?.revision)
    }

    /// Writes a new PUT with the value of retained revision `revision`.
    pub fn revert(&self, key: &str, revision: u64) -> Result<u64> {
        Ok(self.write_one(WriteOp::revert(key, revision))?.revision)
    }

    /// Live keys matching a subject pattern (`*` one token, `>` the rest), in key order.
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        self.core.keys(pattern)
    }

    /// Retained entries of keys matching a subject pattern, oldest first.
    pub fn history(&self, pattern: &str) -> Result<Vec<Entry>> {
        self.core.history(pattern)
    }

    /// Latest live entries of keys matching a glob, in key order; at most `limit` (0: no limit).
    pub fn search(&self, glob: &str, limit: usize) -> Result<Vec<Entry>> {
        self.core.search(&Glob::new(glob)?, limit)
    }

    /// Deletes (as by [`Bucket::delete`]) every live key matching a glob; returns how many.
    pub fn delete_glob(&self, glob: &str) -> Result<usize> {
        self.core.delete_glob(&Glob::new(glob)?)
    }

    /// One page of live entries with `from <= key < to`, in key order, and the
    /// cursor for the next page. Pages stay correct while writes go on: a key
    /// present during the whole walk is returned exactly once.
    pub fn scan(&self, from: Option<&str>, to: Option<&str>, limit: usize) -> Result<Page> {
        self.core.scan(from, to, limit)
    }

    /// Time left on a key's value.
    pub fn ttl(&self, key: &str) -> Result<Ttl> {
        self.core.ttl(key)
    }

    /// A description of the bucket.
    pub fn status(&self) -> Result<BucketStatus> {
        self.core.status()
    }

    /// Writes DEL markers for expired values and drops aged entries now
    /// (the background thread does this every [`Options::sweep_interval`]).
    pub fn sweep_expired(&self) -> Result<usize> {
        self.core.sweep_expired()
    }

    /// Starts a watch on keys matching a subject pattern (see [`WatchOptions`]).
    pub fn watch(&self, pattern: &str, opts: WatchOptions) -> Result<Watch> {
        let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&self._store) as _;
        Watch::start(Arc::clone(&self.core), keep, pattern, opts)
    }

    /// A channel that receives a (coalesced) token after every write to this
    /// bucket, for event loops that poll watches with [`Watch::try_next`]
    /// instead of blocking. Costs the writer one `try_send` per listener.
    pub fn change_listener(&self) -> crossbeam_channel::Receiver<()> {
        self.core.hub.listen()
    }

    /// Makes every write to this bucket acknowledged so far durable.
    pub fn sync(&self) -> Result<()> {
        self.core.log.sync()
    }

    /// Runs a compaction pass now: seals the active segment if it holds dead
    /// records and rewrites every sealed segment that has any, keeping only
    /// what is retained. Writers and readers go on meanwhile.
    pub fn compact(&self) -> Result<CompactionReport> {
        self.core.compact(true)
    }

    /// Test hook: make the next compaction passes stop at `point` as if the
    /// process crashed there (the store should be dropped and reopened after).
    #[doc(hidden)]
    pub fn set_compaction_crash_point(&self, point: CrashPoint) {
        self.core.crash_point.store(point as u8, Ordering::Relaxed);
    }
}
