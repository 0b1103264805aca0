//! A plug-in whose heavy initial state is a lookup table: a sieve of Eratosthenes over the odd
//! numbers, 8 MiB by default. Pre-initialisation builds it once (at `cella plugin add`); the
//! snapshot holds it, and every instance maps it copy-on-write, so a request pays for the few
//! pages it reads, not for the table.
//!
//! - `wizer-initialize`: builds the table. When a function using the plug-in is deployed, its
//!   payload is read from stdin: `limit=N` rebuilds the table for numbers below N (so the same
//!   plug-in serves small and large tables); empty keeps the plug-in's.
//! - `_start`: stdin holds numbers (whitespace- or comma-separated); for each, one JSON line
//!   `{"n":N,"prime":bool,"next":P}` with the smallest prime above N. Without a snapshot (the
//!   benchmark's naive cold mode) the table is built first, on every request.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Mutex;

/// Numbers below this are in the default table: 2^27 → 2^26 odd numbers → 8 MiB of bits.
const DEFAULT_LIMIT: u64 = 1 << 27;

/// Bit i set ⇔ 2i+1 is composite (or 1).
struct Sieve {
    limit: u64,
    composite: Vec<u64>,
}

static TABLE: Mutex<Option<Sieve>> = Mutex::new(None);

impl Sieve {
    fn build(limit: u64) -> Sieve {
        let odd = limit.div_ceil(2) as usize;
        let mut composite = vec![0u64; odd.div_ceil(64)];
        composite[0] |= 1; // 1 is not prime
        let mut i = 1usize;
        while (2 * i + 1) * (2 * i + 1) < limit as usize {
            if composite[i / 64] & (1 << (i % 64)) == 0 {
                let p = 2 * i + 1;
                let mut m = p * p / 2;
                while m < odd {
                    composite[m / 64] |= 1 << (m % 64);
                    m += p;
                }
            }
            i += 1;
        }
        Sieve { limit, composite }
    }

    fn is_prime(&self, n: u64) -> Option<bool> {
        if n >= self.limit {
            return None;
        }
        Some(match n {
            0 | 1 => false,
            2 => true,
            n if n % 2 == 0 => false,
            n => {
                let i = (n / 2) as usize;
                self.composite[i / 64] & (1 << (i % 64)) == 0
            }
        })
    }

    fn next_prime(&self, n: u64) -> Option<u64> {
        (n + 1..self.limit).find(|&m| self.is_prime(m) == Some(true))
    }
}

#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn initialize() {
    let mut config = String::new();
    let _ = std::io::stdin().read_to_string(&mut config);
    let limit = match config.trim().strip_prefix("limit=") {
        Some(n) => match n.trim().parse::<u64>() {
            Ok(n) if (16..=1 << 34).contains(&n) => n,
            _ => {
                eprintln!(
                    "`limit=` takes a number from 16 to 2^34, not `{}`",
                    n.trim()
                );
                std::process::exit(1);
            }
        },
        None if config.trim().is_empty() => DEFAULT_LIMIT,
        None => {
            eprintln!(
                "the configuration is `limit=N` or nothing, not `{}`",
                config.trim()
            );
            std::process::exit(1);
        }
    };
    let mut table = TABLE.lock().unwrap();
    if table.as_ref().is_none_or(|t| t.limit != limit) {
        *table = Some(Sieve::build(limit));
    }
}

fn main() -> ExitCode {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("the request is not UTF-8 text: send numbers");
        return ExitCode::FAILURE;
    }
    let mut table = TABLE.lock().unwrap();
    let sieve = table.get_or_insert_with(|| Sieve::build(DEFAULT_LIMIT));
    let mut out = String::new();
    for word in input.split(|c: char| c.is_whitespace() || c == ',') {
        if word.is_empty() {
            continue;
        }
        let Ok(n) = word.parse::<u64>() else {
            eprintln!("`{word}` is not a number");
            return ExitCode::FAILURE;
        };
        match (sieve.is_prime(n), sieve.next_prime(n)) {
            (Some(prime), Some(next)) => out.push_str(&format!(
                "{{\"n\":{n},\"prime\":{prime},\"next\":{next}}}\n"
            )),
            _ => {
                eprintln!("{n} is beyond this table (numbers below {})", sieve.limit);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(out.as_bytes()).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
