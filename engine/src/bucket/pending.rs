//! Writes that are in the log but not visible yet, under `FsyncPolicy::Always`.
//!
//! With `Always`, a write becomes visible — to reads, scans, status, watches
//! and other writers' preconditions — only once it is durable, as a committed
//! transaction does in `PostgreSQL` after its WAL flush. Otherwise a reader could
//! see a write that a power cut then takes away, and its revision would come
//! back with other data.
//!
//! So a write appended to the log waits here until the log is durable past
//! it, and is then applied to the index (in log order) and published to the
//! watchers. Meanwhile the writer keeps seeing it: revisions keep counting up
//! from it, and the preconditions of later writes (CREATE, UPDATE, CAS,
//! REVERT…) are checked against the key as the pending writes leave it.
//!
//! Under `Interval` and `Never` nothing waits here: a write is visible when it
//! returns (and a power cut may take back the last ones).

use std::collections::{HashMap, VecDeque};

use crate::entry::Op;
use crate::index::RecordRef;
use crate::log::LogPos;

/// One appended call's records, not yet visible.
pub(super) struct PendingBatch {
    /// The log position just past its records.
    pub(super) end: LogPos,
    /// Its records, in log order.
    pub(super) records: Vec<(Box<[u8]>, RecordRef)>,
    /// When its records were created (one time for a call's records): what
    /// retention drops expired values by.
    pub(super) created_ms: u64,
    /// The replication tag that ends it, if it is a replicated apply.
    pub(super) tag: Option<std::sync::Arc<[u8]>>,
    /// What it changes the bytes the bucket holds by, once indexed (counted
    /// only in a bucket with max bytes).
    pub(super) bytes_net: i64,
}

/// A key that pending writes touched.
struct PendingKey {
    /// Its retained entries as the index and the pending writes leave them, latest last.
    retained: Vec<RecordRef>,
    /// Pending records of the key not applied yet.
    writes: usize,
}

/// The pending writes of one bucket (under its writer lock).
#[derive(Default)]
pub(super) struct Pending {
    batches: VecDeque<PendingBatch>,
    keys: HashMap<Box<[u8]>, PendingKey>,
    /// What the pending batches change the bytes the bucket holds by (for
    /// the bucket's max bytes).
    bytes_net: i64,
}

impl Pending {
    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The retained entries of `key` as pending writes leave them; `None`
    /// when no pending write touched it (the index is the truth).
    pub(super) fn retained(&self, key: &[u8]) -> Option<&[RecordRef]> {
        self.keys.get(key).map(|k| k.retained.as_slice())
    }

    /// What the pending batches change the bytes the bucket holds by.
    pub(super) fn bytes_net(&self) -> i64 {
        self.bytes_net
    }

    /// Adds an appended call. `indexed` gives a key's retained entries in
    /// the index, for a key no pending write touched yet.
    pub(super) fn push(
        &mut self,
        batch: PendingBatch,
        history: usize,
        indexed: impl Fn(&[u8]) -> Vec<RecordRef>,
    ) {
        self.bytes_net = self.bytes_net.saturating_add(batch.bytes_net);
        for (key, at) in &batch.records {
            let entry = self.keys.entry(key.clone()).or_insert_with(|| PendingKey {
                // What the index holds is looked up only if the new entry keeps
                // some of it (a lookup in a large index is a few cache misses).
                retained: if keeps_only_itself(*at, history) {
                    Vec::new()
                } else {
                    indexed(key)
                },
                writes: 0,
            });
            entry.writes += 1;
            retain(&mut entry.retained, *at, batch.created_ms, history);
        }
        self.batches.push_back(batch);
    }

    /// Takes the batches that are durable (end at or below `durable`), oldest
    /// first, for the caller to apply to the index.
    pub(super) fn take_durable(&mut self, durable: LogPos) -> Vec<PendingBatch> {
        let mut out = Vec::new();
        while self.batches.front().is_some_and(|b| b.end <= durable) {
            let Some(batch) = self.batches.pop_front() else {
                break;
            };
            self.bytes_net = self.bytes_net.saturating_sub(batch.bytes_net);
            for (key, _) in &batch.records {
                if let Some(k) = self.keys.get_mut(key) {
                    k.writes -= 1;
                    if k.writes == 0 {
                        // The index now holds what this entry held.
                        self.keys.remove(key);
                    }
                }
            }
            out.push(batch);
        }
        out
    }
}

/// Whether `new` leaves its key with no other retained entry: a PURGE, or
/// any write under a history of one.
fn keeps_only_itself(new: RecordRef, history: usize) -> bool {
    new.op() == Op::Purge || history <= 1
}

/// Adds `new`, created at `at_ms`, to a key's retained entries with the
/// index's retention rule (see [`retention`]).
pub(super) fn retain(list: &mut Vec<RecordRef>, new: RecordRef, at_ms: u64, history: usize) {
    let only_new = keeps_only_itself(new, history);
    retention(
        list,
        new,
        only_new,
        |r| r.expired_value(at_ms),
        history,
        drop,
    );
}

