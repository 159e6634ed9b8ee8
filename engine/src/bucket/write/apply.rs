//! Step 3 of a write: apply. The appended records enter the index (retention,
//! dead-byte accounting) and the new log end is published to the watch hub:
//! from that moment readers and watchers see the writes.
//!
//! Under `FsyncPolicy::Always` that happens only once the log is durable past
//! them (see `bucket/pending.rs`): until then they wait in the writer's
//! pending list, and whoever next finds the log durable — a writer waiting
//! for its ticket, a sync, the next write — applies them, in log order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::plan::PlannedWrite;
use crate::bucket::pending::PendingBatch;
use crate::bucket::{effective_expiry, BucketCore, Writer};
use crate::index::RecordRef;
use crate::log::{Appended, LogPos};
use crate::prefetch;

impl BucketCore {
    /// Makes `writes`, appended (created at `now`) where `appended` says,
    /// visible now, or once durable under `FsyncPolicy::Always`; with the
    /// replication `tag` that ended them, if any. `bytes_net`: what they change
    /// the bytes the bucket holds by (see `Plan::bytes_net`).
    pub(super) fn apply_appended(
        &self,
        w: &mut Writer,
        writes: &[PlannedWrite<'_>],
        appended: Appended,
        now: u64,
        tag: Option<Arc<[u8]>>,
        bytes_net: i64,
    ) {
        let ttl = self.config.ttl_ms();
        let mut offset = appended.offset;
        let records = writes.iter().map(|write| {
            let len = write.encoded_len();
            let expires = effective_expiry(write.key_expires_ms, now, ttl);
            let at = RecordRef::new(
                write.revision,
                expires,
                appended.slot,
                offset,
                len,
                write.op,
            );
            offset += len as u64;
            (write.key.as_bytes(), at, now)
        });
        w.next_rev += writes.len() as u64;
        if self.visible_when_durable {
            let batch = PendingBatch {
                end: appended.end,
                records: records.map(|(key, at, _)| (key.into(), at)).collect(),
                created_ms: now,
                tag,
                bytes_net,
            };
            let history = usize::from(self.config.history);
            w.pending
                .push(batch, history, |key| self.index.read().revisions(key));
        } else {
            // Visible at once: straight into the index, no pending copy of the keys.
            self.index_records(w, records, tag.as_ref(), appended.end);
        }
    }

    /// Makes the pending writes that are durable now visible (nothing to do
    /// unless the fsync policy is `Always`). The caller holds the writer lock.
    pub(super) fn publish_durable_locked(&self, w: &mut Writer) -> bool {
        if w.pending.is_empty() {
            return false;
        }
        let durable: LogPos = self.log.durable_end();
        let batches = w.pending.take_durable(durable);
        if batches.is_empty() {
            return false;
        }
        self.make_visible(w, &batches);
        true
    }

    /// Applies appended batches to the index, in log order, and publishes
    /// the end of the last to the watchers.
    fn make_visible(&self, w: &mut Writer, batches: &[PendingBatch]) {
        let Some(last_batch) = batches.last() else {
            return;
        };
        let records = batches.iter().flat_map(|b| {
            b.records
                .iter()
                .map(|(key, at)| (&**key, *at, b.created_ms))
        });
        let tag = batches.iter().rev().find_map(|b| b.tag.as_ref());
        self.index_records(w, records, tag, last_batch.end);
    }

    /// Applies appended records (each with its key and creation time) to the
    /// index, in log order, records the replication tag of the last batch that
    /// had one, and publishes `end` (the log position just past them) to the
    /// watchers.
    fn index_records<'k>(
        &self,
        w: &mut Writer,
        records: impl Iterator<Item = (&'k [u8], RecordRef, u64)>,
        tag: Option<&Arc<[u8]>>,
        end: LogPos,
    ) {
        let history = usize::from(self.config.history);
        let removed = &mut w.removed;
        let mut ix = self.index.write();
        let mut last = self.last_rev.load(Ordering::Acquire);
        // A round of records at a time: every entry of the round is asked for
        // first, so that their cache misses overlap (a million keys are far out
        // of cache), then the round is applied in order.
        prefetch::in_rounds(records, |round| {
            let mut hashes = [0u64; prefetch::ROUND];
            for (record, hash) in round.iter().zip(&mut hashes) {
                if let Some((key, _, _)) = record {
                    *hash = ix.prefetch_entry(key);
                }
            }
            for (record, hash) in round.into_iter().zip(hashes) {
                if let Some((key, at, created_ms)) = record {
                    ix.apply_hashed(key, hash, at, created_ms, history, removed);
                    last = last.max(at.revision);
                }
            }
        });
        if let Some(tag) = tag {
            // Under the index write lock: a snapshot encoded under the read
            // lock records the tag that goes with its index.
            *self.replica_tag.lock() = Some(Arc::clone(tag));
        }
        removed.clear();
        self.last_rev.store(last, Ordering::Release);
        self.hub.publish(end, last);
    }
}

impl BucketCore {
    /// Makes the pending writes that are durable now visible, and tells the
    /// watchers. Called after a durability wait, a sync, and before work that
    /// must see every durable write in the index (compaction, a snapshot).
    pub(crate) fn publish_durable(&self) {
        if !self.visible_when_durable {
            return;
        }
        let mut w = self.writer.lock();
        let published = self.publish_durable_locked(&mut w);
        drop(w);
        if published {
            self.hub.wake();
        }
    }

    /// Makes the pending writes that are durable now visible, unless every
    /// write below `end` already is: the writers that group commit woke
    /// together do not queue on the writer lock one after the other when the
    /// first of them published them all.
    pub(crate) fn publish_durable_through(&self, end: LogPos) {
        if self.hub.published().0 < end {
            self.publish_durable();
        }
    }
}
