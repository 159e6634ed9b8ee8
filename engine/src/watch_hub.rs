//! The watch hub: where one bucket's writer meets its watchers.
//!
//! A write, once applied to the index and still under the index write lock,
//! publishes the new log end and revision here: one uncontended mutex, two
//! stores, and a condvar broadcast only if some watcher is blocked. After the
//! index lock is released it pokes the few change listeners (channels, or
//! hooks such as the server's one per watched bucket). That is all the writer
//! does: nothing per watcher,
//! no queue to fill. Watchers read the published end and wait here for it to
//! move; they read the log themselves (`bucket/watch.rs`).
//!
//! The hub knows nothing of buckets: the bucket depends on it, never the
//! other way round. Its publish/wake handoff is model-checked with loom.

use std::sync::{Arc, PoisonError, Weak};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::log::LogPos;
use crate::sync::{AtomicBool, AtomicU64, Condvar, Mutex, Ordering};

/// The meeting point of one bucket's writer and its watchers.
pub(crate) struct WatchHub {
    /// Log position just past the last visible write.
    end: AtomicU64,
    /// Its revision.
    revision: AtomicU64,
    closed: AtomicBool,
    /// Watchers blocked in `wait_past`; changes of `end` and `closed` happen under this lock.
    waiters: Mutex<usize>,
    changed: Condvar,
    listeners: parking_lot::Mutex<Vec<Listener>>,
}

/// Someone told of changes: a channel (dropped when its receiver is), or a hook (dropped
/// when its [`ChangeHook`] is).
enum Listener {
    Channel(Sender<()>),
    Hook(Weak<dyn Fn() + Send + Sync>),
}

impl Listener {
    /// Tells of a change; false once the listener is gone.
    fn poke(&self) -> bool {
        match self {
            Listener::Channel(tx) => {
                !matches!(tx.try_send(()), Err(TrySendError::Disconnected(())))
            }
            Listener::Hook(hook) => match hook.upgrade() {
                Some(f) => {
                    f();
                    true
                }
                None => false,
            },
        }
    }
}

/// A function called after writes to a bucket (see [`crate::Bucket::on_change`]); it stays
/// registered while this value lives.
#[must_use = "the hook is unregistered when this is dropped"]
pub struct ChangeHook {
    _hook: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ChangeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeHook")
    }
}

