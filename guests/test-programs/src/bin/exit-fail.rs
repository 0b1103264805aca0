//! Writes a diagnostic to stderr and exits with status 3.
fn main() {
    eprintln!("something went wrong: the input was not what I expected");
    std::process::exit(3);
}
