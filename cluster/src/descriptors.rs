//! Waiting out a shortage of file descriptors.
//!
//! openraft stops a node for good on any error of its storage, and the documented remedy
//! is a restart. A call that failed because the process (`EMFILE`) or the system
//! (`ENFILE`) had no descriptor left is not worth that: the engine's call wrote and synced
//! nothing (`logkv::Error::is_out_of_descriptors`), and the shortage is usually a passing
//! peak (client connections). So the node's storage calls that can meet one — saving the
//! vote and the purge point, a Raft log append that starts a segment, a truncation that
//! reopens a sealed segment, the acknowledgement of appends, applying an entry, building,
//! adopting and installing a snapshot (these start over from their first step) — try
//! again after a pause that doubles from 1 ms up to 100 ms, for up to [`PATIENCE`] in
//! all, and only then fail as before. Every other error fails at once.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a storage call waits for a descriptor in all before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// Pauses taken in this process by storage calls waiting for a descriptor.
static WAITS: AtomicU64 = AtomicU64::new(0);

/// How many times, in this process, a node's storage call paused to wait for a file
/// descriptor (diagnostics; tests wait for it to move).
pub fn waits() -> u64 {
    WAITS.load(Ordering::Acquire)
}

/// Whether `e` says no descriptor was left, looking through the errors it wraps (an
/// engine error, or an I/O error carried with a message of ours).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    if e.raw_os_error().is_some() {
        return logkv::io::out_of_descriptors(e);
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if let Some(engine) = err.downcast_ref::<logkv::Error>() {
            return engine.is_out_of_descriptors();
        }
        if let Some(raft_log) = err.downcast_ref::<crate::raftlog::LogIoError>() {
            return logkv::io::out_of_descriptors(raft_log.os_error());
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some() {
                return logkv::io::out_of_descriptors(io);
            }
        }
        next = err.source();
    }
    false
}

/// The pauses of one call waiting for a descriptor.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    pause: Duration,
    patience: Duration,
}

impl Backoff {
    /// Waits of at most `patience` in all.
    pub(crate) fn new(patience: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            pause: FIRST_PAUSE,
            patience,
        }
    }

    /// The pause before trying `what` again after it failed for want of a descriptor
    /// (`error`); `None` once the patience is spent (the caller fails). Counted and
    /// logged.
    pub(crate) fn next(&mut self, what: &dyn Display, error: &dyn Display) -> Option<Duration> {
        let waited = self.started.elapsed();
        if waited >= self.patience {
            tracing::error!(
                waited_ms = waited.as_millis(),
                "{what}: still no file descriptor ({error}); giving up"
            );
            return None;
        }
        if self.pause == FIRST_PAUSE {
            tracing::warn!(
                "{what}: no file descriptor left ({error}); trying again for up to {} ms",
                self.patience.as_millis()
            );
        }
        WAITS.fetch_add(1, Ordering::AcqRel);
        let pause = self.pause;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

/// Runs `call` until it succeeds, fails for another reason than `short` says, or the
/// patience is spent, pausing the thread between tries (for blocking code).
pub fn retry_blocking<T, E: Display>(
    what: &dyn Display,
    patience: Duration,
    short: impl Fn(&E) -> bool,
    mut call: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut backoff = Backoff::new(patience);
    loop {
        match call() {
            Err(e) if short(&e) => match backoff.next(what, &e) {
                Some(pause) => std::thread::sleep(pause),
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// [`retry_blocking`] for an engine call.
pub(crate) fn retry_engine<T>(
    what: &dyn Display,
    call: impl FnMut() -> logkv::Result<T>,
) -> logkv::Result<T> {
    retry_blocking(what, PATIENCE, logkv::Error::is_out_of_descriptors, call)
}

/// [`retry_blocking`] for a call that fails with an I/O error (one of ours may carry an
/// engine error: see [`out_of_descriptors`]).
pub(crate) fn retry_io<T>(
    what: &dyn Display,
    call: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    retry_blocking(what, PATIENCE, out_of_descriptors, call)
}

/// [`retry_blocking`] for async code: the task sleeps between tries, the thread does not.
pub(crate) async fn retry_async<T, F, Fut>(what: &str, mut call: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut backoff = Backoff::new(PATIENCE);
    loop {
        match call().await {
            Err(e) if out_of_descriptors(&e) => match backoff.next(&what, &e) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(e),
            },
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    /// An error of ours carrying the operating system's.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn a_shortage_is_told_through_the_errors_that_carry_it() {
        assert!(out_of_descriptors(&emfile()));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EIO
        )));
        let engine = logkv::Error::in_doubt(logkv::Error::Io {
            path: PathBuf::from("seg"),
            source: emfile(),
        });
        assert!(out_of_descriptors(&io::Error::other(engine)));
        assert!(out_of_descriptors(&io::Error::other(Wrapped(emfile()))));
        assert!(!out_of_descriptors(&io::Error::other(
            "Too many open files (a message only)"
        )));
    }

    #[test]
    fn a_call_is_tried_again_while_descriptors_are_short_and_only_then() {
        let mut failures = 3;
        let got = retry_blocking(&"test", PATIENCE, out_of_descriptors, || {
            if failures > 0 {
                failures -= 1;
                return Err(emfile());
            }
            Ok(7)
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(failures, 0);

        let mut calls = 0;
        let got: io::Result<()> = retry_blocking(&"test", PATIENCE, out_of_descriptors, || {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EIO))
        });
        assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(calls, 1, "another error fails at once");

        let mut calls = 0;
        let got: io::Result<()> =
            retry_blocking(&"test", Duration::ZERO, out_of_descriptors, || {
                calls += 1;
                Err(emfile())
            });
        assert!(out_of_descriptors(&got.unwrap_err()));
        assert_eq!(calls, 1, "no patience left: the shortage is the error");
    }
}
