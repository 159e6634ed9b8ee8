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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

use crate::bucket::handle::Bucket;
use crate::bucket::query::ReadBudget;
use crate::bucket::{BucketCore, KeepStoreOpen};
use crate::checkpoint::{write_checkpoint, Checkpoint, CheckpointSource};
use crate::config::{BucketConfig, Options, CONFIG_FILE};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::fsutil::{create_dir_all_durable, sync_dir};
use crate::fsync::FsyncPolicy;
use crate::key::{validate_bucket_name, Glob};
use crate::latency::Latencies;
use crate::lock::DirLock;
use crate::log::recovery::RecoveryReport;

#[cfg(test)]
mod drop_race_tests;
mod open;

use open::{open_buckets, OpenedBuckets};

/// The bucket that always exists.
pub const DEFAULT_BUCKET: &str = "default";
const BUCKETS_DIR: &str = "buckets";
const DROPPED_SUFFIX: &str = ".dropped";
/// Suffix of a bucket directory being created (removed at open).
const CREATING_SUFFIX: &str = ".creating";

struct StoreInner {
    dir: PathBuf,
    opts: Options,
    /// Shared with the background thread, which holds only this (never the
    /// store: the last handle's drop then always closes the store on its
    /// owner's thread, after the thread has stopped).
    buckets: Arc<RwLock<BTreeMap<String, Arc<BucketCore>>>>,
    /// Serialises bucket creation and removal.
    catalog: Mutex<()>,
    recovery: Vec<(String, RecoveryReport)>,
    /// The fsync latencies of the buckets dropped since the store opened, so that
    /// [`Store::fsync_latencies`] never goes backwards.
    dropped_fsyncs: Mutex<Latencies>,
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
        let storage = opts.storage.clone();
        create_dir_all_durable(&storage, &dir)?;
        let lock = DirLock::acquire(&dir)?;
        let buckets_dir = dir.join(BUCKETS_DIR);
        create_dir_all_durable(&storage, &buckets_dir)?;
        let OpenedBuckets { buckets, recovery } = open_buckets(&buckets_dir, &opts)?;
        let store = Store {
            inner: Arc::new(StoreInner {
                dir,
                opts,
                buckets: Arc::new(RwLock::new(buckets)),
                catalog: Mutex::new(()),
                recovery,
                dropped_fsyncs: Mutex::new(Latencies::default()),
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
        let storage = &self.inner.opts.storage;
        let parent = self.inner.dir.join(BUCKETS_DIR);
        let dir = parent.join(name);
        // The bucket is built under a temporary name and renamed into place once
        // its configuration is durable: a crash or an error at any point leaves
        // either no bucket or a whole one (open removes `*.creating` leftovers).
        let tmp = parent.join(format!("{name}{CREATING_SUFFIX}"));
        if tmp.exists() {
            storage
                .remove_dir_all(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
        }
        if dir.exists() {
            // Left by a creation that failed part-way in this process.
            storage
                .remove_dir_all(&dir)
                .map_err(|e| Error::io(&dir, e))?;
        }
        storage.create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        config.save(storage, &tmp.join(CONFIG_FILE))?;
        storage.rename(&tmp, &dir).map_err(|e| Error::io(&tmp, e))?;
        if let Err(e) = sync_dir(storage, &parent) {
            self.discard_bucket_dir(&dir, name);
            return Err(e);
        }
        let core = match BucketCore::open(&dir, name, config, &self.inner.opts) {
            Ok((core, _)) => Arc::new(core),
            Err(e) => {
                self.discard_bucket_dir(&dir, name);
                return Err(e);
            }
        };
        self.inner
            .buckets
            .write()
            .insert(name.to_string(), Arc::clone(&core));
        Ok(Bucket::new(core, self.keep_open()))
    }

    /// Creates a bucket as a replicated step (see [`Bucket::apply_replicated`]):
    /// its log starts with `tag`, recorded durably, so that the step is known
    /// applied after a crash ([`Store::replica_tags`]).
    pub fn create_bucket_at(
        &self,
        name: &str,
        config: BucketConfig,
        now_ms: u64,
        tag: &[u8],
    ) -> Result<Bucket> {
        let bucket = self.create_bucket(name, config)?;
        bucket.record_replica_tag(now_ms, tag)?;
        Ok(bucket)
    }

    /// Each bucket's replication tag (see [`Bucket::apply_replicated`]): the
    /// tag of the last replicated batch applied to it, `None` for a bucket
    /// without one. Right after [`Store::open`] these are the tags of what
    /// survived; after [`Store::sync`] they are durable.
    pub fn replica_tags(&self) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
        self.inner
            .buckets
            .read()
            .iter()
            .map(|(name, core)| (name.clone(), core.replica_tag()))
            .collect()
    }

    /// Drops a bucket and removes its data from disk. The `default` bucket cannot be dropped.
    /// Waits for the bucket's compaction pass or index snapshot in progress. A drop that
    /// fails leaves the bucket whole and usable, except [`Error::InDoubt`]: the failure
    /// could not be undone durably, the bucket is dropped, and a restart may find it
    /// dropped or whole.
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
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoBucket(name.to_string()))?;
        let storage = &self.inner.opts.storage;
        let parent = self.inner.dir.join(BUCKETS_DIR);
        let doomed = self.doomed_name(name);
        // The drop is durable once the rename is: the bucket leaves the map only
        // then, so a failed drop leaves it whole and usable, once the rename
        // back is durable too. If that fails, a restart may find the bucket
        // dropped or not: it is dropped now (no write is acknowledged that a
        // restart could lose with it), and the error says so.
        // Decided under the same hold of the bucket's locks (no write between).
        let mut in_doubt = None;
        core.drop_with(|dir| {
            storage
                .rename(dir, &doomed)
                .map_err(|e| Error::io(dir, e))?;
            if let Err(e) = sync_dir(storage, &parent) {
                // Not durable: put the bucket back under its name, durably.
                let back = storage
                    .rename(&doomed, dir)
                    .map_err(|e| Error::io(&doomed, e))
                    .and_then(|()| sync_dir(storage, &parent));
                let Err(back) = back else {
                    return Err(e);
                };
                tracing::error!(bucket = name, error = %back, "could not undo a failed drop: the bucket is dropped; a restart may find it dropped or whole");
                in_doubt = Some(Error::in_doubt(Error::Internal(format!(
                    "dropping bucket {name} failed ({e}) and could not be undone ({back}): it is dropped now"
                ))));
            }
            Ok(())
        })?;
        self.forget_bucket(name, &core);
        if let Some(e) = in_doubt {
            return Err(e);
        }
        if let Err(e) = storage
            .remove_dir_all(&doomed)
            .map_err(|e| Error::io(&doomed, e))
            .and_then(|()| sync_dir(storage, &parent))
        {
            tracing::warn!(bucket = name, error = %e, "dropped bucket's files not removed yet; the next open removes them");
        }
        Ok(())
    }

