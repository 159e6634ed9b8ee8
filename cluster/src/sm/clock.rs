//! The clock every node applies an entry at: the leader's, carried in the entry.

use std::sync::atomic::{AtomicU64, Ordering};

use logkv::{Clock, SystemClock};

/// A `logkv::Clock` that reads the time of the entry being applied while one is, and the
/// system clock otherwise. The store of a node is opened with it, so `created` and TTL
/// expiries written at apply are the leader's, identical on every node.
#[derive(Debug, Default)]
pub struct ApplyClock {
    /// The pinned time in ms, 0 when none is.
    pinned: AtomicU64,
}

impl ApplyClock {
    /// Reads `ms` until [`ApplyClock::unpin`].
    pub fn pin(&self, ms: u64) {
        self.pinned.store(ms.max(1), Ordering::SeqCst);
    }

    /// Back to the system clock.
    pub fn unpin(&self) {
        self.pinned.store(0, Ordering::SeqCst);
    }
}

impl Clock for ApplyClock {
    fn now_ms(&self) -> u64 {
        match self.pinned.load(Ordering::SeqCst) {
            0 => SystemClock.now_ms(),
            ms => ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_then_system() {
        let c = ApplyClock::default();
        c.pin(42);
        assert_eq!(c.now_ms(), 42);
        c.unpin();
        assert!(c.now_ms() > 1_600_000_000_000);
    }
}
