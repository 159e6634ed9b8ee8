//! The index's key order: entry slots (`u32`) in sorted blocks.
//!
//! Two levels: `blocks`, each a sorted run of at most [`BLOCK_MAX`] slots, and
//! `fences`, one key per block that separates it from the block before (a
//! copy, so that finding the block compares inline keys in one contiguous
//! array, a few hundred KiB for a million keys).
//!
//! Inside a block every slot has a **hint**: 8 bytes of its key, big-endian,
//! starting after the prefix that every key of the block shares (`skip`, the
//! common prefix of the block's two fences). Hints order like the keys they
//! come from, so a search compares hints in one small contiguous array and
//! reads a key through its slot (a cache miss in the slab) only when two
//! hints are equal. Without them, a search in a block of a million 16-byte
//! keys cost eight slab misses, 40 % of a bulk load's time.
//!
//! A slot and its hint cost 12 bytes here, against the 56-byte node entries
//! and the node overhead of a `BTreeMap` holding the keys. Point lookups never
//! come here: they go through the hash table.

use std::cmp::Ordering;

use super::key::IKey;
use super::sort;

/// Most slots a block holds; one more splits it in two.
const BLOCK_MAX: usize = 256;
/// Slots per block when building from sorted input: room to grow before a split.
const BUILD_FILL: u32 = 192;

/// 8 bytes of `key` from `skip` on, big-endian, zero-padded: if
/// `hint(a) < hint(b)` then `a < b` for keys sharing their first `skip` bytes
/// (a shorter key is a prefix, so smaller; equal hints decide nothing).
#[inline]
pub(super) fn hint(key: &[u8], skip: usize) -> u64 {
    let rest = key.get(skip..).unwrap_or_default();
    if let Some(b) = rest.first_chunk::<8>() {
        return u64::from_be_bytes(*b);
    }
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(rest) {
        *d = *s;
    }
    u64::from_be_bytes(b)
}

/// Hints per group in [`below`].
const GROUP: usize = 16;

/// How many of the sorted `hints` are below `h`. Not a binary search, whose
/// eight steps each wait for the cache miss of the one before: the last hint
/// of every group of 16 is compared first (independent loads, their misses
/// overlap), then the 16 of the one group that can hold the boundary.
fn below(hints: &[u64], h: u64) -> usize {
    let groups = hints
        .iter()
        .skip(GROUP - 1)
        .step_by(GROUP)
        .filter(|&&x| x < h)
        .count();
    let start = groups * GROUP;
    let group = hints.get(start..).unwrap_or_default();
    start + group.iter().take(GROUP).filter(|&&x| x < h).count()
}

/// Length of the prefix `a` and `b` share.
pub(super) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A sorted run of slots with their hints.
struct Block {
    /// Bytes every key of the block shares; hints start after them.
    skip: usize,
    slots: Vec<u32>,
    hints: Vec<u64>,
}

impl Block {
    /// An empty block with room for `capacity` slots.
    fn new(skip: usize, capacity: usize) -> Block {
        Block {
            skip,
            slots: Vec::with_capacity(capacity),
            hints: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// The first index whose key is not below `key` (`inclusive`) or above it.
    fn position<'k>(&self, key: &[u8], inclusive: bool, key_of: impl Fn(u32) -> &'k [u8]) -> usize {
        let h = hint(key, self.skip);
        let lo = below(&self.hints, h);
        let from_lo = self.hints.get(lo..).unwrap_or_default();
        let n = from_lo.partition_point(|&x| x == h);
        let tied = self.slots.get(lo..lo + n).unwrap_or_default();
        lo + tied.partition_point(|&s| match key_of(s).cmp(key) {
            Ordering::Less => true,
            Ordering::Equal => !inclusive,
            Ordering::Greater => false,
        })
    }

    fn insert(&mut self, at: usize, slot: u32, key: &[u8]) {
        self.slots.insert(at, slot);
        self.hints.insert(at, hint(key, self.skip));
    }

    fn remove(&mut self, at: usize) -> u32 {
        self.hints.remove(at);
        self.slots.remove(at)
    }

    /// Sets `skip` and recomputes the hints.
    fn reskip<'k>(&mut self, skip: usize, key_of: impl Fn(u32) -> &'k [u8]) {
        self.skip = skip;
        self.hints.clear();
        self.hints
            .extend(self.slots.iter().map(|&s| hint(key_of(s), skip)));
    }
}

/// Entry slots in key order.
#[derive(Default)]
pub(super) struct Order {
    /// `fences[b]` for `b > 0`: greater than every key of block `b - 1`, at
    /// most the first key of block `b`. `fences[0]` is never compared (block 0
    /// takes every key below `fences[1]`).
    fences: Vec<IKey>,
    /// Sorted runs of slots; none is empty unless it is the only one.
    blocks: Vec<Block>,
}

