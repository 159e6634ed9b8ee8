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

/// Below this, a buffer is left as it comes: the advice is not worth a call.
const ADVISE_FROM: usize = 4 << 20;

/// What to ask of the kernel for a buffer.
#[derive(Clone, Copy)]
enum Advice {
    /// Back it with transparent huge pages.
    HugePages,
    /// Map all its pages in now, for writing.
    PopulateWrite,
}

/// Gives `advice` for the whole pages of the `bytes` bytes from `ptr` (a
/// buffer of at least [`ADVISE_FROM`] bytes; smaller ones are left alone).
///
/// # Safety
/// The bytes must belong to one live allocation, which the caller may write
/// for [`Advice::PopulateWrite`].
unsafe fn advise(ptr: *const u8, bytes: usize, advice: Advice) {
    if bytes < ADVISE_FROM {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = ptr as usize;
        let from = start.next_multiple_of(PAGE);
        let to = (start + bytes) / PAGE * PAGE;
        let advice = match advice {
            Advice::HugePages => libc::MADV_HUGEPAGE,
            Advice::PopulateWrite => libc::MADV_POPULATE_WRITE,
        };
        if to > from {
            // SAFETY: [from, to) lies inside the allocation (page-aligned
            // inward), which the caller may write and which outlives the
            // call; neither advice changes its contents (huge pages change
            // how the kernel backs it; populating maps in the pages a first
            // write would, zeroed, and leaves mapped ones as they are).
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, advice);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, advice);
}

/// Asks the kernel to back a vector's buffer with transparent huge pages.
pub(super) fn advise_huge_pages<T>(v: &Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    // SAFETY: the vector's buffer, which `v` owns.
    unsafe { advise(v.as_ptr().cast(), bytes, Advice::HugePages) };
}

/// Faults in `room`, memory about to be written whole, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14) instead of a page fault per page: a
/// third less of the kernel's time for a snapshot load's small pages.
/// Kernels without it refuse the advice, and the writes fault the pages in.
pub(super) fn populate_for_writing<T>(room: &mut [MaybeUninit<T>]) {
    // SAFETY: `room`, which the caller holds mutably.
    unsafe {
        advise(
            room.as_ptr().cast(),
            std::mem::size_of_val(room),
            Advice::PopulateWrite,
        );
    };
}
