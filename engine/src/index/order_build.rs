//! Building the key order (`order.rs`) with the index lock held only to copy
//! the keys and to install the result.
//!
//! Built inside an ordered read, the order holds the index's read lock for
//! the whole build: about 0.12 s for a million keys loaded in random order,
//! while every write waits (and, since a waiting writer goes first, every
//! new reader too). A bucket builds it in three steps instead:
//!
//! 1. [`Index::begin_order_build`], under the read lock: copies the live
//!    keys, in slot order, into one buffer (a walk of the slab in memory
//!    order), and starts noting the slots whose key changes: a key added, a
//!    key removed.
//! 2. [`OrderBuild::sort`], without the lock: puts the copied keys in key
//!    order and builds the order's blocks and hints from them.
//! 3. [`Index::install_order`], under the write lock: takes out the slots
//!    noted (found by their copied keys, which the order was built from),
//!    puts back those live now (by the keys they hold now), and keeps the
//!    order. Only the changes made during the sort are searched for.
//!
//! A build began on an index that has since been replaced, or overtaken by
//! another, is dropped at install: each build has its own ticket.

use std::sync::atomic::{AtomicU64, Ordering};

use super::order::Order;
use super::Index;

/// The next build's ticket (unique in the process, so a build never matches
/// the changes noted for another, on any index).
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// Slots whose key changed since the build `ticket` began.
pub(super) struct Changes {
    ticket: u64,
    slots: Vec<u32>,
}

/// The live keys of an index, copied to build its key order without its lock.
pub struct OrderBuild {
    ticket: u64,
    /// The live slots when the copy was made, ascending.
    slots: Vec<u32>,
    /// Where each slot's key is in `ends` (`u32::MAX`: no key then).
    pos_of: Vec<u32>,
    /// The keys, one after the other, in slot order.
    keys: Vec<u8>,
    /// The end of each key in `keys` (it starts at the end of the one before).
    ends: Vec<usize>,
}

/// An order built from an [`OrderBuild`]'s keys, for [`Index::install_order`].
pub struct SortedOrder {
    build: OrderBuild,
    order: Order,
}

