//! The index's entries: one per key (the key and its latest revision) in a
//! slab addressed by `u32` slots, and a hash table of slots for point
//! lookups.
//!
//! The table (hashbrown's `HashTable<u32>`) holds slots only, 4 bytes and a
//! control byte each, and compares a probe's key through the slab: a lookup
//! costs a hash, a probe of the control bytes and one slab entry, where a
//! tree costs a key comparison per level. The hash is foldhash with a
//! per-process random seed (keys come from clients).
//!
//! The table is two tables, each holding the keys whose hash has one value
//! of bit [`SHARD_BIT`] (a bit hashbrown uses neither for a key's place nor
//! for its control byte): a snapshot's load builds the two at once on two
//! threads, and a table grown by inserts moves half the slots at a time.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use std::mem::MaybeUninit;

use super::build::PARALLEL_FROM;
use super::key::{IKey, INLINE};
use super::pages::{advise_huge_pages, TableAlloc};
use super::record::RecordRef;
use super::slot_of;
use crate::prefetch;

/// A key and its latest revision (`rec.older` links the older ones).
pub(super) struct Entry {
    /// The key.
    pub key: IKey,
    /// Its latest revision; revision 0 marks a free slot.
    pub rec: RecordRef,
}

/// Entries by slot, and by key through the hash table.
#[derive(Default)]
pub(super) struct Entries {
    slab: Vec<Entry>,
    /// Whether a key on the heap may be in the slab (one longer than
    /// [`INLINE`] was stored): if not, dropping the slab frees it without a
    /// walk of its entries (see the `Drop` below).
    heap_keys: bool,
    /// Slots of removed entries, reused first.
    free: Vec<u32>,
    /// Slots by key hash, in memory advised huge pages (see `pages.rs`):
    /// the table of a key is `tables[shard(hash)]`.
    tables: [Table; SHARDS],
    hasher: DefaultHashBuilder,
}

type Table = HashTable<u32, TableAlloc>;

/// Tables the slots are spread over.
const SHARDS: usize = 2;

/// The bit of a key's hash that picks its table: hashbrown places a key by
/// the hash's low bits (as many as the table's size needs, far fewer than
/// 32) and tags it with its top 7 (of its low 32 on 32-bit targets), so this
/// bit is left to pick the table.
const SHARD_BIT: u32 = 32;

/// The table of a key whose hash is `hash`.
#[inline]
fn shard(hash: u64) -> usize {
    (hash >> SHARD_BIT) as usize & (SHARDS - 1)
}

impl Entries {
    /// Room for `n` entries, to fill at once (a snapshot's load): backed by
    /// small pages, see [`Entries::advise_huge_pages`].
    pub fn with_capacity(n: usize) -> Entries {
        let mut entries = Entries::default();
        entries.slab = Vec::with_capacity(n);
        entries
    }

    /// Whether a key on the heap may be in the slab.
    #[cfg(test)]
    pub fn may_hold_heap_keys(&self) -> bool {
        self.heap_keys
    }

    /// Notes that a key `len` bytes long enters the slab.
    #[inline]
    fn holds_key_of(&mut self, len: usize) {
        self.heap_keys |= len > INLINE;
    }

    /// Advises huge pages for the slab once it is filled: the kernel's
    /// background collapse turns its small pages into huge ones later, for
    /// lookups, without the page faults of a load waiting on huge pages (see
    /// `pages.rs`).
    pub fn advise_huge_pages(&self) {
        advise_huge_pages(&self.slab);
    }

