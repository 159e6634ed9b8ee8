//! The index's unit tests, and a property test against a naive model.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

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
    ix.apply(b"k", rev(1, Op::Put), 0, 1, &mut removed);
    ix.apply(b"k", rev(2, Op::Put), 0, 1, &mut removed);
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
        ix.apply(b"k", rev(r, Op::Put), 0, 3, &mut removed);
    }
    assert_eq!(
        ix.revisions(b"k")
            .iter()
            .map(|r| r.revision)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(removed.len(), 2);
    ix.apply(b"k", rev(6, Op::Del), 0, 3, &mut removed);
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
    ix.apply(b"k", rev(7, Op::Purge), 0, 3, &mut removed);
    assert_eq!(ix.revisions(b"k"), vec![rev(7, Op::Purge)]);
    assert_eq!(ix.values(), 1);
    assert_eq!(removed.len(), 6);
    // The slab slot was freed and is reused.
    ix.apply(b"k", rev(8, Op::Put), 0, 3, &mut removed);
    ix.apply(b"j", rev(9, Op::Put), 0, 3, &mut removed);
    ix.apply(b"j", rev(10, Op::Put), 0, 3, &mut removed);
    assert_eq!(ix.history.slots(), 2);
    assert_eq!(ix.put_keys(), 2);
    ix.drop_oldest_while(b"j", |_| true, &mut removed);
    assert_eq!(ix.put_keys(), 1);
}

