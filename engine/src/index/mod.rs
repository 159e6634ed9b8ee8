//! The in-memory index of one bucket: key → its retained revisions and where
//! they are in the log. Values stay on disk.
//!
//! | file | what |
//! |---|---|
//! | `entries.rs` | one entry per key (key + latest revision) in a slab of `u32` slots, and a hash table of slots (two, by one bit of the hash, built at once on two threads): O(1) point lookups |
//! | `order.rs` | the same slots in key order (sorted blocks): ranges, prefixes; built on first use |
//! | `order_build.rs` | building the order with the index lock held only to copy the keys and to install it |
//! | `sort.rs` | the slots put in key order for that build: the run already in order kept, the rest sorted by key hints and merged in |
//! | `history.rs` | older revisions (history > 1), in a side slab |
//! | `key.rs`, `record.rs` | [`IKey`] (short keys inline), [`RecordRef`] |
//! | `placed.rs` | what compaction asks: retained revisions by segment, moving them by entry slot |
//! | `build.rs` | building at once from a snapshot's keys (ascending, or in any order with a check for a key twice), bulk hashing |
//! | `pages.rs` | how the kernel backs the large buffers: huge pages, bulk faulting |
//! | `widest.rs` | [`Widest`]: bounds of the revisions' fields, kept as they come (a snapshot's field widths) |
//!
//! Memory is a design constraint (at most 110 bytes per key for a million
//! 16-byte keys): an entry is 56 bytes (a 24-byte [`IKey`], keys of up to 22
//! bytes inline, and a 32-byte [`RecordRef`]); the hash table and the order
//! each hold a 4-byte slot per key (the table a control byte more, and room).
//!
//! Retention is applied here and only here, by [`Index::apply`] (or
//! [`Index::apply_hashed`], the same code given the key's hash), both when a
//! write happens and when recovery replays the log, so the two always agree.

mod build;
mod entries;
mod history;
mod key;
mod order;
mod order_build;
mod pages;
mod placed;
mod record;
mod sort;
#[cfg(test)]
mod tests;
mod widest;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::OnceLock;

pub use self::build::{BulkBuilder, BulkPart, KeyOrder, PARALLEL_FROM};
pub(crate) use self::entries::two_cores;
use self::entries::Entries;
use self::history::History;
pub(crate) use self::key::copy_bytes;
pub use self::key::IKey;
use self::order::{Order, Pos};
pub use self::order_build::{OrderBuild, SortedOrder};
pub use self::placed::Placed;
pub use self::record::RecordRef;
pub use self::widest::Widest;
use crate::log::record::Op;

/// How many entries ahead a walk in key order ([`Index::range`]) asks for.
const WALK_AHEAD: usize = 16;

/// The index of one bucket.
#[derive(Default)]
pub struct Index {
    entries: Entries,
    /// The entries' slots in key order, kept up to date once built; built on
    /// its first use (a range, a walk), from the live slots (`sort.rs`: those
    /// that already ascend, as a bulk build leaves them, stay in place).
    /// A reopen then does not spend a tenth of its CPU on an order a point
    /// lookup never reads, and a load of keys in random order sorts them
    /// once instead of searching a block for each (a fifth of its CPU).
    order: OnceLock<Order>,
    /// The slots whose key changed since a build of the order outside the
    /// lock began (`order_build.rs`); `None` when none is under way.
    changes: parking_lot::Mutex<Option<order_build::Changes>>,
    history: History,
    /// Revisions retained, history included.
    values: u64,
    /// Bytes of the records retained.
    bytes: u64,
    /// Dead bytes per segment slot: records no longer retained (compaction's food).
    dead: HashMap<u32, u64>,
    /// Retained revisions that have an expiry (the sweeper skips buckets with none).
    expiring: u64,
    /// Keys whose latest revision is a PUT.
    put_keys: u64,
    /// Bounds of every retained revision's fields (a snapshot's widths).
    widest: Widest,
}

impl Index {
    /// The latest revision of `key`.
    #[inline]
    pub fn latest(&self, key: &[u8]) -> Option<RecordRef> {
        let slot = self.entries.find(key)?;
        Some(self.entries.get(slot).rec.bare())
    }

    /// The first step of reading `key` with its cache misses overlapping
    /// those of other keys: starts loading its entry into the CPU cache and
    /// returns the key's hash, for [`Index::latest_hashed`] once the entries
    /// of the other keys are on their way too. Only a hint: the result of a
    /// lookup never depends on it.
    #[inline]
    pub fn prefetch_entry(&self, key: &[u8]) -> u64 {
        self.entries.prefetch(key)
    }

    /// [`Index::latest`], given the hash [`Index::prefetch_entry`] returned
    /// for `key`.
    #[inline]
    pub fn latest_hashed(&self, key: &[u8], hash: u64) -> Option<RecordRef> {
        let slot = self.entries.find_hashed(key, hash)?;
        Some(self.entries.get(slot).rec.bare())
    }

