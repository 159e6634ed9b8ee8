//! Upkeep of a bucket: the TTL sweep, aging entries out, the index
//! snapshot, and the counters and status that describe it.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::query::{Deleter, WALK_CHUNK};
use super::write::Replica;
use super::{BucketCore, Writer};
use crate::entry::{BucketStats, BucketStatus, Op, WriteOp};
use crate::error::Result;
use crate::log::segment::{Segment, SegmentId};
use crate::log::LogPos;
use crate::snapshot;

/// The shortest time between two index snapshots written because of
/// compaction.
pub(crate) const SNAPSHOT_REFRESH: Duration = Duration::from_secs(30);

/// Most expired values the TTL sweep of a bucket whose key order is not built
/// sorts itself (see [`BucketCore::sweep_without_order`]); past it, the sweep
/// builds the order and walks it.
const SWEEP_SORTED_MAX: usize = 1 << 16;

/// When the index snapshot was last written, and whether it is stale.
#[derive(Debug, Default)]
pub(crate) struct SnapshotState {
    /// When this process last wrote it, or last tried to and failed (`None`:
    /// not yet): a snapshot that cannot be written (a full disk) is encoded
    /// again at most every [`SNAPSHOT_REFRESH`], not at every sweep.
    written: Option<Instant>,
    /// A compaction pass retired segments it names, and it was not written again.
    stale: bool,
    /// What the snapshot file on disk covers, when this process knows it (it
    /// wrote the file, or opened the bucket from it with nothing after it).
    pub(super) on_disk: Option<Coverage>,
}

/// What an index snapshot covers: the published end of the log and the last
/// revision, and each segment up to that end with how far it is covered. Two
/// equal coverages describe the same index, but for entries aged out by time
/// (which takes no record, and which every open does again, by the clock of
/// then; a replica's, by its replication log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Coverage {
    end: LogPos,
    last_revision: u64,
    segments: Vec<(SegmentId, u64)>,
}

impl Coverage {
    /// The coverage of a snapshot of `segs` (each with how far it is covered)
    /// up to `end` and `last_revision`.
    fn of(end: LogPos, last_revision: u64, segs: &[(Arc<Segment>, u64)]) -> Coverage {
        Coverage {
            end,
            last_revision,
            segments: segs.iter().map(|(s, covered)| (s.id, *covered)).collect(),
        }
    }
}

impl BucketCore {
    /// Counters that cost nothing to read (no walk of the index): keys whose
    /// latest entry is a value (expired ones not yet swept included), values,
    /// bytes, segments, fsyncs, compactions, dead bytes, whether a compaction
    /// pass runs.
    pub(crate) fn stats(&self) -> BucketStats {
        let ix = self.index.read();
        BucketStats {
            keys: ix.put_keys(),
            values: ix.values(),
            bytes: ix.bytes(),
            dead_bytes: ix.dead_bytes().values().sum(),
            segments: self.log.segment_count() as u64,
            fsyncs: self.log.fsyncs(),
            compactions: self.compaction_stats.passes.load(Ordering::Relaxed),
            // A pass holds this lock throughout (so does a drop, which waits
            // for the pass).
            compacting: self.compacting.is_locked(),
            last_revision: self.last_rev.load(Ordering::Acquire),
        }
    }

    /// A description of the bucket.
    pub(crate) fn status(&self) -> Result<BucketStatus> {
        self.check_open()?;
        let now = self.now();
        let ix = self.index.read();
        let mut keys = 0;
        let mut first = u64::MAX;
        for (_, latest) in ix.entries_unordered() {
            if latest.live(now) {
                keys += 1;
            }
            ix.for_each_rev(latest, |r| first = first.min(r.revision));
        }
        Ok(BucketStatus {
            bucket: self.name.to_string(),
            values: ix.values(),
            keys,
            bytes: ix.bytes(),
            history: self.config.history,
            ttl_ms: self.config.ttl_ms(),
            max_bytes: self.config.max_bytes,
            max_value_size: self.config.max_value_size,
            first_revision: if first == u64::MAX { 0 } else { first },
            last_revision: self.last_rev.load(Ordering::Acquire),
            segments: self.log.segment_count() as u64,
            fsyncs: self.log.fsyncs(),
            dead_bytes: ix.dead_bytes().values().sum(),
            compactions: self.compaction_stats.passes.load(Ordering::Relaxed),
            reclaimed_bytes: self.compaction_stats.reclaimed.load(Ordering::Relaxed),
        })
    }

