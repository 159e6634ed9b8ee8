//! A total budget for the memory that client connections hold in their buffers, like
//! Redis 7's `maxmemory-clients`.
//!
//! One connection may hold up to `--max-request` of unfinished input, and there may be
//! `--max-connections` of them: far more than any machine has. So every connection reports
//! what it holds (input read but not yet executed, output not yet sent, writes queued in
//! MULTI) to [`ClientMemory`]; when the total passes `--max-client-memory`, the connections
//! holding the most are closed, each with a warning naming the peer and the bytes, until
//! the total is back under the budget.
//!
//! Cheap by construction: a connection compares what it holds with what it last reported
//! (two integers, no atomics) and touches the shared counters only when that changed by
//! [`REPORT_STEP`] or more, or dropped to nothing. A connection that never holds 64 KiB
//! (almost all of them) never touches them at all. The registry lock is taken to register
//! and unregister a connection, and to choose whom to close when over budget.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tracing::warn;

/// Smallest change in a connection's holding that is reported.
pub(crate) const REPORT_STEP: usize = 64 * 1024;

/// The accounting shared by all connections.
#[derive(Debug)]
pub(crate) struct ClientMemory {
    budget: usize,
    /// Bytes reported by all connections together.
    total: AtomicUsize,
    /// Connections closed for the budget since start.
    evicted: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<Slot>>>,
}

/// One connection's entry.
#[derive(Debug)]
struct Slot {
    peer: SocketAddr,
    /// What this connection counts for in `total`.
    bytes: AtomicUsize,
    /// Set when the connection was chosen to be closed.
    evicted: AtomicBool,
    /// Cancels the connection's task.
    abort: OnceLock<AbortHandle>,
}