    /// The entry in `slot`.
    #[inline]
    #[allow(
        clippy::indexing_slicing,
        reason = "slots come from this slab (insert, find, the order, the table) and stay valid while an entry holds them"
    )]
    pub fn get(&self, slot: u32) -> &Entry {
        &self.slab[slot as usize]
    }

    /// The entry in `slot`, to change (never its key).
    #[inline]
    #[allow(
        clippy::indexing_slicing,
        reason = "slots come from this slab (insert, find, the order, the table) and stay valid while an entry holds them"
    )]
    pub fn get_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.slab[slot as usize]
    }

    /// The entry in `slot`, to change (never its key); `None` past the slab.
    pub fn get_checked_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slab.get_mut(slot as usize)
    }

    /// The entries in slots `slots` (those past the slab left out), free ones
    /// left out, with their slots.
    pub fn in_slots(
        &self,
        slots: std::ops::Range<u32>,
    ) -> impl Iterator<Item = (u32, &Entry)> + '_ {
        let end = (slots.end as usize).min(self.slab.len());
        let start = (slots.start as usize).min(end);
        self.slab
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .zip(slots.start..)
            .filter(|(e, _)| e.rec.revision != 0)
            .map(|(e, slot)| (slot, e))
    }

    /// Starts loading the entry in `slot` (its key, if inline) into the CPU
    /// cache: only a hint, see [`crate::prefetch`].
    #[inline]
    pub fn ask(&self, slot: u32) {
        if let Some(entry) = self.slab.get(slot as usize) {
            prefetch::value(entry);
        }
    }

    /// The key in `slot`.
    #[inline]
    pub fn key(&self, slot: u32) -> &[u8] {
        self.get(slot).key.as_bytes()
    }

    /// The key in `slot`, if the slot holds an entry.
    pub fn live_key(&self, slot: u32) -> Option<&[u8]> {
        self.slab
            .get(slot as usize)
            .filter(|e| e.rec.revision != 0)
            .map(|e| e.key.as_bytes())
    }

    /// The hash of `key` in the table.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`'s entry.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<u32> {
        self.find_hashed(key, self.hash(key))
    }

    /// The slot of `key`'s entry; `hash` is [`Entries::hash`] of `key`.
    #[inline]
    pub fn find_hashed(&self, key: &[u8], hash: u64) -> Option<u32> {
        self.table(hash)
            .find(hash, |&s| self.key(s) == key)
            .copied()
    }

    /// The table of a key whose hash is `hash`.
    #[inline]
    #[allow(
        clippy::indexing_slicing,
        reason = "shard() masks to SHARDS - 1, the array's last index"
    )]
    fn table(&self, hash: u64) -> &Table {
        &self.tables[shard(hash)]
    }

    /// Starts loading into the CPU cache the entry a lookup of `key` will
    /// most likely compare (the first of the table whose hash tag matches,
    /// found without comparing keys); returns the hash of `key` for
    /// [`Entries::find_hashed`]. The table's own lines are loaded on the way.
    #[inline]
    pub fn prefetch(&self, key: &[u8]) -> u64 {
        let hash = self.hash(key);
        if let Some(&slot) = self.table(hash).iter_hash(hash).next() {
            self.ask(slot);
        }
        hash
    }

    /// Adds an entry for `key`, which has none; returns its slot. `hash` is
    /// [`Entries::hash`] of `key` (the caller's lookup computed it).
    pub fn insert(&mut self, key: &[u8], hash: u64, rec: RecordRef) -> u32 {
        self.holds_key_of(key.len());
        let entry = Entry {
            key: IKey::new(key),
            rec,
        };
        let slot = if let Some(s) = self.free.pop() {
            *self.get_mut(s) = entry;
            s
        } else {
            let capacity = self.slab.capacity();
            self.slab.push(entry);
            if self.slab.capacity() != capacity {
                advise_huge_pages(&self.slab);
            }
            slot_of(self.slab.len() - 1)
        };
        let Entries {
            slab,
            tables,
            hasher,
            ..
        } = self;
        if let Some(table) = tables.get_mut(shard(hash)) {
            table.insert_unique(hash, slot, |&s| rehash(hasher, slab, s));
        }
        slot
    }

    /// Removes the entry in `slot`; its slot may be reused.
    pub fn remove(&mut self, slot: u32) {
        let key = std::mem::replace(&mut self.get_mut(slot).key, IKey::new(b""));
        let hash = self.hasher.hash_one(key.as_bytes());
        if let Some(table) = self.tables.get_mut(shard(hash)) {
            if let Ok(found) = table.find_entry(hash, |&s| s == slot) {
                found.remove();
            }
        }
        self.get_mut(slot).rec.revision = 0;
        self.free.push(slot);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tables.iter().map(HashTable::len).sum()
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.slab.iter().filter(|e| e.rec.revision != 0)
    }

    /// Every entry, to change (never their keys), in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> + '_ {
        self.slab.iter_mut().filter(|e| e.rec.revision != 0)
    }

    /// Appends an entry without indexing it by key: bulk building calls
    /// [`Entries::index_all`] once at the end.
    pub fn push_unindexed(&mut self, entry: Entry) -> u32 {
        self.heap_keys |= matches!(entry.key, IKey::Heap(_));
        self.slab.push(entry);
        slot_of(self.slab.len() - 1)
    }

    /// Room for `n` entries past the last, to be written in place (then
    /// [`Entries::assume_pushed`]), and the hasher of their keys. Small pages,
    /// as [`Entries::with_capacity`].
    pub fn spare(&mut self, n: usize) -> (&mut [MaybeUninit<Entry>], &DefaultHashBuilder) {
        self.slab.reserve(n);
        let room = self.slab.spare_capacity_mut();
        let len = room.len().min(n);
        (room.get_mut(..len).unwrap_or_default(), &self.hasher)
    }

    /// Counts the first `n` entries of [`Entries::spare`] as pushed; none
    /// of their keys is longer than `longest_key` bytes.
    ///
    /// # Safety
    /// They must all have been written, and nothing else may own them.
    pub unsafe fn assume_pushed(&mut self, n: usize, longest_key: usize) {
        debug_assert!(self.slab.len() + n <= self.slab.capacity());
        self.holds_key_of(longest_key);
        // SAFETY: the caller guarantees the `n` entries past the length are
        // initialised and owned by no one else; they lie within the capacity.
        unsafe { self.slab.set_len(self.slab.len() + n) };
    }

    /// The last entry appended.
    pub fn last(&self) -> Option<&Entry> {
        self.slab.last()
    }

    /// Number of slots (entries and free ones).
    pub fn slots(&self) -> u32 {
        slot_of(self.slab.len())
    }

    /// Builds the hash tables of a slab filled by [`Entries::push_unindexed`];
    /// `hashes[i]` is [`Entries::hash`] of slot `i`'s key (computed while the
    /// key was at hand). A large slab's two tables are built at once, on two
    /// threads when the process may use two cores. Fails if `unique` says to
    /// check and a key is in two slots (the tables are then incomplete: the
    /// entries are to be dropped).
    pub fn index_all(&mut self, hashes: &[u64], unique: Unique) -> Result<(), &'static str> {
        self.index_all_on(hashes, unique, hashes.len() >= PARALLEL_FROM && two_cores())
    }

    /// [`Entries::index_all`], on two threads if `two_threads`.
    fn index_all_on(
        &mut self,
        hashes: &[u64],
        unique: Unique,
        two_threads: bool,
    ) -> Result<(), &'static str> {
        let Entries {
            slab,
            tables,
            hasher,
            ..
        } = self;
        let slab: &[Entry] = slab;
        let hashes = hashes.get(..slab.len()).unwrap_or(hashes);
        let second = hashes.iter().filter(|&&h| shard(h) == 1).count();
        let build = |table: &mut Table, which: usize, keys: usize| {
            build_table(table, which, keys, hashes, slab, hasher, unique)
        };
        let [t0, t1] = tables;
        let first = hashes.len() - second;
        if two_threads {
            let (r0, r1) = std::thread::scope(|s| {
                let other = std::thread::Builder::new()
                    .name("logkv-index".into())
                    .spawn_scoped(s, || build(t1, 1, second))
                    .map_err(|e| {
                        tracing::warn!(error = %e, "could not start a thread to build an index");
                    });
                let r0 = build(t0, 0, first);
                let r1 = other
                    .ok()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                (r0, r1)
            });
            r0?;
            r1.unwrap_or_else(|| build(t1, 1, second))
        } else {
            build(t0, 0, first)?;
            build(t1, 1, second)
        }
    }
}

