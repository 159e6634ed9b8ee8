//! Whether the server is serving, for `GET /healthz`.
//!
//! Not serving means: shutting down, or a bucket's log refused writes after a failed fsync
//! (the engine's `Poisoned` error: the log refuses writes until the store is reopened, as
//! `PostgreSQL` does after an fsync failure). The engine reports that only through the
//! errors of later calls, so the server remembers the first one it sees, from RESP writes,
//! gateway calls, durability waits, or the probe `/healthz` runs itself.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The server's health.
#[derive(Debug, Default)]
pub(crate) struct Health {
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// Why the server is not serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unhealthy {
    /// Shutdown has begun.
    Stopping,
    /// A log failed; the reason.
    Failed(String),
}

impl Health {
    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Notes an engine error: a poisoned log makes the server unhealthy
    /// (also when it left a write in doubt).
    pub fn observe(&self, e: &logkv::Error) {
        if matches!(e.cause(), logkv::Error::Poisoned { .. }) {
            self.fail(e.to_string());
        }
    }

    /// Notes a failure that stops the server from serving writes (the first one is kept).
    pub fn fail(&self, reason: String) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!("the server is no longer healthy: {reason}");
            *failure = Some(reason);
        }
    }

    /// Serving, or why not.
    pub fn status(&self) -> Result<(), Unhealthy> {
        if let Some(reason) = self.failure.lock().clone() {
            return Err(Unhealthy::Failed(reason));
        }
        if self.is_stopping() {
            return Err(Unhealthy::Stopping);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn poisoned_logs_and_shutdown_are_unhealthy() {
        let h = Health::default();
        assert_eq!(h.status(), Ok(()));
        h.observe(&logkv::Error::WrongRevision {
            expected: 1,
            latest: 2,
        });
        assert_eq!(h.status(), Ok(()));
        h.stopping();
        assert_eq!(h.status(), Err(Unhealthy::Stopping));
        let poisoned = logkv::Error::Poisoned {
            reason: "EIO".into(),
            path: PathBuf::from("seg"),
        };
        h.observe(&poisoned);
        h.fail("later".into());
        assert_eq!(h.status(), Err(Unhealthy::Failed(poisoned.to_string())));

        // A write left in doubt by the poisoning fsync.
        let h = Health::default();
        let in_doubt = logkv::Error::in_doubt(poisoned);
        h.observe(&in_doubt);
        assert_eq!(h.status(), Err(Unhealthy::Failed(in_doubt.to_string())));
    }
}
