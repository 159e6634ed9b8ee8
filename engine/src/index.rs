//! The in-memory index of one bucket: key → its retained revisions and where
//! they are in the log. Values stay on disk.
//!
//! Memory is the design constraint (about 100 bytes per key for a million
//! 16-byte keys): keys of up to 22 bytes live inside the tree node ([`IKey`]),
//! so comparisons never chase a pointer, and each key's latest revision is a
//! 32-byte [`RecordRef`] in the node: where the record is in the log, with the
//! revision, op and expiry that reads filter on without touching the log.
//! Older retained revisions (history > 1) live in a side slab, referenced by a
//! 32-bit slot number.
//!
//! Retention is applied here and only here, by [`Index::apply`], both when a
//! write happens and when recovery replays the log, so the two always agree.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::log::record::Op;

const INLINE: usize = 22;

/// A key, stored inline when it is at most 22 bytes.
#[derive(Clone)]
pub enum IKey {
    /// Up to 22 bytes, stored in place: length and bytes.
    Inline(u8, [u8; INLINE]),
    /// Longer keys, on the heap.
    Heap(Box<[u8]>),
}

impl IKey {
    /// Stores `key`, inline if it fits.
    pub fn new(key: &[u8]) -> IKey {
        let mut buf = [0; INLINE];
        match (buf.get_mut(..key.len()), u8::try_from(key.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(key);
                IKey::Inline(len, buf)
            }
            _ => IKey::Heap(key.into()),
        }
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IKey::Inline(len, buf) => buf.get(..usize::from(*len)).unwrap_or_default(),
            IKey::Heap(b) => b,
        }
    }

    /// The key as text (keys are validated printable ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl PartialEq for IKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for IKey {}
impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl Borrow<[u8]> for IKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl std::fmt::Debug for IKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The index's reference to one retained record of a key: where the record
/// is in the log (segment slot, offset, length) and what reads filter on
/// without reading it (revision, op, expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// The bucket revision of the record.
    pub revision: u64,
    /// When this entry stops being visible (per-key TTL or bucket max age), ms; 0 for never.
    pub expires_ms: u64,
    /// Slot of the segment holding the record (see [`crate::log::segment::Segment::slot`]).
    pub slot: u32,
    /// Offset of the record in that segment.
    pub offset: u32,
    /// Record length (30 bits) and op (2 bits).
    len_op: u32,
    /// In the tree: slab slot + 1 of the older revisions, 0 for none. Unused elsewhere.
    older: u32,
}

impl RecordRef {
    /// A revision at `offset` of segment `slot`, `len` bytes long. The
    /// caller guarantees `offset` fits 32 bits (segments are at most 4 GiB)
    /// and `len` 30 bits (a record is at most a key, a 256 MiB value and a
    /// header).
    #[allow(
        clippy::cast_possible_truncation,
        reason = "offset and len are in range by the caller's guarantee (checked in debug builds)"
    )]
    pub fn new(
        revision: u64,
        expires_ms: u64,
        slot: u32,
        offset: u64,
        len: usize,
        op: Op,
    ) -> RecordRef {
        debug_assert!(len < 1 << 30 && u32::try_from(offset).is_ok());
        RecordRef {
            revision,
            expires_ms,
            slot,
            offset: offset as u32,
            len_op: (len as u32) << 2 | op as u32,
            older: 0,
        }
    }

    /// Length of the record in the log.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        (self.len_op >> 2) as usize
    }

    /// The op of the record.
    pub fn op(&self) -> Op {
        match self.len_op & 3 {
            1 => Op::Put,
            2 => Op::Del,
            _ => Op::Purge,
        }
    }

    /// Whether the entry has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    /// Whether this is a value (a PUT) visible at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.op() == Op::Put && !self.expired(now_ms)
    }

    fn bare(mut self) -> RecordRef {
        self.older = 0;
        self
    }
}

/// The index of one bucket.
#[derive(Default)]
pub struct Index {
    map: BTreeMap<IKey, RecordRef>,
    slab: Vec<Vec<RecordRef>>,
    free: Vec<u32>,
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
}

impl Index {
    /// The latest revision of `key`.
    #[inline]
    pub fn latest(&self, key: &[u8]) -> Option<RecordRef> {
        self.map.get(key).map(|r| r.bare())
    }