#[test]
fn drop_oldest_while_removes_prefix_and_key() {
    let mut ix = Index::default();
    let mut removed = vec![];
    for r in 1..=4 {
        ix.apply(b"k", rev(r, Op::Put), 0, 4, &mut removed);
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

/// Moves a revision named by key, as compaction's lookup path does.
fn relocate(ix: &mut Index, key: &[u8], revision: u64, from: (u32, u32), to: (u32, u32)) -> bool {
    match ix.find_placed(key, revision) {
        Some(p) => ix.relocate_at(p.entry, revision, from, to),
        None => false,
    }
}

#[test]
fn placed_lists_what_lies_in_the_run_and_moves_by_entry() {
    let mut ix = Index::default();
    let mut removed = vec![];
    let at = |r: u64, slot: u32, offset: u64| RecordRef::new(r, 0, slot, offset, 20, Op::Put);
    ix.apply(b"a", at(1, 1, 100), 0, 2, &mut removed);
    ix.apply(b"a", at(2, 2, 100), 0, 2, &mut removed);
    ix.apply(b"b", at(3, 1, 200), 0, 2, &mut removed);
    ix.apply(b"c", at(4, 3, 100), 0, 2, &mut removed);
    let mut placed = vec![];
    ix.placed_in(0..ix.entry_slots(), |s| s == 1 || s == 2, &mut placed);
    placed.sort();
    let a = ix.find_placed(b"a", 1).unwrap().entry;
    let b = ix.find_placed(b"b", 3).unwrap().entry;
    assert_eq!(
        placed,
        vec![
            Placed {
                slot: 1,
                offset: 100,
                revision: 1,
                entry: a
            },
            Placed {
                slot: 1,
                offset: 200,
                revision: 3,
                entry: b
            },
            Placed {
                slot: 2,
                offset: 100,
                revision: 2,
                entry: a
            },
        ]
    );
    // In chunks, the same.
    let mut chunked = vec![];
    for from in 0..ix.entry_slots() {
        ix.placed_in(from..from + 1, |s| s == 1 || s == 2, &mut chunked);
    }
    chunked.sort();
    assert_eq!(chunked, placed);
    assert!(ix.relocate_at(a, 1, (1, 100), (9, 8)), "history");
    assert!(ix.relocate_at(a, 2, (2, 100), (9, 48)), "latest");
    assert!(!ix.relocate_at(a, 2, (2, 100), (9, 88)), "already moved");
    assert!(
        !ix.relocate_at(u32::MAX, 2, (2, 100), (9, 88)),
        "no such entry"
    );
    let revs = ix.revisions(b"a");
    assert_eq!(
        revs.iter().map(|r| (r.slot, r.offset)).collect::<Vec<_>>(),
        vec![(9, 8), (9, 48)]
    );
    // b's entry freed, then reused by another key: nothing of b's is moved.
    ix.drop_oldest_while(b"b", |_| true, &mut removed);
    assert!(!ix.relocate_at(b, 3, (1, 200), (9, 128)), "freed");
    ix.apply(b"d", at(5, 4, 100), 0, 2, &mut removed);
    assert_eq!(ix.find_placed(b"d", 5).unwrap().entry, b, "slot reused");
    assert!(!ix.relocate_at(b, 3, (1, 200), (9, 128)), "reused by d");
    assert_eq!(ix.latest(b"d").map(|r| (r.slot, r.offset)), Some((4, 100)));
}

#[test]
fn relocate_moves_only_named_records() {
    let mut ix = Index::default();
    let mut removed = vec![];
    ix.apply(b"a", rev(1, Op::Put), 0, 2, &mut removed);
    ix.apply(b"a", rev(2, Op::Put), 0, 2, &mut removed);
    assert!(relocate(&mut ix, b"a", 1, (1, 100), (7, 8)));
    assert!(
        !relocate(&mut ix, b"a", 1, (1, 100), (9, 9)),
        "already moved"
    );
    assert!(!relocate(&mut ix, b"b", 1, (1, 100), (9, 9)));
    let revs = ix.revisions(b"a");
    assert_eq!((revs[0].slot, revs[0].offset), (7, 8));
    assert_eq!((revs[1].slot, revs[1].offset), (1, 200));
}

#[test]
fn ranges_prefixes_and_bounds() {
    let mut ix = Index::default();
    let mut removed = vec![];
    for (i, k) in ["b", "a.2", "a.1", "ab", "a", &"l".repeat(40)]
        .iter()
        .enumerate()
    {
        ix.apply(k.as_bytes(), rev(i as u64 + 1, Op::Put), 0, 1, &mut removed);
    }
    let keys = |it: &mut dyn Iterator<Item = (&IKey, &RecordRef)>| {
        it.map(|(k, _)| k.as_str().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&mut ix.prefixed(b"a.")),
        vec!["a.1".to_string(), "a.2".to_string()]
    );
    assert_eq!(
        keys(&mut ix.range(Bound::Excluded(b"a"), Bound::Excluded(b"b"))),
        vec!["a.1", "a.2", "ab"]
    );
    assert_eq!(
        keys(&mut ix.range(Bound::Included(b"b"), Bound::Unbounded)),
        vec!["b".to_string(), "l".repeat(40)]
    );
    assert!(keys(&mut ix.range(Bound::Included(b"z"), Bound::Included(b"a"))).is_empty());
    assert_eq!(ix.key_count(), 6);
}

/// A bulk build (a snapshot's load) leaves the key order to its first use:
/// lookups, overwrites, keys added and keys removed never build it; a range
/// does, from the keys as they are then, and gets everything in order.
#[test]
fn a_bulk_built_index_builds_its_order_when_first_needed() {
    let keys: Vec<String> = (0..300u64).map(|i| format!("k.{:04}", i * 2)).collect();
    let build = || {
        Index::from_sorted(
            (1..)
                .zip(&keys)
                .map(|(i, k)| (IKey::new(k.as_bytes()), vec![rev(i, Op::Put)])),
        )
    };
    let listed = |ix: &Index| -> Vec<String> {
        ix.range(Bound::Unbounded, Bound::Unbounded)
            .map(|(k, _)| k.as_str().to_string())
            .collect()
    };
    let mut removed = Vec::new();

    let mut ix = build();
    assert!(ix.order.get().is_none());
    assert_eq!(ix.latest(b"k.0010"), Some(rev(6, Op::Put)));
    ix.apply(b"k.0010", rev(1_000, Op::Put), 0, 1, &mut removed);
    assert!(
        ix.order.get().is_none(),
        "a lookup and an overwrite build no order"
    );
    assert_eq!(listed(&ix), keys);
    assert!(ix.order.get().is_some(), "a range built it");

    // A key added first: in its place.
    let mut ix = build();
    ix.apply(b"k.0011", rev(1_000, Op::Put), 0, 1, &mut removed);
    assert!(ix.order.get().is_none(), "a key added builds no order");
    let mut with_it = keys.clone();
    with_it.push("k.0011".to_string());
    with_it.sort();
    assert_eq!(listed(&ix), with_it);

    // A key removed first, then one added in its freed slot.
    let mut ix = build();
    ix.drop_oldest_while(b"k.0010", |_| true, &mut removed);
    ix.apply(b"a.first", rev(1_001, Op::Put), 0, 1, &mut removed);
    assert!(ix.order.get().is_none(), "a key removed builds no order");
    assert_eq!(listed(&ix).first().map(String::as_str), Some("a.first"));
    assert_eq!(listed(&ix).len(), keys.len());

    // A key removed after the order is built, then one added in its freed slot.
    let mut ix = build();
    assert_eq!(listed(&ix), keys);
    ix.drop_oldest_while(b"k.0010", |_| true, &mut removed);
    let without: Vec<String> = keys.iter().filter(|k| *k != "k.0010").cloned().collect();
    assert_eq!(listed(&ix), without);
    ix.apply(b"a.first", rev(1_001, Op::Put), 0, 1, &mut removed);
    assert_eq!(listed(&ix).first().map(String::as_str), Some("a.first"));
    assert_eq!(listed(&ix).len(), keys.len());
    let from = ix
        .range(Bound::Included(b"k.0009"), Bound::Unbounded)
        .next()
        .map(|(k, _)| k.as_str().to_string());
    assert_eq!(from.as_deref(), Some("k.0012"));
}

#[test]
fn ascending_builder_rejects_disorder_and_empty_keys() {
    let mut b = BulkBuilder::with_capacity(2, KeyOrder::Ascending);
    assert_eq!(b.push(b"b", &[rev(1, Op::Put)]), Ok(()));
    assert_eq!(b.push(b"a", &[rev(2, Op::Put)]), Err("keys out of order"));
    assert_eq!(b.push(b"b", &[rev(2, Op::Put)]), Err("keys out of order"));
    assert_eq!(b.push(b"c", &[]), Err("key without revisions"));
    assert_eq!(b.push(b"c", &[rev(3, Op::Put), rev(4, Op::Del)]), Ok(()));
    assert_eq!(b.max_revisions(), 2);
    let ix = b.finish().unwrap();
    assert_eq!(ix.key_count(), 2);
    assert_eq!(ix.values(), 3);
    assert_eq!(ix.put_keys(), 1);
    assert_eq!(ix.revisions(b"c").len(), 2);
    assert_eq!(ix.latest(b"b"), Some(rev(1, Op::Put)));
}

/// A build in any order takes keys as they come and finds each; a key that
/// comes twice fails the build (at its end, where the table is built), on
/// one thread and on two.
#[test]
fn any_order_builder_finds_every_key_and_refuses_a_key_twice() {
    let key = |i: usize| format!("k{:07}", (i * 7919) % 100_003).into_bytes();
    for n in [10, PARALLEL_FROM + 10] {
        let mut b = BulkBuilder::with_capacity(n, KeyOrder::Any);
        for i in 0..n {
            b.push(&key(i), &[rev(i as u64 + 1, Op::Put)]).unwrap();
        }
        let ix = b.finish().unwrap();
        assert_eq!(ix.key_count(), n);
        for i in 0..n {
            assert_eq!(
                ix.latest(&key(i)),
                Some(rev(i as u64 + 1, Op::Put)),
                "{n} keys: key {i}"
            );
        }
        let mut first: Vec<_> = ix
            .range(Bound::Unbounded, Bound::Unbounded)
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect();
        assert_eq!(first.len(), n, "the key order built later holds every key");
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "{n} keys: in key order"
        );
        first.clear();

        let mut twice = BulkBuilder::with_capacity(n + 1, KeyOrder::Any);
        for i in 0..n {
            twice.push(&key(i), &[rev(i as u64 + 1, Op::Put)]).unwrap();
        }
        twice
            .push(&key(n / 2), &[rev(n as u64 + 1, Op::Put)])
            .unwrap();
        assert_eq!(
            twice.finish().err(),
            Some("a key is in the snapshot twice"),
            "{n} keys"
        );
    }
}

/// The bounds of the fields hold every revision the index was given, from
/// writes, a bulk build and compaction's moves.
#[test]
fn widest_bounds_every_field() {
    let mut ix = Index::default();
    let mut removed = vec![];
    let long = vec![b'x'; 300];
    let r = RecordRef::new(7, 123_456_789, 1, 70_000, 5_000, Op::Put);
    ix.apply(&long, r, 0, 1, &mut removed);
    ix.apply(b"k", rev(9, Op::Del), 0, 1, &mut removed);
    let w = *ix.widest();
    assert_eq!(
        (w.key_len, w.revision, w.expires_ms, w.offset, w.record_len),
        (300, 9, 123_456_789, 70_000, 5_000)
    );
    // A revision that leaves keeps its bound.
    ix.apply(&long, rev(10, Op::Purge), 0, 1, &mut removed);
    assert_eq!(ix.widest().record_len, 5_000);
    let entry = ix.find_placed(b"k", 9).unwrap().entry;
    assert!(ix.relocate_at(entry, 9, (1, 900), (2, 900_000)));
    assert_eq!(ix.widest().offset, 900_000);

    let mut b = BulkBuilder::with_capacity(1, KeyOrder::Any);
    b.push(&long, &[r]).unwrap();
    assert_eq!(
        *b.finish().unwrap().widest(),
        Widest {
            key_len: 300,
            revision: 7,
            expires_ms: 123_456_789,
            offset: 70_000,
            record_len: 5_000
        }
    );
}

/// A dropped index frees its slab without a walk only while no key in it is
/// on the heap: each way a key enters the slab (an insert, a bulk push, each
/// part of a two-part fill) notes a long one, or its memory would leak.
#[test]
fn every_way_into_the_slab_notes_a_key_on_the_heap() {
    let long = vec![b'x'; key::INLINE + 1];
    let short = vec![b'x'; key::INLINE];
    let mut removed = vec![];

    let mut ix = Index::default();
    ix.apply(&short, rev(1, Op::Put), 0, 1, &mut removed);
    assert!(
        !ix.entries.may_hold_heap_keys(),
        "an insert of an inline key"
    );
    ix.apply(&long, rev(2, Op::Put), 0, 1, &mut removed);
    assert!(ix.entries.may_hold_heap_keys(), "an insert of a long key");

    for k in [&short, &long] {
        let mut b = BulkBuilder::with_capacity(1, KeyOrder::Any);
        b.push(k, &[rev(1, Op::Put)]).unwrap();
        let heap = b.finish().unwrap().entries.may_hold_heap_keys();
        assert_eq!(
            heap,
            k.len() > key::INLINE,
            "a bulk push of {} bytes",
            k.len()
        );
    }

    let key_of = |part: usize, i: usize, long_in: Option<usize>| {
        let mut k = format!("p{part}-{i:06}").into_bytes();
        if long_in == Some(part) && i == 3 {
            k.resize(key::INLINE + 5, b'z');
        }
        k
    };
    for long_in in [None, Some(0), Some(1)] {
        let n = 10;
        let mut b = BulkBuilder::with_capacity(2 * n, KeyOrder::Any);
        b.fill_in_two(n, n, |part, sink| {
            for i in 0..n {
                sink.push_key(&key_of(part, i, long_in), &[rev(i as u64 + 1, Op::Put)])?;
            }
            Ok(())
        })
        .unwrap();
        let ix = b.finish().unwrap();
        assert_eq!(ix.key_count(), 2 * n);
        assert_eq!(
            ix.entries.may_hold_heap_keys(),
            long_in.is_some(),
            "a two-part fill, a long key in part {long_in:?}"
        );
    }
}

#[test]
fn remap_segments_rewrites_every_revision() {
    let mut ix = Index::default();
    let mut removed = vec![];
    ix.apply(b"k", rev(1, Op::Put), 0, 2, &mut removed);
    ix.apply(b"k", rev(2, Op::Put), 0, 2, &mut removed);
    assert!(ix.remap_segments(|s| Some(s + 10)));
    assert!(ix.revisions(b"k").iter().all(|r| r.slot == 11));
    assert!(!ix.remap_segments(|_| None));
}

/// The naive model: each key's retained revisions, oldest first, in a `BTreeMap`.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Vec<RecordRef>>,
    dead: HashMap<u32, u64>,
}

