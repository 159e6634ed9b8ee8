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
