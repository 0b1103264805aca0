//! Writes a diagnostic to stderr and exits with the status given as its first argument
//! (3 without one; any i32, so statuses of 126 and more and negative ones too).
fn main() {
    eprintln!("something went wrong: the input was not what I expected");
    let status = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(3);
    std::process::exit(status);
}
