//! Building the key order (`order.rs`) with the index lock held only to copy
//! keys and to install the result.
//!
//! Built inside an ordered read, the order holds the index's read lock for
//! the whole build: about 0.12 s for a million keys loaded in random order,
//! while every write waits (and, since a waiting writer goes first, every
//! new reader too). A bucket builds it in steps instead:
//!
//! 1. [`Index::begin_order_build`] starts noting the slots whose key
//!    changes (a key added, a key removed); [`OrderBuild::copy_keys`], under
//!    the read lock a chunk of slots at a time, copies the live keys in slot
//!    order (a walk of the slab in memory order). A slot that changes before
//!    its chunk is copied is copied as it is then, and noted too: the
//!    catch-up below takes it out and puts it back, the same key.
//! 2. [`OrderBuild::sort`], without the lock: puts the copies in key order
//!    and builds the order's blocks and hints from them.
//! 3. Catching up, as often as it takes: [`Index::changes_since`], under the
//!    read lock, takes the slots noted so far with the keys they hold now;
//!    [`SortedOrder::catch_up`], without the lock, takes each out of the
//!    order and puts it back with its key now. Each round has the changes of
//!    a shorter time to apply than the one before.
//! 4. [`Index::install_order`], under the write lock: applies the last few
//!    changes the same way and keeps the order.
//!
//! A build began on an index that has since been replaced, or overtaken by
//! another, is dropped: each build has its own ticket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::key::IKey;
use super::order::Order;
use super::{slot_of, Index};
use crate::prefetch;

/// The next build's ticket (unique in the process, so a build never matches
/// the changes noted for another, on any index).
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// Slots whose key changed since the build `ticket` began (or since its last
/// catch-up).
pub(super) struct Changes {
    ticket: u64,
    slots: Vec<u32>,
}

/// The live keys of an index, copied to build its key order without its lock.
pub struct OrderBuild {
    ticket: u64,
    /// The first slot not copied yet.
    next: u32,
    /// The live slots when the copy was made, ascending.
    slots: Vec<u32>,
    /// `keys[i]`: the key of `slots[i]` then.
    keys: Vec<IKey>,
}

/// The order built from an [`OrderBuild`]'s keys, to catch up with the
/// changes made since and install ([`Index::install_order`]).
pub struct SortedOrder {
    build: OrderBuild,
    order: Order,
    /// The slots changed since the copy, with the key the order holds each
    /// under now (`None`: not in the order).
    since: HashMap<u32, Option<IKey>>,
}

/// The slots changed since a build began (or since its last catch-up), each
/// with its key now (`None`: free now).
pub struct OrderChanges {
    changed: Vec<(u32, Option<IKey>)>,
}

impl OrderChanges {
    /// How many slots changed.
    pub fn len(&self) -> usize {
        self.changed.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

impl OrderBuild {
    /// Copies the live keys of the next `max` slots of `ix`, the index the
    /// build began on, held under its read lock; true once every slot is
    /// copied.
    pub fn copy_keys(&mut self, ix: &Index, max: u32) -> bool {
        let end = ix.entries.slots();
        let to = self.next.saturating_add(max).min(end);
        for (slot, entry) in ix.entries.in_slots(self.next..to) {
            self.slots.push(slot);
            self.keys.push(entry.key.clone());
        }
        self.next = to;
        to >= end
    }

    /// Builds the order of the copied keys (all of them: see
    /// [`OrderBuild::copy_keys`]). Takes no lock: the slow part.
    pub fn sort(self) -> SortedOrder {
        let keys = &self.keys;
        let key_of = |p: u32| keys.get(p as usize).map_or(&[][..], IKey::as_bytes);
        let ask = |p: u32| {
            if let Some(k) = keys.get(p as usize) {
                prefetch::value(k);
            }
        };
        // Sorted by position in the copy (one array: no slab to miss in),
        // then each position turned into its slot.
        let positions: Vec<u32> = (0..slot_of(keys.len())).collect();
        let mut order = Order::of_slots(&positions, key_of, ask);
        let slots = &self.slots;
        order.map_slots(|p| slots.get(p as usize).copied().unwrap_or(u32::MAX));
        SortedOrder {
            build: self,
            order,
            since: HashMap::new(),
        }
    }
}

impl SortedOrder {
    /// Brings the order up to date with `changes`. Takes no lock.
    pub fn catch_up(&mut self, changes: OrderChanges) {
        let SortedOrder {
            build,
            order,
            since,
        } = self;
        // Taken out first, by the keys the order holds them under: until
        // every changed slot is out, a slot's key now may not be its key there.
        for &(slot, _) in &changes.changed {
            if let Some(key) = held_key(build, since, slot).map(IKey::new) {
                order.remove(key.as_bytes(), |s| {
                    held_key(build, since, s).unwrap_or_default()
                });
                since.insert(slot, None);
            }
        }
        for (slot, now) in changes.changed {
            if let Some(key) = now {
                since.insert(slot, Some(key.clone()));
                order.insert(key.as_bytes(), slot, |s| {
                    held_key(build, since, s).unwrap_or_default()
                });
            }
        }
    }
}

/// The key the order holds `slot` under: its key now if it changed since the
/// copy (`since`), else its copied key; `None` if the order does not hold it.
fn held_key<'a>(
    build: &'a OrderBuild,
    since: &'a HashMap<u32, Option<IKey>>,
    slot: u32,
) -> Option<&'a [u8]> {
    match since.get(&slot) {
        Some(now) => now.as_ref().map(IKey::as_bytes),
        None => build
            .slots
            .binary_search(&slot)
            .ok()
            .and_then(|p| build.keys.get(p))
            .map(IKey::as_bytes),
    }
}

