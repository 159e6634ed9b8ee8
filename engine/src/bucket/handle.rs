//! [`Bucket`], the public handle on one bucket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::compact::CompactionReport;
#[cfg(any(test, feature = "failpoints"))]
use super::compact::CrashPoint;
use super::watch::{Watch, WatchOptions};
use super::write::{Replica, WriteMode};
use super::{BucketCore, KeepStoreOpen};
use crate::config::BucketConfig;
use crate::entry::{
    BucketStats, BucketStatus, DurabilityTicket, Entry, Page, Ttl, WriteOp, Written,
};
use crate::error::{Error, Result};
use crate::key::Glob;
use crate::watch_hub::ChangeHook;

/// How the writes of a replicated apply relate (see [`Bucket::apply_replicated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// One atomic batch, as [`Bucket::write`].
    Atomic,
    /// Independent writes, each succeeding or failing alone, as [`Bucket::write_each`].
    Each,
}

/// A handle on one bucket. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Bucket {
    core: Arc<BucketCore>,
    store: KeepStoreOpen,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.core.name())
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// A handle on `core` that keeps the store open while it lives.
    pub(crate) fn new(core: Arc<BucketCore>, store: KeepStoreOpen) -> Bucket {
        Bucket { core, store }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// An id unique among the buckets this process has opened: a bucket
    /// dropped and created again under the same name gets another one (its
    /// log, its revisions and its durability tickets are new).
    pub fn id(&self) -> u64 {
        self.core.id()
    }

    /// The bucket's configuration.
    pub fn config(&self) -> BucketConfig {
        self.core.config()
    }

    /// The value of `key`, if it has a live one.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>> {
        // Only the value is copied out: no entry (key, bucket name) is built.
        self.core.get_with(key, Bytes::copy_from_slice)
    }

    /// Calls `f` with the live value of `key` read in place (no copy);
    /// `None` if the key has no live value.
    pub fn get_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.core.get_with(key, f)
    }

    /// A hint that `keys` are about to be read ([`Bucket::get`],
    /// [`Bucket::get_with`], [`Bucket::entry`]...): starts loading their index
    /// entries and the start of their records into the CPU cache, the lookups
    /// of many keys in flight at once. Reading them right after then finds
    /// them in the cache instead of waiting for memory one key after another.
    ///
    /// In a large bucket a read is bound by cache misses (the index entry,
    /// then the record in the log), so this is worth calling before reading
    /// a batch of keys (a server does, for a pipeline of GETs); it is
    /// pointless for a single key. It changes nothing a read returns: keys
    /// that are missing, invalid or deleted are skipped, a write or a
    /// compaction in between only makes the hint useless, and so does a wait
    /// long enough for the cache to be reused.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = logkv::Store::open(dir.path(), logkv::Options::default())?;
    /// # let bucket = store.default_bucket()?;
    /// bucket.put("a", "1")?;
    /// bucket.put("b", "2")?;
    /// let keys = ["a", "b", "c"];
    /// bucket.prefetch(keys);
    /// let values: Vec<_> = keys.iter().map(|k| bucket.get(k)).collect::<Result<_, _>>()?;
    /// assert_eq!(values[1].as_deref(), Some(&b"2"[..]));
    /// assert_eq!(values[2], None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefetch<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = K>) {
        self.core.prefetch(keys);
    }

    /// Whether the index's key order is built. Reads in key order (scans,
    /// patterns, globs, a watch's initial values) need it; it is built by the
    /// first of them, or by [`Bucket::build_key_order`].
    pub fn key_order_built(&self) -> bool {
        self.core.index.read().key_order_built()
    }

    /// Builds the index's key order now if it is not built yet, so that the
    /// first read in key order does not: a caller that must answer quickly
    /// (an event loop) can build it on another thread first. Writers wait at
    /// most for a copy of a few thousand keys meanwhile, never for the sort
    /// (about 0.15 s for a million keys loaded in random order). Point reads
    /// and writes never need the order.
    pub fn build_key_order(&self) {
        self.core.ensure_key_order();
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
    /// count and a ticket for [`Bucket::wait_durable`]. One that fails part way
    /// returns [`Error::PartlyDone`]; its deletes are durable after the bucket's
    /// next sync ([`Bucket::sync`]).
    pub fn delete_glob_nowait(&self, glob: &str) -> Result<(usize, DurabilityTicket)> {
        self.core.delete_glob_nowait(&Glob::new(glob)?, None)
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
    /// write returns its error unwrapped). Under `always` such a refusal is
    /// returned once what it rests on is durable, and a write whose fsync
    /// failed or could not run is [`Error::InDoubt`]: it is in the log, and a
    /// restart may find it there or not.
    pub fn write(&self, ops: &[WriteOp]) -> Result<Vec<Written>> {
        self.core.write(ops)
    }

    /// Like [`Bucket::write`], but returns as soon as the writes are visible,
    /// with a ticket to pass to [`Bucket::wait_durable`]. A server uses this to
    /// apply a whole pipeline of writes and then wait for one shared fsync. A
    /// refusal returns at once: under `always`, wait for
    /// [`Bucket::end_ticket`] before telling anyone (it may rest on writes
    /// not durable yet).
    pub fn write_nowait(&self, ops: &[WriteOp]) -> Result<(Vec<Written>, DurabilityTicket)> {
        self.core.write_nowait(ops)
    }

    /// The ticket of everything written to the bucket so far: what a reply
    /// resting on its current state waits for under `always` (see
    /// [`Bucket::write_nowait`]).
    pub fn end_ticket(&self) -> DurabilityTicket {
        self.core.end_ticket()
    }

    /// Waits until every write whose ticket is at most `ticket` is durable
    /// (returns at once unless the fsync policy is [`FsyncPolicy::Always`](crate::FsyncPolicy::Always)).
    /// A failed or refused sync is [`Error::InDoubt`] (see [`Bucket::write`]).
    pub fn wait_durable(&self, ticket: DurabilityTicket) -> Result<()> {
        self.core.wait_durable(ticket)
    }

    fn write_one(&self, op: &WriteOp) -> Result<Written> {
        let mut out = self.core.write(std::slice::from_ref(op))?;
        out.pop().ok_or(Error::Closed)
    }

    /// Stores a value; returns its revision.
    pub fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        Ok(self.write_one(&WriteOp::put(key, value))?.revision)
    }

    /// Stores a value that expires after `ttl`; returns its revision.
    pub fn put_with_ttl(&self, key: &str, value: impl Into<Bytes>, ttl: Duration) -> Result<u64> {
        Ok(self
            .write_one(&WriteOp::put(key, value).with_ttl(ttl))?
            .revision)
    }

    /// Stores a value and returns the live entry it replaced.
    pub fn put_returning_previous(
        &self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<(u64, Option<Entry>)> {
        let w = self.write_one(&WriteOp::put(key, value).returning_previous())?;
        Ok((w.revision, w.previous))
    }

    /// Stores a value only if the key has no live value; [`Error::Exists`] otherwise.
    pub fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        Ok(self.write_one(&WriteOp::create(key, value))?.revision)
    }

    /// Stores a value only if `revision` is the key's latest (see [`WriteOp::update`]).
    pub fn update(&self, key: &str, value: impl Into<Bytes>, revision: u64) -> Result<u64> {
        Ok(self
            .write_one(&WriteOp::update(key, value, revision))?
            .revision)
    }

    /// Compare-and-swap by value (see [`WriteOp::cas`]).
    pub fn cas(&self, key: &str, new: impl Into<Bytes>, expected: Option<&[u8]>) -> Result<u64> {
        let expected = expected.map(Bytes::copy_from_slice);
        Ok(self.write_one(&WriteOp::cas(key, new, expected))?.revision)
    }

    /// Writes a DEL marker; returns its revision.
    pub fn delete(&self, key: &str) -> Result<u64> {
        Ok(self.write_one(&WriteOp::delete(key))?.revision)
    }

    /// Writes a DEL marker if `revision` is the key's latest; [`Error::WrongRevision`] otherwise.
    pub fn delete_at(&self, key: &str, revision: u64) -> Result<u64> {
        Ok(self.write_one(&WriteOp::delete_at(key, revision))?.revision)
    }

    /// Writes a DEL marker and returns the live entry it deleted.
    pub fn delete_returning(&self, key: &str) -> Result<(u64, Option<Entry>)> {
        let w = self.write_one(&WriteOp::delete(key).returning_previous())?;
        Ok((w.revision, w.previous))
    }

    /// Writes a PURGE marker; every earlier revision of the key is dropped.
    pub fn purge(&self, key: &str) -> Result<u64> {
        Ok(self.write_one(&WriteOp::purge(key))?.revision)
    }

    /// Writes a new PUT with the value of retained revision `revision`.
    pub fn revert(&self, key: &str, revision: u64) -> Result<u64> {
        Ok(self.write_one(&WriteOp::revert(key, revision))?.revision)
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
    /// Not atomic: it deletes a chunk of keys at a time, and one that fails part way
    /// returns [`Error::PartlyDone`] with the count deleted before the failure (having
    /// waited for their durability as for a success).
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

    /// How long this bucket's fsyncs took since the store was opened.
    pub fn fsync_latencies(&self) -> crate::Latencies {
        self.core.fsync_latencies()
    }

    /// Revision ranges (inclusive) skipped after unclean stops under the fsync
    /// policies `interval` and `never`: revisions that may have been seen
    /// before a crash took them back, and that are never given again. A watch
    /// resumed with `from_revision` just past one of them reports
    /// [`WatchEvent::Lost`](crate::WatchEvent::Lost).
    pub fn lost_revisions(&self) -> Vec<(u64, u64)> {
        self.core.lost_revisions()
    }

    /// Writes DEL markers for expired values and drops aged entries now
    /// (the background thread does this every [`Options::sweep_interval`](crate::Options::sweep_interval)).
    pub fn sweep_expired(&self) -> Result<usize> {
        self.core.sweep_expired(None)
    }

    /// Applies a batch that a replication log (a cluster node's Raft log)
    /// committed, at its time `now_ms`, and records the opaque replication
    /// `tag` (1 to 255 bytes, e.g. the entry's log id) atomically with it: the
    /// records and a tag record are one batch in the log, so after a crash
    /// the bucket holds exactly the batches up to the last tag that survived
    /// ([`Bucket::replica_tag`]) and the caller applies the later ones again.
    ///
    /// [`ApplyMode::Atomic`] is [`Bucket::write`] (all `Ok`, or the call
    /// fails), [`ApplyMode::Each`] is [`Bucket::write_each`]. The call never
    /// waits for durability (the replication log made the batch durable): the
    /// writes are visible at once (under `FsyncPolicy::Always`, once the log is
    /// durable, as any write); [`Bucket::sync`] or [`crate::Store::sync`] makes
    /// them and their tags durable. A call that writes nothing (every write
    /// failed) logs nothing, its tag neither: applying it again changes nothing.
    /// Open the store with [`Options::replicated`](crate::Options::replicated)
    /// so that revisions lost to an unclean stop are given again to the same
    /// writes, and keep every write of the bucket on this path.
    pub fn apply_replicated(
        &self,
        ops: &[WriteOp],
        mode: ApplyMode,
        now_ms: u64,
        tag: &[u8],
    ) -> Result<Vec<Result<Written>>> {
        let mode = match mode {
            ApplyMode::Atomic => WriteMode::Batch,
            ApplyMode::Each => WriteMode::Each,
        };
        self.core
            .apply_replicated(ops, mode, Replica { now_ms, tag })
    }

    /// [`Bucket::delete_glob`] as a replicated apply (see
    /// [`Bucket::apply_replicated`]): at `now_ms`, its markers one batch with `tag`.
    pub fn delete_glob_replicated(&self, glob: &str, now_ms: u64, tag: &[u8]) -> Result<usize> {
        let replica = Replica { now_ms, tag };
        replica.check()?;
        Ok(self
            .core
            .delete_glob_nowait(&Glob::new(glob)?, Some(replica))?
            .0)
    }

    /// [`Bucket::sweep_expired`] as a replicated apply (see
    /// [`Bucket::apply_replicated`]): expiries and age-outs as of `now_ms`,
    /// its markers one batch with `tag`.
    pub fn sweep_replicated(&self, now_ms: u64, tag: &[u8]) -> Result<usize> {
        let replica = Replica { now_ms, tag };
        replica.check()?;
        self.core.sweep_expired(Some(replica))
    }

    /// Drops from the index the entries past the bucket's max age at `now_ms`,
    /// as the replicated sweep applied at that time did (a sweep's age-out
    /// writes no record: a replica calls this at open with the time of the
    /// last sweep its recovered state went through, which it keeps in its
    /// tags). Age-out only ever cuts the oldest entries of a key's history, so
    /// doing it after the rest of the replay leaves what doing it in place did.
    pub fn age_out_replicated(&self, now_ms: u64) -> Result<()> {
        self.core.age_out(now_ms)
    }

    /// Records `tag` alone, durably (a tag record and an fsync): for a
    /// replicated step that changed the bucket without writing to it, such as
    /// its creation ([`crate::Store::create_bucket_at`]).
    pub fn record_replica_tag(&self, now_ms: u64, tag: &[u8]) -> Result<()> {
        self.core.record_replica_tag(Replica { now_ms, tag })
    }

    /// The tag of the last replicated batch applied (see
    /// [`Bucket::apply_replicated`]); after an open, the last one the log kept.
    pub fn replica_tag(&self) -> Option<Vec<u8>> {
        self.core.replica_tag()
    }

    /// Starts a watch on keys matching a subject pattern (see [`WatchOptions`]).
    pub fn watch(&self, pattern: &str, opts: WatchOptions) -> Result<Watch> {
        Watch::start(
            Arc::clone(&self.core),
            Arc::clone(&self.store),
            pattern,
            opts,
        )
    }

    /// A channel that receives a (coalesced) token after every write to this
    /// bucket, for event loops that poll watches with [`Watch::try_next`]
    /// instead of blocking. Costs the writer one `try_send` per listener.
    pub fn change_listener(&self) -> crossbeam_channel::Receiver<()> {
        self.core.change_listener()
    }

    /// Registers `hook`, called on the writing thread after every write to this bucket
    /// becomes visible (calls may be coalesced: one call can stand for several writes),
    /// and once more when the bucket is dropped. It stays registered until the returned
    /// [`ChangeHook`] is dropped.
    ///
    /// The hook runs on the writer's path: it must be quick and must neither block nor
    /// touch this bucket (waking a task or a thread is what it is for). An event loop
    /// pulls the events itself with [`Watch::try_next`].
    pub fn on_change(&self, hook: impl Fn() + Send + Sync + 'static) -> ChangeHook {
        self.core.on_change(hook)
    }

    /// Makes every write to this bucket acknowledged so far durable.
    pub fn sync(&self) -> Result<()> {
        self.core.sync()
    }

    /// Runs a compaction pass now: seals the active segment if it holds dead
    /// records and rewrites every sealed segment that has any, keeping only
    /// what is retained. Writers and readers go on meanwhile.
    pub fn compact(&self) -> Result<CompactionReport> {
        self.core.compact(true)
    }

    /// The bucket's shared state, for the crate's unit tests.
    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<BucketCore> {
        &self.core
    }

    /// Test hook (feature `failpoints`): make the next compaction passes stop
    /// at `point` as if the process crashed there, failing with
    /// [`Error::InjectedCrash`] (the store should be dropped and reopened after).
    #[cfg(any(test, feature = "failpoints"))]
    pub fn set_compaction_crash_point(&self, point: CrashPoint) {
        self.core.set_crash_point(point);
    }
}
