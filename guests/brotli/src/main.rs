//! Compresses stdin with brotli and writes the result to stdout; with the argument
//! `decompress` it does the reverse. Optional `quality=N` (0-11, default 9) and
//! `window=N` (10-24; by default the smallest window that holds the input, at most 22, as
//! the reference `brotli` tool does) tune compression.

use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("brotli: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut decompress = false;
    let mut quality = 9u32;
    let mut window = None;
    for arg in std::env::args().skip(1) {
        match arg.split_once('=') {
            None if arg == "decompress" || arg == "-d" => decompress = true,
            None if arg == "compress" => decompress = false,
            Some(("mode", mode)) => decompress = mode == "decompress",
            Some(("quality", q)) => quality = parse(q, 0..=11, "quality")?,
            Some(("window", w)) => window = Some(parse(w, 10..=24, "window")?),
            _ => {
                return Err(format!(
                    "unknown argument `{arg}`; use `decompress`, `quality=N` or `window=N`"
                ));
            }
        }
    }
    let mut input = Vec::new();
    io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let mut stdout = io::stdout().lock();
    if decompress {
        let mut output = Vec::new();
        brotli::BrotliDecompress(&mut &input[..], &mut output)
            .map_err(|e| format!("input is not valid brotli data: {e}"))?;
        stdout.write_all(&output).map_err(|e| e.to_string())?;
    } else {
        // A window larger than the input buys nothing and costs memory to set up: for small
        // inputs the encoder's tables, not the data, would dominate the time.
        let fitted = (usize::BITS - input.len().saturating_sub(1).leading_zeros()).clamp(10, 22);
        let params = brotli::enc::BrotliEncoderParams {
            quality: quality as i32,
            lgwin: window.unwrap_or(fitted) as i32,
            size_hint: input.len(),
            ..Default::default()
        };
        let mut output = Vec::with_capacity(input.len() / 2);
        brotli::BrotliCompress(&mut &input[..], &mut output, &params).map_err(|e| e.to_string())?;
        stdout.write_all(&output).map_err(|e| e.to_string())?;
    }
    stdout.flush().map_err(|e| e.to_string())
}

fn parse(value: &str, range: std::ops::RangeInclusive<u32>, what: &str) -> Result<u32, String> {
    value
        .parse()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            format!(
                "{what} must be a number in {}..={}",
                range.start(),
                range.end()
            )
        })
}
