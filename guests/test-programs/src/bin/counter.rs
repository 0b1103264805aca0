//! Increments global state, checks that fresh memory is zero, and then dirties it. A fresh
//! instance per invocation always prints `count=1 heap=1 dirty=0`; anything else means state
//! survived from an earlier invocation (globals, heap, or linear memory of a reused slot).
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNT: AtomicU32 = AtomicU32::new(0);
static HEAP: Mutex<Vec<u8>> = Mutex::new(Vec::new());

const PAGE: usize = 64 * 1024;
const PAGES: usize = 16;

fn main() {
    let count = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    let mut heap = HEAP.lock().unwrap();
    heap.push(1);
    println!(
        "count={count} heap={} dirty={}",
        heap.len(),
        grow_and_dirty()
    );
}

/// Grows linear memory by 1 MiB that no allocator knows of, counts its non-zero bytes, and
/// fills it with 0xA5 so that a slot reused without a reset would show it next time.
#[cfg(target_arch = "wasm32")]
fn grow_and_dirty() -> usize {
    let previous = core::arch::wasm32::memory_grow(0, PAGES);
    assert!(previous != usize::MAX, "memory.grow failed");
    let base = (previous * PAGE) as *mut u8;
    let mut dirty = 0;
    for i in 0..PAGES * PAGE {
        // SAFETY: the pages [previous, previous + PAGES) were just added by memory.grow; no
        // Rust allocation covers them, and volatile accesses keep the compiler from assuming
        // anything about their contents.
        unsafe {
            if base.add(i).read_volatile() != 0 {
                dirty += 1;
            }
            base.add(i).write_volatile(0xA5);
        }
    }
    dirty
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_and_dirty() -> usize {
    0
}
