//! The write path. Keys, value sizes and TTLs are checked before any lock;
//! then, under the bucket's writer lock, three steps:
//!
//! 1. **plan** (`plan.rs`): each write is checked against its key's state
//!    (the index, and the earlier writes of the same call) and the bucket's
//!    max bytes, and gets its revision;
//! 2. **encode** (`encode.rs`): the planned writes become records, appended
//!    to the log with one write;
//! 3. **apply** (`apply.rs`): under the index write lock they enter the index
//!    and the new log end is published to watchers.
//!
//! The writer lock is then released and the change listeners are poked. The
//! caller waits for durability afterwards, outside every lock, with the
//! [`DurabilityTicket`] it got (group commit, in the log).
//!
//! A **replicated** apply ([`Replica`]) goes the same way at the time it is
//! given, logs all its records as one atomic batch (independent writes too)
//! and ends it with a tag record carrying its replication tag: after a crash
//! the bucket is the batches up to the last tag that survived, and the
//! replication log applies the rest again.

mod apply;
mod encode;
mod plan;

use std::sync::Arc;

use plan::Plan;

use crate::bucket::BucketCore;
use crate::entry::{DurabilityTicket, WriteOp, Written};
use crate::error::{Error, Result};
use crate::fsync::FsyncPolicy;
use crate::log::record::MAX_TAG_LEN;

/// A replicated apply: the time it happens at and the tag recorded with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replica<'a> {
    /// The time of the apply (the leader's, ms since the epoch), for every
    /// precondition, expiry and creation time.
    pub(crate) now_ms: u64,
    /// The opaque replication tag (1..=255 bytes).
    pub(crate) tag: &'a [u8],
}

impl Replica<'_> {
    /// Fails unless the tag is 1..=255 bytes.
    pub(crate) fn check(&self) -> Result<()> {
        if self.tag.is_empty() || self.tag.len() > MAX_TAG_LEN {
            return Err(Error::BadArgument(format!(
                "a replication tag is 1 to {MAX_TAG_LEN} bytes, not {}",
                self.tag.len()
            )));
        }
        Ok(())
    }
}

/// How the writes of one call relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// An atomic batch: all or none, logged as one batch; the first failure
    /// is the error of the call (wrapped in [`crate::Error::Batch`] for more
    /// than one write).
    Batch,
    /// Independent writes: each succeeds or fails on its own, in order, each
    /// a batch of one in the log.
    Each,
}