impl ClientMemory {
    /// An accounting with this budget, in bytes.
    pub fn new(budget: usize) -> ClientMemory {
        ClientMemory {
            budget,
            total: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held by all connections, as last reported. Read under the lock that reports
    /// and evictions take, so it is never caught between a report that went over the
    /// budget and the evictions that report caused.
    pub fn total(&self) -> usize {
        let _clients = self.clients.lock();
        self.total.load(Ordering::Relaxed)
    }

    /// Connections closed for the budget since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Registers connection `id`; it is unregistered when the returned handle drops. The
    /// connection's task must then be given to the [`TaskSlot`], so that it can be closed.
    pub fn register(self: &Arc<Self>, id: u64, peer: SocketAddr) -> (ClientBuffers, TaskSlot) {
        let slot = Arc::new(Slot {
            peer,
            bytes: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            abort: OnceLock::new(),
        });
        self.clients.lock().insert(id, Arc::clone(&slot));
        let task = TaskSlot(Arc::clone(&slot));
        let buffers = ClientBuffers {
            memory: Arc::clone(self),
            id,
            slot,
            reported: 0,
        };
        (buffers, task)
    }

    /// Moves a slot's bytes to `now` in the total; returns the new total.
    fn set(&self, slot: &Slot, now: usize) -> usize {
        let before = slot.bytes.swap(now, Ordering::AcqRel);
        if now >= before {
            self.total.fetch_add(now - before, Ordering::AcqRel) + (now - before)
        } else {
            self.total.fetch_sub(before - now, Ordering::AcqRel) - (before - now)
        }
    }

    /// Closes the connections holding the most until the total is within the budget
    /// (`clients` is the locked registry).
    fn evict(&self, clients: &HashMap<u64, Arc<Slot>>) {
        if self.total.load(Ordering::Relaxed) <= self.budget {
            return;
        }
        let mut by_size: Vec<(usize, &Arc<Slot>)> = clients
            .values()
            .map(|s| (s.bytes.load(Ordering::Acquire), s))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        by_size.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (_, slot) in by_size {
            if self.total.load(Ordering::Relaxed) <= self.budget {
                break;
            }
            let bytes = slot.bytes.load(Ordering::Acquire);
            // Its buffers go when its task ends: stop counting them now, so that one pass
            // closes no more connections than it must.
            self.set(slot, 0);
            if slot.evicted.swap(true, Ordering::SeqCst) {
                continue;
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
            warn!(
                peer = %slot.peer,
                bytes,
                budget = self.budget,
                "client buffers over --max-client-memory: closing the connection holding the most"
            );
            if let Some(abort) = slot.abort.get() {
                abort.abort();
            }
        }
    }
}

/// A connection's link to the accounting: reports what its buffers hold.
#[derive(Debug)]
pub(crate) struct ClientBuffers {
    memory: Arc<ClientMemory>,
    id: u64,
    slot: Arc<Slot>,
    /// What was last reported (the slot's bytes, as this connection knows them).
    reported: usize,
}

/// Where a registered connection's task is given, once spawned.
#[derive(Debug)]
pub(crate) struct TaskSlot(Arc<Slot>);

impl TaskSlot {
    /// The handle that cancels the connection's task if it is evicted.
    pub fn set(self, abort: AbortHandle) {
        // Set first, then look: an eviction in between is seen by one side or the other.
        if self.0.abort.set(abort).is_ok() && self.0.evicted.load(Ordering::SeqCst) {
            if let Some(abort) = self.0.abort.get() {
                abort.abort();
            }
        }
    }
}

impl ClientBuffers {
    /// Whether this connection was chosen to be closed.
    pub fn evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Acquire)
    }

    /// Reports that the connection now holds `bytes`; past the budget, closes the
    /// connections holding the most (possibly this one: see [`ClientBuffers::evicted`]).
    pub fn hold(&mut self, bytes: usize) {
        if bytes.abs_diff(self.reported) < REPORT_STEP && (bytes != 0 || self.reported == 0) {
            return;
        }
        self.reported = bytes;
        // Under the registry's lock, as evictions: a connection evicted meanwhile counts
        // for nothing (its bytes are not added back), and a reader of the total sees it
        // before this report or after the evictions it causes.
        let clients = self.memory.clients.lock();
        if self.evicted() {
            return;
        }
        let total = self.memory.set(&self.slot, bytes);
        if total > self.memory.budget {
            self.memory.evict(&clients);
        }
    }
}

impl Drop for ClientBuffers {
    fn drop(&mut self) {
        let mut clients = self.memory.clients.lock();
        clients.remove(&self.id);
        self.memory.set(&self.slot, 0);
    }
}

/// The default `--max-client-memory`: an eighth of the memory this process may use (the
/// machine's, or the cgroup's limit when lower), at least 256 MiB and at most 8 GiB.
pub fn default_budget() -> usize {
    const FLOOR: u64 = 256 << 20;
    const CEILING: u64 = 8 << 30;
    let budget = available_memory().map_or(FLOOR, |m| (m / 8).clamp(FLOOR, CEILING));
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// Physical memory (`MemTotal` of /proc/meminfo), or the cgroup v2 limit when lower.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let total = kib.saturating_mul(1024);
    // "max" (no limit) does not parse and is ignored.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn small_changes_are_not_reported() {
        let m = Arc::new(ClientMemory::new(1 << 20));
        let mut c = m.register(1, peer()).0;
        c.hold(REPORT_STEP - 1);
        assert_eq!(m.total(), 0);
        c.hold(REPORT_STEP);
        assert_eq!(m.total(), REPORT_STEP);
        c.hold(REPORT_STEP + 10);
        assert_eq!(m.total(), REPORT_STEP);
        // Down to nothing is always reported.
        c.hold(0);
        assert_eq!(m.total(), 0);
        c.hold(3 * REPORT_STEP);
        drop(c);
        assert_eq!(m.total(), 0);
        assert!(m.clients.lock().is_empty());
    }

    #[test]
    fn over_budget_the_largest_go_first() {
        let m = Arc::new(ClientMemory::new(1 << 20));
        let mut small = m.register(1, peer()).0;
        let mut big = m.register(2, peer()).0;
        let mut medium = m.register(3, peer()).0;
        small.hold(200 << 10);
        big.hold(600 << 10);
        assert_eq!(m.total(), 800 << 10);
        assert_eq!(m.evicted(), 0);
        // Over the budget: the largest goes, and only as many as needed.
        medium.hold(300 << 10);
        assert!(big.evicted());
        assert!(!small.evicted() && !medium.evicted());
        assert_eq!(m.total(), 500 << 10);
        assert_eq!(m.evicted(), 1);
        // An evicted connection reports nothing more, and its drop leaves the total alone.
        big.hold(900 << 10);
        assert_eq!(m.total(), 500 << 10);
        drop(big);
        assert_eq!(m.total(), 500 << 10);
        // The one that takes the total over may be the one closed.
        medium.hold(900 << 10);
        assert!(medium.evicted());
        assert!(!small.evicted());
        assert_eq!(m.total(), 200 << 10);
        assert_eq!(m.evicted(), 2);
    }

    #[test]
    fn default_is_within_floor_and_ceiling() {
        let b = default_budget();
        assert!((256 << 20..=8 << 30).contains(&b), "{b}");
    }
}