// The walk the drop below skips would drop only keys: an entry must own
// nothing else.
const _: () = assert!(!std::mem::needs_drop::<RecordRef>());

impl Drop for Entries {
    fn drop(&mut self) {
        if !self.heap_keys {
            // Every key is inline and an entry owns nothing else: the slab
            // is freed without a walk of its entries (a walk read the whole
            // slab, 56 MB for a million keys, and took half the time of a
            // store's drop after its close).
            // SAFETY: a length of 0 is within the capacity, and it only
            // leaves the entries undropped, which own no memory.
            unsafe { self.slab.set_len(0) };
        }
    }
}

/// Fills `table`, number `which`, with the `keys` slots whose key hash in
/// `by_slot` is its own (see [`Entries::index_all`]).
#[allow(
    clippy::indexing_slicing,
    reason = "the slots compared are this slab's: `by_slot` is no longer than it"
)]
fn build_table(
    table: &mut Table,
    which: usize,
    keys: usize,
    by_slot: &[u64],
    slab: &[Entry],
    hasher: &DefaultHashBuilder,
    unique: Unique,
) -> Result<(), &'static str> {
    // Filled with small pages, then advised for the kernel's background
    // collapse, as the slab is (see `pages.rs`).
    table.allocator().defer(true);
    table.clear();
    table.reserve(keys, |&s| rehash(hasher, slab, s));
    let mut result = Ok(());
    for (i, &hash) in by_slot.iter().enumerate() {
        if shard(hash) != which {
            continue;
        }
        let slot = slot_of(i);
        match unique {
            Unique::Known => {
                table.insert_unique(hash, slot, |&s| rehash(hasher, slab, s));
            }
            Unique::Check => {
                // One probe either way: a key met before is found where the
                // new slot would go. The new key is read only for a slot
                // whose control byte matches (a few in a hundred): reading
                // it for every slot walked the whole slab, the build's
                // largest cost.
                let same = |&s: &u32| slab[s as usize].key == slab[i].key;
                match table.entry(hash, same, |&s| rehash(hasher, slab, s)) {
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(slot);
                    }
                    hashbrown::hash_table::Entry::Occupied(_) => {
                        result = Err("a key is in the snapshot twice");
                        break;
                    }
                }
            }
        }
    }
    table.allocator().defer(false);
    table.allocator().advise_now();
    result
}

