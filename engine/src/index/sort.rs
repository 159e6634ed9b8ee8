//! Putting slots in key order when the key order is built (`order.rs`): the
//! slots come in the slab's order, which is key order after a bulk build
//! (a snapshot's load) but for the keys added since, and random after a load
//! of keys in random order.
//!
//! [`in_key_order`] keeps the run of slots that already ascend where they
//! are (taking out the strays: keys put since in reused slots), sorts the
//! others and merges the two. A sort compares *hints* (the 8
//! bytes of each key past the prefix every key being sorted shares, read
//! once per key) rather than keys, which would each cost a cache miss in the
//! slab: keys whose hints are equal are sorted again the same way past the
//! longer prefix they share, and compared whole only when that prefix is no
//! longer (keys equal but for trailing zero bytes).

use super::order::{common_prefix, hint};

/// `slots` (each a different key) in key order.
pub(super) fn in_key_order<'k>(slots: &[u32], key_of: impl Fn(u32) -> &'k [u8] + Copy) -> Vec<u32> {
    let (kept, mut rest) = split_ascending(slots, key_of);
    if rest.is_empty() {
        return kept;
    }
    sort(&mut rest, key_of);
    merge(&kept, &rest, key_of)
}

/// Splits `slots` into a run whose keys ascend, in place, and the rest. A key
/// below the end of the run joins the rest if the key after it is above that
/// end (a stray below the run); else the keys at the end of the run above it,
/// if at most [`MAX_TAKEN_BACK`], were strays above the run: they move to the
/// rest and it takes their place. So a stray, or up to 32 in a row (slots
/// reused after a bulk build), leave the run without the keys around them;
/// more in a row take the rest of the run with them (all of it is sorted).
/// Input that is mostly not a run (more strays than kept, past the first
/// few) is all sorted instead: a load in random order costs little here.
fn split_ascending<'k>(slots: &[u32], key_of: impl Fn(u32) -> &'k [u8]) -> (Vec<u32>, Vec<u32>) {
    let mut kept: Vec<u32> = Vec::with_capacity(slots.len());
    let mut rest = Vec::new();
    for (i, &s) in slots.iter().enumerate() {
        if rest.len() > GIVE_UP_AFTER && rest.len() * 2 > i {
            return (Vec::new(), slots.to_vec());
        }
        let key = key_of(s);
        let Some(top) = kept.last().map(|&t| key_of(t)).filter(|&t| t > key) else {
            kept.push(s);
            continue;
        };
        if slots.get(i + 1).is_some_and(|&n| key_of(n) > top) {
            rest.push(s);
            continue;
        }
        let above = kept
            .iter()
            .rev()
            .take(MAX_TAKEN_BACK + 1)
            .take_while(|&&k| key_of(k) > key)
            .count();
        if above > MAX_TAKEN_BACK {
            rest.push(s);
        } else {
            rest.extend(kept.drain(kept.len().saturating_sub(above)..));
            kept.push(s);
        }
    }
    (kept, rest)
}

/// Most keys at the end of the run [`split_ascending`] moves to the rest
/// for one key below them.
const MAX_TAKEN_BACK: usize = 32;
/// Strays before [`split_ascending`] may judge its input not a run.
const GIVE_UP_AFTER: usize = 64;

/// Sorts `slots` by their keys (see the module's doc).
fn sort<'k>(slots: &mut [u32], key_of: impl Fn(u32) -> &'k [u8] + Copy) {
    let mut hinted: Vec<(u64, u32)> = slots.iter().map(|&s| (0, s)).collect();
    // Ranges of `hinted` left to sort, with the prefix their keys were last
    // sorted past (`None`: never sorted).
    let mut todo: Vec<(usize, usize, Option<usize>)> = vec![(0, hinted.len(), None)];
    while let Some((lo, hi, before)) = todo.pop() {
        let Some(group) = hinted.get_mut(lo..hi) else {
            continue;
        };
        let skip = shared_prefix(group.iter().map(|&(_, s)| key_of(s)));
        if before.is_some_and(|b| skip < b + 8) {
            // Equal hints, yet no longer a prefix: keys that differ only in
            // trailing zero bytes. Rare; compared whole.
            group.sort_unstable_by(|a, b| key_of(a.1).cmp(key_of(b.1)));
            continue;
        }
        for e in group.iter_mut() {
            e.0 = hint(key_of(e.1), skip);
        }
        group.sort_unstable_by_key(|&(h, _)| h);
        let mut at = lo;
        for tied in group.chunk_by(|a, b| a.0 == b.0) {
            if tied.len() > 1 {
                todo.push((at, at + tied.len(), Some(skip)));
            }
            at += tied.len();
        }
    }
    for (to, (_, s)) in slots.iter_mut().zip(hinted) {
        *to = s;
    }
}

/// The length of the prefix every one of `keys` shares.
fn shared_prefix<'k>(mut keys: impl Iterator<Item = &'k [u8]>) -> usize {
    let Some(first) = keys.next() else {
        return 0;
    };
    keys.fold(first.len(), |n, k| {
        n.min(common_prefix(first.get(..n).unwrap_or(first), k))
    })
}

