//! Software prefetch: asking the CPU to start loading memory into its cache
//! before it is read, so that the cache misses of independent reads (the
//! keys of a pipeline) overlap instead of being paid one after another.
//!
//! A prefetch is only a hint: it never faults (an address that is not mapped
//! is ignored) and changes nothing a program can observe but its speed. On
//! x86-64 it is `prefetcht0`; elsewhere it does nothing.

/// Size of a cache line.
const LINE: usize = 64;

/// Asks for the cache line holding `ptr`.
#[inline]
pub(crate) fn line(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing the program sees and never faults,
        // whatever the address; SSE (which it needs) is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Asks for the cache lines of `value` (a small value: at most two lines).
#[inline]
pub(crate) fn value<T>(value: &T) {
    let start: *const u8 = std::ptr::from_ref(value).cast();
    line(start);
    if let Some(last) = std::mem::size_of::<T>().checked_sub(1) {
        line(start.wrapping_add(last));
    }
}

/// Asks for the cache lines of the first `max` bytes of `bytes`.
#[inline]
pub(crate) fn bytes(bytes: &[u8], max: usize) {
    let len = bytes.len().min(max);
    let start = bytes.as_ptr();
    let mut at = 0;
    while at < len {
        line(start.wrapping_add(at));
        at += LINE;
    }
    if len > 0 {
        // The last line, which the steps above miss when `bytes` does not
        // start on a line boundary.
        line(start.wrapping_add(len - 1));
    }
}

/// Independent lookups (keys, entries) in flight at once: a round's misses
/// overlap, and its lines still fit the first-level cache.
pub(crate) const ROUND: usize = 16;

/// Calls `round` with `items` in order, [`ROUND`] at a time (the last round
/// padded with `None`), so that the caller can start every lookup of a round
/// before it uses any of them.
pub(crate) fn in_rounds<T>(
    items: impl Iterator<Item = T>,
    mut round: impl FnMut([Option<T>; ROUND]),
) {
    let mut items = items.fuse();
    loop {
        let next: [Option<T>; ROUND] = std::array::from_fn(|_| items.next());
        let last = next.last().is_none_or(Option::is_none);
        if next.first().is_some_and(Option::is_some) {
            round(next);
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(n: usize) -> Vec<Vec<Option<usize>>> {
        let mut out = Vec::new();
        in_rounds(0..n, |r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn items_come_in_order_in_rounds_the_last_padded() {
        assert!(rounds(0).is_empty(), "nothing, no round");
        let r = rounds(ROUND * 2 + 3);
        assert_eq!(r.len(), 3);
        let items: Vec<usize> = r.iter().flatten().flatten().copied().collect();
        assert_eq!(items, (0..ROUND * 2 + 3).collect::<Vec<_>>());
        assert!(r[2][3..].iter().all(Option::is_none));
        assert_eq!(
            rounds(ROUND).len(),
            1,
            "a whole round, no empty one after it"
        );
    }
}