    /// Every retained revision of `key`, oldest first.
    pub fn revisions(&self, key: &[u8]) -> Vec<RecordRef> {
        self.map
            .get(key)
            .map(|r| self.revs_of(r))
            .unwrap_or_default()
    }

    fn revs_of(&self, latest: &RecordRef) -> Vec<RecordRef> {
        let mut out = match latest.older {
            0 => Vec::with_capacity(1),
            slot => self.older(slot).clone(),
        };
        out.push(latest.bare());
        out
    }

    /// Calls `f` with every retained revision of `latest`'s key, oldest first.
    pub fn for_each_rev(&self, latest: &RecordRef, mut f: impl FnMut(&RecordRef)) {
        if latest.older != 0 {
            self.older(latest.older).iter().for_each(&mut f);
        }
        f(&latest.bare());
    }

    /// The retained revision `revision` of `key`.
    pub fn find(&self, key: &[u8], revision: u64) -> Option<RecordRef> {
        let latest = self.map.get(key)?;
        if latest.revision == revision {
            return Some(latest.bare());
        }
        if latest.older == 0 {
            return None;
        }
        self.older(latest.older)
            .iter()
            .find(|r| r.revision == revision)
            .copied()
    }

    /// Keys and latest revisions in `[from, to)` order.
    pub fn range<'a>(
        &'a self,
        from: Bound<&'a [u8]>,
        to: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a IKey, &'a RecordRef)> + 'a {
        self.map.range::<[u8], _>((from, to))
    }