    /// Writes DEL markers for live values whose TTL has passed (so watchers see
    /// the expiry), and drops entries past the bucket's max age from the index.
    /// Returns the number of markers written. A replicated sweep runs at the
    /// time it is given and writes its markers as one batch with its tag.
    pub(crate) fn sweep_expired(&self, replica: Option<Replica<'_>>) -> Result<usize> {
        self.check_open()?;
        let now = replica.map_or_else(|| self.now(), |r| r.now_ms);
        let mut deleter = Deleter::new(replica);
        if self.index.read().expiring() > 0 && !self.sweep_without_order(now, &mut deleter)? {
            // In key order: the markers get their revisions in that order.
            self.walk_in_chunks(
                b"",
                |_, k, r, picked| {
                    if r.op() == Op::Put && r.expired(now) {
                        picked.push(WriteOp::delete_at(k.as_str(), r.revision));
                    }
                },
                |ops| {
                    let ticket = deleter.chunk(self, ops)?;
                    self.wait_durable(ticket)
                },
            )?;
        }
        let (markers, ticket) = deleter.finish(self)?;
        self.wait_durable(ticket)?;
        if let Some(replica) = replica {
            if markers == 0 && self.config.ttl_ms() > 0 {
                // The age-out below changes the index without a record; the tag
                // (which names this sweep) goes in the log all the same, so that
                // after a restart the replica knows which sweeps its state went
                // through (see `Bucket::age_out_replicated`).
                self.append_replica_tag(replica)?;
            }
        }
        self.age_out(now)?;
        Ok(markers)
    }

    /// The TTL sweep's markers, when the bucket's key order is not built
    /// (the order costs memory, and upkeep for every key added once built, and
    /// nothing else may need it): the expired values are found by walking the
    /// index's slots, then sorted, so that their markers get their revisions in
    /// key order, as from the walk in key order, and are written
    /// [`WALK_CHUNK`] at a time. False, having written nothing, when the order
    /// is built, or when more than [`SWEEP_SORTED_MAX`] values expired: the
    /// walk in key order is then the cheaper way.
    fn sweep_without_order(&self, now: u64, deleter: &mut Deleter<'_>) -> Result<bool> {
        if self.index.read().key_order_built() {
            return Ok(false);
        }
        let mut expired: Vec<(String, u64)> = Vec::new();
        // Past the cap, the rest of the walk only looks (nothing more is copied).
        let too_many = Cell::new(false);
        self.walk_all_in_chunks(
            |_, k, r, picked| {
                if !too_many.get() && r.op() == Op::Put && r.expired(now) {
                    picked.push((k.as_str().to_string(), r.revision));
                }
            },
            |picked| {
                if !too_many.get() {
                    expired.extend(picked);
                    too_many.set(expired.len() > SWEEP_SORTED_MAX);
                }
                Ok(())
            },
        )?;
        if too_many.get() {
            return Ok(false);
        }
        expired.sort_unstable();
        let mut sorted = expired.into_iter();
        loop {
            let ops: Vec<WriteOp> = sorted
                .by_ref()
                .take(WALK_CHUNK)
                .map(|(k, rev)| WriteOp::delete_at(k, rev))
                .collect();
            if ops.is_empty() {
                return Ok(true);
            }
            let ticket = deleter.chunk(self, ops)?;
            self.wait_durable(ticket)?;
        }
    }

    /// After a compaction pass: writes the index snapshot again unless one
    /// was written less than [`SNAPSHOT_REFRESH`] ago, in which case it is
    /// left stale (a crash now costs a scan of the whole log at open, never
    /// wrong data) and written later by [`BucketCore::refresh_stale_snapshot`].
    /// Under a steady overwrite load a pass can come every few seconds, and a
    /// snapshot of a million keys each time would take the writers' core.
    pub(crate) fn snapshot_after_compaction(&self) -> Result<()> {
        let recent = {
            let mut state = self.snapshot_state.lock();
            let recent = state
                .written
                .is_some_and(|at| at.elapsed() < SNAPSHOT_REFRESH);
            state.stale |= recent;
            recent
        };
        if recent {
            Ok(())
        } else {
            self.write_snapshot()
        }
    }

    /// Writes the index snapshot if compaction left it stale and the last one
    /// is [`SNAPSHOT_REFRESH`] old (the background thread calls this).
    pub(crate) fn refresh_stale_snapshot(&self) -> Result<()> {
        let due = {
            let state = self.snapshot_state.lock();
            state.stale
                && state
                    .written
                    .is_none_or(|at| at.elapsed() >= SNAPSHOT_REFRESH)
        };
        if due {
            self.write_snapshot()
        } else {
            Ok(())
        }
    }