impl Model {
    fn retire(&mut self, r: RecordRef, removed: &mut Vec<RecordRef>) {
        *self.dead.entry(r.slot).or_default() += r.len() as u64;
        removed.push(r);
    }

    fn apply(
        &mut self,
        key: &[u8],
        new: RecordRef,
        at_ms: u64,
        history: usize,
        removed: &mut Vec<RecordRef>,
    ) {
        let mut revs = self.keys.remove(key).unwrap_or_default();
        if new.op() == Op::Purge || history <= 1 {
            for r in revs.drain(..) {
                self.retire(r, removed);
            }
        }
        for r in revs.clone() {
            if r.op() == Op::Put && r.expires_ms != 0 && r.expires_ms <= at_ms {
                self.retire(r, removed);
            }
        }
        revs.retain(|r| !(r.op() == Op::Put && r.expires_ms != 0 && r.expires_ms <= at_ms));
        revs.push(new);
        let excess = revs.len().saturating_sub(history.max(1));
        for r in revs.drain(..excess).collect::<Vec<_>>() {
            self.retire(r, removed);
        }
        self.keys.insert(key.to_vec(), revs);
    }

    fn drop_oldest_while(&mut self, key: &[u8], below: u64, removed: &mut Vec<RecordRef>) {
        let Some(mut revs) = self.keys.remove(key) else {
            return;
        };
        let n = revs.iter().take_while(|r| r.revision <= below).count();
        for r in revs.drain(..n).collect::<Vec<_>>() {
            self.retire(r, removed);
        }
        if !revs.is_empty() {
            self.keys.insert(key.to_vec(), revs);
        }
    }