    /// Keys starting with `prefix`, in order.
    pub fn prefixed<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a IKey, &'a RecordRef)> + 'a {
        self.map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.as_bytes().starts_with(prefix))
    }

    /// Number of keys with at least one retained revision.
    pub fn key_count(&self) -> usize {
        self.map.len()
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

    fn retire(&mut self, rev: RecordRef, removed: &mut Vec<RecordRef>) {
        self.values -= 1;
        self.expiring -= u64::from(rev.expires_ms != 0);
        self.bytes -= rev.len() as u64;
        *self.dead.entry(rev.slot).or_default() += rev.len() as u64;
        removed.push(rev.bare());
    }

    /// The older revisions in slab slot `slot` (a key's `older`: 1-based).
    #[allow(
        clippy::indexing_slicing,
        reason = "a non-zero `older` is a slot alloc_slot handed out (1..=slab.len()) and not freed while a key holds it"
    )]
    fn older(&self, slot: u32) -> &Vec<RecordRef> {
        &self.slab[slot as usize - 1]
    }

    /// [`Index::older`], to change.
    #[allow(
        clippy::indexing_slicing,
        reason = "a non-zero `older` is a slot alloc_slot handed out (1..=slab.len()) and not freed while a key holds it"
    )]
    fn older_mut(&mut self, slot: u32) -> &mut Vec<RecordRef> {
        &mut self.slab[slot as usize - 1]
    }

    /// A free slab slot (1-based).
    fn alloc_slot(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        self.slab.push(Vec::new());
        slab_slot(self.slab.len())
    }

    /// Frees slab slot `slot`; returns what it held.
    fn free_slot(&mut self, slot: u32) -> Vec<RecordRef> {
        self.free.push(slot);
        std::mem::take(self.older_mut(slot))
    }

    /// Applies a new revision of `key` with retention: a PURGE drops every
    /// earlier revision; otherwise the key keeps its last `history` revisions.
    /// Revisions that leave the index are appended to `removed`.
    pub fn apply(
        &mut self,
        key: &[u8],
        new: RecordRef,
        history: usize,
        removed: &mut Vec<RecordRef>,
    ) {
        let new = new.bare();
        self.values += 1;
        self.expiring += u64::from(new.expires_ms != 0);
        self.bytes += new.len() as u64;
        let is_put = u64::from(new.op() == Op::Put);
        let Some(slot) = self.map.get_mut(key) else {
            self.map.insert(IKey::new(key), new);
            self.put_keys += is_put;
            return;
        };
        let old = *slot;
        self.put_keys = self.put_keys + is_put - u64::from(old.op() == Op::Put);
        if new.op() == Op::Purge || history <= 1 {
            *slot = new;
            self.retire(old.bare(), removed);
            if old.older != 0 {
                for r in self.free_slot(old.older) {
                    self.retire(r, removed);
                }
            }
            return;
        }
        let s = if old.older == 0 {
            self.alloc_slot()
        } else {
            old.older
        };
        let mut older = std::mem::take(self.older_mut(s));
        older.push(old.bare());
        let excess = (older.len() + 1).saturating_sub(history);
        for r in older.drain(..excess) {
            self.retire(r, removed);
        }
        *self.older_mut(s) = older;
        let mut latest = new;
        latest.older = s;
        // `map.get_mut` again: `retire` needed `&mut self`.
        if let Some(slot) = self.map.get_mut(key) {
            *slot = latest;
        }
    }

    /// Removes the oldest revisions of `key` for which `drop` says yes, stopping
    /// at the first it keeps; removes the key if none is left.
    pub fn drop_oldest_while(
        &mut self,
        key: &[u8],
        mut drop: impl FnMut(&RecordRef) -> bool,
        removed: &mut Vec<RecordRef>,
    ) {
        let Some(latest) = self.map.get(key).copied() else {
            return;
        };
        let mut older = if latest.older == 0 {
            Vec::new()
        } else {
            self.free_slot(latest.older)
        };
        let n = older.iter().take_while(|r| drop(r)).count();
        let all_older_gone = n == older.len();
        for r in older.drain(..n) {
            self.retire(r, removed);
        }
        if all_older_gone && drop(&latest.bare()) {
            self.map.remove(key);
            self.put_keys -= u64::from(latest.op() == Op::Put);
            self.retire(latest.bare(), removed);
            return;
        }
        let mut keep = latest.bare();
        if !older.is_empty() {
            let s = self.alloc_slot();
            *self.older_mut(s) = older;
            keep.older = s;
        }
        self.map.insert(IKey::new(key), keep);
    }

    /// Moves revision `revision` of `key` from `(slot, offset)` `from` to `to`
    /// (after compaction copied it). Returns false if the index no longer holds
    /// it there (it was retired meanwhile).
    pub fn relocate(
        &mut self,
        key: &[u8],
        revision: u64,
        from: (u32, u32),
        to: (u32, u32),
    ) -> bool {
        let Some(latest) = self.map.get_mut(key) else {
            return false;
        };
        let fix = |r: &mut RecordRef| {
            if r.revision == revision && (r.slot, r.offset) == from {
                (r.slot, r.offset) = to;
                true
            } else {
                false
            }
        };
        if fix(latest) {
            return true;
        }
        match latest.older {
            0 => false,
            s => self.older_mut(s).iter_mut().any(fix),
        }
    }

    /// Builds an index from keys in ascending order, each with its revisions
    /// oldest first (already retained). Bulk building fills tree nodes fully.
    pub fn from_sorted(entries: Vec<(IKey, Vec<RecordRef>)>) -> Index {
        let mut ix = Index::default();
        let mut slab = Vec::new();
        let map = entries
            .into_iter()
            .map(|(key, mut revs)| {
                for r in &revs {
                    ix.values += 1;
                    ix.bytes += r.len() as u64;
                    ix.expiring += u64::from(r.expires_ms != 0);
                }
                let mut latest = revs
                    .pop()
                    .unwrap_or(RecordRef::new(0, 0, 0, 0, 0, Op::Del))
                    .bare();
                ix.put_keys += u64::from(latest.op() == Op::Put);
                if !revs.is_empty() {
                    slab.push(revs);
                    latest.older = slab_slot(slab.len());
                }
                (key, latest)
            })
            .collect();
        ix.map = map;
        ix.slab = slab;
        ix
    }

    /// Sets each segment's dead bytes to its size less what is retained in it.
    pub fn recompute_dead(&mut self, sizes: &HashMap<u32, u64>) {
        let mut live: HashMap<u32, u64> = HashMap::new();
        for r in self.all_revs() {
            *live.entry(r.slot).or_default() += r.len() as u64;
        }
        self.dead = sizes
            .iter()
            .map(|(slot, size)| {
                (
                    *slot,
                    size.saturating_sub(live.get(slot).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, d)| *d > 0)
            .collect();
    }

    /// Every retained revision, in no particular order.
    pub fn all_revs(&self) -> impl Iterator<Item = RecordRef> + '_ {
        self.map
            .values()
            .map(|r| r.bare())
            .chain(self.slab.iter().flatten().copied())
    }
}

