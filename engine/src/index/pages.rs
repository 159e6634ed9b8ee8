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
//!
//! The hash table follows the same rules through its allocator
//! ([`TableAlloc`]): a table grown by inserts is advised as it is allocated;
//! one built at once from a snapshot is advised once built. A point lookup
//! reads a line of the table's control bytes and one of its slots, far apart
//! in tens of megabytes: with small pages each is a TLB miss as well. Random
//! gets over a million keys (W2) ran 8 to 15 % faster with every anonymous
//! mapping on huge pages than with the slab alone advised.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use allocator_api2::alloc::{AllocError, Allocator, Global};
use parking_lot::Mutex;

use std::mem::MaybeUninit;

/// Below this, a buffer is left as it comes: the advice is not worth a call.
const ADVISE_FROM: usize = 4 << 20;

/// The same for one of an index's two hash tables (see `entries.rs`): each
/// holds about half the keys, so a table is advised from the number of keys
/// at which one table of them all would have been.
const TABLE_ADVISE_FROM: usize = ADVISE_FROM / 2;

/// What to ask of the kernel for a buffer.
#[derive(Clone, Copy)]
enum Advice {
    /// Back it with transparent huge pages.
    HugePages,
    /// Map all its pages in now, for writing.
    PopulateWrite,
}

/// Gives `advice` for the whole pages of the `bytes` bytes from `ptr` (a
/// buffer of at least `from` bytes; smaller ones are left alone).
///
/// # Safety
/// The bytes must belong to one live allocation, which the caller may write
/// for [`Advice::PopulateWrite`].
unsafe fn advise(ptr: *const u8, bytes: usize, advice: Advice, from: usize) {
    if bytes < from {
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
    unsafe { advise(v.as_ptr().cast(), bytes, Advice::HugePages, ADVISE_FROM) };
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
            ADVISE_FROM,
        );
    };
}

/// The index's hash table allocator: the global allocator, with the table's
/// large allocations advised huge pages, at once or, during a bulk build,
/// once the build is done ([`TableAlloc::defer`], [`TableAlloc::advise_now`]).
#[derive(Debug, Default)]
pub(super) struct TableAlloc {
    /// Whether large allocations wait for [`TableAlloc::advise_now`].
    deferred: AtomicBool,
    /// The newest large allocation still live: its address and size.
    large: Mutex<Option<(usize, usize)>>,
}

impl TableAlloc {
    /// Makes large allocations wait for [`TableAlloc::advise_now`] (`true`),
    /// or be advised as they are made (`false`, the default).
    pub(super) fn defer(&self, deferred: bool) {
        self.deferred.store(deferred, Ordering::Relaxed);
    }

    /// Advises huge pages for the newest large allocation, if it is live.
    pub(super) fn advise_now(&self) {
        let large = self.large.lock();
        if let Some((addr, bytes)) = *large {
            // SAFETY: a live allocation of `bytes` bytes (deallocation clears
            // it, under the lock held here); huge pages change how the kernel
            // backs it, not its contents.
            unsafe {
                advise(
                    addr as *const u8,
                    bytes,
                    Advice::HugePages,
                    TABLE_ADVISE_FROM,
                );
            }
        }
    }
}

// SAFETY: every block comes from, and goes back to, the global allocator,
// which meets the trait's contract; the advice changes how the kernel backs a
// block, never its contents.
unsafe impl Allocator for TableAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Global.allocate(layout)?;
        let bytes = block.len();
        if bytes >= TABLE_ADVISE_FROM {
            let start: *const u8 = block.as_ptr().cast();
            *self.large.lock() = Some((start as usize, bytes));
            if !self.deferred.load(Ordering::Relaxed) {
                // SAFETY: the block just allocated, `bytes` long.
                unsafe { advise(start, bytes, Advice::HugePages, TABLE_ADVISE_FROM) };
            }
        }
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() >= TABLE_ADVISE_FROM {
            let mut large = self.large.lock();
            if large.is_some_and(|(addr, _)| addr == ptr.as_ptr() as usize) {
                *large = None;
            }
        }
        // SAFETY: the caller's contract: `ptr` is a block of `layout` that this
        // allocator, and so the global one, allocated.
        unsafe { Global.deallocate(ptr, layout) };
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Whether the mapping holding `addr` is advised huge pages (`hg` among its
    /// `VmFlags` in /proc/self/smaps).
    fn advised(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    ) {
                        inside = (from..to).contains(&addr);
                        continue;
                    }
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|f| f == "hg");
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn large_tables_are_advised_huge_pages_at_once_or_when_built() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            assert!(
                std::env::var("LOGKV_NO_SKIP").as_deref() != Ok("1"),
                "this kernel has no transparent huge pages and LOGKV_NO_SKIP=1 forbids skipping"
            );
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        // 64 MiB: above glibc's largest mmap threshold (32 MiB), so each block is
        // a fresh mapping. A smaller one freed raises the threshold, and the next
        // came from a heap that other tests' tables had advised: the check that a
        // deferred block is not advised then failed now and then.
        let layout = Layout::from_size_align(ADVISE_FROM * 16, 4096).unwrap();
        let alloc = TableAlloc::default();
        let block = alloc.allocate(layout).unwrap();
        let inner = block.as_ptr().cast::<u8>() as usize + ADVISE_FROM;
        assert!(advised(inner), "advised as it is allocated");
        // SAFETY: allocated above with `layout`.
        unsafe { alloc.deallocate(block.cast(), layout) };
        assert!(alloc.large.lock().is_none(), "forgotten once freed");

        alloc.defer(true);
        let block = alloc.allocate(layout).unwrap();
        let inner = block.as_ptr().cast::<u8>() as usize + ADVISE_FROM;
        assert!(!advised(inner), "deferred during a build");
        alloc.advise_now();
        assert!(advised(inner), "advised once built");
        // SAFETY: allocated above with `layout`.
        unsafe { alloc.deallocate(block.cast(), layout) };

        // A table holds half the keys: one of 3 MiB is advised (the slab
        // would be from 4 MiB).
        let half = Layout::from_size_align(3 << 20, 4096).unwrap();
        let block = alloc.allocate(half).unwrap();
        let inner = block.as_ptr().cast::<u8>() as usize + (1 << 20);
        alloc.advise_now();
        assert!(advised(inner), "a table of 3 MiB is advised");
        // SAFETY: allocated above with `half`.
        unsafe { alloc.deallocate(block.cast(), half) };

        let small = Layout::from_size_align(4096, 8).unwrap();
        let block = alloc.allocate(small).unwrap();
        assert!(alloc.large.lock().is_none(), "small blocks are left alone");
        // SAFETY: allocated above with `small`.
        unsafe { alloc.deallocate(block.cast(), small) };
    }
}