    fn relocate(&mut self, key: &[u8], revision: u64, from: (u32, u32), to: (u32, u32)) -> bool {
        let Some(revs) = self.keys.get_mut(key) else {
            return false;
        };
        match revs
            .iter_mut()
            .find(|r| r.revision == revision && (r.slot, r.offset) == from)
        {
            Some(r) => {
                (r.slot, r.offset) = to;
                true
            }
            None => false,
        }
    }
}

/// Keys that share prefixes, cross the inline limit, and are many enough to split blocks.
fn key_name(i: u16) -> Vec<u8> {
    let stem = ["a", "a.b", "ab", "zz.long.key.beyond.the.inline.limit"][usize::from(i % 4)];
    format!("{stem}.{:03}", i / 4).into_bytes()
}

#[derive(Debug, Clone)]
enum Step {
    Apply {
        key: u16,
        op: u8,
        history: usize,
        seg: u32,
        expires: bool,
        /// How far before its expiry the record is applied, for one that expires.
        early: u64,
    },
    Fill {
        from: u16,
        n: u16,
    },
    DropOldest {
        key: u16,
        keep_last: u64,
    },
    Relocate {
        key: u16,
        pick: usize,
        to: u32,
        bogus: bool,
    },
    /// A range read: builds the key order the first time, which the steps
    /// after it then keep up to date.
    Scan {
        from: u16,
        n: usize,
    },
    /// Begins a build of the key order off the lock (`order_build.rs`): the
    /// steps until it is finished change the keys under it.
    BeginOrderBuild,
    /// Takes one of the builds begun a step further: copies the keys of 64
    /// more slots (sorting them once all are), or catches it up with the
    /// changes made since.
    CatchUpOrderBuild {
        pick: usize,
    },
    /// Installs one of the builds begun (only the last one begun takes, and
    /// only if no ordered read built the order meanwhile).
    FinishOrderBuild {
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..700u16, 0..3u8, 1..4usize, 0..4u32, any::<bool>(), 0..30u64).prop_map(
            |(key, op, history, seg, expires, early)| Step::Apply { key, op, history, seg, expires, early }
        ),
        1 => (0..700u16, 1..400u16).prop_map(|(from, n)| Step::Fill { from, n }),
        2 => (0..700u16, 0..40u64).prop_map(|(key, keep_last)| Step::DropOldest { key, keep_last }),
        2 => (0..700u16, 0..4usize, 4..8u32, any::<bool>())
            .prop_map(|(key, pick, to, bogus)| Step::Relocate { key, pick, to, bogus }),
        1 => (0..700u16, 1..50usize).prop_map(|(from, n)| Step::Scan { from, n }),
        1 => Just(Step::BeginOrderBuild),
        1 => (0..4usize).prop_map(|pick| Step::CatchUpOrderBuild { pick }),
        1 => (0..4usize).prop_map(|pick| Step::FinishOrderBuild { pick }),
    ]
}