/// A position in the order: a block and an index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos {
    block: usize,
    at: usize,
}

impl Pos {
    /// The first position.
    pub(super) const START: Pos = Pos { block: 0, at: 0 };
}

impl Order {
    /// The block `key` belongs in.
    fn block_for(&self, key: &[u8]) -> usize {
        self.fences
            .get(1..)
            .map_or(0, |f| f.partition_point(|fence| fence.as_bytes() <= key))
    }

    /// What every key of block `b` shares: the common prefix of its fences
    /// (nothing for the first and the last block, which are open-ended).
    fn skip_of(&self, b: usize) -> usize {
        match (
            b.checked_sub(1).and(self.fences.get(b)),
            self.fences.get(b + 1),
        ) {
            (Some(lo), Some(hi)) => common_prefix(lo.as_bytes(), hi.as_bytes()),
            _ => 0,
        }
    }

    /// The first position whose key is not below `key` (`inclusive`) or above
    /// it (not `inclusive`).
    pub(super) fn seek<'k>(
        &self,
        key: &[u8],
        inclusive: bool,
        key_of: impl Fn(u32) -> &'k [u8],
    ) -> Pos {
        let block = self.block_for(key);
        let at = self
            .blocks
            .get(block)
            .map_or(0, |b| b.position(key, inclusive, key_of));
        Pos { block, at }
    }

    /// The slots from `pos` on, in order.
    pub(super) fn iter_from(&self, pos: Pos) -> impl Iterator<Item = u32> + '_ {
        let first = self
            .blocks
            .get(pos.block)
            .and_then(|b| b.slots.get(pos.at..))
            .unwrap_or_default();
        let rest = self.blocks.get(pos.block + 1..).unwrap_or_default();
        first
            .iter()
            .chain(rest.iter().flat_map(|b| &b.slots))
            .copied()
    }

    /// Adds `slot`, whose key is `key` and not yet in the order.
    pub(super) fn insert<'k>(
        &mut self,
        key: &[u8],
        slot: u32,
        key_of: impl Fn(u32) -> &'k [u8] + Copy,
    ) {
        let b = self.block_for(key);
        let Some(block) = self.blocks.get_mut(b) else {
            self.fences.push(IKey::new(key));
            // A bucket's first block grows with it: ten thousand buckets of
            // one key must not hold 3 KiB each here.
            let mut first = Block::new(0, 0);
            first.insert(0, slot, key);
            self.blocks.push(first);
            return;
        };
        // Keys written in ascending order land past the last one: no search
        // (decided on the hints: reading the last key would cost a miss).
        let h = hint(key, block.skip);
        let at = match block.hints.last() {
            Some(&last) if last < h => block.len(),
            _ => block.position(key, true, key_of),
        };
        if block.len() >= BUILD_FILL as usize && block.len() == block.slots.capacity() {
            // A full block built from sorted input has no room: make room
            // for all it can hold before a split, at once (not double it).
            let room = (BLOCK_MAX + 1).saturating_sub(block.len());
            block.slots.reserve_exact(room);
            block.hints.reserve_exact(room);
        }
        block.slots.insert(at, slot);
        block.hints.insert(at, h);
        if block.len() > BLOCK_MAX {
            self.split(b, key_of);
        }
    }

    /// Splits block `b` in two halves.
    fn split<'k>(&mut self, b: usize, key_of: impl Fn(u32) -> &'k [u8] + Copy) {
        let Some(block) = self.blocks.get_mut(b) else {
            return;
        };
        let mut tail = Block::new(block.skip, BLOCK_MAX + 1);
        tail.slots.extend(block.slots.drain(BLOCK_MAX / 2..));
        tail.hints.extend(block.hints.drain(BLOCK_MAX / 2..));
        let Some(&first) = tail.slots.first() else {
            return;
        };
        self.blocks.insert(b + 1, tail);
        self.fences.insert(b + 1, IKey::new(key_of(first)));
        // Both halves span less than the whole did: their keys may share more.
        for half in [b, b + 1] {
            let skip = self.skip_of(half);
            if let Some(block) = self.blocks.get_mut(half) {
                if skip > block.skip {
                    block.reskip(skip, key_of);
                }
            }
        }
    }

    /// Removes the slot whose key is `key`; returns it, or `None` if no slot
    /// has that key.
    pub(super) fn remove<'k>(
        &mut self,
        key: &[u8],
        key_of: impl Fn(u32) -> &'k [u8] + Copy,
    ) -> Option<u32> {
        let b = self.block_for(key);
        let block = self.blocks.get_mut(b)?;
        let at = block.position(key, true, key_of);
        if block.slots.get(at).is_none_or(|&s| key_of(s) != key) {
            return None;
        }
        let slot = block.remove(at);
        if block.is_empty() && self.blocks.len() > 1 {
            self.blocks.remove(b);
            self.fences.remove(b);
            // The block before (or, for the first, the one now first) spans
            // more than it did: its keys may share less.
            let widened = b.saturating_sub(1);
            let skip = self.skip_of(widened);
            if let Some(block) = self.blocks.get_mut(widened) {
                if skip < block.skip {
                    block.reskip(skip, key_of);
                }
            }
        }
        Some(slot)
    }

    /// Replaces every slot `s` in the order by `map(s)` (a slot that holds
    /// the same key).
    pub(super) fn map_slots(&mut self, map: impl Fn(u32) -> u32) {
        for block in &mut self.blocks {
            for s in &mut block.slots {
                *s = map(*s);
            }
        }
    }

    /// The order of `slots`, each a different key, in any order (put in key
    /// order by `sort.rs`). `ask(slot)` starts loading a slot's key into the
    /// CPU cache, ahead of reading it (see [`crate::prefetch`]).
    pub(super) fn of_slots<'k>(
        slots: &[u32],
        key_of: impl Fn(u32) -> &'k [u8] + Copy,
        ask: impl Fn(u32),
    ) -> Order {
        Order::ascending(&sort::in_key_order(slots, key_of), key_of, ask)
    }

    /// The order of `slots`, whose keys ascend.
    fn ascending<'k>(
        slots: &[u32],
        key_of: impl Fn(u32) -> &'k [u8] + Copy,
        ask: impl Fn(u32),
    ) -> Order {
        let fill = BUILD_FILL as usize;
        let mut order = Order::default();
        for chunk in slots.chunks(fill) {
            let Some(&first) = chunk.first() else {
                continue;
            };
            // No room to grow yet (it would be a quarter of the order's
            // memory): the first insert into a block makes it.
            let mut block = Block::new(0, chunk.len());
            block.slots.extend_from_slice(chunk);
            order.fences.push(IKey::new(key_of(first)));
            order.blocks.push(block);
        }
        for b in 0..order.blocks.len() {
            let skip = order.skip_of(b);
            if let Some(block) = order.blocks.get_mut(b) {
                block.skip = skip;
            }
        }
        // The hints, reading the keys in key order: slots scattered over
        // the slab after a sort, so each key is asked for well ahead.
        for (i, &s) in slots.iter().enumerate() {
            if let Some(&later) = slots.get(i + AHEAD) {
                ask(later);
            }
            if let Some(block) = order.blocks.get_mut(i / fill) {
                block.hints.push(hint(key_of(s), block.skip));
            }
        }
        order
    }
}