impl WatchHub {
    /// A hub whose log ends at `end`, after revision `revision`.
    pub(crate) fn new(end: LogPos, revision: u64) -> WatchHub {
        WatchHub {
            end: AtomicU64::new(end.to_bits()),
            revision: AtomicU64::new(revision),
            closed: AtomicBool::new(false),
            waiters: Mutex::new(0),
            changed: Condvar::new(),
            listeners: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Publishes a new end and wakes blocked watchers; called by the writer
    /// under the index write lock.
    pub(crate) fn publish(&self, end: LogPos, revision: u64) {
        let waiters = lock(&self.waiters);
        // End first, revision second; `published` reads them the other way
        // round, so a reader that sees a revision also sees its end.
        self.end.store(end.to_bits(), Ordering::SeqCst);
        self.revision.store(revision, Ordering::SeqCst);
        if *waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Pokes the change listeners; called by the writer after the index lock is released.
    pub(crate) fn wake(&self) {
        let mut listeners = self.listeners.lock();
        if !listeners.is_empty() {
            listeners.retain(Listener::poke);
        }
    }

    /// The published end and revision.
    pub(crate) fn published(&self) -> (LogPos, u64) {
        let revision = self.revision.load(Ordering::SeqCst);
        (LogPos::from_bits(self.end.load(Ordering::SeqCst)), revision)
    }

    /// Ends every watch of this bucket (it was dropped).
    pub(crate) fn close(&self) {
        let _g = lock(&self.waiters);
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        // Hooks hear of it once more (their owners then find the bucket gone); channels
        // see their senders dropped.
        let listeners = std::mem::take(&mut *self.listeners.lock());
        for l in &listeners {
            if let Listener::Hook(_) = l {
                l.poke();
            }
        }
    }

    /// Whether the bucket was dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Blocks until the published end passes `pos`, the hub closes, or `deadline`.
    pub(crate) fn wait_past(&self, pos: LogPos, deadline: Option<Instant>) {
        let mut g = lock(&self.waiters);
        *g += 1;
        while LogPos::from_bits(self.end.load(Ordering::SeqCst)) <= pos && !self.is_closed() {
            match deadline {
                None => g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    g = match self.changed.wait_timeout(g, d - now) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                }
            }
        }
        *g -= 1;
    }

    /// A channel that receives a token (coalesced) after writes; for event loops
    /// that cannot block in [`crate::Watch::recv`].
    pub(crate) fn listen(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.listeners.lock().push(Listener::Channel(tx));
        rx
    }

    /// Registers `hook`, called after writes (on the writing thread) and once when the
    /// hub closes, until the returned [`ChangeHook`] is dropped.
    pub(crate) fn hook(&self, hook: impl Fn() + Send + Sync + 'static) -> ChangeHook {
        let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(hook);
        let mut listeners = self.listeners.lock();
        if !self.is_closed() {
            listeners.push(Listener::Hook(Arc::downgrade(&hook)));
        }
        ChangeHook { _hook: hook }
    }
}

/// Locks `m`; a poisoned lock is taken as it is (it guards a counter that a
/// panic cannot leave half-updated).
fn lock<T>(m: &Mutex<T>) -> crate::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::WatchHub;
    use crate::log::LogPos;

    fn counting(hub: &WatchHub) -> (Arc<AtomicUsize>, super::ChangeHook) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let hook = hub.hook(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        (calls, hook)
    }

    #[test]
    fn hooks_hear_every_wake_until_dropped_and_once_at_close() {
        let hub = WatchHub::new(LogPos::new(1, 0), 0);
        let (kept, kept_hook) = counting(&hub);
        let (dropped, dropped_hook) = counting(&hub);
        let rx = hub.listen();
        hub.wake();
        assert_eq!(kept.load(Ordering::SeqCst), 1);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert!(rx.try_recv().is_ok(), "the channel listener got its token");
        drop(dropped_hook);
        hub.wake();
        hub.wake();
        assert_eq!(kept.load(Ordering::SeqCst), 3);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "a dropped hook is not called"
        );
        assert_eq!(hub.listeners.lock().len(), 2, "and is unregistered");
        hub.close();
        assert_eq!(kept.load(Ordering::SeqCst), 4, "told of the close once");
        let _token_of_earlier_wakes = rx.try_recv();
        assert!(rx.recv().is_err(), "the channel is disconnected at close");
        hub.wake();
        assert_eq!(kept.load(Ordering::SeqCst), 4, "nothing after the close");
        drop(kept_hook);
    }

    #[test]
    fn a_hook_registered_after_close_is_never_called() {
        let hub = WatchHub::new(LogPos::new(1, 0), 0);
        hub.close();
        let (calls, _hook) = counting(&hub);
        hub.wake();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(hub.listeners.lock().is_empty());
    }
}

/// Model checks of the writer → watcher handoff (`RUSTFLAGS="--cfg loom"`):
/// no interleaving loses a wake-up or lets a watcher miss a published write.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::WatchHub;
    use crate::log::LogPos;
    use loom::sync::Arc;

    /// A position in the first segment.
    fn at(offset: u64) -> LogPos {
        LogPos::new(1, offset)
    }

    #[test]
    fn loom_publish_wakes_a_waiting_watcher() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let writer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    hub.publish(at(10), 1);
                    hub.wake();
                })
            };
            hub.wait_past(at(0), None);
            assert_eq!(hub.published(), (at(10), 1));
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_two_writes_two_watchers_see_the_last() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let writer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    hub.publish(at(5), 1);
                    hub.wake();
                    hub.publish(at(9), 2);
                    hub.wake();
                })
            };
            let watcher = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || {
                    let mut seen = at(0);
                    while seen < at(9) {
                        hub.wait_past(seen, None);
                        let (end, _) = hub.published();
                        assert!(end > seen, "woken without progress");
                        seen = end;
                    }
                })
            };
            hub.wait_past(at(4), None);
            assert!(hub.published().0 >= at(5));
            writer.join().unwrap();
            watcher.join().unwrap();
        });
    }

    #[test]
    fn loom_close_releases_a_waiter() {
        loom::model(|| {
            let hub = Arc::new(WatchHub::new(at(0), 0));
            let closer = {
                let hub = Arc::clone(&hub);
                loom::thread::spawn(move || hub.close())
            };
            hub.wait_past(at(0), None);
            assert!(hub.is_closed());
            closer.join().unwrap();
        });
    }
}
