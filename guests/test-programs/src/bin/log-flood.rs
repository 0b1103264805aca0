//! Floods its log: writes 64 MiB to stderr in 64 KiB lines, then exits successfully. The node
//! keeps only the log's tail, so this costs the guest time, never the node memory.
use std::io::Write;

fn main() {
    let line = [b'#'; 64 * 1024];
    let mut stderr = std::io::stderr().lock();
    for _ in 0..1024 {
        let _ = stderr.write_all(&line);
    }
    println!("flooded");
}
