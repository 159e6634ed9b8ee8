//! What compaction asks of the index: which retained revisions lie in the
//! segments a pass rewrites, and moving each to its copy.
//!
//! A revision is named by its key's entry slot ([`Placed::entry`]), not its
//! key, so a move is one slab access instead of a hash lookup. A pass over a
//! large run learns every retained revision in it from one sequential scan of
//! the entries ([`Index::placed_in`]) instead of a lookup per record.

use std::ops::Range;

use super::Index;

/// A retained revision in a segment, and the entry of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placed {
    /// Slot of the segment holding it.
    pub slot: u32,
    /// Its offset there.
    pub offset: u32,
    /// Its revision.
    pub revision: u64,
    /// The slot of its key's entry: what [`Index::relocate_at`] takes.
    pub entry: u32,
}

impl Placed {
    /// Where it is: segment slot and offset.
    pub fn at(&self) -> (u32, u32) {
        (self.slot, self.offset)
    }
}

impl Index {
    /// Entry slots in use or free: [`Index::placed_in`] scans `0..entry_slots()`
    /// in chunks.
    pub fn entry_slots(&self) -> u32 {
        self.entries.slots()
    }

    /// Appends to `out` every retained revision (history included) of the
    /// entries in slots `entries` that lies in a segment `in_run` accepts, in no
    /// particular order.
    pub fn placed_in(
        &self,
        entries: Range<u32>,
        in_run: impl Fn(u32) -> bool,
        out: &mut Vec<Placed>,
    ) {
        for (entry, e) in self.entries.in_slots(entries) {
            let mut add = |r: &super::RecordRef| {
                if in_run(r.slot) {
                    out.push(Placed {
                        slot: r.slot,
                        offset: r.offset,
                        revision: r.revision,
                        entry,
                    });
                }
            };
            add(&e.rec);
            if e.rec.older != 0 {
                self.history.get(e.rec.older).iter().for_each(add);
            }
        }
    }

    /// Where the retained revision `revision` of `key` is, with its key's
    /// entry; `None` when it is not retained.
    pub fn find_placed(&self, key: &[u8], revision: u64) -> Option<Placed> {
        let (entry, r) = self.find_in_entry(key, revision)?;
        Some(Placed {
            slot: r.slot,
            offset: r.offset,
            revision,
            entry,
        })
    }

    /// Moves revision `revision` of the key in entry slot `entry` from `from`
    /// to `to` (segment slot, offset), if it is still retained at `from`;
    /// returns whether it moved. A record's place names it: an entry slot
    /// freed and reused meanwhile holds no revision at `from`.
    pub fn relocate_at(
        &mut self,
        entry: u32,
        revision: u64,
        from: (u32, u32),
        to: (u32, u32),
    ) -> bool {
        self.widest.offset = self.widest.offset.max(to.1);
        let fix = |r: &mut super::RecordRef| {
            if r.revision == revision && (r.slot, r.offset) == from {
                (r.slot, r.offset) = to;
                true
            } else {
                false
            }
        };
        let Some(e) = self.entries.get_checked_mut(entry) else {
            return false;
        };
        if e.rec.revision == 0 {
            return false;
        }
        if fix(&mut e.rec) {
            return true;
        }
        match e.rec.older {
            0 => false,
            s => self.history.get_mut(s).iter_mut().any(fix),
        }
    }
}