/// The 1-based slab slot of the slab's `len`-th entry.
#[allow(
    clippy::cast_possible_truncation,
    reason = "one slab entry per key with older revisions: four billion keys would take hundreds of GiB of index first"
)]
fn slab_slot(len: usize) -> u32 {
    len as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(revision: u64, op: Op) -> RecordRef {
        RecordRef::new(revision, 0, 1, revision * 100, 50, op)
    }

    #[test]
    fn sizes_stay_small() {
        assert_eq!(std::mem::size_of::<IKey>(), 24);
        assert_eq!(std::mem::size_of::<RecordRef>(), 32);
    }

    #[test]
    fn inline_and_heap_keys_order_as_bytes() {
        let keys = [
            "b",
            "a",
            &"z".repeat(40),
            "aa",
            &"a".repeat(23),
            &"a".repeat(22),
        ];
        let mut ik: Vec<IKey> = keys.iter().map(|k| IKey::new(k.as_bytes())).collect();
        ik.sort();
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        assert_eq!(ik.iter().map(IKey::as_str).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn history_one_replaces() {
        let mut ix = Index::default();
        let mut removed = vec![];
        ix.apply(b"k", rev(1, Op::Put), 1, &mut removed);
        ix.apply(b"k", rev(2, Op::Put), 1, &mut removed);
        assert_eq!(removed, vec![rev(1, Op::Put)]);
        assert_eq!(ix.revisions(b"k"), vec![rev(2, Op::Put)]);
        assert_eq!(ix.values(), 1);
        assert_eq!(ix.bytes(), 50);
        assert_eq!(ix.dead_bytes()[&1], 50);
    }

    #[test]
    fn history_keeps_last_n_and_purge_drops_all() {
        let mut ix = Index::default();
        let mut removed = vec![];
        for r in 1..=5 {
            ix.apply(b"k", rev(r, Op::Put), 3, &mut removed);
        }
        assert_eq!(
            ix.revisions(b"k")
                .iter()
                .map(|r| r.revision)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(removed.len(), 2);
        ix.apply(b"k", rev(6, Op::Del), 3, &mut removed);
        assert_eq!(
            ix.revisions(b"k")
                .iter()
                .map(|r| r.revision)
                .collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert_eq!(ix.find(b"k", 4).map(|r| r.op()), Some(Op::Put));
        assert_eq!(ix.find(b"k", 3), None);
        assert_eq!(ix.put_keys(), 0, "latest is a DEL");
        ix.apply(b"k", rev(7, Op::Purge), 3, &mut removed);
        assert_eq!(ix.revisions(b"k"), vec![rev(7, Op::Purge)]);
        assert_eq!(ix.values(), 1);
        assert_eq!(removed.len(), 6);
        // The slab slot was freed and is reused.
        ix.apply(b"k", rev(8, Op::Put), 3, &mut removed);
        ix.apply(b"j", rev(9, Op::Put), 3, &mut removed);
        ix.apply(b"j", rev(10, Op::Put), 3, &mut removed);
        assert_eq!(ix.slab.len(), 2);
        assert_eq!(ix.put_keys(), 2);
        ix.drop_oldest_while(b"j", |_| true, &mut removed);
        assert_eq!(ix.put_keys(), 1);
    }

    #[test]
    fn drop_oldest_while_removes_prefix_and_key() {
        let mut ix = Index::default();
        let mut removed = vec![];
        for r in 1..=4 {
            ix.apply(b"k", rev(r, Op::Put), 4, &mut removed);
        }
        ix.drop_oldest_while(b"k", |r| r.revision <= 2, &mut removed);
        assert_eq!(
            ix.revisions(b"k")
                .iter()
                .map(|r| r.revision)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        ix.drop_oldest_while(b"k", |_| true, &mut removed);
        assert!(ix.latest(b"k").is_none());
        assert_eq!(ix.values(), 0);
        assert_eq!(ix.bytes(), 0);
    }

    #[test]
    fn relocate_moves_only_named_records() {
        let mut ix = Index::default();
        let mut removed = vec![];
        ix.apply(b"a", rev(1, Op::Put), 2, &mut removed);
        ix.apply(b"a", rev(2, Op::Put), 2, &mut removed);
        assert!(ix.relocate(b"a", 1, (1, 100), (7, 8)));
        assert!(!ix.relocate(b"a", 1, (1, 100), (9, 9)), "already moved");
        assert!(!ix.relocate(b"b", 1, (1, 100), (9, 9)));
        let revs = ix.revisions(b"a");
        assert_eq!((revs[0].slot, revs[0].offset), (7, 8));
        assert_eq!((revs[1].slot, revs[1].offset), (1, 200));
    }
}
