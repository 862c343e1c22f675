//! The benchmark's allocator: the system's malloc, or mimalloc (the allocator the
//! `portia` binary links) when `PORTIA_BENCH_ALLOCATOR=mimalloc` is in the
//! environment, counting allocations and bytes either way, so that one binary
//! measures both and says what a workflow allocates.
//!
//! The choice is made at the process's first allocation, before `main` and before
//! any second thread, and never changes: a block is always freed by the allocator
//! that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

/// Counts of what the process allocated, since it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    /// Allocations and reallocations.
    pub(crate) allocations: usize,
    /// Bytes asked for, including the growth of reallocations.
    pub(crate) bytes_allocated: usize,
    /// Bytes given back, including the shrinking of reallocations.
    pub(crate) bytes_deallocated: usize,
}

/// A global allocator over the system's or mimalloc, counting as it goes (a few
/// relaxed atomic additions per call, which the benchmark's CPU figures include).
#[derive(Debug)]
pub(crate) struct Counting {
    choice: AtomicU8,
    allocations: AtomicUsize,
    allocated: AtomicUsize,
    deallocated: AtomicUsize,
}

impl Counting {
    /// An allocator that picks its inner allocator at its first call.
    pub(crate) const fn new() -> Self {
        Self {
            choice: AtomicU8::new(UNDECIDED),
            allocations: AtomicUsize::new(0),
            allocated: AtomicUsize::new(0),
            deallocated: AtomicUsize::new(0),
        }
    }

    /// What was allocated so far.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.load(Relaxed),
            bytes_allocated: self.allocated.load(Relaxed),
            bytes_deallocated: self.deallocated.load(Relaxed),
        }
    }

    /// The name of the allocator in use, as the benchmark reports it.
    pub(crate) fn name(&self) -> &'static str {
        if self.mimalloc() { "mimalloc" } else { "system" }
    }

    fn mimalloc(&self) -> bool {
        match self.choice.load(Relaxed) {
            SYSTEM => false,
            MIMALLOC => true,
            _ => {
                let mimalloc = asked_for_mimalloc();
                self.choice.store(if mimalloc { MIMALLOC } else { SYSTEM }, Relaxed);
                mimalloc
            }
        }
    }

    fn inner(&self) -> &'static dyn GlobalAlloc {
        if self.mimalloc() { &mimalloc::MiMalloc } else { &System }
    }

    fn counted(&self, bytes: usize) {
        self.allocations.fetch_add(1, Relaxed);
        self.allocated.fetch_add(bytes, Relaxed);
    }
}

/// Whether the environment asks for mimalloc. Read with `getenv`, which allocates
/// nothing: the standard library's readers allocate, and this runs inside the
/// allocator's first call.
fn asked_for_mimalloc() -> bool {
    let name = c"PORTIA_BENCH_ALLOCATOR";
    // SAFETY: `name` is a NUL-terminated string; nothing sets the environment
    // before the first allocation, so `getenv` reads it unchanged, and the string it
    // returns is read at once.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null result of `getenv` is a NUL-terminated string.
    !value.is_null() && unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() == b"mimalloc"
}

// SAFETY: every call goes to one inner allocator, the same for the life of the
// process, with the caller's arguments unchanged; the counting touches no memory
// the callers see.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.counted(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner().alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.counted(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner().alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.deallocated.fetch_add(layout.size(), Relaxed);
        // SAFETY: the caller's contract, passed on; `ptr` came from the same inner allocator.
        unsafe { self.inner().dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Relaxed);
        if new_size > layout.size() {
            self.allocated.fetch_add(new_size - layout.size(), Relaxed);
        } else {
            self.deallocated.fetch_add(layout.size() - new_size, Relaxed);
        }
        // SAFETY: the caller's contract, passed on; `ptr` came from the same inner allocator.
        unsafe { self.inner().realloc(ptr, layout, new_size) }
    }
}
