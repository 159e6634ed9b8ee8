//! Building an index from a snapshot's keys, at once (a snapshot's load).
//!
//! Entries are appended to the slab in the order they come; the hash table
//! is built once at the end, sized for every key; no allocation per key
//! (older revisions excepted). Keys come in one of two orders
//! ([`KeyOrder`]): ascending (snapshots of versions 1 to 3), where the only
//! comparison is each key against the one before (by the caller), and the
//! key order, when first needed (see `Index::order`), finds the slots
//! already ascending and only cuts them into blocks (see `sort.rs`); or any
//! order (version 4: the slab order of the index that wrote it), where the
//! table's build refuses a key that comes twice.
//!
//! A large build can be filled by two threads at once
//! ([`BulkBuilder::fill_in_two`]): each writes its own part of the slab
//! (allocated once at its final size) and of the keys' hashes, with its own
//! counters and older revisions, merged when both are done; then the hash
//! table is built from the hashes.

use std::mem::MaybeUninit;
use std::sync::Barrier;

use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

use super::entries::{two_cores, Entries, Entry, Unique};
use super::history::History;
use super::key::IKey;
use super::pages::populate_for_writing;
use super::{slot_of, Index, RecordRef, Widest};
use crate::log::record::Op;

/// What pushing keys adds up, per part.
#[derive(Default)]
struct Tally {
    values: u64,
    expiring: u64,
    bytes: u64,
    put_keys: u64,
    max_revisions: usize,
    /// Bounds of the fields pushed.
    widest: Widest,
    /// Bytes retained per segment slot (by slot: a snapshot's are `1..=`
    /// its segments), so that opening need not walk the index again for
    /// them; `None` once a slot too large for a vector came by.
    live: Option<Vec<u64>>,
}

/// Slots from which [`Tally::live`] gives up (a snapshot's are small numbers).
const LIVE_SLOTS: usize = 1 << 16;

impl Tally {
    /// Counts `revs` (a key's revisions, oldest first) and makes the key's
    /// entry: the latest, linked to the older ones stored in `history`.
    fn entry(
        &mut self,
        history: &mut History,
        key: &[u8],
        revs: &[RecordRef],
    ) -> Result<Entry, &'static str> {
        let Some((latest, older)) = revs.split_last() else {
            return Err("key without revisions");
        };
        for r in revs {
            self.widest.widen(key.len(), r);
            self.values += 1;
            self.expiring += u64::from(r.expires_ms != 0);
            self.bytes += r.len() as u64;
            self.add_live(r.slot as usize, r.len() as u64);
        }
        let mut latest = latest.bare();
        self.put_keys += u64::from(latest.op() == Op::Put);
        if !older.is_empty() {
            latest.older = history.alloc(older.iter().map(|r| r.bare()).collect());
        }
        self.max_revisions = self.max_revisions.max(revs.len());
        Ok(Entry {
            key: IKey::new(key),
            rec: latest,
        })
    }

    fn add_live(&mut self, slot: usize, bytes: u64) {
        let Some(live) = &mut self.live else {
            return;
        };
        if slot >= live.len() {
            if slot >= LIVE_SLOTS {
                self.live = None;
                return;
            }
            live.resize(slot + 1, 0);
        }
        if let Some(n) = live.get_mut(slot) {
            *n += bytes;
        }
    }

    fn add(&mut self, other: &Tally) {
        self.values += other.values;
        self.expiring += other.expiring;
        self.bytes += other.bytes;
        self.put_keys += other.put_keys;
        self.max_revisions = self.max_revisions.max(other.max_revisions);
        self.widest.add(&other.widest);
        match &other.live {
            Some(live) => {
                for (slot, &bytes) in live.iter().enumerate() {
                    self.add_live(slot, bytes);
                }
            }
            None => self.live = None,
        }
    }

    fn new() -> Tally {
        Tally {
            live: Some(Vec::new()),
            ..Tally::default()
        }
    }
}

/// The order a build's keys come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Strictly ascending, as the caller checked (each key above the one
    /// before it: no key can come twice).
    Ascending,
    /// Any order; a key that comes twice fails the build.
    Any,
}

/// Builds an [`Index`] from keys pushed at once (see [`KeyOrder`]).
pub struct BulkBuilder {
    ix: Index,
    /// The hash of each key pushed, by slot.
    hashes: Vec<u64>,
    tally: Tally,
    order: KeyOrder,
}

