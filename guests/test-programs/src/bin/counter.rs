//! Increments global state and prints it. A fresh instance per invocation always prints
//! `count=1 heap=1`; anything larger means state survived from an earlier invocation.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNT: AtomicU32 = AtomicU32::new(0);
static HEAP: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn main() {
    let count = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    let mut heap = HEAP.lock().unwrap();
    heap.push(1);
    println!("count={count} heap={}", heap.len());
}