/// Whether [`Entries::index_all`] is to check that no key is in two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unique {
    /// The keys are known to be distinct (they came in ascending order).
    Known,
    /// They are to be checked (a slab filled in any order).
    Check,
}

/// Whether the process may run on two cores at least.
pub(crate) fn two_cores() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// The hash of the key in `slot`, for the table's growth.
#[allow(
    clippy::indexing_slicing,
    reason = "the table holds only slots of this slab"
)]
fn rehash(hasher: &DefaultHashBuilder, slab: &[Entry], slot: u32) -> u64 {
    hasher.hash_one(slab[slot as usize].key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::Op;

    fn rec(revision: u64) -> RecordRef {
        RecordRef::new(revision, 0, 1, 0, 10, Op::Put)
    }

    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:08}").into_bytes()
    }

    /// A bulk build, on one thread or two, spreads the keys over both
    /// tables and finds every one; removals, and inserts that make both
    /// tables grow, keep them found.
    #[test]
    fn both_tables_find_every_key_after_a_bulk_build_and_changes() {
        for (n, two_threads) in [(1_000, false), (1_000, true), (PARALLEL_FROM + 7, true)] {
            let ctx = format!("{n} keys, two threads: {two_threads}");
            let mut e = Entries::with_capacity(n);
            let mut hashes = Vec::with_capacity(n);
            for i in 0..n {
                let k = key(i);
                e.push_unindexed(Entry {
                    key: IKey::new(&k),
                    rec: rec(i as u64 + 1),
                });
                hashes.push(e.hash(&k));
            }
            e.index_all_on(&hashes, Unique::Known, two_threads).unwrap();
            assert_eq!(e.len(), n, "{ctx}");
            for t in &e.tables {
                assert!(t.len() > n / 3, "{ctx}: {} keys in one table", t.len());
            }
            for i in 0..n {
                assert_eq!(e.find(&key(i)), Some(slot_of(i)), "{ctx}: key {i}");
            }
            assert_eq!(e.find(b"absent"), None, "{ctx}");

            for i in (0..n).step_by(3) {
                e.remove(slot_of(i));
            }
            let capacity: Vec<usize> = e.tables.iter().map(HashTable::capacity).collect();
            let added = 2 * n;
            for i in n..n + added {
                let k = key(i);
                let hash = e.hash(&k);
                e.insert(&k, hash, rec(i as u64 + 1));
            }
            for (t, before) in e.tables.iter().zip(capacity) {
                assert!(t.capacity() > before, "{ctx}: a table did not grow");
            }
            assert_eq!(e.len(), n - n.div_ceil(3) + added, "{ctx}");
            for i in 0..n + added {
                let found = e.find(&key(i));
                if i < n && i % 3 == 0 {
                    assert_eq!(found, None, "{ctx}: key {i} was removed");
                } else {
                    let slot = found.unwrap_or_else(|| panic!("{ctx}: key {i} lost"));
                    assert_eq!(e.key(slot), &key(i)[..], "{ctx}");
                }
            }
        }
    }
}