    /// Every retained revision of `key`, oldest first.
    pub fn revisions(&self, key: &[u8]) -> Vec<RecordRef> {
        let Some(slot) = self.entries.find(key) else {
            return Vec::new();
        };
        let latest = &self.entries.get(slot).rec;
        let mut out = match latest.older {
            0 => Vec::with_capacity(1),
            older => self.history.get(older).clone(),
        };
        out.push(latest.bare());
        out
    }

    /// Calls `f` with every retained revision of `latest`'s key, oldest first.
    pub fn for_each_rev(&self, latest: &RecordRef, mut f: impl FnMut(&RecordRef)) {
        if latest.older != 0 {
            self.history.get(latest.older).iter().for_each(&mut f);
        }
        f(&latest.bare());
    }

    /// The retained revision `revision` of `key`.
    pub fn find(&self, key: &[u8], revision: u64) -> Option<RecordRef> {
        self.find_in_entry(key, revision).map(|(_, r)| r)
    }

    /// [`Index::find`], with the slot of the key's entry.
    fn find_in_entry(&self, key: &[u8], revision: u64) -> Option<(u32, RecordRef)> {
        let entry = self.entries.find(key)?;
        let latest = &self.entries.get(entry).rec;
        if latest.revision == revision {
            return Some((entry, latest.bare()));
        }
        if latest.older == 0 {
            return None;
        }
        self.history
            .get(latest.older)
            .iter()
            .find(|r| r.revision == revision)
            .map(|r| (entry, *r))
    }

    /// Keys and latest revisions in `[from, to)` order (nothing if `from` is
    /// past `to`).
    pub fn range<'a>(
        &'a self,
        from: Bound<&'a [u8]>,
        to: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a IKey, &'a RecordRef)> + 'a {
        let key_of = |s| self.entries.key(s);
        let order = self.order();
        let start = match from {
            Bound::Included(k) => order.seek(k, true, key_of),
            Bound::Excluded(k) => order.seek(k, false, key_of),
            Bound::Unbounded => Pos::START,
        };
        // Each entry asked for WALK_AHEAD entries before it is read: a long
        // walk's cache misses overlap instead of coming one after another.
        let mut ahead = order.iter_from(start).skip(WALK_AHEAD);
        order
            .iter_from(start)
            .map(move |s| {
                if let Some(later) = ahead.next() {
                    self.entries.ask(later);
                }
                let e = self.entries.get(s);
                (&e.key, &e.rec)
            })
            .take_while(move |(k, _)| match to {
                Bound::Included(t) => k.as_bytes() <= t,
                Bound::Excluded(t) => k.as_bytes() < t,
                Bound::Unbounded => true,
            })
    }

    /// Whether the key order is built (a walk in key order then builds nothing).
    pub fn key_order_built(&self) -> bool {
        self.order.get().is_some()
    }

    /// The key order, built now if it is not yet.
    fn order(&self) -> &Order {
        self.order.get_or_init(|| {
            let entries = &self.entries;
            let live: Vec<u32> = entries
                .in_slots(0..entries.slots())
                .map(|(s, _)| s)
                .collect();
            Order::of_slots(&live, |s| entries.key(s), |s| entries.ask(s))
        })
    }

