//! Older retained revisions (history > 1): a side slab of lists, each owned
//! by one key and referenced from its latest revision by a 1-based `u32` slot
//! (0: no older revisions), so a bucket with history 1 pays nothing here.

use super::record::RecordRef;
use super::slot_of;

/// Lists of older revisions, oldest first.
#[derive(Default)]
pub(super) struct History {
    lists: Vec<Vec<RecordRef>>,
    /// Freed slots, reused first.
    free: Vec<u32>,
}

impl History {
    /// The older revisions in slot `slot` (a key's `older`, 1-based).
    #[allow(
        clippy::indexing_slicing,
        reason = "a non-zero `older` is a slot `alloc` handed out (1..=lists.len()) and not freed while a key holds it"
    )]
    pub fn get(&self, slot: u32) -> &Vec<RecordRef> {
        &self.lists[slot as usize - 1]
    }

    /// [`History::get`], to change.
    #[allow(
        clippy::indexing_slicing,
        reason = "a non-zero `older` is a slot `alloc` handed out (1..=lists.len()) and not freed while a key holds it"
    )]
    pub fn get_mut(&mut self, slot: u32) -> &mut Vec<RecordRef> {
        &mut self.lists[slot as usize - 1]
    }

    /// A slot holding `list` (1-based).
    pub fn alloc(&mut self, list: Vec<RecordRef>) -> u32 {
        if let Some(s) = self.free.pop() {
            *self.get_mut(s) = list;
            return s;
        }
        self.lists.push(list);
        slot_of(self.lists.len())
    }

    /// Frees slot `slot`; returns what it held.
    pub fn free(&mut self, slot: u32) -> Vec<RecordRef> {
        self.free.push(slot);
        std::mem::take(self.get_mut(slot))
    }

    /// Number of slots, used and free.
    pub fn len_slots(&self) -> u32 {
        slot_of(self.lists.len())
    }

    /// Takes in `other`'s lists after these: its slot `s` becomes `s + self.len_slots()`.
    pub fn append(&mut self, other: History) {
        let shift = self.len_slots();
        self.lists.extend(other.lists);
        self.free.extend(other.free.into_iter().map(|s| s + shift));
    }

    /// Every older revision, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RecordRef> + '_ {
        self.lists.iter().flatten()
    }

    /// Every older revision, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut RecordRef> + '_ {
        self.lists.iter_mut().flatten()
    }

    /// Number of slots, used and free (for tests).
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.lists.len()
    }
}