/// The index's retention rule (`Index::apply`) on a key's retained entries,
/// oldest first, for the writer's views of it (the pending writes', and the
/// planner's for a call's writes and for max bytes): `new` joins them, alone
/// when `only_new` (a PURGE, or a history of one); otherwise the entries
/// `expired` says are expired values leave first, then only the last `history`
/// are kept. Each entry that leaves is handed to `left`.
pub(super) fn retention<T>(
    list: &mut Vec<T>,
    new: T,
    only_new: bool,
    expired: impl Fn(&T) -> bool,
    history: usize,
    mut left: impl FnMut(T),
) {
    if only_new {
        list.drain(..).for_each(&mut left);
    } else {
        list.extract_if(.., |e| expired(e)).for_each(&mut left);
    }
    list.push(new);
    let excess = list.len().saturating_sub(history.max(1));
    list.drain(..excess).for_each(&mut left);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(revision: u64, op: Op) -> RecordRef {
        RecordRef::new(revision, 0, 1, revision * 100, 40, op)
    }

    /// A batch of `recs` whose net change of the bucket's bytes is their records'
    /// lengths (as if they dropped nothing).
    fn batch(end: u64, recs: &[(&str, RecordRef)]) -> PendingBatch {
        PendingBatch {
            end: LogPos::new(1, end),
            records: recs
                .iter()
                .map(|(k, r)| (k.as_bytes().into(), *r))
                .collect(),
            created_ms: 1_000,
            tag: None,
            bytes_net: recs
                .iter()
                .map(|(_, r)| i64::try_from(r.len()).unwrap())
                .sum(),
        }
    }

    #[test]
    fn pending_writes_shape_what_later_writes_see_until_durable() {
        let mut p = Pending::default();
        let indexed = |_: &[u8]| vec![rec(1, Op::Put)];
        p.push(batch(200, &[("k", rec(2, Op::Put))]), 2, indexed);
        p.push(batch(300, &[("k", rec(3, Op::Del))]), 2, indexed);
        let revs: Vec<u64> = p
            .retained(b"k")
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(revs, [2, 3], "history 2 keeps the last two");
        assert_eq!(p.bytes_net(), 80, "what the batches said they add");
        assert!(p.take_durable(LogPos::new(1, 199)).is_empty());
        let first = p.take_durable(LogPos::new(1, 250));
        assert_eq!(first.len(), 1);
        assert!(
            p.retained(b"k").is_some(),
            "one write of k is still pending"
        );
        assert_eq!(p.take_durable(LogPos::new(2, 0)).len(), 1);
        assert!(p.retained(b"k").is_none() && p.is_empty());
        assert_eq!(p.bytes_net(), 0);
    }

    #[test]
    fn the_index_is_consulted_only_for_entries_a_write_keeps() {
        let mut p = Pending::default();
        let lookups = std::cell::Cell::new(0);
        let indexed = |_: &[u8]| {
            lookups.set(lookups.get() + 1);
            vec![rec(1, Op::Put)]
        };
        let revs = |p: &Pending, key: &str| -> Vec<u64> {
            p.retained(key.as_bytes())
                .unwrap()
                .iter()
                .map(|r| r.revision)
                .collect()
        };
        p.push(batch(200, &[("a", rec(2, Op::Put))]), 1, indexed);
        p.push(batch(300, &[("b", rec(3, Op::Purge))]), 5, indexed);
        assert_eq!(
            lookups.get(),
            0,
            "history 1 and a PURGE keep only the new entry"
        );
        assert_eq!(revs(&p, "a"), [2]);
        assert_eq!(revs(&p, "b"), [3]);
        p.push(batch(400, &[("c", rec(4, Op::Put))]), 5, indexed);
        assert_eq!(lookups.get(), 1);
        assert_eq!(revs(&p, "c"), [1, 4], "history 5 keeps the indexed entry");
        // A later pending write after a PURGE builds on the PURGE, not the index.
        p.push(batch(500, &[("b", rec(5, Op::Put))]), 5, indexed);
        assert_eq!(revs(&p, "b"), [3, 5]);
        assert_eq!(lookups.get(), 1);
    }

    #[test]
    fn a_purge_keeps_only_itself() {
        let mut list = vec![rec(1, Op::Put), rec(2, Op::Put)];
        retain(&mut list, rec(3, Op::Purge), 1_000, 5);
        assert_eq!(list.len(), 1);
        retain(&mut list, rec(4, Op::Put), 1_000, 5);
        assert_eq!(list.len(), 2);
    }

    /// The index's rule: the values expired by the new entry's time leave
    /// first, wherever they are in the key's history, then the last `history`
    /// are kept.
    #[test]
    fn values_expired_by_the_new_entry_leave() {
        let expiring = |revision: u64, expires_ms: u64| {
            RecordRef::new(revision, expires_ms, 1, revision * 100, 40, Op::Put)
        };
        let mut list = vec![rec(1, Op::Put), expiring(2, 900), expiring(3, 2_000)];
        retain(&mut list, rec(4, Op::Del), 1_000, 3);
        let revs: Vec<u64> = list.iter().map(|r| r.revision).collect();
        assert_eq!(revs, [1, 3, 4], "2 expired at 900; 1 is not pushed out");
    }
}