/// How many keys ahead [`Order::ascending`] asks for.
const AHEAD: usize = 16;

impl Block {
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
impl Order {
    /// What a search relies on: blocks and fences pair up; no block is empty
    /// but a lone one; each block's keys ascend, lie between its fences, and
    /// share the `skip` its hints start after, which is at most what its
    /// fences share; every hint is its key's.
    pub(super) fn check<'k>(&self, key_of: impl Fn(u32) -> &'k [u8]) -> Result<(), String> {
        if self.fences.len() != self.blocks.len() {
            return Err("fences and blocks differ in number".into());
        }
        let mut last: Option<&[u8]> = None;
        for (b, block) in self.blocks.iter().enumerate() {
            if block.is_empty() && self.blocks.len() > 1 {
                return Err(format!("block {b} is empty"));
            }
            if block.slots.len() != block.hints.len() {
                return Err(format!("block {b}: slots and hints differ in number"));
            }
            if block.skip > self.skip_of(b) {
                return Err(format!("block {b} skips more than its fences share"));
            }
            let fence = self.fences.get(b).map(IKey::as_bytes);
            for (&s, &h) in block.slots.iter().zip(&block.hints) {
                let key = key_of(s);
                if last.is_some_and(|l| l >= key) {
                    return Err(format!("block {b}: keys out of order at slot {s}"));
                }
                if b > 0 && fence.is_some_and(|f| f > key) {
                    return Err(format!("block {b}: slot {s} below its fence"));
                }
                if h != hint(key, block.skip) {
                    return Err(format!("block {b}: slot {s} has a stale hint"));
                }
                last = Some(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_counts_like_a_binary_search() {
        let hints: Vec<u64> = (0..300u64).map(|i| i / 3 * 2).collect();
        for n in [0, 1, 15, 16, 17, 255, 300] {
            let part = &hints[..n];
            for h in 0..210 {
                assert_eq!(below(part, h), part.partition_point(|&x| x < h), "{n} {h}");
            }
        }
    }

    #[test]
    fn hints_order_like_keys() {
        let keys: [&[u8]; 6] = [b"ab", b"ab!", b"abc", b"abcdefghij", b"abcdefghik", b"b"];
        for w in keys.windows(2) {
            assert!(hint(w[0], 0) <= hint(w[1], 0));
            assert!(hint(w[0], 1) <= hint(w[1], 1) || w[0][..1] != w[1][..1]);
        }
        assert_eq!(
            hint(b"abcdefghij", 0),
            hint(b"abcdefghik", 0),
            "ties past 8 bytes"
        );
        assert!(hint(b"abcdefghij", 2) < hint(b"abcdefghik", 2));
        assert_eq!(hint(b"a", 5), 0);
    }

    #[test]
    fn blocks_split_and_vanish_keeping_order() {
        let keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("key:{:012}", (i * 7919) % 2000).into_bytes())
            .collect();
        let key_of = |s: u32| keys[s as usize].as_slice();
        let mut order = Order::default();
        for s in 0..2000u32 {
            order.insert(key_of(s), s, key_of);
        }
        assert!(order.blocks.len() > 2000 / BLOCK_MAX);
        assert!(
            order.blocks.iter().any(|b| b.skip > 8),
            "interior blocks skip their shared prefix"
        );
        let listed: Vec<&[u8]> = order.iter_from(Pos::START).map(key_of).collect();
        let mut sorted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        let from = order.seek(b"key:000000001000", true, key_of);
        assert_eq!(
            order.iter_from(from).map(key_of).next(),
            Some(&b"key:000000001000"[..])
        );
        let after = order.seek(b"key:000000001000", false, key_of);
        assert_eq!(
            order.iter_from(after).map(key_of).next(),
            Some(&b"key:000000001001"[..])
        );
        for s in (0..2000u32).rev() {
            assert_eq!(order.remove(key_of(s), key_of), Some(s));
            assert_eq!(order.remove(key_of(s), key_of), None);
            if s % 97 == 0 {
                let listed: Vec<&[u8]> = order.iter_from(Pos::START).map(key_of).collect();
                assert!(listed.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(listed.len(), s as usize);
            }
        }
        assert_eq!(order.iter_from(Pos::START).count(), 0);
        assert_eq!(order.blocks.len(), 1);
    }

    #[test]
    fn an_order_built_from_slots_in_any_order_keeps_its_invariants() {
        let keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("tenant/acme/users/{i:06}").into_bytes())
            .chain([b"config".to_vec(), b"tenant/acme/users/000100/x".to_vec()])
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let key_of = |s: u32| sorted[s as usize].as_slice();
        let n = u32::try_from(sorted.len()).expect("few keys");
        let shuffled: Vec<u32> = (0..n).map(|i| (i * 7919) % n).collect();
        for slots in [shuffled, (0..n).rev().collect(), (0..n).collect()] {
            let mut order = Order::of_slots(&slots, key_of, |_| {});
            assert_eq!(order.check(key_of), Ok(()));
            assert!(
                order.blocks.iter().any(|b| b.skip > 18),
                "interior blocks skip what their fences share"
            );
            assert_eq!(
                order.iter_from(Pos::START).collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
            for s in (0..n).step_by(37) {
                let p = order.seek(key_of(s), true, key_of);
                assert_eq!(order.iter_from(p).next(), Some(s));
            }
            // Kept up to date from then on.
            for s in (0..n).step_by(3) {
                assert_eq!(order.remove(key_of(s), key_of), Some(s));
            }
            assert_eq!(order.check(key_of), Ok(()));
            for s in (0..n).step_by(3) {
                order.insert(key_of(s), s, key_of);
            }
            assert_eq!(order.check(key_of), Ok(()));
            assert_eq!(order.iter_from(Pos::START).count(), n as usize);
        }
        let empty = Order::of_slots(&[], key_of, |_| {});
        assert_eq!(empty.iter_from(Pos::START).count(), 0);
        let one = Order::of_slots(&[5], key_of, |_| {});
        assert_eq!(one.check(key_of), Ok(()));
        assert_eq!(one.iter_from(Pos::START).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn built_order_finds_every_key() {
        let keys: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| format!("user.{i:05}.name").into_bytes())
            .collect();
        let key_of = |s: u32| keys[s as usize].as_slice();
        let order = Order::of_slots(&(0..1000).collect::<Vec<_>>(), key_of, |_| {});
        for (i, k) in (0u32..).zip(&keys) {
            let p = order.seek(k, true, key_of);
            assert_eq!(order.iter_from(p).next(), Some(i));
        }
    }
}
