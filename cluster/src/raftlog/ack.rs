//! Acknowledging appends to openraft once they are durable.
//!
//! `append` copies its records into the log and returns; its `IOFlushed` callback comes
//! here with the log position just past them. One thread waits on the engine's group commit
//! (`Log::wait_durable`, which fdatasyncs and writes the durability mark) for the furthest
//! position queued, then completes every callback that wait covered, in order. Appends that
//! arrive during one fdatasync are covered by the next: concurrent proposals share fsyncs,
//! and openraft never counts an entry before it is on stable storage.
//!
//! A wait that fails because the sync found no file descriptor (it ran no fsync, and the
//! log is not poisoned) keeps its callbacks and waits again, for up to
//! [`crate::descriptors::PATIENCE`]: openraft stops the node on an append that fails.
//! Any other failure fails the callbacks at once.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use logkv::log::{Log, LogPos};
use openraft::storage::IOFlushed;
use parking_lot::{Condvar, Mutex};

use crate::descriptors::{retry_blocking, PATIENCE};
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

/// What the acknowledging thread waits on: the engine's log (a stand-in in tests).
pub(crate) trait Durability: Send + Sync + 'static {
    /// Waits until everything below `pos` is durable.
    fn wait_durable(&self, pos: LogPos) -> logkv::Result<()>;
    /// Makes everything written durable.
    fn sync(&self) -> logkv::Result<()>;
    /// Fails if a sync has failed (the log is poisoned).
    fn check(&self) -> logkv::Result<()>;
}

impl Durability for Log {
    fn wait_durable(&self, pos: LogPos) -> logkv::Result<()> {
        Log::wait_durable(self, pos)
    }
    fn sync(&self) -> logkv::Result<()> {
        Log::sync(self)
    }
    fn check(&self) -> logkv::Result<()> {
        Log::check(self)
    }
}

/// The acknowledging thread and its queue.
pub struct Acks {
    inner: Arc<Inner>,
    log: Arc<dyn Durability>,
    mode: FsyncMode,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Acks {
    /// Starts the thread for `log`.
    pub fn start(log: Arc<Log>, mode: FsyncMode) -> std::io::Result<Acks> {
        Acks::start_on(log, mode)
    }

    fn start_on(log: Arc<dyn Durability>, mode: FsyncMode) -> std::io::Result<Acks> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let (worker, worker_log) = (Arc::clone(&inner), Arc::clone(&log));
        let thread = std::thread::Builder::new()
            .name("logkv-raft-ack".into())
            .spawn(move || run(&worker, &*worker_log, mode))?;
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

fn run(inner: &Inner, log: &dyn Durability, mode: FsyncMode) {
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
        // A sync that could not open its file (no descriptor) ran no fsync and did not
        // poison the log: the callbacks stay here and the thread waits again. Given up
        // at shutdown, or once the patience is spent.
        let short = |e: &logkv::Error| e.is_out_of_descriptors() && !inner.queue.lock().stop;
        let result =
            retry_blocking(
                &"acknowledging Raft log appends",
                PATIENCE,
                short,
                || match mode {
                    FsyncMode::Always => log.wait_durable(upto),
                    FsyncMode::Interval(_) => log.sync(),
                    FsyncMode::Never => Ok(()),
                },
            )
            .map_err(|e| e.to_string());
        if let Err(why) = &result {
            // A failed fsync also poisons the log; openraft stops the node.
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use openraft::async_runtime::Oneshot;
    use openraft_rt_tokio::TokioOneshot;

    use super::*;

    /// A log whose waits fail with the errors queued, then succeed.
    #[derive(Default)]
    struct Failing {
        errors: parking_lot::Mutex<Vec<logkv::Error>>,
        waits: std::sync::atomic::AtomicU32,
    }

    impl Failing {
        fn with(errors: Vec<logkv::Error>) -> Arc<Failing> {
            Arc::new(Failing {
                errors: parking_lot::Mutex::new(errors),
                ..Failing::default()
            })
        }
    }

    impl Durability for Failing {
        fn wait_durable(&self, _pos: LogPos) -> logkv::Result<()> {
            self.waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.errors.lock().pop().map_or(Ok(()), Err)
        }
        fn sync(&self) -> logkv::Result<()> {
            self.wait_durable(LogPos::default())
        }
        fn check(&self) -> logkv::Result<()> {
            Ok(())
        }
    }

    fn io_error(code: i32) -> logkv::Error {
        logkv::Error::Io {
            path: PathBuf::from("00000001-0.seg"),
            source: std::io::Error::from_raw_os_error(code),
        }
    }

    /// What an append's callback is told by the thread waiting on `log`, and how many
    /// waits that took.
    async fn acknowledged(log: &Arc<Failing>) -> (Result<(), std::io::Error>, u32) {
        let acks =
            Acks::start_on(Arc::clone(log) as Arc<dyn Durability>, FsyncMode::Always).unwrap();
        let (tx, rx) = TokioOneshot::channel();
        acks.submit(IOFlushed::signal(tx), LogPos::new(1, 100));
        let told = rx.await.unwrap();
        // Before the stop, which syncs once more.
        let waits = log.waits.load(std::sync::atomic::Ordering::SeqCst);
        acks.stop();
        (told, waits)
    }

    /// A sync that found no descriptor (the engine's wait fails with EMFILE, having run no
    /// fsync) keeps the callbacks and waits again; before, they were failed at once and
    /// openraft stopped the node for good.
    #[tokio::test]
    async fn a_sync_short_of_descriptors_is_waited_out_before_acknowledging() {
        let log = Failing::with(vec![
            io_error(libc::ENFILE),
            logkv::Error::in_doubt(io_error(libc::EMFILE)),
        ]);
        let (told, waits) = acknowledged(&log).await;
        told.expect("acknowledged once a descriptor was found");
        assert_eq!(waits, 3);
    }

    /// Any other failure (a failed fsync) fails the waiting callbacks at once.
    #[tokio::test]
    async fn a_failed_sync_fails_the_callbacks_at_once() {
        let log = Failing::with(vec![logkv::Error::Poisoned {
            reason: "EIO".into(),
            path: PathBuf::from("00000001-0.seg"),
        }]);
        let (told, waits) = acknowledged(&log).await;
        let told = told.expect_err("not acknowledged");
        assert!(told.to_string().contains("EIO"), "{told}");
        assert_eq!(waits, 1);
    }
}
