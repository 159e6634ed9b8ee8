//! Watches: change streams fed from the log.
//!
//! The write path only publishes "the log now ends here, at this revision"
//! to the bucket's [`WatchHub`]; it never does work per watcher.

use parking_lot::{Condvar, Mutex};

/// What the writer last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Published {
    /// Log position just past the last visible write.
    pub end: u64,
    /// Its revision.
    pub revision: u64,
}

/// The meeting point of one bucket's writer and its watchers.
pub(crate) struct WatchHub {
    published: Mutex<Published>,
    changed: Condvar,
}

impl WatchHub {
    pub fn new() -> WatchHub {
        WatchHub { published: Mutex::new(Published::default()), changed: Condvar::new() }
    }

    /// Called by the writer after a write became visible.
    pub fn notify(&self, end: u64, revision: u64) {
        let mut p = self.published.lock();
        p.end = end;
        p.revision = revision;
        self.changed.notify_all();
    }

    /// The last published position.
    pub fn published(&self) -> Published {
        *self.published.lock()
    }
}

impl WatchHub {
    /// Wakes every waiter for good (the bucket was dropped).
    pub fn close(&self) {
        let _p = self.published.lock();
        self.changed.notify_all();
    }
}
