//! Decodes a PNG or JPEG from stdin, resizes it to a width (first numeric argument or
//! `width=N`, default 128) keeping the aspect ratio, optionally converts it to grayscale
//! (argument `grayscale`), and writes a PNG to stdout. cella's stand-in for Se-Lambda's
//! OpenCV workload.

use std::io::{self, Cursor, Read, Write};
use std::process::ExitCode;

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader};

const MAX_WIDTH: u32 = 4096;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("thumbnail: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut width = 128u32;
    let mut grayscale = false;
    for arg in std::env::args().skip(1) {
        let value = arg.strip_prefix("width=").unwrap_or(&arg);
        if arg == "grayscale" || arg == "gray" {
            grayscale = true;
        } else if let Ok(w) = value.parse::<u32>() {
            if w == 0 || w > MAX_WIDTH {
                return Err(format!("width must be between 1 and {MAX_WIDTH}, got {w}"));
            }
            width = w;
        } else {
            return Err(format!(
                "unknown argument `{arg}`; use a width (e.g. `256`) or `grayscale`"
            ));
        }
    }
    let mut input = Vec::new();
    io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let image = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| format!("input is not a PNG or JPEG image: {e}"))?;
    let height = ((u64::from(image.height()) * u64::from(width)) / u64::from(image.width().max(1)))
        .max(1) as u32;
    let mut thumb = image.resize_exact(width, height, FilterType::Triangle);
    if grayscale {
        thumb = thumb.grayscale();
    }
    let mut png = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    io::stdout()
        .lock()
        .write_all(&png)
        .map_err(|e| e.to_string())
}
