//! Writes to stdout without end: the output limit must stop it.
use std::io::Write;
fn main() {
    let chunk = [b'x'; 64 * 1024];
    let mut out = std::io::stdout().lock();
    loop {
        if out.write_all(&chunk).is_err() {
            return;
        }
    }
}
