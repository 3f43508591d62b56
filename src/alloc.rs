//! The allocator: the system's, except in a command that reads a catalog once and exits
//! (`rewire render`, `rewire diff`), which takes its memory from one region it only ever bumps
//! through and never gives back.
//!
//! Why: a one-shot render of 10 000 dir instances makes ~185 000 allocations (23 MB in all,
//! 14 MB live at the end: the catalog, its template values, the output), and glibc's `malloc`,
//! `free` and `realloc` were 22% of its instructions (callgrind, 2026-12-03). Each thread but
//! the main one also got an arena of its own, opened page by page, and the process took ~4 900
//! page faults. A bump is an addition to a thread's own pointer (threads take 64 KB chunks of the region
//! with a compare-and-swap); the region is asked to be backed by huge pages
//! (`MADV_HUGEPAGE`, where the kernel offers them), so it faults in 2 MB at a time.
//!
//! What it costs: memory freed inside the region is not reused, so the process holds what it
//! ever allocated (23 MB for that render, against 14 MB at its peak with malloc). The region is
//! [`ONE_SHOT_REGION`] bytes of address space; allocations past it, and everything in every
//! other command (the daemon lives for months and frees what it no longer needs), go to the
//! system allocator. A block is routed back by its address, so a block from either side can be
//! freed or grown at any time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Address space reserved for a one-shot command. Pages count only once touched.
pub const ONE_SHOT_REGION: usize = 64 << 20;

/// What a thread takes from the region at a time, and bumps through on its own.
const CHUNK: usize = 64 << 10;

/// Blocks this large come straight from the region (a large buffer that grows is often the
/// region's newest block, and grows where it is).
const LARGE: usize = 16 << 10;

