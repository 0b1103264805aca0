//! Makes N host calls (`sched_yield`, the cheapest WASI call) for `cella bench monitor`.
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for _ in 0..n {
        std::thread::yield_now();
    }
}
