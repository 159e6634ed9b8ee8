//! Building an index from keys in ascending order (a snapshot's load).
//!
//! Entries are appended to the slab in key order, so the order is the slots
//! `0..n` cut into blocks with no key comparison at all; the hash table is
//! built once at the end, sized for every key; no allocation per key (older
//! revisions excepted). The only comparison is each key against the one
//! before, to reject input out of order.

use super::entries::{advise_huge_pages, Entries};
use super::order::Order;
use super::{Index, RecordRef};

/// Builds an [`Index`] from keys pushed in strictly ascending order.
pub struct SortedBuilder {
    ix: Index,
    /// The hash of each key pushed, by slot.
    hashes: Vec<u64>,
    /// Most revisions any key has.
    max_revisions: usize,
}

impl SortedBuilder {
    /// A builder for about `keys` keys.
    pub fn with_capacity(keys: usize) -> SortedBuilder {
        let hashes = Vec::with_capacity(keys);
        advise_huge_pages(&hashes);
        SortedBuilder {
            ix: Index {
                entries: Entries::with_capacity(keys),
                ..Index::default()
            },
            hashes,
            max_revisions: 0,
        }
    }

    /// Adds `key` with its retained revisions, oldest first. Fails, adding
    /// nothing, if `key` is not above the previous key or `revs` is empty.
    pub fn push(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        if self
            .ix
            .entries
            .last()
            .is_some_and(|prev| prev.key.as_bytes() >= key)
        {
            return Err("keys out of order");
        }
        self.push_ascending(key, revs)
    }

    /// [`SortedBuilder::push`] for a caller that has checked that `key` is
    /// above the previous one (an index built from keys out of order finds
    /// wrong answers in its ranges). Fails if `revs` is empty.
    pub fn push_ascending(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        let Some((latest, older)) = revs.split_last() else {
            return Err("key without revisions");
        };
        let ix = &mut self.ix;
        for r in revs {
            ix.retain(r);
        }
        let mut latest = latest.bare();
        ix.put_keys += u64::from(latest.op() == crate::log::record::Op::Put);
        if !older.is_empty() {
            latest.older = ix.history.alloc(older.iter().map(|r| r.bare()).collect());
        }
        ix.entries.push_unindexed(key, latest);
        self.hashes.push(ix.entries.hash(key));
        self.max_revisions = self.max_revisions.max(revs.len());
        Ok(())
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Most revisions any key pushed so far has.
    pub fn max_revisions(&self) -> usize {
        self.max_revisions
    }

    /// The index.
    pub fn finish(mut self) -> Index {
        let ix = &mut self.ix;
        ix.entries.index_all(&self.hashes);
        let entries = &ix.entries;
        ix.order = Order::consecutive(entries.slots(), |s| entries.key(s));
        self.ix
    }
}