impl Index {
    /// Starts building the key order (see the module's doc): notes, from now
    /// on, the slots whose key changes; the keys are copied next
    /// ([`OrderBuild::copy_keys`]). `None` when the order is built already.
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
        Some(OrderBuild {
            ticket,
            next: 0,
            slots: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
        })
    }

    /// The slots changed since `sorted`'s build began (or its last catch-up),
    /// with their keys now; from now on only later changes are noted. `None`
    /// if the build is moot: the order was built meanwhile, or another build
    /// began (or the index is not the one the build began on).
    pub fn changes_since(&self, sorted: &SortedOrder) -> Option<OrderChanges> {
        if self.key_order_built() {
            return None;
        }
        let mut slots = {
            let mut noted = self.changes.lock();
            let ours = noted.as_mut().filter(|c| c.ticket == sorted.build.ticket)?;
            std::mem::take(&mut ours.slots)
        };
        slots.sort_unstable();
        slots.dedup();
        Some(OrderChanges {
            changed: slots
                .into_iter()
                .map(|s| (s, self.entries.live_key(s).map(IKey::new)))
                .collect(),
        })
    }

    /// Keeps the order `sorted` holds (taken out of it), brought up to date
    /// with the changes made since its last catch-up. Does nothing if the
    /// order was built meanwhile, or if another build began since (or the
    /// index is not the one the build began on). The copied keys stay in
    /// `sorted`: freeing them (a million keys: milliseconds) is left to the
    /// caller, once the lock is released.
    pub fn install_order(&mut self, sorted: &mut SortedOrder) {
        let Some(changes) = self.changes_since(sorted) else {
            return;
        };
        *self.changes.get_mut() = None;
        sorted.catch_up(changes);
        // Not built since (checked above, under the same lock).
        let _ = self.order.set(std::mem::take(&mut sorted.order));
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
    use super::OrderBuild;
    use crate::log::record::Op;

    fn put(ix: &mut Index, key: &[u8], revision: u64) {
        let r = RecordRef::new(revision, 0, 1, revision * 64, 40, Op::Put);
        ix.apply(key, r, 0, 1, &mut Vec::new());
    }

    /// A build begun and its keys copied.
    fn copied(ix: &Index) -> OrderBuild {
        let mut build = ix.begin_order_build().expect("not built yet");
        while !build.copy_keys(ix, 64) {}
        build
    }

    /// Puts the keys of `ids` into `ix` and `model`, raising `revision`.
    fn add(
        ix: &mut Index,
        model: &mut BTreeSet<Vec<u8>>,
        ids: impl Iterator<Item = u32>,
        revision: &mut u64,
    ) {
        for i in ids {
            put(ix, &key(i), *revision);
            model.insert(key(i));
            *revision += 1;
        }
    }

    /// Removes the keys of `ids` from `ix` and `model`.
    fn remove(ix: &mut Index, model: &mut BTreeSet<Vec<u8>>, ids: impl Iterator<Item = u32>) {
        for i in ids {
            ix.drop_oldest_while(&key(i), |_| true, &mut Vec::new());
            model.remove(&key(i));
        }
    }

    fn key(i: u32) -> Vec<u8> {
        // Short keys (inline) and long ones (on the heap), loaded out of order.
        let stem = if i.is_multiple_of(3) {
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
        add(&mut ix, &mut model, 0..3_000, &mut revision);
        let mut build = ix.begin_order_build().expect("not built yet");
        // Copied in chunks, a key removed between two (after its chunk).
        assert!(!build.copy_keys(&ix, 1_000));
        remove(&mut ix, &mut model, [2].into_iter());
        while !build.copy_keys(&ix, 1_000) {}
        // While it sorts: keys removed (their slots then reused by new keys),
        // a key removed and put again, keys added past the copied slots.
        remove(&mut ix, &mut model, (0..3_000).step_by(7));
        add(&mut ix, &mut model, 3_000..3_600, &mut revision);
        ix.drop_oldest_while(&key(1), |_| true, &mut Vec::new());
        put(&mut ix, &key(1), revision);
        assert!(!ix.key_order_built(), "nothing built it meanwhile");
        let mut sorted = build.sort();
        let changes = ix.changes_since(&sorted).expect("still the build");
        // The slot of key 2 (reused by a new key), 429 more freed and reused,
        // 170 new slots, and the slot of key 1: each changed slot once.
        assert_eq!(changes.len(), 601);
        sorted.catch_up(changes);
        // Changes after a catch-up: the install applies them.
        remove(&mut ix, &mut model, (1..3_000).step_by(11));
        add(&mut ix, &mut model, 4_000..4_100, &mut revision);
        ix.install_order(&mut sorted);
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
        let first = copied(&ix);
        let second = copied(&ix);
        ix.install_order(&mut first.sort());
        assert!(!ix.key_order_built(), "another build began after it");
        put(&mut ix, &key(500), 1_000);
        ix.install_order(&mut second.sort());
        assert!(ix.key_order_built());
        assert_eq!(ix.range(Bound::Unbounded, Bound::Unbounded).count(), 101);

        // An ordered read that builds the order meanwhile makes a build moot:
        // changes stop being noted, and the install leaves the order alone.
        let mut other = Index::default();
        for i in 0..100 {
            put(&mut other, &key(i), u64::from(i) + 1);
        }
        let build = copied(&other);
        assert_eq!(other.range(Bound::Unbounded, Bound::Unbounded).count(), 100);
        put(&mut other, &key(600), 2_000);
        assert!(other.changes.get_mut().is_none());
        other.install_order(&mut build.sort());
        assert_eq!(other.range(Bound::Unbounded, Bound::Unbounded).count(), 101);
        let order = other.order.get().expect("built");
        assert_eq!(order.check(|s| other.entries.key(s)), Ok(()));
    }
}
