//! Copies stdin to stdout, prints its arguments to stderr (the log).
use std::io::{Read, Write};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    eprintln!("args={args:?}");
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    std::io::stdout().write_all(&input).unwrap();
}