    /// Takes a dropped bucket out of the map; its fsyncs move to the dropped
    /// buckets' total in the same step.
    fn forget_bucket(&self, name: &str, core: &BucketCore) {
        let mut buckets = self.inner.buckets.write();
        buckets.remove(name);
        self.inner
            .dropped_fsyncs
            .lock()
            .merge(&core.fsync_latencies());
    }

    /// A fresh name for a bucket directory being removed (`*.dropped`, removed at open).
    fn doomed_name(&self, name: &str) -> PathBuf {
        let parent = self.inner.dir.join(BUCKETS_DIR);
        (0..=u32::MAX)
            .map(|n| parent.join(format!("{name}.{n}{DROPPED_SUFFIX}")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| parent.join(format!("{name}{DROPPED_SUFFIX}")))
    }

    /// Removes the directory of a bucket whose creation failed after it was
    /// renamed into place (best effort; open removes leftovers too).
    fn discard_bucket_dir(&self, dir: &Path, name: &str) {
        let storage = &self.inner.opts.storage;
        let doomed = self.doomed_name(name);
        let removed = storage
            .rename(dir, &doomed)
            .and_then(|()| storage.remove_dir_all(&doomed))
            .map_err(|e| Error::io(dir, e))
            .and_then(|()| sync_dir(storage, &self.inner.dir.join(BUCKETS_DIR)));
        if let Err(e) = removed {
            tracing::warn!(bucket = name, error = %e, "could not remove a bucket whose creation failed");
        }
    }

    /// How long the fsyncs of every bucket's log took since the store opened, those of
    /// buckets dropped since included: each bucket's count only grows.
    pub fn fsync_latencies(&self) -> Latencies {
        let buckets = self.inner.buckets.read();
        let mut all = self.inner.dropped_fsyncs.lock().clone();
        for core in buckets.values() {
            all.merge(&core.fsync_latencies());
        }
        all
    }

    /// Names of all buckets, sorted.
    pub fn bucket_names(&self) -> Vec<String> {
        self.inner.buckets.read().keys().cloned().collect()
    }

    /// A handle on a bucket. [`Error::NoBucket`] if there is none by that name.
    pub fn bucket(&self, name: &str) -> Result<Bucket> {
        match self.inner.buckets.read().get(name) {
            Some(core) => Ok(Bucket::new(Arc::clone(core), self.keep_open())),
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
        let mut budget = ReadBudget::new(self.inner.opts.max_read_bytes);
        for core in cores {
            let left = if limit == 0 { 0 } else { limit - out.len() };
            out.extend(core.search_within(&glob, left, &mut budget)?);
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Makes every write acknowledged so far durable, in every bucket. A
    /// bucket that fails does not keep the others from syncing: the first
    /// error is returned once every bucket was tried.
    pub fn sync(&self) -> Result<()> {
        let mut first_error = None;
        for core in self.cores() {
            if let Err(e) = core.sync() {
                tracing::error!(bucket = %core.name(), error = %e, "sync failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes a consistent copy of every bucket, each as of one revision, into
    /// the new directory `dir` (its parent is created if missing), while
    /// readers and writers go on: each bucket's writer lock is held only to
    /// read where its log ends. Sealed segments are hard-linked when `dir` is
    /// on the store's file system and copied otherwise; the rest is copied.
    /// Everything is written under a temporary name and renamed into place
    /// once durable, never over anything (`dir` existing is
    /// [`Error::PathExists`]). The result is a data directory that
    /// [`Store::open`] opens to exactly the state of
    /// [`Checkpoint::revisions`]. Bucket creation and removal may run
    /// meanwhile: a bucket is in the copy as it was when it was captured.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let source = self.checkpoint_source()?;
        write_checkpoint(&self.inner.opts.storage, &source, dir.as_ref())
    }

    /// Captures a checkpoint without writing it: the files that make the
    /// same copy [`Store::checkpoint`] writes, to be read (e.g. streamed to
    /// another machine) while the store goes on. What the source reads never
    /// changes; it keeps the store open while it lives.
    pub fn checkpoint_source(&self) -> Result<CheckpointSource> {
        let mut files = Vec::new();
        let mut revisions = BTreeMap::new();
        for core in self.cores() {
            let Some(capture) = core.capture()? else {
                continue; // dropped since the list was taken
            };
            let dir = Path::new(BUCKETS_DIR).join(core.name());
            files.extend(capture.files.into_iter().map(|f| f.under(&dir)));
            revisions.insert(core.name().to_string(), capture.last_revision);
        }
        Ok(CheckpointSource::new(files, revisions, self.keep_open()))
    }

    /// Syncs and closes this handle. The directory lock is released when the
    /// last clone of the store and of its buckets is gone.
    pub fn close(self) -> Result<()> {
        self.sync()
    }

    /// What a bucket handle holds to keep this store open.
    fn keep_open(&self) -> KeepStoreOpen {
        Arc::clone(&self.inner) as KeepStoreOpen
    }

    fn cores(&self) -> Vec<Arc<BucketCore>> {
        self.inner.buckets.read().values().cloned().collect()
    }

    fn start_background(&self) {
        let (tx, rx) = bounded::<()>(1);
        let buckets = Arc::clone(&self.inner.buckets);
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
        let replicated = opts.replicated;
        let handle = std::thread::Builder::new().name("logkv-background".into()).spawn(move || {
            let mut last_sweep = Instant::now();
            loop {
                match rx.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let cores: Vec<Arc<BucketCore>> = buckets.read().values().cloned().collect();
                let sweep = last_sweep.elapsed() >= sweep_every;
                if sweep {
                    last_sweep = Instant::now();
                }
                for core in cores {
                    if fsync_every.is_some() && core.has_unsynced_writes() {
                        if let Err(e) = core.sync() {
                            tracing::error!(bucket = %core.name(), error = %e, "background fsync failed");
                        }
                    }
                    // A replica's expiries are applied from its replication log.
                    if sweep && !replicated {
                        if let Err(e) = core.sweep_expired(None) {
                            tracing::warn!(bucket = %core.name(), error = %e, "TTL sweep failed");
                        }
                    }
                    if sweep && core.needs_compaction() {
                        if let Err(e) = core.compact(false) {
                            tracing::warn!(bucket = %core.name(), error = %e, "background compaction failed");
                        }
                    }
                    if sweep {
                        if let Err(e) = core.refresh_stale_snapshot() {
                            tracing::warn!(bucket = %core.name(), error = %e, "index snapshot failed");
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
            if let Err(e) = core.close_clean() {
                tracing::error!(bucket = %core.name(), error = %e, "sync or snapshot at close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's fsync histogram keeps what a dropped bucket's log recorded: a metric
    /// summed over buckets must not go backwards when one goes.
    #[test]
    fn fsync_latencies_keep_the_dropped_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            ..Options::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        let doomed = store
            .create_bucket("doomed", BucketConfig::default())
            .unwrap();
        for i in 0..5 {
            doomed.put(&format!("k{i}"), "v").unwrap();
        }
        store.default_bucket().unwrap().put("kept", "v").unwrap();
        let before = store.fsync_latencies();
        let mine = doomed.fsync_latencies().count();
        assert!(mine >= 5 && before.count() > mine, "{before:?}, {mine}");
        store.drop_bucket("doomed").unwrap();
        let after = store.fsync_latencies();
        assert_eq!(after, before);
        // And again, with a new bucket of the same name.
        let again = store
            .create_bucket("doomed", BucketConfig::default())
            .unwrap();
        again.put("k", "v").unwrap();
        store.drop_bucket("doomed").unwrap();
        assert!(store.fsync_latencies().count() > after.count());
    }
}
