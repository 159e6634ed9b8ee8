//! Group commit: writers share fsyncs.
//!
//! Writers append under the bucket's writer lock, release it, and then wait
//! here until their bytes are durable. The first waiter that finds no sync in
//! progress becomes the leader: it fdatasyncs the active segment once for every
//! byte written so far, and wakes all waiters that sync covered. Concurrent
//! writers therefore share fsyncs, and 16 writers cost about as many fsyncs as 1.
//!
//! After each fsync the leader writes the durability mark of the active
//! segment (see [`super::mark`]). Every sync of the log, the one that seals a
//! segment included, goes through here, so a failed fsync always poisons the
//! log: it is never retried, since Linux reports a writeback error once and a
//! later fsync may succeed for pages that were dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::position::LogPos;
use super::segment::Segment;
use crate::error::{Error, Result};

struct State {
    /// Everything below this position has been written to the page cache.
    written: LogPos,
    /// Everything below this position is on stable storage.
    synced: LogPos,
    /// A leader is inside fdatasync.
    syncing: bool,
    /// The segment the next sync must flush.
    active: Arc<Segment>,
    /// The reason a sync failed; once set, the log accepts no more writes.
    failed: Option<String>,
}

impl State {
    /// The error every caller gets once a sync has failed.
    fn poisoned(&self) -> Option<Error> {
        self.failed.as_ref().map(|why| Error::Poisoned {
            reason: why.clone(),
            path: self.active.path.clone(),
        })
    }
}

/// Group-commit coordinator for one log.
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    fsyncs: AtomicU64,
    /// Flags of the durability marks written after each fsync.
    mark_flags: u32,
}

impl GroupCommit {
    /// A coordinator whose log is written up to `written` in `active` and
    /// known durable up to `synced`; marks carry `mark_flags`.
    pub(crate) fn new(
        active: Arc<Segment>,
        written: LogPos,
        synced: LogPos,
        mark_flags: u32,
    ) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                written,
                synced: synced.min(written),
                syncing: false,
                active,
                failed: None,
            }),
            done: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            mark_flags,
        }
    }

    /// Records that bytes up to `pos` are written.
    pub(crate) fn note_written(&self, pos: LogPos) {
        let mut s = self.state.lock();
        s.written = s.written.max(pos);
    }

    /// Records a rotation: the old segment was sealed durable (with
    /// [`GroupCommit::wait_durable`]), and later syncs flush `active`, whose
    /// records start at `start`.
    pub(crate) fn rotated(&self, start: LogPos, active: Arc<Segment>) {
        let mut s = self.state.lock();
        s.synced = s.synced.max(start);
        s.written = s.written.max(start);
        s.active = active;
        self.done.notify_all();
    }

    /// Fails if an earlier sync failed.
    pub(crate) fn check(&self) -> Result<()> {
        match self.state.lock().poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether bytes are written but not yet synced.
    pub(crate) fn dirty(&self) -> bool {
        let s = self.state.lock();
        s.written > s.synced
    }

    /// Waits until everything below `pos` is durable, syncing as leader if needed.
    pub(crate) fn wait_durable(&self, pos: LogPos) -> Result<()> {
        let mut s = self.state.lock();
        // A position past what was written (a ticket of a call that wrote
        // nothing) needs nothing more than what was written.
        let pos = pos.min(s.written);
        loop {
            if let Some(e) = s.poisoned() {
                return Err(e);
            }
            if s.synced >= pos {
                return Ok(());
            }
            if s.syncing {
                self.done.wait(&mut s);
                continue;
            }
            s.syncing = true;
            let target = s.written;
            let segment = Arc::clone(&s.active);
            drop(s);
            let result = segment.sync_data().and_then(|()| {
                if target.seq() == segment.id.seq {
                    segment.write_mark(target.offset(), self.mark_flags)
                } else {
                    Ok(())
                }
            });
            s = self.finish_sync(result);
            if s.failed.is_none() {
                s.synced = s.synced.max(target);
            }
        }
    }

    /// Makes everything written durable, then writes a mark with `flags` at
    /// the durable end and fsyncs it (a clean close's mark, or one clearing
    /// it). The mark is written only over data already durable, so a power
    /// cut during its fsync can never leave it claiming more than the disk has.
    pub(crate) fn sync_with_mark(&self, flags: u32) -> Result<()> {
        let written = self.state.lock().written;
        self.wait_durable(written)?;
        let mut s = self.state.lock();
        while s.syncing {
            self.done.wait(&mut s);
        }
        if let Some(e) = s.poisoned() {
            return Err(e);
        }
        s.syncing = true;
        let synced = s.synced;
        let segment = Arc::clone(&s.active);
        drop(s);
        let result = if synced.seq() == segment.id.seq {
            segment
                .write_mark(synced.offset(), flags)
                .and_then(|()| segment.sync_data())
        } else {
            Ok(())
        };
        let s = self.finish_sync(result);
        match s.poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ends a leader's sync: counts it, records a failure (the log is
    /// poisoned: never retried), and wakes the waiters.
    fn finish_sync(&self, result: Result<()>) -> parking_lot::MutexGuard<'_, State> {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock();
        s.syncing = false;
        if let Err(e) = result {
            // After a failed fsync the kernel may have dropped dirty pages:
            // retrying could report success for lost data. Refuse from here on.
            tracing::error!(error = %e, "fsync failed; the log refuses writes until reopened");
            s.failed = Some(e.to_string());
        }
        self.done.notify_all();
        s
    }

    /// Everything below this position is durable.
    pub(crate) fn durable_end(&self) -> LogPos {
        self.state.lock().synced
    }

    /// fdatasync calls made by leaders so far.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync_all(&self) -> Result<()> {
        let target = self.state.lock().written;
        self.wait_durable(target)
    }
}
