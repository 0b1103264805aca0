//! The author's manifest (`cella.toml`, read by `cella bundle build`): arbitrary text through
//! `ManifestFile::parse` and `.manifest()`. Whatever is accepted must become a bundle the
//! platform can decode, with the same canonical manifest.
#![no_main]

use cella_bundle::{Bundle, ManifestFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match ManifestFile::parse(text) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let manifest = match file.manifest() {
        Ok(manifest) => manifest,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let bundle = Bundle::new(manifest.clone(), b"\0asm\x01\0\0\0".to_vec());
    let decoded = Bundle::decode(&bundle.encode(), 1024).unwrap_or_else(|e| {
        panic!("a manifest accepted from TOML makes a bundle that does not decode: {e}")
    });
    assert_eq!(decoded.manifest, manifest);
    assert_eq!(decoded.hash(), bundle.hash());
});