/// The key order, if built, keeps what a search relies on.
/// A build of the key order off the lock, in the model test.
enum Build {
    Copying(OrderBuild),
    Sorted(SortedOrder),
}

impl Build {
    /// Copied to the end and sorted.
    fn sorted(self, ix: &Index) -> SortedOrder {
        match self {
            Build::Copying(mut b) => {
                while !b.copy_keys(ix, 64) {}
                b.sort()
            }
            Build::Sorted(b) => b,
        }
    }
}

fn order_holds(ix: &Index) -> Result<(), TestCaseError> {
    if let Some(order) = ix.order.get() {
        prop_assert_eq!(order.check(|s| ix.entries.key(s)), Ok(()));
    }
    Ok(())
}

fn same_as_model(ix: &Index, m: &Model) -> Result<(), TestCaseError> {
    let listed: Vec<(Vec<u8>, Vec<RecordRef>)> = ix
        .range(Bound::Unbounded, Bound::Unbounded)
        .map(|(k, latest)| {
            let mut revs = Vec::new();
            ix.for_each_rev(latest, |r| revs.push(*r));
            (k.as_bytes().to_vec(), revs)
        })
        .collect();
    let expected: Vec<(Vec<u8>, Vec<RecordRef>)> =
        m.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    prop_assert_eq!(&listed, &expected);
    prop_assert_eq!(ix.key_count(), m.keys.len());
    let all: Vec<&RecordRef> = m.keys.values().flatten().collect();
    prop_assert_eq!(ix.values(), all.len() as u64);
    prop_assert_eq!(ix.bytes(), all.iter().map(|r| r.len() as u64).sum::<u64>());
    prop_assert_eq!(
        ix.expiring(),
        all.iter().filter(|r| r.expires_ms != 0).count() as u64
    );
    let puts = m
        .keys
        .values()
        .filter(|v| v.last().is_some_and(|r| r.op() == Op::Put));
    prop_assert_eq!(ix.put_keys(), puts.count() as u64);
    let dead: HashMap<u32, u64> = m
        .dead
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(s, d)| (*s, *d))
        .collect();
    let ix_dead: HashMap<u32, u64> = ix
        .dead_bytes()
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(s, d)| (*s, *d))
        .collect();
    prop_assert_eq!(ix_dead, dead);
    let mut revs_ix: Vec<u64> = ix.all_revs().map(|r| r.revision).collect();
    let mut revs_m: Vec<u64> = all.iter().map(|r| r.revision).collect();
    revs_ix.sort_unstable();
    revs_m.sort_unstable();
    prop_assert_eq!(revs_ix, revs_m);
    for i in (0..700u16).step_by(7) {
        let k = key_name(i);
        let want = m.keys.get(&k).cloned().unwrap_or_default();
        prop_assert_eq!(ix.revisions(&k), want.clone());
        prop_assert_eq!(ix.latest(&k), want.last().copied());
        let hash = ix.prefetch_entry(&k);
        prop_assert_eq!(ix.latest_hashed(&k, hash), want.last().copied());
        for r in &want {
            prop_assert_eq!(ix.find(&k, r.revision), Some(*r));
        }
        prop_assert_eq!(ix.find(&k, 0), None);
    }
    for p in [
        &b""[..],
        b"a",
        b"a.",
        b"a.b",
        b"ab.0",
        b"zz",
        b"zz.long.key.beyond.the.inline.limit.1",
    ] {
        let got: Vec<Vec<u8>> = ix.prefixed(p).map(|(k, _)| k.as_bytes().to_vec()).collect();
        let want: Vec<Vec<u8>> = m
            .keys
            .keys()
            .filter(|k| k.starts_with(p))
            .cloned()
            .collect();
        prop_assert_eq!(got, want);
    }
    for (lo, hi) in [(3u16, 400u16), (100, 101), (650, 20)] {
        let (lo, hi) = (key_name(lo), key_name(hi));
        for (from, to) in [
            (
                Bound::Included(lo.as_slice()),
                Bound::Excluded(hi.as_slice()),
            ),
            (
                Bound::Excluded(lo.as_slice()),
                Bound::Included(hi.as_slice()),
            ),
        ] {
            let got: Vec<Vec<u8>> = ix
                .range(from, to)
                .map(|(k, _)| k.as_bytes().to_vec())
                .collect();
            let want: Vec<Vec<u8>> = if lo <= hi {
                m.keys
                    .range::<[u8], _>((from, to))
                    .map(|(k, _)| k.clone())
                    .collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(got, want);
        }
    }
    Ok(())
}