    /// Every key and its latest revision, in no particular order (the
    /// entries as they lie in memory: faster than an ordered walk).
    pub(crate) fn entries_unordered(&self) -> impl Iterator<Item = (&IKey, &RecordRef)> + '_ {
        self.entries.iter().map(|e| (&e.key, &e.rec))
    }

    /// Entry slots (in use and free): the end of [`Index::in_slots`]' range.
    pub(crate) fn slot_count(&self) -> u32 {
        self.entries.slots()
    }

    /// The keys and latest revisions in entry slots `slots`, in slot order
    /// (no particular key order): a walk in pieces of the entries as they lie
    /// in memory. A key keeps its slot while it exists; a slot freed may be
    /// given to a new key.
    pub(crate) fn in_slots(
        &self,
        slots: std::ops::Range<u32>,
    ) -> impl Iterator<Item = (&IKey, &RecordRef)> + '_ {
        self.entries.in_slots(slots).map(|(_, e)| (&e.key, &e.rec))
    }

    /// Keys starting with `prefix`, in order.
    pub fn prefixed<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a IKey, &'a RecordRef)> + 'a {
        self.range(Bound::Included(prefix), Bound::Unbounded)
            .take_while(move |(k, _)| k.as_bytes().starts_with(prefix))
    }

    /// Bounds of the fields of every retained revision (see [`Widest`]).
    pub fn widest(&self) -> &Widest {
        &self.widest
    }

    /// Number of keys with at least one retained revision.
    pub fn key_count(&self) -> usize {
        self.entries.len()
    }

    /// Revisions retained, history included.
    pub fn values(&self) -> u64 {
        self.values
    }

    /// Bytes of retained records.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Dead bytes per segment.
    pub fn dead_bytes(&self) -> &HashMap<u32, u64> {
        &self.dead
    }

    /// Forgets the dead-byte count of a segment that no longer exists.
    pub fn forget_segment(&mut self, slot: u32) {
        self.dead.remove(&slot);
    }

    /// Adds dead bytes to a segment's count.
    pub fn add_dead(&mut self, slot: u32, bytes: u64) {
        *self.dead.entry(slot).or_default() += bytes;
    }

    /// Keys whose latest revision is a PUT (expired or not).
    pub fn put_keys(&self) -> u64 {
        self.put_keys
    }

    /// Retained revisions that have an expiry.
    pub fn expiring(&self) -> u64 {
        self.expiring
    }

    /// Counts a revision entering the index.
    fn retain(&mut self, key: &[u8], rev: &RecordRef) {
        self.widest.widen(key.len(), rev);
        self.values += 1;
        self.expiring += u64::from(rev.expires_ms != 0);
        self.bytes += rev.len() as u64;
    }

    fn retire(&mut self, rev: RecordRef, removed: &mut Vec<RecordRef>) {
        self.values -= 1;
        self.expiring -= u64::from(rev.expires_ms != 0);
        self.bytes -= rev.len() as u64;
        *self.dead.entry(rev.slot).or_default() += rev.len() as u64;
        removed.push(rev.bare());
    }

    /// Applies a new revision of `key`, created at `at_ms`, with retention: a
    /// PURGE drops every earlier revision; otherwise the values of the key that
    /// have expired by `at_ms` leave (they are unseen already), and the key
    /// keeps its last `history` revisions. Revisions that leave the index are
    /// appended to `removed`.
    ///
    /// The rule depends only on the records, in log order: a replay of the
    /// log, and a replica applying the same records, keep the same entries.
    pub fn apply(
        &mut self,
        key: &[u8],
        new: RecordRef,
        at_ms: u64,
        history: usize,
        removed: &mut Vec<RecordRef>,
    ) {
        let hash = self.entries.hash(key);
        self.apply_hashed(key, hash, new, at_ms, history, removed);
    }

    /// [`Index::apply`], given the hash [`Index::prefetch_entry`] returned for
    /// `key` (a batch's entries are asked for ahead of their updates, so that
    /// their cache misses overlap).
    pub fn apply_hashed(
        &mut self,
        key: &[u8],
        hash: u64,
        new: RecordRef,
        at_ms: u64,
        history: usize,
        removed: &mut Vec<RecordRef>,
    ) {
        let new = new.bare();
        self.retain(key, &new);
        let is_put = u64::from(new.op() == Op::Put);
        let Some(slot) = self.entries.find_hashed(key, hash) else {
            let slot = self.entries.insert(key, hash, new);
            self.note_key_changed(slot);
            let Index { entries, order, .. } = self;
            if let Some(order) = order.get_mut() {
                order.insert(key, slot, |s| entries.key(s));
            }
            self.put_keys += is_put;
            return;
        };
        let old = self.entries.get(slot).rec;
        self.put_keys = self.put_keys + is_put - u64::from(old.op() == Op::Put);
        if new.op() == Op::Purge || history <= 1 {
            self.entries.get_mut(slot).rec = new;
            self.retire(old.bare(), removed);
            if old.older != 0 {
                for r in self.history.free(old.older) {
                    self.retire(r, removed);
                }
            }
            return;
        }
        let mut older = match old.older {
            0 => Vec::new(),
            s => std::mem::take(self.history.get_mut(s)),
        };
        older.push(old.bare());
        // The values expired by the new entry's time leave first.
        older.retain(|r| {
            let expired = r.expired_value(at_ms);
            if expired {
                self.retire(*r, removed);
            }
            !expired
        });
        let excess = (older.len() + 1).saturating_sub(history);
        for r in older.drain(..excess) {
            self.retire(r, removed);
        }
        let mut latest = new;
        latest.older = match (old.older, older.is_empty()) {
            (0, true) => 0,
            (0, false) => self.history.alloc(older),
            (s, true) => {
                self.history.free(s);
                0
            }
            (s, false) => {
                *self.history.get_mut(s) = older;
                s
            }
        };
        self.entries.get_mut(slot).rec = latest;
    }

    /// Removes the oldest revisions of `key` for which `drop` says yes, stopping
    /// at the first it keeps; removes the key if none is left.
    pub fn drop_oldest_while(
        &mut self,
        key: &[u8],
        mut drop: impl FnMut(&RecordRef) -> bool,
        removed: &mut Vec<RecordRef>,
    ) {
        let Some(slot) = self.entries.find(key) else {
            return;
        };
        let latest = self.entries.get(slot).rec;
        let mut older = match latest.older {
            0 => Vec::new(),
            s => self.history.free(s),
        };
        let n = older.iter().take_while(|r| drop(r)).count();
        let all_older_gone = n == older.len();
        for r in older.drain(..n) {
            self.retire(r, removed);
        }
        if all_older_gone && drop(&latest.bare()) {
            let Index { entries, order, .. } = self;
            if let Some(order) = order.get_mut() {
                order.remove(key, |s| entries.key(s));
            }
            self.entries.remove(slot);
            self.note_key_changed(slot);
            self.put_keys -= u64::from(latest.op() == Op::Put);
            self.retire(latest.bare(), removed);
            return;
        }
        let mut keep = latest.bare();
        if !older.is_empty() {
            keep.older = self.history.alloc(older);
        }
        self.entries.get_mut(slot).rec = keep;
    }

    /// Builds an index from keys in ascending order, each with its revisions
    /// oldest first (already retained).
    pub fn from_sorted(entries: impl IntoIterator<Item = (IKey, Vec<RecordRef>)>) -> Index {
        let entries = entries.into_iter();
        let mut b = BulkBuilder::with_capacity(entries.size_hint().0, KeyOrder::Ascending);
        for (key, revs) in entries {
            // Out-of-order or empty input is the caller's bug; skip it rather than panic.
            let _ = b.push(key.as_bytes(), &revs);
        }
        // An ascending build has no key twice: it does not fail.
        b.finish().unwrap_or_default()
    }

    /// Sets each segment's dead bytes to its size less what is retained in it.
    pub fn recompute_dead(&mut self, sizes: &HashMap<u32, u64>) {
        let mut live = SlotCounts::for_slots(sizes.keys().copied());
        for r in self.all_revs() {
            live.add(r.slot, r.len() as u64);
        }
        self.set_dead_from_live(sizes, |slot| live.get(slot));
    }

    /// [`Index::recompute_dead`] from what is retained per segment, known
    /// already (`live(slot)`: the bytes of the revisions the index holds in
    /// it), without walking the index.
    pub(crate) fn set_dead_from_live(
        &mut self,
        sizes: &HashMap<u32, u64>,
        live: impl Fn(u32) -> u64,
    ) {
        self.dead = sizes
            .iter()
            .map(|(slot, size)| (*slot, size.saturating_sub(live(*slot))))
            .filter(|(_, d)| *d > 0)
            .collect();
    }

    /// Every retained revision, in no particular order.
    pub fn all_revs(&self) -> impl Iterator<Item = RecordRef> + '_ {
        self.entries
            .iter()
            .map(|e| e.rec.bare())
            .chain(self.history.iter().copied())
    }

    /// Rewrites every revision's segment slot through `map`; false (and the
    /// index half rewritten) if `map` knows a slot not.
    pub(crate) fn remap_segments(&mut self, map: impl Fn(u32) -> Option<u32>) -> bool {
        let mut ok = true;
        let entries = self.entries.iter_mut().map(|e| &mut e.rec);
        for r in entries.chain(self.history.iter_mut()) {
            match map(r.slot) {
                Some(s) => r.slot = s,
                None => ok = false,
            }
        }
        ok
    }
}