thread_local! {
    /// This thread's chunk: the next free byte and the chunk's end (both 0 before the first).
    /// Const-initialized and without a destructor, so usable inside the allocator at any time.
    static LOCAL: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Huge page size the region is aligned to, so that the kernel can back it with them.
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with an optional bump region in front (see the module docs).
pub struct Allocator {
    /// Start of the region; 0 while there is none. Set last, read first.
    start: AtomicUsize,
    end: AtomicUsize,
    /// Everything from here to `end` has never been handed out (and is still zero).
    next: AtomicUsize,
}

impl Allocator {
    pub const fn new() -> Self {
        Allocator {
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Maps a region of `len` bytes and serves allocations from it from now on. Returns false,
    /// leaving everything to the system allocator, if the region cannot be mapped or one is
    /// already in use. Call it before other threads allocate (it is meant for `main`).
    pub fn use_region(&self, len: usize) -> bool {
        if self.start.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(mapped) = len.checked_add(HUGE_PAGE) else {
            return false;
        };
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        // SAFETY: [start, start + len) lies inside the mapping. Without transparent huge pages
        // (or with them off) the advice fails, and the region works with small pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        self.end.store(start + len, Ordering::Relaxed);
        self.next.store(start, Ordering::Relaxed);
        self.start.store(start, Ordering::Release);
        true
    }

    /// Bytes handed out of the region so far (0 without one).
    #[cfg(test)]
    fn used(&self) -> usize {
        match self.start.load(Ordering::Acquire) {
            0 => 0,
            start => self.next.load(Ordering::Relaxed) - start,
        }
    }

    /// A block of the region, or None when there is no region or no room left in it. Small
    /// blocks come from the thread's chunk (threads taking every block from the one shared
    /// counter kept moving its cache line between them: the 10 000-instance render took 25%
    /// longer), large ones straight from the region.
    ///
    /// Inlined up to the region check, so that a command without a region (the daemon) pays
    /// one load and one branch per allocation before glibc's.
    #[inline(always)]
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        match self.start.load(Ordering::Acquire) {
            0 => None,
            start => self.bump_in(start, layout),
        }
    }

    #[inline(never)]
    fn bump_in(&self, start: usize, layout: Layout) -> Option<*mut u8> {
        if layout.size() >= LARGE {
            return self
                .take(layout.size(), layout.align())
                .map(|at| at as *mut u8);
        }
        let region_end = self.end.load(Ordering::Relaxed);
        LOCAL.with(|local| {
            let (cur, end) = local.get();
            // The chunk must be this region's (tests make allocators of their own).
            if cur >= start
                && end <= region_end
                && let Some(at) = cur.checked_next_multiple_of(layout.align())
                && let Some(after) = at.checked_add(layout.size())
                && after <= end
            {
                local.set((after, end));
                return Some(at as *mut u8);
            }
            let at = self.take(CHUNK, layout.align())?;
            local.set((at + layout.size(), at + CHUNK));
            Some(at as *mut u8)
        })
    }

    /// `size` bytes of the region aligned to `align`, or None.
    fn take(&self, size: usize, align: usize) -> Option<usize> {
        let end = self.end.load(Ordering::Relaxed);
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let at = cur.checked_next_multiple_of(align)?;
            let after = at.checked_add(size)?;
            if after > end {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(cur, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(at),
                Err(seen) => cur = seen,
            }
        }
    }

    #[inline(always)]
    fn owns(&self, p: *mut u8) -> bool {
        let start = self.start.load(Ordering::Acquire);
        let p = p as usize;
        start != 0 && p >= start && p < self.end.load(Ordering::Relaxed)
    }

    /// Grows a block where it is if it is the newest of this thread's chunk, or of the whole
    /// region, and there is room.
    fn grow_in_place(&self, p: *mut u8, old: usize, new: usize) -> bool {
        let at = p as usize;
        let (Some(old_end), Some(new_end)) = (at.checked_add(old), at.checked_add(new)) else {
            return false;
        };
        let in_chunk = LOCAL.with(|local| {
            let (cur, end) = local.get();
            let fits = cur == old_end && new_end <= end;
            if fits {
                local.set((new_end, end));
            }
            fits
        });
        in_chunk
            || (new_end <= self.end.load(Ordering::Relaxed)
                && self
                    .next
                    .compare_exchange(old_end, new_end, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
    }
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block is either the system allocator's (and goes back to it) or a range of the
// region handed out once (`next` only moves forward) and never handed out again.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: the caller's contract (a non-zero size) is passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            // Never handed out before: still the zeroes the kernel mapped.
            Some(p) => p,
            // SAFETY: as above.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if !self.owns(p) {
            // SAFETY: a block the system allocator handed out, with its layout.
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(p) {
            // SAFETY: a block of the system allocator; the caller's contract is passed on.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        if new_size <= layout.size() || self.grow_in_place(p, layout.size(), new_size) {
            return p;
        }
        // SAFETY: the caller guarantees the new size, rounded to the alignment, is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size (it is larger than the old one).
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks are at least `layout.size()` long and do not overlap (`q` is
            // fresh).
            unsafe { std::ptr::copy_nonoverlapping(p, q, layout.size()) };
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn without_a_region_everything_is_the_systems() {
        let a = Allocator::new();
        unsafe {
            let p = a.alloc(layout(100, 8));
            assert!(!p.is_null() && !a.owns(p));
            let q = a.realloc(p, layout(100, 8), 5000);
            assert!(!a.owns(q));
            a.dealloc(q, layout(5000, 8));
        }
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn blocks_come_from_the_region_aligned_and_zeroed_and_keep_their_bytes_when_grown() {
        let a = Allocator::new();
        assert!(a.use_region(1 << 20));
        assert!(!a.use_region(1 << 20), "one region at most");
        unsafe {
            let p = a.alloc(layout(3, 1));
            let q = a.alloc_zeroed(layout(64, 64));
            assert!(a.owns(p) && a.owns(q));
            assert_eq!(q as usize % 64, 0);
            assert!(std::slice::from_raw_parts(q, 64).iter().all(|&b| b == 0));
            q.write_bytes(7, 64);
            // The newest block grows where it is; an older one moves, with its bytes.
            let q2 = a.realloc(q, layout(64, 64), 200);
            assert_eq!(q2, q);
            p.copy_from_nonoverlapping(b"abc".as_ptr(), 3);
            let p2 = a.realloc(p, layout(3, 1), 10);
            assert_ne!(p2, p);
            assert_eq!(std::slice::from_raw_parts(p2, 3), b"abc");
            assert!(std::slice::from_raw_parts(q2, 64).iter().all(|&b| b == 7));
            a.dealloc(p2, layout(10, 1));
        }
        assert!(a.used() >= 3 + 200 + 10);
    }

    #[test]
    fn past_the_end_of_the_region_blocks_come_from_the_system() {
        let a = Allocator::new();
        assert!(a.use_region(2 * CHUNK));
        unsafe {
            let p = a.alloc(layout(100 << 10, 8));
            assert!(a.owns(p));
            p.write_bytes(1, 100 << 10);
            // 28 KB are left: not enough for a chunk, nor for this block.
            let small = a.alloc(layout(24, 8));
            let big = a.alloc(layout(64 << 10, 8));
            assert!(!a.owns(small) && !a.owns(big));
            // An owned block that outgrows the region moves to the system, bytes and all,
            // and is later freed there.
            let moved = a.realloc(p, layout(100 << 10, 8), 1 << 20);
            assert!(!a.owns(moved));
            assert!(
                std::slice::from_raw_parts(moved, 100 << 10)
                    .iter()
                    .all(|&b| b == 1)
            );
            a.dealloc(moved, layout(1 << 20, 8));
            a.dealloc(big, layout(64 << 10, 8));
            a.dealloc(small, layout(24, 8));
        }
    }

    #[test]
    fn a_large_block_that_is_the_regions_newest_grows_where_it_is() {
        let a = Allocator::new();
        assert!(a.use_region(4 << 20));
        unsafe {
            let p = a.alloc(layout(LARGE, 1));
            let q = a.realloc(p, layout(LARGE, 1), 3 * LARGE);
            assert_eq!(q, p);
            // Another block after it: now it moves.
            let other = a.alloc(layout(LARGE, 1));
            let r = a.realloc(q, layout(3 * LARGE, 1), 6 * LARGE);
            assert_ne!(r, q);
            assert!(a.owns(r) && a.owns(other));
        }
    }

    #[test]
    fn threads_get_disjoint_blocks() {
        let a = std::sync::Arc::new(Allocator::new());
        assert!(a.use_region(8 << 20));
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|_| unsafe {
                            let p = a.alloc(layout(24, 8));
                            p.write_bytes(t, 24);
                            p as usize
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, u8)> = Vec::new();
        for (t, h) in handles.into_iter().enumerate() {
            all.extend(h.join().unwrap().into_iter().map(|p| (p, t as u8)));
        }
        all.sort();
        for w in all.windows(2) {
            assert!(w[0].0 + 24 <= w[1].0, "blocks overlap");
        }
        for (p, t) in all {
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, 24) };
            assert!(
                bytes.iter().all(|&b| b == t),
                "a block was written by another thread"
            );
        }
    }
}