impl OrderBuild {
    /// The key `slot` held when the copy was made (empty if none).
    fn key(&self, slot: u32) -> &[u8] {
        let Some(&pos) = self.pos_of.get(slot as usize) else {
            return &[];
        };
        let pos = pos as usize;
        let start = pos.checked_sub(1).and_then(|p| self.ends.get(p)).copied();
        let end = self.ends.get(pos).copied();
        match (start.unwrap_or(0), end) {
            (start, Some(end)) => self.keys.get(start..end).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Whether `slot` held a key when the copy was made.
    fn had_key(&self, slot: u32) -> bool {
        self.pos_of
            .get(slot as usize)
            .is_some_and(|&p| p != u32::MAX)
    }

    /// Builds the order of the copied keys. Takes no lock: the slow part.
    pub fn sort(self) -> SortedOrder {
        let order = Order::of_slots(&self.slots, |s| self.key(s), |_| {});
        SortedOrder { build: self, order }
    }
}

impl Index {
    /// Starts building the key order (see the module's doc): copies the live
    /// keys and notes, from now on, the slots whose key changes. `None` when
    /// the order is built already.
    pub fn begin_order_build(&self) -> Option<OrderBuild> {
        if self.key_order_built() {
            return None;
        }
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        *self.changes.lock() = Some(Changes {
            ticket,
            slots: Vec::new(),
        });
        let n = self.entries.len();
        let slot_count = self.entries.slots();
        let mut build = OrderBuild {
            ticket,
            slots: Vec::with_capacity(n),
            pos_of: vec![u32::MAX; slot_count as usize],
            keys: Vec::new(),
            ends: Vec::with_capacity(n),
        };
        for (slot, entry) in self.entries.in_slots(0..slot_count) {
            if let Some(pos) = build.pos_of.get_mut(slot as usize) {
                *pos = super::slot_of(build.slots.len());
            }
            build.slots.push(slot);
            build.keys.extend_from_slice(entry.key.as_bytes());
            build.ends.push(build.keys.len());
        }
        Some(build)
    }

    /// Keeps the order `sorted`, brought up to date with the keys added and
    /// removed since its build began. Does nothing if the order was built
    /// meanwhile, or if another build began since (or the index is not the
    /// one the build began on).
    pub fn install_order(&mut self, sorted: SortedOrder) {
        let SortedOrder { build, mut order } = sorted;
        let Some(changes) = self.changes.get_mut().take_if(|c| c.ticket == build.ticket) else {
            return;
        };
        if self.key_order_built() {
            return;
        }
        let mut slots = changes.slots;
        slots.sort_unstable();
        slots.dedup();
        // Taken out first, by the keys the order was built from: until every
        // changed slot is out, a slot's key in the order may not be its key now.
        for &slot in &slots {
            if build.had_key(slot) {
                order.remove(build.key(slot), |s| build.key(s));
            }
        }
        let entries = &self.entries;
        for &slot in &slots {
            if let Some(key) = entries.live_key(slot) {
                order.insert(key, slot, |s| entries.key(s));
            }
        }
        // Not built since (checked above, under the same lock).
        let _ = self.order.set(order);
    }

    /// Notes that the key in `slot` changed (added or removed), for a build
    /// of the order under way.
    #[inline]
    pub(super) fn note_key_changed(&mut self, slot: u32) {
        let noted = self.changes.get_mut();
        if let Some(changes) = noted {
            if self.order.get().is_some() {
                // Built meanwhile by an ordered read: the build is moot.
                *noted = None;
            } else {
                changes.slots.push(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ops::Bound;

    use super::super::{Index, RecordRef};
    use crate::log::record::Op;

    fn put(ix: &mut Index, key: &[u8], revision: u64) {
        let r = RecordRef::new(revision, 0, 1, revision * 64, 40, Op::Put);
        ix.apply(key, r, 1, &mut Vec::new());
    }

    fn key(i: u32) -> Vec<u8> {
        // Short keys (inline) and long ones (on the heap), loaded out of order.
        let stem = if i % 3 == 0 {
            "user.profile.long.enough.for.the.heap"
        } else {
            "k"
        };
        format!("{stem}.{:06}", (i * 7919) % 100_000).into_bytes()
    }

    #[test]
    fn keys_changed_during_the_sort_are_in_the_installed_order() {
        let mut ix = Index::default();
        let mut model = BTreeSet::new();
        let mut revision = 1;
        for i in 0..3_000 {
            put(&mut ix, &key(i), revision);
            model.insert(key(i));
            revision += 1;
        }
        let build = ix.begin_order_build().expect("not built yet");
        // While it sorts: keys removed (their slots then reused by new keys),
        // a key removed and put again, keys added past the copied slots.
        for i in (0..3_000).step_by(7) {
            ix.drop_oldest_while(&key(i), |_| true, &mut Vec::new());
            model.remove(&key(i));
        }
        for i in 3_000..3_600 {
            put(&mut ix, &key(i), revision);
            model.insert(key(i));
            revision += 1;
        }
        ix.drop_oldest_while(&key(1), |_| true, &mut Vec::new());
        put(&mut ix, &key(1), revision);
        assert!(!ix.key_order_built(), "nothing built it meanwhile");
        ix.install_order(build.sort());
        assert!(ix.key_order_built());
        let order = ix.order.get().expect("installed");
        assert_eq!(order.check(|s| ix.entries.key(s)), Ok(()));
        let listed: Vec<Vec<u8>> = ix
            .range(Bound::Unbounded, Bound::Unbounded)
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect();
        assert_eq!(listed, model.into_iter().collect::<Vec<_>>());
        assert!(ix.begin_order_build().is_none(), "built: nothing to begin");
        assert!(ix.changes.get_mut().is_none(), "no changes noted any more");
    }

    #[test]
    fn a_build_overtaken_installs_nothing() {
        let mut ix = Index::default();
        for i in 0..100 {
            put(&mut ix, &key(i), u64::from(i) + 1);
        }
        let first = ix.begin_order_build().expect("not built yet");
        let second = ix.begin_order_build().expect("not built yet");
        ix.install_order(first.sort());
        assert!(!ix.key_order_built(), "another build began after it");
        put(&mut ix, &key(500), 1_000);
        ix.install_order(second.sort());
        assert!(ix.key_order_built());
        assert_eq!(ix.range(Bound::Unbounded, Bound::Unbounded).count(), 101);

        // An ordered read that builds the order meanwhile makes a build moot:
        // changes stop being noted, and the install leaves the order alone.
        let mut other = Index::default();
        for i in 0..100 {
            put(&mut other, &key(i), u64::from(i) + 1);
        }
        let build = other.begin_order_build().expect("not built yet");
        assert_eq!(other.range(Bound::Unbounded, Bound::Unbounded).count(), 100);
        put(&mut other, &key(600), 2_000);
        assert!(other.changes.get_mut().is_none());
        other.install_order(build.sort());
        assert_eq!(other.range(Bound::Unbounded, Bound::Unbounded).count(), 101);
        let order = other.order.get().expect("built");
        assert_eq!(order.check(|s| other.entries.key(s)), Ok(()));
    }
}