/// `a` and `b` (each in key order, no key in both) merged in key order.
/// When one is much shorter, each of its slots finds its place in the other
/// by a binary search: a few keys read, instead of every key of both.
fn merge<'k>(a: &[u32], b: &[u32], key_of: impl Fn(u32) -> &'k [u8] + Copy) -> Vec<u32> {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(a.len() + b.len());
    let searches = short.len() * (long.len().max(1).ilog2() as usize + 1);
    if searches < a.len() + b.len() {
        let mut from = 0;
        for &s in short {
            let key = key_of(s);
            let rest = long.get(from..).unwrap_or_default();
            let below = rest.partition_point(|&l| key_of(l) < key);
            out.extend_from_slice(rest.get(..below).unwrap_or_default());
            out.push(s);
            from += below;
        }
        out.extend_from_slice(long.get(from..).unwrap_or_default());
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        if key_of(x) < key_of(y) {
            out.push(x);
            i += 1;
        } else {
            out.push(y);
            j += 1;
        }
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys in ascending order (slot `s` holds `keys[s]`), and the slots in
    /// the orders the build meets: shuffled, descending, ascending, and
    /// ascending with a few slots out of place.
    fn cases(keys: &[Vec<u8>]) -> Vec<Vec<u32>> {
        let n = u32::try_from(keys.len()).expect("few keys");
        let mut strays: Vec<u32> = (0..n).collect();
        for i in (0..n).step_by(97) {
            strays.swap(i as usize, ((i * 31 + 7) % n) as usize);
        }
        vec![
            (0..n).map(|i| (i * 7919) % n).collect(),
            (0..n).rev().collect(),
            (0..n).collect(),
            strays,
        ]
    }

    fn check(keys: &[Vec<u8>]) {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "distinct keys");
        let key_of = |s: u32| sorted[s as usize].as_slice();
        let n = u32::try_from(sorted.len()).expect("few keys");
        for slots in cases(&sorted) {
            assert_eq!(in_key_order(&slots, key_of), (0..n).collect::<Vec<_>>());
            let mut s = slots.clone();
            sort(&mut s, key_of);
            assert_eq!(s, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn keys_sharing_a_long_prefix_but_one() {
        // One short key makes the prefix all share empty: the rest tie on
        // their first 8 bytes and are sorted again past their own prefix.
        let mut keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("tenant/acme/users/{:06}", i * 7 % 2000).into_bytes())
            .collect();
        keys.push(b"config".to_vec());
        check(&keys);
    }

    #[test]
    fn keys_that_tie_only_on_padding() {
        // Equal hints that no longer prefix: "a", "a\0", "a\0\0" pad alike.
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for z in 0..12 {
            let mut k = b"x/a".to_vec();
            k.extend(std::iter::repeat_n(0u8, z));
            keys.push(k);
        }
        for i in 0..300u32 {
            keys.push(format!("x/{i:05}").into_bytes());
        }
        keys.push(b"x".to_vec());
        keys.push(vec![0]);
        keys.push(Vec::new());
        check(&keys);
    }

    #[test]
    fn prefixes_and_first_byte_differences() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for i in 0..700u32 {
            keys.push(format!("p/{:03}/long-shared-part/{}", i % 7, i * 31 % 701).into_bytes());
            keys.push(format!("p/{i:03}").into_bytes());
        }
        keys.extend([b"p".to_vec(), b"a".to_vec(), b"z/".to_vec()]);
        keys.sort_unstable();
        keys.dedup();
        check(&keys);
    }

    #[test]
    fn merging_either_way_gives_the_same_order() {
        let keys: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| format!("{i:04}").into_bytes())
            .collect();
        let key_of = |s: u32| keys[s as usize].as_slice();
        let all: Vec<u32> = (0..1000).collect();
        for step in [1usize, 2, 3, 50, 999, 1000] {
            let (few, many): (Vec<u32>, Vec<u32>) = all
                .iter()
                .partition(|&&s| (s as usize).is_multiple_of(step));
            assert_eq!(merge(&few, &many, key_of), all, "step {step}");
            assert_eq!(merge(&many, &few, key_of), all, "step {step}");
        }
        assert_eq!(merge(&[], &[], key_of), Vec::<u32>::new());
    }

    #[test]
    fn a_run_keeps_its_place_around_strays() {
        // A run with strays in reused slots: one above it, one below it, two
        // above it in a row, one above and one below in a row.
        let mut keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("k.{i:05}").into_bytes())
            .collect();
        let mut strays: Vec<(usize, String)> = vec![
            (100, "z.1".into()),
            (300, "a.1".into()),
            (500, "z.2".into()),
            (501, "z.3".into()),
            (900, "z.4".into()),
            (901, "a.2".into()),
        ];
        // Twenty in a row, ascending: keys written in order into freed slots.
        strays.extend((0..20).map(|i| (1200 + i, format!("y.{i:02}"))));
        for (at, k) in &strays {
            keys[*at] = k.as_bytes().to_vec();
        }
        let key_of = |s: u32| keys[s as usize].as_slice();
        let slots: Vec<u32> = (0..2000).collect();
        let (kept, rest) = split_ascending(&slots, key_of);
        let mut moved = rest.clone();
        moved.sort_unstable();
        let mut want_moved: Vec<u32> = strays
            .iter()
            .map(|(at, _)| u32::try_from(*at).expect("small"))
            .collect();
        want_moved.sort_unstable();
        assert_eq!(moved, want_moved, "only the strays leave");
        assert_eq!(kept.len(), 2000 - strays.len());
        let mut want: Vec<u32> = slots.clone();
        want.sort_by(|&a, &b| key_of(a).cmp(key_of(b)));
        assert_eq!(in_key_order(&slots, key_of), want);
        // A random order: everything is sorted instead.
        let mut shuffled: Vec<u32> = (0..2000).collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, usize::try_from(x % (i as u64 + 1)).expect("small"));
        }
        let (kept, rest) = split_ascending(&shuffled, key_of);
        assert!(kept.is_empty() && rest.len() == 2000);
    }
}
