//! Synchronisation primitives of the watch hub and group commit: std's, or
//! loom's under `--cfg loom` so their handoffs can be model-checked; and
//! [`Gate`], a futex of its own.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Where threads sleep until it opens: a futex word on Linux. Opening it
/// changes its value, so a thread that read the value before cannot sleep
/// past it ([`Gate::wait`] returns at once), and one system call then wakes
/// every sleeper, or one: the woken threads take no lock to find out why.
///
/// Elsewhere, and in the loom models, a mutex and a condvar do the same.
pub(crate) struct Gate {
    word: AtomicU32,
    #[cfg(any(loom, not(target_os = "linux")))]
    sleepers: (Mutex<()>, Condvar),
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            word: AtomicU32::new(0),
            #[cfg(any(loom, not(target_os = "linux")))]
            sleepers: (Mutex::new(()), Condvar::new()),
        }
    }

    /// The value to pass to [`Gate::wait`]: read it before looking at what
    /// the waiting is for.
    pub(crate) fn ticket(&self) -> u32 {
        self.word.load(Ordering::SeqCst)
    }

    /// Opens the gate: a thread holding an older ticket no longer sleeps.
    /// Then [`Gate::wake_all`] or [`Gate::wake_one`] wakes those asleep.
    pub(crate) fn open(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(all(not(loom), target_os = "linux"))]
impl Gate {
    /// Sleeps unless the gate has opened since `ticket` was read; may return
    /// for no reason (the caller looks again).
    pub(crate) fn wait(&self, ticket: u32) {
        use rustix::thread::futex;
        // EAGAIN (opened meanwhile) and EINTR both mean: look again.
        let _ = futex::wait(&self.word, futex::Flags::PRIVATE, ticket, None);
    }

    /// Wakes every thread asleep at the gate (one system call).
    pub(crate) fn wake_all(&self) {
        use rustix::thread::futex;
        // The kernel reads the count as an `int`: `u32::MAX` would be -1,
        // which wakes one thread. `INT_MAX` is the usual "all".
        let all = i32::MAX.unsigned_abs();
        let _ = futex::wake(&self.word, futex::Flags::PRIVATE, all);
    }

    /// Wakes one thread asleep at the gate, if any.
    pub(crate) fn wake_one(&self) {
        use rustix::thread::futex;
        let _ = futex::wake(&self.word, futex::Flags::PRIVATE, 1);
    }
}

#[cfg(any(loom, not(target_os = "linux")))]
impl Gate {
    /// Sleeps unless the gate has opened since `ticket` was read; may return
    /// for no reason (the caller looks again).
    pub(crate) fn wait(&self, ticket: u32) {
        let guard = self.sleepers_lock();
        if self.word.load(Ordering::SeqCst) == ticket {
            drop(
                self.sleepers
                    .1
                    .wait(guard)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }

    /// Wakes every thread asleep at the gate.
    pub(crate) fn wake_all(&self) {
        let _guard = self.sleepers_lock();
        self.sleepers.1.notify_all();
    }

    /// Wakes one thread asleep at the gate, if any.
    pub(crate) fn wake_one(&self) {
        let _guard = self.sleepers_lock();
        self.sleepers.1.notify_one();
    }

    fn sleepers_lock(&self) -> MutexGuard<'_, ()> {
        self.sleepers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