impl BucketCore {
    /// Applies writes atomically: all or none, consecutive revisions, durable together.
    /// A refusal (a precondition, a limit) is returned once what it may rest on is
    /// durable, as a success would be: under `always` it may name a revision written
    /// but not durable yet, which a crash could give to other data.
    pub(crate) fn write(&self, ops: &[WriteOp]) -> Result<Vec<Written>> {
        match self.write_nowait(ops) {
            Ok((written, ticket)) => {
                self.wait_durable(ticket)?;
                Ok(written)
            }
            Err(refused) if refused.is_outcome() => {
                match self.wait_durable(self.end_ticket()) {
                    Ok(()) => Err(refused),
                    // Not written: not in doubt; the log's failure is the answer.
                    Err(Error::InDoubt { source }) => Err(*source),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The ticket of everything written to the bucket so far: what a reply that
    /// rests on its current state (a refusal) waits for under `always`.
    pub(crate) fn end_ticket(&self) -> DurabilityTicket {
        DurabilityTicket::new(self.id, self.writer.lock().app.end())
    }

    /// Waits until the writes of `ticket` are durable, if the fsync policy is
    /// `Always`; they are visible when it returns.
    pub(crate) fn wait_durable(&self, ticket: DurabilityTicket) -> Result<()> {
        if ticket == DurabilityTicket::default() {
            return Ok(());
        }
        if ticket.bucket_id() != self.id {
            return Err(Error::BadArgument(format!(
                "a durability ticket of another bucket than {} (dropped and created again?)",
                self.name
            )));
        }
        self.check_open()?;
        if self.log.fsync_policy() == FsyncPolicy::Always {
            // The writes are in the log: a failed sync leaves them in doubt.
            self.log
                .wait_durable(ticket.log_end())
                .map_err(Error::in_doubt)?;
            self.publish_durable_through(ticket.log_end());
        }
        Ok(())
    }

    /// Applies writes atomically without waiting for durability; returns the
    /// ticket to pass to [`BucketCore::wait_durable`]. Under `FsyncPolicy::Always`
    /// the writes become visible once durable (see `bucket/pending.rs`);
    /// otherwise at once.
    pub(crate) fn write_nowait(&self, ops: &[WriteOp]) -> Result<(Vec<Written>, DurabilityTicket)> {
        let (results, ticket) = self.write_with(ops, WriteMode::Batch, None)?;
        // In batch mode every result is Ok (the first failure returned above).
        let written = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok((written, ticket))
    }

    /// Applies independent writes (not a batch: each succeeds or fails on its
    /// own, in order, each a batch of one in the log) under one writer lock hold
    /// and one append, without waiting for durability. A server uses this for a
    /// pipeline of writes. Returns each write's result and the ticket to wait
    /// for.
    pub(crate) fn write_each(
        &self,
        ops: &[WriteOp],
    ) -> Result<(Vec<Result<Written>>, DurabilityTicket)> {
        self.write_with(ops, WriteMode::Each, None)
    }

    /// A replicated apply of `ops` (see [`Replica`]): visible at once, with
    /// no wait for durability; returns each write's result (in
    /// [`WriteMode::Batch`], all `Ok`, or the call fails). A call that writes
    /// nothing logs nothing, not even its tag.
    pub(crate) fn apply_replicated(
        &self,
        ops: &[WriteOp],
        mode: WriteMode,
        replica: Replica<'_>,
    ) -> Result<Vec<Result<Written>>> {
        replica.check()?;
        Ok(self.write_with(ops, mode, Some(replica))?.0)
    }

    /// Logs a tag record alone (a replicated step that wrote nothing but
    /// must be known applied, such as the bucket's creation), and makes it
    /// durable.
    pub(crate) fn record_replica_tag(&self, replica: Replica<'_>) -> Result<()> {
        self.append_replica_tag(replica)?;
        self.sync()
    }

    /// Appends a tag record carrying `replica`'s tag alone, without waiting
    /// for it to be durable (the replication log it comes from is).
    pub(crate) fn append_replica_tag(&self, replica: Replica<'_>) -> Result<()> {
        replica.check()?;
        self.check_open()?;
        let mut wake = WakeOnDrop::new(&self.hub);
        let mut w = self.writer.lock();
        self.check_open()?;
        wake.due |= self.publish_durable_locked(&mut w);
        let appended = self.append_records(
            &mut w,
            &[],
            WriteMode::Batch,
            replica.now_ms,
            Some(replica.tag),
        )?;
        self.apply_appended(
            &mut w,
            &[],
            appended,
            replica.now_ms,
            Some(Arc::from(replica.tag)),
            0,
        );
        Ok(())
    }

    /// The replication tag of the last visible batch that carried one.
    pub(crate) fn replica_tag(&self) -> Option<Vec<u8>> {
        self.replica_tag.lock().as_deref().map(<[u8]>::to_vec)
    }

    /// The write path: validate, then plan → encode → apply under the writer lock.
    pub(crate) fn write_with(
        &self,
        ops: &[WriteOp],
        mode: WriteMode,
        replica: Option<Replica<'_>>,
    ) -> Result<(Vec<Result<Written>>, DurabilityTicket)> {
        self.check_open()?;
        if ops.is_empty() {
            return Ok((Vec::new(), DurabilityTicket::default()));
        }
        let invalid = self.validate(ops, mode)?;
        // Declared before the lock: it wakes the watchers once the lock is released.
        let mut wake = WakeOnDrop::new(&self.hub);
        let mut w = self.writer.lock();
        // Checked again under the lock: a drop takes the lock before it renames the directory.
        self.check_open()?;
        // Durable writes nobody has published yet (their writers did not wait) become
        // visible, and the watchers hear of it however this call ends (a refusal too).
        wake.due |= self.publish_durable_locked(&mut w);
        let now = replica.map_or_else(|| self.now(), |r| r.now_ms);
        let Plan {
            writes,
            mut results,
            bytes_net,
        } = self.plan(ops, invalid, &w.pending, w.next_rev, mode, now)?;
        // A replicated apply logs its tag, which says the entry is applied: a write
        // that failed for a reason of this store's own (a record it could not read),
        // not for an answer about the data that every replica gives alike, fails the
        // whole call before anything is logged.
        if replica.is_some() {
            let local = results
                .iter()
                .position(|r| r.as_ref().is_err_and(|e| !e.is_outcome()));
            if let Some(Err(e)) = local.map(|i| results.swap_remove(i)) {
                return Err(e);
            }
        }
        if writes.is_empty() {
            return Ok((results, DurabilityTicket::new(self.id, w.app.end())));
        }
        let tag = replica.map(|r| r.tag);
        let appended = self.append_records(&mut w, &writes, mode, now, tag)?;
        self.apply_appended(
            &mut w,
            &writes,
            appended,
            now,
            tag.map(Arc::from),
            bytes_net,
        );
        wake.due = true;
        Ok((results, DurabilityTicket::new(self.id, appended.end)))
    }
}

/// Wakes a bucket's watchers (and its change listeners) when dropped, if `due`: every
/// way out of a call that made writes visible wakes them, after the writer lock (taken
/// after this was made) is released.
struct WakeOnDrop<'a> {
    hub: &'a crate::watch_hub::WatchHub,
    due: bool,
}

impl<'a> WakeOnDrop<'a> {
    fn new(hub: &'a crate::watch_hub::WatchHub) -> WakeOnDrop<'a> {
        WakeOnDrop { hub, due: false }
    }
}

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        if self.due {
            self.hub.wake();
        }
    }
}
