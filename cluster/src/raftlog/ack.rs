//! Acknowledging appends to openraft once they are durable.
//!
//! `append` copies its records into the log and returns; its `IOFlushed` callback comes
//! here with the log position just past them. One thread waits on the engine's group commit
//! (`Log::wait_durable`, which fdatasyncs and writes the durability mark) for the furthest
//! position queued, then completes every callback that wait covered, in order. Appends that
//! arrive during one fdatasync are covered by the next: concurrent proposals share fsyncs,
//! and openraft never counts an entry before it is on stable storage.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use logkv::log::{Log, LogPos};
use openraft::storage::IOFlushed;
use parking_lot::{Condvar, Mutex};

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

impl From<FsyncMode> for logkv::FsyncPolicy {
    fn from(m: FsyncMode) -> logkv::FsyncPolicy {
        match m {
            FsyncMode::Always => logkv::FsyncPolicy::Always,
            FsyncMode::Interval(d) => logkv::FsyncPolicy::Interval(d),
            FsyncMode::Never => logkv::FsyncPolicy::Never,
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Callbacks waiting for durability, in append order.
    callbacks: Vec<IOFlushed<C>>,
    /// The log position just past the last of their records.
    upto: LogPos,
    stop: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The acknowledging thread and its queue.
pub struct Acks {
    inner: Arc<Inner>,
    log: Arc<Log>,
    mode: FsyncMode,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Acks {
    /// Starts the thread for `log`.
    pub fn start(log: Arc<Log>, mode: FsyncMode) -> std::io::Result<Acks> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let (worker, worker_log) = (Arc::clone(&inner), Arc::clone(&log));
        let thread = std::thread::Builder::new()
            .name("logkv-raft-ack".into())
            .spawn(move || run(&worker, &worker_log, mode))?;
        Ok(Acks {
            inner,
            log,
            mode,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands over an append's callback and the log position just past its records.
    pub fn submit(&self, callback: IOFlushed<C>, end: LogPos) {
        if self.mode == FsyncMode::Always {
            let mut q = self.inner.queue.lock();
            q.upto = q.upto.max(end);
            q.callbacks.push(callback);
            drop(q);
            self.inner.wake.notify_one();
        } else {
            callback.io_completed(self.log.check().map_err(std::io::Error::other));
        }
    }

    /// Stops the thread once the callbacks queued are completed.
    pub fn stop(&self) {
        self.inner.queue.lock().stop = true;
        self.inner.wake.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(inner: &Inner, log: &Log, mode: FsyncMode) {
    let period = match mode {
        FsyncMode::Interval(d) => Some(d),
        _ => None,
    };
    loop {
        let (callbacks, upto, stop) = {
            let mut q = inner.queue.lock();
            while !q.stop && q.callbacks.is_empty() {
                match period {
                    Some(d) => {
                        if inner.wake.wait_for(&mut q, d).timed_out() {
                            break;
                        }
                    }
                    None => inner.wake.wait(&mut q),
                }
            }
            (std::mem::take(&mut q.callbacks), q.upto, q.stop)
        };
        let result = match mode {
            FsyncMode::Always => log.wait_durable(upto),
            FsyncMode::Interval(_) => log.sync(),
            FsyncMode::Never => Ok(()),
        }
        .map_err(|e| e.to_string());
        if let Err(why) = &result {
            // A failed fsync also poisons the log; a sync that could not open its
            // file (no descriptor) does not, but openraft stops the node either way.
            tracing::error!("the Raft log failed to sync: {why}; the entries waiting for it are not acknowledged");
        }
        for cb in callbacks {
            cb.io_completed(result.clone().map_err(std::io::Error::other));
        }
        if stop {
            return;
        }
    }
}