/// A `u32` slot number for the `len`-th element of a slab (entries, older
/// revisions: one per key).
#[allow(
    clippy::cast_possible_truncation,
    reason = "one slot per key: four billion keys would take hundreds of GiB of index first"
)]
fn slot_of(len: usize) -> u32 {
    len as u32
}

/// Byte counts per segment slot: a vector when the slots are small numbers
/// (always after an open: slots are handed out from 0), else a map.
enum SlotCounts {
    Dense(Vec<u64>),
    Sparse(HashMap<u32, u64>),
}

impl SlotCounts {
    fn for_slots(slots: impl Iterator<Item = u32>) -> SlotCounts {
        match slots.max() {
            Some(max) if max < 1 << 16 => SlotCounts::Dense(vec![0; max as usize + 1]),
            _ => SlotCounts::Sparse(HashMap::new()),
        }
    }

    fn add(&mut self, slot: u32, n: u64) {
        match self {
            SlotCounts::Dense(v) => {
                // A slot of no listed segment is never asked for.
                if let Some(c) = v.get_mut(slot as usize) {
                    *c += n;
                }
            }
            SlotCounts::Sparse(m) => *m.entry(slot).or_default() += n,
        }
    }

    fn get(&self, slot: u32) -> u64 {
        match self {
            SlotCounts::Dense(v) => v.get(slot as usize).copied().unwrap_or(0),
            SlotCounts::Sparse(m) => m.get(&slot).copied().unwrap_or(0),
        }
    }
}