// Cases: PROPTEST_CASES (default 256).
proptest! {
    /// Every operation, on the index and on the naive model, with the same
    /// results; the index empty at first, or bulk built (as a snapshot's
    /// load builds it) from `preload` keys.
    #[test]
    fn index_matches_a_naive_model(
        preload in 0..300u16,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut m = Model::default();
        let mut next_rev = 1u64;
        for i in 0..preload {
            let r = RecordRef::new(next_rev, 0, 1, next_rev * 8, 20, Op::Put);
            next_rev += 1;
            m.apply(&key_name(i * 7 % 700), r, 0, 2, &mut Vec::new());
        }
        let mut ix = Index::from_sorted(
            m.keys.iter().map(|(k, v)| (IKey::new(k), v.clone())),
        );
        ix.dead.clone_from(&m.dead);
        let mut builds: Vec<Build> = Vec::new();
        for s in steps {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            match s {
                Step::Apply { key, op, history, seg, expires, early } => {
                    let op = [Op::Put, Op::Del, Op::Purge][usize::from(op)];
                    let len = 10 + (next_rev % 50) as usize;
                    // A record expiring 20 ms after it is made, applied at a time
                    // that has let some earlier ones expire (and not others).
                    let r = RecordRef::new(next_rev, if expires { 1020 + next_rev } else { 0 }, seg, next_rev * 8, len, op);
                    let at_ms = 1000 + next_rev + 20 - early.min(20);
                    next_rev += 1;
                    ix.apply(&key_name(key), r, at_ms, history, &mut got);
                    m.apply(&key_name(key), r, at_ms, history, &mut want);
                }
                Step::Fill { from, n } => {
                    for i in from..from.saturating_add(n).min(700) {
                        let r = RecordRef::new(next_rev, 0, 0, next_rev * 8, 20, Op::Put);
                        next_rev += 1;
                        ix.apply(&key_name(i), r, 1000 + next_rev, 2, &mut got);
                        m.apply(&key_name(i), r, 1000 + next_rev, 2, &mut want);
                    }
                }
                Step::DropOldest { key, keep_last } => {
                    let below = next_rev.saturating_sub(keep_last);
                    ix.drop_oldest_while(&key_name(key), |r| r.revision <= below, &mut got);
                    m.drop_oldest_while(&key_name(key), below, &mut want);
                }
                Step::Relocate { key, pick, to, bogus } => {
                    let k = key_name(key);
                    let target = m.keys.get(&k).and_then(|v| v.get(pick % v.len()).copied());
                    if let Some(r) = target {
                        let from = if bogus { (r.slot, r.offset + 1) } else { (r.slot, r.offset) };
                        let dest = (to, r.offset);
                        prop_assert_eq!(relocate(&mut ix, &k, r.revision, from, dest), m.relocate(&k, r.revision, from, dest));
                    } else {
                        prop_assert!(!relocate(&mut ix, &k, 1, (0, 8), (to, 8)));
                    }
                }
                Step::Scan { from, n } => {
                    let from = key_name(from);
                    let got: Vec<(Vec<u8>, RecordRef)> = ix
                        .range(Bound::Included(from.as_slice()), Bound::Unbounded)
                        .take(n)
                        .map(|(k, r)| (k.as_bytes().to_vec(), r.bare()))
                        .collect();
                    let want: Vec<(Vec<u8>, RecordRef)> = m
                        .keys
                        .range::<[u8], _>((Bound::Included(from.as_slice()), Bound::Unbounded))
                        .take(n)
                        .filter_map(|(k, v)| Some((k.clone(), *v.last()?)))
                        .collect();
                    prop_assert_eq!(got, want);
                    prop_assert!(ix.order.get().is_some());
                    order_holds(&ix)?;
                }
                Step::BeginOrderBuild => builds.extend(ix.begin_order_build().map(Build::Copying)),
                Step::CatchUpOrderBuild { pick } => {
                    if !builds.is_empty() {
                        let at = pick % builds.len();
                        let newest = at + 1 == builds.len();
                        let build = builds.remove(at);
                        let build = match build {
                            Build::Copying(mut b) => {
                                if b.copy_keys(&ix, 64) { Build::Sorted(b.sort()) } else { Build::Copying(b) }
                            }
                            Build::Sorted(mut b) => {
                                match ix.changes_since(&b) {
                                    Some(changes) => b.catch_up(changes),
                                    None => prop_assert!(!newest || ix.key_order_built(), "only a moot build has no changes"),
                                }
                                Build::Sorted(b)
                            }
                        };
                        builds.insert(at, build);
                    }
                }
                Step::FinishOrderBuild { pick } => {
                    if !builds.is_empty() {
                        let at = pick % builds.len();
                        let newest = at + 1 == builds.len();
                        let built_before = ix.key_order_built();
                        ix.install_order(&mut builds.remove(at).sorted(&ix));
                        if newest && !built_before {
                            prop_assert!(ix.key_order_built(), "the newest build installs");
                        }
                        if !newest {
                            prop_assert_eq!(ix.key_order_built(), built_before, "a stale build installs nothing");
                        }
                        order_holds(&ix)?;
                    }
                }
            }
            // What left the index, in whatever order it says so.
            got.sort_by_key(|r| r.revision);
            want.sort_by_key(|r| r.revision);
            prop_assert_eq!(got, want);
        }
        for b in builds.drain(..).rev() {
            ix.install_order(&mut b.sorted(&ix));
            order_holds(&ix)?;
        }
        same_as_model(&ix, &m)?;
        order_holds(&ix)?;
        // Rebuilt from its keys in order, the index is the same.
        let sorted: Vec<(IKey, Vec<RecordRef>)> =
            m.keys.iter().map(|(k, v)| (IKey::new(k), v.clone())).collect();
        let mut rebuilt = Index::from_sorted(sorted);
        rebuilt.dead.clone_from(&ix.dead);
        same_as_model(&rebuilt, &m)?;
        // recompute_dead: size less what is retained, per segment.
        let sizes: HashMap<u32, u64> = (0..8).map(|s| (s, 1 << 20)).collect();
        ix.recompute_dead(&sizes);
        for (slot, size) in &sizes {
            let live: u64 = m.keys.values().flatten().filter(|r| r.slot == *slot).map(|r| r.len() as u64).sum();
            prop_assert_eq!(ix.dead_bytes().get(slot).copied().unwrap_or(0), size - live);
        }
    }
}
