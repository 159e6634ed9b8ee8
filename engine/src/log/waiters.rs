//! The threads waiting on group commit, each parked on its own.
//!
//! A writer that cannot lead a sync (one is running) queues here and parks.
//! When a sync ends, its leader signals exactly the waiters it covered, and
//! hands the leader's place to the first waiter it did not cover (one that
//! wrote while it ran), which syncs at once for everything written by then.
//! Nobody is woken only to find that it must sleep again (no thundering
//! herd), and a woken writer needs no lock to learn that it is durable.
//!
//! Waking a thread is a system call, and on a machine with few cores the
//! thread woken may take the waker's core, so the leader wakes only two: the
//! new leader first (the next fsync waits for it), then one covered waiter,
//! the relay, which wakes the other covered waiters once it runs, while the
//! new leader is already inside its fsync.

use std::collections::VecDeque;
use std::sync::Arc;

use super::position::LogPos;
use crate::sync::{current_thread, park, AtomicU8, Mutex, Ordering, Thread};

/// What a parked waiter was woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// Its bytes are durable.
    Durable,
    /// A sync failed: the log is poisoned.
    Failed,
    /// It holds the leader's place: no other sync runs or starts until it gives it up.
    Lead,
}

/// [`Waiter::signal`] before it is signalled.
const WAITING: u8 = 0;

impl Signal {
    fn to_u8(self) -> u8 {
        match self {
            Signal::Durable => 1,
            Signal::Failed => 2,
            Signal::Lead => 3,
        }
    }

    fn from_u8(v: u8) -> Option<Signal> {
        match v {
            1 => Some(Signal::Durable),
            2 => Some(Signal::Failed),
            3 => Some(Signal::Lead),
            _ => None,
        }
    }
}

/// One parked thread.
pub(super) struct Waiter {
    /// What it waits for: the bytes below this position durable, or
    /// (`None`) the leader's place.
    pos: Option<LogPos>,
    /// [`WAITING`], then its [`Signal`], stored once, under the group-commit lock.
    signal: AtomicU8,
    thread: Thread,
    /// Waiters signalled with it, that it unparks when it wakes (it is the relay).
    relay: Mutex<Vec<Arc<Waiter>>>,
}

impl Waiter {
    /// Parks the calling thread until it is signalled (unparking the waiters
    /// it relays to, if any); the signal.
    pub(super) fn park(&self) -> Signal {
        loop {
            if let Some(signal) = Signal::from_u8(self.signal.load(Ordering::Acquire)) {
                let relayed = std::mem::take(
                    &mut *self
                        .relay
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for w in relayed {
                    w.thread.unpark();
                }
                return signal;
            }
            // A wake-up meant for an earlier wait of this thread, or a
            // spurious one, only costs a look at the signal.
            park();
        }
    }

    fn signal(&self, signal: Signal) {
        self.signal.store(signal.to_u8(), Ordering::Release);
    }
}

/// Waiters signalled under the group-commit lock, to unpark once it is released.
#[must_use = "signalled waiters must be unparked"]
pub(super) struct Wakes(Vec<Arc<Waiter>>);

impl Wakes {
    /// Unparks them (the new leader, if any, first).
    pub(super) fn unpark(self) {
        for w in self.0 {
            w.thread.unpark();
        }
    }
}

/// The waiters of one log, in arrival order.
#[derive(Default)]
pub(super) struct Waiters(VecDeque<Arc<Waiter>>);

impl Waiters {
    /// Queues the calling thread, to wait until the bytes below `pos` are
    /// durable or (`None`) for the leader's place; it then parks with
    /// [`Waiter::park`], after releasing the group-commit lock.
    pub(super) fn push(&mut self, pos: Option<LogPos>) -> Arc<Waiter> {
        let w = Arc::new(Waiter {
            pos,
            signal: AtomicU8::new(WAITING),
            thread: current_thread(),
            relay: Mutex::new(Vec::new()),
        });
        self.0.push_back(Arc::clone(&w));
        w
    }

    /// Signals every waiter that the log is poisoned; returns whom to
    /// unpark once the lock is released.
    pub(super) fn fail_all(&mut self) -> Wakes {
        let all: Vec<_> = self.0.drain(..).collect();
        for w in &all {
            w.signal(Signal::Failed);
        }
        Wakes(all)
    }

    /// Signals the waiters whose bytes are durable (`durable` says whether
    /// the bytes below a position are), and, if `hand_lead`, hands the
    /// leader's place to the first of the others. Returns whom to unpark once
    /// the lock is released, and whether the place was handed on.
    pub(super) fn release(
        &mut self,
        durable: impl Fn(LogPos) -> bool,
        hand_lead: bool,
    ) -> (Wakes, bool) {
        if self.0.is_empty() {
            return (Wakes(Vec::new()), false);
        }
        let mut covered = Vec::new();
        self.0.retain(|w| {
            let done = w.pos.is_some_and(&durable);
            if done {
                covered.push(Arc::clone(w));
            }
            !done
        });
        let lead = if hand_lead { self.0.pop_front() } else { None };
        let mut wakes = Vec::with_capacity(2);
        if let Some(w) = &lead {
            w.signal(Signal::Lead);
            wakes.push(Arc::clone(w));
        }
        let mut covered = covered.into_iter();
        if let Some(relay) = covered.next() {
            let rest: Vec<_> = covered.collect();
            for w in &rest {
                w.signal(Signal::Durable);
            }
            // Stored before the relay's signal: once it sees that, it finds them.
            *relay
                .relay
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = rest;
            relay.signal(Signal::Durable);
            wakes.push(relay);
        }
        (Wakes(wakes), lead.is_some())
    }
}
