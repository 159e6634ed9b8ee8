//! How the kernel backs the index's large buffers (Linux; elsewhere these
//! do nothing).
//!
//! The entry slab of an index grown by inserts is advised transparent huge
//! pages (where THP is in `madvise` mode): random lookups miss the TLB far
//! less, and a load that grows the slab faults in 28 pages instead of 14,000
//! for a million entries.
//!
//! A slab filled at once from a snapshot is not advised before it is filled:
//! each part is faulted in with small pages by the thread that fills it, in
//! one call ([`populate_for_writing`]), and the slab is advised huge pages
//! once filled, for the kernel's background collapse (lookups get huge pages
//! later, without waiting for them). On the benchmark machine, a VM whose
//! guest hands free memory back to the host, a free huge page is often one
//! the host must back anew: faulting it in cost about 2.5 ms, several times
//! the small pages it replaces (0.2 ms when the host still backs it).
//! Reopening a million keys right after loading them (W5) zeroed pages for a
//! median 43-54 ms (8 to 115) with huge pages, against 8 ms (and 15 ms more
//! of page-table work) with small pages faulted in bulk: a median W5 of
//! 0.110-0.142 s against 0.072-0.080 s in rotated runs. Where huge pages come
//! zeroed quickly, the small pages cost about 10 ms more. Only advice:
//! nothing changes if the kernel declines.

use std::mem::MaybeUninit;

/// Below this, a buffer is not worth a huge page.
const HUGE_PAGE_FROM: usize = 4 << 20;

/// The pages of `bytes` bytes from `ptr` inward: `(start, len)`, if any.
#[cfg(target_os = "linux")]
fn whole_pages(ptr: *const u8, bytes: usize) -> Option<(usize, usize)> {
    const PAGE: usize = 4096;
    let start = ptr as usize;
    let from = start.next_multiple_of(PAGE);
    let to = (start + bytes) / PAGE * PAGE;
    (to > from).then(|| (from, to - from))
}

/// Asks the kernel to back a vector's buffer with transparent huge pages.
pub(super) fn advise_huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < HUGE_PAGE_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Some((from, len)) = whole_pages(v.as_ptr().cast(), bytes) {
        // SAFETY: the range lies inside the vector's allocation (page-aligned
        // inward); MADV_HUGEPAGE changes how the kernel backs it, never its
        // contents, and the allocation outlives the call.
        unsafe {
            libc::madvise(from as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
}

/// Faults in `room`, memory about to be written whole, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14) instead of a page fault per page: a
/// third less of the kernel's time for a snapshot load's small pages.
/// Kernels without it refuse the advice, and the writes fault the pages in.
pub(super) fn populate_for_writing<T>(room: &mut [MaybeUninit<T>]) {
    let bytes = std::mem::size_of_val(room);
    if bytes < HUGE_PAGE_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Some((from, len)) = whole_pages(room.as_ptr().cast(), bytes) {
        // SAFETY: the range lies inside `room`, which the caller holds
        // mutably; populating for writing maps pages in (zeroed, as a first
        // write would) and never changes memory already there.
        unsafe {
            libc::madvise(from as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE);
        }
    }
}
