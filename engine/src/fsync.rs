//! Fsync policy and group commit.
//!
//! Writers append under the bucket's writer lock, release it, and then wait
//! here until their bytes are durable. The first waiter that finds no sync in
//! progress becomes the leader: it fdatasyncs the active segment once for every
//! byte written so far, and wakes all waiters that sync covered. Concurrent
//! writers therefore share fsyncs, and 16 writers cost about as many fsyncs as 1.
//!
//! Log positions are `seq << 32 | offset`, which grow monotonically across segments.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::log::segment::Segment;

/// When written bytes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A write returns only once it is on stable storage; concurrent writers share fsyncs.
    Always,
    /// A background task syncs at this interval (like Redis `appendfsync everysec`).
    Interval(Duration),
    /// The store never syncs on its own; [`crate::Store::sync`] and close still do.
    Never,
}

/// A position in a bucket's log.
pub fn log_pos(seq: u64, offset: u64) -> u64 {
    (seq << 32) | offset
}

struct State {
    /// Everything below this position has been written to the page cache.
    written: u64,
    /// Everything below this position is on stable storage.
    synced: u64,
    /// A leader is inside fdatasync.
    syncing: bool,
    /// The segment the next sync must flush.
    active: Arc<Segment>,
    /// The reason a sync failed; once set, the log accepts no more writes.
    failed: Option<String>,
}

/// Group-commit coordinator for one log.
pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    fsyncs: std::sync::atomic::AtomicU64,
}

impl GroupCommit {
    /// A coordinator whose log is durable up to `pos` in `active`.
    pub fn new(active: Arc<Segment>, pos: u64) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                written: pos,
                synced: pos,
                syncing: false,
                active,
                failed: None,
            }),
            done: Condvar::new(),
            fsyncs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records that bytes up to `pos` are written.
    pub fn note_written(&self, pos: u64) {
        let mut s = self.state.lock();
        s.written = s.written.max(pos);
    }

    /// Records a rotation: everything before `sealed_end` was synced with the old
    /// segment, and later syncs flush `active`.
    pub fn rotated(&self, sealed_end: u64, active: Arc<Segment>) {
        let mut s = self.state.lock();
        s.synced = s.synced.max(sealed_end);
        s.written = s.written.max(sealed_end);
        s.active = active;
        self.done.notify_all();
    }

    /// Fails if an earlier sync failed.
    pub fn check(&self) -> Result<()> {
        let s = self.state.lock();
        match &s.failed {
            Some(why) => Err(Error::Poisoned {
                reason: why.clone(),
                path: s.active.path.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether bytes are written but not yet synced.
    pub fn dirty(&self) -> bool {
        let s = self.state.lock();
        s.written > s.synced
    }

    /// Waits until everything below `pos` is durable, syncing as leader if needed.
    pub fn wait_durable(&self, pos: u64) -> Result<()> {
        let mut s = self.state.lock();
        loop {
            if let Some(why) = &s.failed {
                return Err(Error::Poisoned {
                    reason: why.clone(),
                    path: s.active.path.clone(),
                });
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
            let result = segment.sync_data();
            self.fsyncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s = self.state.lock();
            s.syncing = false;
            match result {
                Ok(()) => s.synced = s.synced.max(target),
                Err(e) => {
                    // After a failed fsync the kernel may have dropped dirty pages:
                    // retrying could report success for lost data. Refuse from here on.
                    tracing::error!(error = %e, "fsync failed; the log refuses writes until reopened");
                    s.failed = Some(e.to_string());
                }
            }
            self.done.notify_all();
        }
    }

    /// fdatasync calls made by leaders so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes everything written so far durable.
    pub fn sync_all(&self) -> Result<()> {
        let target = self.state.lock().written;
        self.wait_durable(target)
    }
}