/// One part of a build filled by one thread ([`BulkBuilder::fill_in_two`]):
/// the slab's and the hashes' slots from where it starts, to fill in order.
pub struct BulkPart<'a> {
    entries: &'a mut [MaybeUninit<Entry>],
    hashes: &'a mut [MaybeUninit<u64>],
    filled: usize,
    hasher: &'a DefaultHashBuilder,
    history: History,
    tally: Tally,
}

impl BulkPart<'_> {
    /// Adds `key` with its retained revisions, oldest first; in an ascending
    /// build the caller has checked that it is above the part's previous
    /// key. Fails if `revs` is empty or the part is full.
    pub fn push_key(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        let (Some(entry), Some(hash)) = (
            self.entries.get_mut(self.filled),
            self.hashes.get_mut(self.filled),
        ) else {
            return Err("more keys than the snapshot said");
        };
        entry.write(self.tally.entry(&mut self.history, key, revs)?);
        hash.write(self.hasher.hash_one(key));
        self.filled += 1;
        Ok(())
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Faults in the part's slots at once, on the thread that fills them.
    fn populate(&mut self) {
        populate_for_writing(self.entries);
        populate_for_writing(self.hashes);
    }
}

impl Drop for BulkPart<'_> {
    fn drop(&mut self) {
        // A part left unfinished (an error) drops what it wrote; a finished
        // one's entries belong to the slab (`filled` is set to 0 first).
        for e in self.entries.iter_mut().take(self.filled) {
            // SAFETY: the first `filled` entries were written by `push_key`
            // and are not part of the slab's length (the build failed), so
            // each is dropped exactly once, here.
            unsafe { e.assume_init_drop() };
        }
    }
}

impl BulkBuilder {
    /// A builder for about `keys` keys, coming in `order`.
    pub fn with_capacity(keys: usize, order: KeyOrder) -> BulkBuilder {
        let hashes = Vec::with_capacity(keys);
        BulkBuilder {
            ix: Index {
                entries: Entries::with_capacity(keys),
                ..Index::default()
            },
            hashes,
            tally: Tally::new(),
            order,
        }
    }

    /// Adds `key` with its retained revisions, oldest first. Fails, adding
    /// nothing, if the build is ascending and `key` is not above the
    /// previous key, or if `revs` is empty.
    pub fn push(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        if self.order == KeyOrder::Ascending
            && self
                .ix
                .entries
                .last()
                .is_some_and(|prev| prev.key.as_bytes() >= key)
        {
            return Err("keys out of order");
        }
        self.push_key(key, revs)
    }