    /// Writes an index snapshot of the bucket as it is now. The index is
    /// encoded under its read lock together with the published log end (the
    /// writer publishes under the write lock, so the two agree), in the
    /// order of its slab (no key order needed); the log is made durable up
    /// to that end before the snapshot is renamed into place, so it never
    /// names records a crash could lose. Writers wait only for the encoding,
    /// never for the fsync nor for the file's writes (made on a thread of
    /// their own as the encoding goes: see `snapshot/stream.rs`).
    pub(crate) fn write_snapshot(&self) -> Result<()> {
        // One writer at a time (the background thread's refresh and a pass run
        // by hand may meet): two would share the temporary file, and the state
        // must describe the file that is left.
        let mut state = self.snapshot_state.lock();
        match self.save_snapshot() {
            Ok(on_disk) => {
                *state = SnapshotState {
                    written: Some(Instant::now()),
                    stale: false,
                    on_disk,
                };
                Ok(())
            }
            Err(e) => {
                // The file may or may not have been replaced; the background
                // thread's refresh tries again once it is due, and a close
                // does (it is stale).
                state.on_disk = None;
                state.stale = true;
                state.written = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Writes the index snapshot unless the one on disk covers the bucket as it
    /// is (opened from it, or written, with nothing since): a clean close of an
    /// idle bucket then writes nothing.
    pub(crate) fn write_snapshot_if_changed(&self) -> Result<()> {
        self.publish_durable();
        let current = {
            let state = self.snapshot_state.lock();
            !state.stale && state.on_disk.as_ref() == Some(&self.coverage())
        };
        if current {
            Ok(())
        } else {
            self.write_snapshot()
        }
    }

    /// Notes that the snapshot on disk covers the bucket as it is now (it was
    /// just opened from it, with no record after it), unless the bucket is too
    /// small to keep one (the next close removes it).
    pub(super) fn note_snapshot_current(&self) {
        if self.logged_bytes() < self.snapshot_min_bytes {
            return;
        }
        let coverage = self.coverage();
        self.snapshot_state.lock().on_disk = Some(coverage);
    }

    /// Bytes of records in the log.
    fn logged_bytes(&self) -> u64 {
        self.log
            .segments()
            .iter()
            .map(|s| s.data_end().saturating_sub(s.data_start))
            .sum()
    }

    /// What a snapshot written now would cover.
    fn coverage(&self) -> Coverage {
        let (end, last_revision) = self.hub.published();
        Coverage::of(end, last_revision, &self.covered_segments(end))
    }

    /// Segments up to the one the published `end` is in, that one covered up
    /// to the end: what lies past it (a newer segment, or writes not visible
    /// yet) is left for recovery to scan.
    fn covered_segments(&self, end: LogPos) -> Vec<(Arc<Segment>, u64)> {
        self.log
            .segments()
            .into_iter()
            .filter(|s| s.id.seq <= end.seq())
            .map(|s| {
                let covered = if s.id.seq == end.seq() {
                    end.offset()
                } else {
                    s.data_end()
                };
                (s, covered)
            })
            .collect()
    }

    /// [`BucketCore::write_snapshot`] without the bookkeeping; what the file
    /// written covers (`None`: no snapshot is kept for this bucket).
    fn save_snapshot(&self) -> Result<Option<Coverage>> {
        // Under the state's lock, which a drop takes: once dropped, the
        // directory's name may be another bucket's.
        self.check_open()?;
        self.publish_durable();
        if self.logged_bytes() < self.snapshot_min_bytes {
            // Reading so little log at open costs less than the snapshot's file
            // (a block of disk per bucket: it adds up over thousands of buckets).
            snapshot::remove(self.log.storage(), &self.dir)?;
            return Ok(None);
        }
        // Created before the lock: nothing under it waits for the file system.
        let file = snapshot::SnapshotFile::create(self.log.storage(), &self.dir)?;
        let (unsaved, coverage) = {
            let ix = self.index.read();
            let (end, last_revision) = self.hub.published();
            let segs = self.covered_segments(end);
            if segs.is_empty() {
                // Compaction removed every record up to the published end:
                // there is nothing a snapshot would spare recovery from reading.
                drop(ix);
                drop(file);
                snapshot::remove(self.log.storage(), &self.dir)?;
                return Ok(None);
            }
            let tag = self.replica_tag.lock().clone();
            let unsaved = match snapshot::write(file, &ix, last_revision, &segs, tag.as_deref()) {
                Ok(unsaved) => unsaved,
                Err(failed) => {
                    // Its file's writing thread is waited for off the lock.
                    drop(ix);
                    drop(failed.file);
                    return Err(failed.error);
                }
            };
            (unsaved, Coverage::of(end, last_revision, &segs))
        };
        self.log.wait_durable(coverage.end)?;
        unsaved.save()?;
        Ok(Some(coverage))
    }

    /// The writer lock, once every write appended is visible (synced and
    /// published if need be). `None` if new writes keep coming (a local store
    /// under load); a replica's one writer is the applier that asks, so there
    /// it always comes.
    fn writer_with_nothing_pending(&self) -> Result<Option<MutexGuard<'_, Writer>>> {
        for attempt in 0.. {
            let w = self.writer.lock();
            if w.pending.is_empty() {
                return Ok(Some(w));
            }
            drop(w);
            if attempt >= 2 && !self.replicated {
                return Ok(None);
            }
            self.sync()?;
        }
        Ok(None)
    }

    /// Drops from the index the oldest entries of each key that are past the
    /// bucket's max age. Older entries are always older, so this only ever cuts
    /// a prefix of a key's history — the same cut recovery makes.
    ///
    /// A key's latest entry stays if it is a value: the sweep writes its DEL
    /// marker first (watchers see the expiry), and the value leaves after it.
    /// Dropping it at open instead would lose that marker across a restart, and
    /// writers (UPDATE, DEL REV) would find the key gone after a restart but
    /// not before.
    pub(super) fn age_out(&self, now: u64) -> Result<()> {
        let ttl = self.config.ttl_ms();
        if ttl == 0 {
            return Ok(());
        }
        self.walk_all_in_chunks(
            |ix, k, latest, picked| {
                let unmarked_value = (latest.op() == Op::Put).then_some(latest.revision);
                ix.for_each_rev(latest, |r| {
                    if r.expired(now) && Some(r.revision) != unmarked_value {
                        picked.push((k.as_str().to_string(), *r, self.log.segment(r.slot)));
                    }
                });
            },
            |candidates| {
                // The index keeps only the earlier of the two expiries; the record
                // tells whether max age (rather than a per-key TTL) was the cause.
                let mut aged: HashMap<String, HashSet<u64>> = HashMap::new();
                for (k, r, seg) in &candidates {
                    let e = self.load_from(seg.as_ref(), k, r)?;
                    if e.created_ms.saturating_add(ttl) <= now {
                        aged.entry(k.clone()).or_default().insert(r.revision);
                    }
                }
                if !aged.is_empty() {
                    // Under the writer lock, with nothing pending: a pending write
                    // that drops one of these entries from retention has counted it
                    // as freed for the bucket's max bytes, and a write planned against
                    // the index before the age-out would count it too.
                    let Some(_w) = self.writer_with_nothing_pending()? else {
                        return Ok(()); // writers keep coming: the next sweep does it
                    };
                    let mut ix = self.index.write();
                    let mut removed = Vec::new();
                    for (k, revs) in &aged {
                        ix.drop_oldest_while(
                            k.as_bytes(),
                            |r| revs.contains(&r.revision),
                            &mut removed,
                        );
                    }
                }
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::SNAPSHOT_REFRESH;
    use crate::bucket::test_util::{aged_config, manual_options, writers_latest};
    use crate::io::{SimFs, Storage};
    use crate::{ManualClock, Options, Store};

    /// A snapshot that could not be written (after a compaction pass, which
    /// reports the failure) is written by the background thread's refresh
    /// once it is due: it was left marked neither current nor stale, so no
    /// refresh came before the close, and a crash meanwhile cost a scan of
    /// the log. Not before it is due: a snapshot that cannot be written (a
    /// full disk) was encoded again at every sweep, a second a time.
    #[test]
    fn a_snapshot_that_failed_is_written_by_the_refresh_when_due() {
        let root = tempfile::tempdir().unwrap();
        let sim = SimFs::new(root.path(), 1).unwrap();
        let clock = ManualClock::new(1_000);
        let opts = Options {
            storage: Storage::simulated(&sim),
            snapshot_min_bytes: 0,
            ..manual_options(&clock)
        };
        let store = Store::open(sim.root().join("s"), opts).unwrap();
        let b = store.default_bucket().unwrap();
        b.put("k", "v").unwrap();
        store.sync().unwrap();
        let core = b.core();
        sim.fail_writes(0, 1); // the snapshot's file
        core.write_snapshot().unwrap_err();
        let snap = core.dir.join(crate::snapshot::SNAPSHOT_FILE);
        assert!(!snap.exists());
        sim.fail_writes(0, 1);
        core.refresh_stale_snapshot().unwrap();
        assert_eq!(sim.stats().write_errors, 1, "not tried again at once");
        sim.revive();
        // Time passes.
        let long_ago = Instant::now().checked_sub(SNAPSHOT_REFRESH);
        core.snapshot_state.lock().written = long_ago;
        core.refresh_stale_snapshot().unwrap();
        assert!(snap.exists(), "the refresh wrote it");
    }

    /// A value past the bucket's max age, not swept yet: the store that stayed up
    /// still held it (hidden from reads), so its writers saw it and the next sweep
    /// wrote its DEL marker; an open dropped it, so the same store restarted said
    /// `WRONGREV ... latest 0` to `DEL k REV <value>` and its sweep wrote no marker
    /// (watchers never saw the expiry, and the revision counter went another way).
    #[test]
    fn a_value_past_the_max_age_waits_for_its_marker_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let latest = |store: &Store| writers_latest(store, "k");
        let store = Store::open(dir.path(), manual_options(&clock)).unwrap();
        let b = store.create_bucket("b", aged_config(1_000)).unwrap();
        let value = b.put("k", "v").unwrap();
        clock.advance(2_000);
        assert_eq!(b.get("k").unwrap(), None, "aged: hidden from reads");
        let live = latest(&store);
        drop(b);
        store.close().unwrap();
        let store = Store::open(dir.path(), manual_options(&clock)).unwrap();
        assert_eq!(
            (live, latest(&store)),
            (value, value),
            "live, then reopened"
        );
        let b = store.bucket("b").unwrap();
        assert_eq!(
            b.sweep_expired().unwrap(),
            1,
            "the marker, after the restart"
        );
        let marker = latest(&store);
        assert!(marker > value);
        assert_eq!(b.entry_at("k", value).unwrap(), None);
        assert_eq!(
            b.status().unwrap().values,
            1,
            "the value left after its marker"
        );
    }

    /// The TTL sweep's markers get their revisions in key order, whether the
    /// bucket's key order is built or not; when it is not, the sweep does not
    /// build it for a few expired values, and does for more than it sorts
    /// itself ([`super::SWEEP_SORTED_MAX`]).
    #[test]
    fn the_ttl_sweep_marks_in_key_order_and_builds_the_order_only_for_many() {
        use std::time::Duration;

        use super::SWEEP_SORTED_MAX;
        use crate::BucketConfig;

        let few = 3_000u64;
        // Nine in ten expire: more than the sweep sorts itself.
        let many = u64::try_from(SWEEP_SORTED_MAX).unwrap() * 10 / 9 + 100;
        for (keys, build_first, built_after) in
            [(few, false, false), (few, true, true), (many, false, true)]
        {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(1_000_000);
            let store = Store::open(dir.path(), manual_options(&clock)).unwrap();
            let b = store.create_bucket("b", BucketConfig::default()).unwrap();
            // Put in an order far from key order; all but every tenth key expire.
            let mut expiring = Vec::new();
            for i in 0..keys {
                let k = format!("k{:06}", (i * 7919) % keys);
                if i % 10 == 0 {
                    b.put(&k, "kept").unwrap();
                } else {
                    b.put_with_ttl(&k, "v", Duration::from_millis(10)).unwrap();
                    expiring.push(k);
                }
            }
            if build_first {
                b.keys(">").unwrap();
            }
            assert_eq!(b.core().index.read().key_order_built(), build_first);
            clock.advance(20);
            assert_eq!(b.sweep_expired().unwrap(), expiring.len());
            assert_eq!(
                b.core().index.read().key_order_built(),
                built_after,
                "{keys} keys, the order built before: {build_first}"
            );
            expiring.sort();
            let revisions: Vec<u64> = expiring.iter().map(|k| writers_latest(&store, k)).collect();
            assert!(
                revisions.windows(2).all(|w| w[0] + 1 == w[1]),
                "{keys} keys: the markers' revisions follow key order"
            );
        }
    }

    /// `stats().compacting` says whether a compaction pass holds the bucket's
    /// pass lock (as every pass does throughout), and costs no walk.
    #[test]
    fn stats_say_whether_a_compaction_pass_runs() {
        let root = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let store = Store::open(root.path().join("s"), manual_options(&clock)).unwrap();
        let b = store.default_bucket().unwrap();
        b.put("k", "v").unwrap();
        let core = b.core();
        assert!(!core.stats().compacting, "no pass runs");
        let pass = core.compacting.lock();
        assert!(core.stats().compacting, "a pass holds the lock");
        drop(pass);
        assert!(!core.stats().compacting, "the pass is over");
        b.compact().unwrap();
        assert!(!core.stats().compacting, "after a whole pass");
    }
}
