//! Group commit for the Raft log: one thread fdatasyncs the segments written to and then
//! tells openraft that every append it covered is durable.
//!
//! `append` writes its records and hands its `IOFlushed` callback here; while one fdatasync
//! runs, the appends arriving meanwhile queue up and the next fdatasync covers all of them.
//! Callbacks are completed in order and only after the sync that covers their bytes, so the
//! watermark openraft keeps never runs ahead of the disk.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use openraft::storage::IOFlushed;
use parking_lot::{Condvar, Mutex};

use super::segment::Segment;
use crate::types::C;

/// When appends are acknowledged to openraft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// After the fdatasync that covers them (group commit).
    Always,
    /// At once; the log is fdatasynced on this period.
    Interval(Duration),
    /// At once; the log is fdatasynced only when a segment is sealed and at close.
    Never,
}

impl From<logkv::FsyncPolicy> for FsyncMode {
    fn from(p: logkv::FsyncPolicy) -> FsyncMode {
        match p {
            logkv::FsyncPolicy::Always => FsyncMode::Always,
            logkv::FsyncPolicy::Interval(d) => FsyncMode::Interval(d),
            logkv::FsyncPolicy::Never => FsyncMode::Never,
        }
    }
}

#[derive(Default)]
struct Queue {
    callbacks: Vec<IOFlushed<C>>,
    dirty: Vec<Arc<Segment>>,
    stop: bool,
    /// Set when an fdatasync failed: every later append fails with it.
    failed: Option<String>,
    /// fdatasync calls made.
    syncs: u64,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The flusher thread and its queue.
pub struct Flusher {
    inner: Arc<Inner>,
    mode: FsyncMode,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts the flusher thread.
    pub fn start(mode: FsyncMode) -> std::io::Result<Flusher> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("logkv-raft-fsync".into())
            .spawn(move || run(&worker, mode))?;
        Ok(Flusher {
            inner,
            mode,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands over an append's callback and the segment its records went to.
    pub fn submit(&self, callback: IOFlushed<C>, segment: &Arc<Segment>) {
        let mut q = self.inner.queue.lock();
        if !q.dirty.iter().any(|s| Arc::ptr_eq(s, segment)) {
            q.dirty.push(Arc::clone(segment));
        }
        if self.mode == FsyncMode::Always && q.failed.is_none() {
            q.callbacks.push(callback);
            drop(q);
            self.inner.wake.notify_one();
        } else {
            let failed = q.failed.clone();
            drop(q);
            callback.io_completed(match failed {
                None => Ok(()),
                Some(why) => Err(std::io::Error::other(why)),
            });
        }
    }

    /// Marks a segment as needing an fdatasync (a sealed one) without a callback.
    pub fn mark_dirty(&self, segment: &Arc<Segment>) {
        let mut q = self.inner.queue.lock();
        if !q.dirty.iter().any(|s| Arc::ptr_eq(s, segment)) {
            q.dirty.push(Arc::clone(segment));
        }
    }

    /// The fdatasync failure that poisoned the log, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner.queue.lock().failed.clone()
    }

    /// fdatasync calls made so far.
    pub fn syncs(&self) -> u64 {
        self.inner.queue.lock().syncs
    }

    /// Syncs what is dirty now, on the caller's thread.
    pub fn sync_now(&self) -> std::io::Result<()> {
        let dirty = std::mem::take(&mut self.inner.queue.lock().dirty);
        for s in &dirty {
            s.sync()?;
        }
        Ok(())
    }

    /// Stops the thread after a last sync.
    pub fn stop(&self) {
        self.inner.queue.lock().stop = true;
        self.inner.wake.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(inner: &Inner, mode: FsyncMode) {
    let period = match mode {
        FsyncMode::Interval(d) => Some(d),
        _ => None,
    };
    loop {
        let (callbacks, dirty, stop) = {
            let mut q = inner.queue.lock();
            loop {
                if q.stop || !q.callbacks.is_empty() {
                    break;
                }
                match period {
                    Some(d) => {
                        if inner.wake.wait_for(&mut q, d).timed_out() {
                            break;
                        }
                    }
                    None => inner.wake.wait(&mut q),
                }
            }
            (
                std::mem::take(&mut q.callbacks),
                std::mem::take(&mut q.dirty),
                q.stop,
            )
        };
        let mut result = Ok(());
        for s in &dirty {
            if let Err(e) = s.sync() {
                result = Err(format!("fdatasync of {} failed: {e}", s.path.display()));
                break;
            }
        }
        {
            let mut q = inner.queue.lock();
            q.syncs += dirty.len() as u64;
            if let Err(why) = &result {
                tracing::error!("{why}; the Raft log refuses every later write");
                q.failed = Some(why.clone());
            }
        }
        for cb in callbacks {
            cb.io_completed(result.clone().map_err(std::io::Error::other));
        }
        if stop {
            return;
        }
    }
}