    /// [`BulkBuilder::push`] for a caller that has checked, in an ascending
    /// build, that `key` is above the previous one (an index built from keys
    /// out of order finds wrong answers in its ranges). Fails if `revs` is
    /// empty.
    pub fn push_key(&mut self, key: &[u8], revs: &[RecordRef]) -> Result<(), &'static str> {
        let entry = self.tally.entry(&mut self.ix.history, key, revs)?;
        self.ix.entries.push_unindexed(entry);
        self.hashes.push(self.ix.entries.hash(key));
        Ok(())
    }

    /// Fills the builder (empty so far) with `first + second` keys in two
    /// parts at once: `fill(0, part)` pushes the first `first` keys on this
    /// thread, `fill(1, part)` the `second` after them on another. Fails if
    /// either fails or pushes fewer keys than said, or if the second part's
    /// first key is not above the first part's last.
    pub fn fill_in_two<F>(
        &mut self,
        first: usize,
        second: usize,
        fill: F,
    ) -> Result<(), &'static str>
    where
        F: Fn(usize, &mut BulkPart<'_>) -> Result<(), &'static str> + Sync,
    {
        if !self.hashes.is_empty() || self.ix.entries.slots() != 0 {
            return Err("a parallel fill of a builder already in use");
        }
        let total = first.checked_add(second).ok_or("too many keys")?;
        let (entries_room, hasher) = self.ix.entries.spare(total);
        self.hashes.reserve(total);
        let hashes_room = self.hashes.spare_capacity_mut();
        let hashes_room = hashes_room.get_mut(..total).unwrap_or_default();
        if entries_room.len() != total || hashes_room.len() != total {
            return Err("no room for the snapshot's keys");
        }
        let (e0, e1) = entries_room.split_at_mut(first);
        let (h0, h1) = hashes_room.split_at_mut(first);
        let part = |entries, hashes| BulkPart {
            entries,
            hashes,
            filled: 0,
            hasher,
            history: History::default(),
            tally: Tally::new(),
        };
        let (mut p0, mut p1) = (part(e0, h0), part(e1, h1));
        let fill = &fill;
        let started = Barrier::new(2);
        let (r0, r1) = if two_cores() {
            std::thread::scope(|s| {
                let other = std::thread::Builder::new()
                    .name("logkv-index".into())
                    .spawn_scoped(s, || {
                        started.wait();
                        p1.populate();
                        fill(1, &mut p1)
                    })
                    .map_err(|e| {
                        tracing::warn!(error = %e, "could not start a thread to load an index");
                    });
                // Populating holds the process's memory map for reading
                // throughout; a thread's start changes the map (its signal
                // stack), so it would wait for the whole populate: the
                // other thread populates at the same time only once started.
                // (Nothing between the spawn and this wait may panic: the
                // scope would wait for a thread that waits here.)
                if other.is_ok() {
                    started.wait();
                }
                p0.populate();
                let r0 = fill(0, &mut p0);
                let r1 = other
                    .ok()
                    .map(|h| h.join().unwrap_or(Err("a build thread panicked")));
                (r0, r1)
            })
        } else {
            p0.populate();
            (fill(0, &mut p0), None)
        };
        // One thread, or the second could not start.
        let r1 = r1.unwrap_or_else(|| {
            p1.populate();
            fill(1, &mut p1)
        });
        r0?;
        r1?;
        if p0.filled != first || p1.filled != second {
            return Err("fewer keys than the snapshot said");
        }
        let (t0, t1) = (std::mem::take(&mut p0.tally), std::mem::take(&mut p1.tally));
        let (h0, h1) = (
            std::mem::take(&mut p0.history),
            std::mem::take(&mut p1.history),
        );
        // The entries now belong to the slab, not to the parts.
        p0.filled = 0;
        p1.filled = 0;
        drop((p0, p1));
        // SAFETY: both parts wrote exactly their `first` and `second` slots
        // (checked above), the first `total` of the slab's spare capacity,
        // and no longer own them (`filled` is 0).
        unsafe {
            self.ix
                .entries
                .assume_pushed(total, t0.widest.key_len.max(t1.widest.key_len));
        };
        // SAFETY: likewise, the parts wrote the first `total` hashes.
        unsafe { self.hashes.set_len(total) };
        // The second part's older revisions come after the first's.
        let shift = h0.len_slots();
        self.ix.history = h0;
        if h1.len_slots() > 0 {
            self.ix.history.append(h1);
            for slot in slot_of(first)..slot_of(total) {
                let rec = &mut self.ix.entries.get_mut(slot).rec;
                if rec.older != 0 {
                    rec.older += shift;
                }
            }
        }
        self.tally.add(&t0);
        self.tally.add(&t1);
        if first > 0 && second > 0 && self.order == KeyOrder::Ascending {
            let entries = &self.ix.entries;
            if entries.key(slot_of(first - 1)) >= entries.key(slot_of(first)) {
                return Err("keys out of order");
            }
        }
        Ok(())
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Bytes of the revisions pushed so far, by segment slot (`None` if a
    /// slot was too large to count them in a vector).
    pub(crate) fn live_bytes_by_slot(&self) -> Option<&[u64]> {
        self.tally.live.as_deref()
    }

    /// Most revisions any key pushed so far has.
    pub fn max_revisions(&self) -> usize {
        self.tally.max_revisions
    }

    /// The index, with its hash table; its key order is built on first use
    /// (after an ascending build the slab holds the keys in order: see
    /// `Index::order`). Fails if a key came twice (a build in any order).
    pub fn finish(mut self) -> Result<Index, &'static str> {
        let ix = &mut self.ix;
        ix.values = self.tally.values;
        ix.expiring = self.tally.expiring;
        ix.bytes = self.tally.bytes;
        ix.put_keys = self.tally.put_keys;
        ix.widest = self.tally.widest;
        ix.entries.advise_huge_pages();
        let unique = match self.order {
            // Each key is above the one before: none came twice.
            KeyOrder::Ascending => Unique::Known,
            KeyOrder::Any => Unique::Check,
        };
        ix.entries.index_all(&self.hashes, unique)?;
        Ok(self.ix)
    }
}

/// Keys from which a build (the slab's fill, the hash tables) is worth a
/// second thread (its start costs tens of microseconds).
pub const PARALLEL_FROM: usize = 1 << 16;
