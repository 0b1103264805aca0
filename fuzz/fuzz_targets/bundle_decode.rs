//! `Bundle::decode` on arbitrary bytes: what the platform does with every uploaded bundle, and
//! with every bundle it loads back from untrusted storage. Decoding must refuse garbage without
//! panicking, and whatever it accepts must have exactly one encoding (the bytes it came from),
//! since the bundle hash, and so the signature, covers that encoding.
#![no_main]

use cella_bundle::Bundle;
use libfuzzer_sys::fuzz_target;

/// The payload limit the decoder is given (the platform passes its `max_bundle_bytes`).
const MAX_PAYLOAD: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = cella_bundle::looks_like_bundle(data);
    let bundle = match Bundle::decode(data, MAX_PAYLOAD) {
        Ok(bundle) => bundle,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let encoded = bundle.encode();
    assert!(
        encoded == data,
        "a decoded bundle re-encodes to other bytes ({} instead of {})",
        encoded.len(),
        data.len()
    );
    let again = Bundle::decode(&encoded, MAX_PAYLOAD).expect("a re-encoded bundle decodes");
    assert_eq!(again, bundle);
    assert_eq!(again.hash(), bundle.hash());
    if let Err(e) = bundle.verify_signature() {
        let _ = e.to_string();
    }
});
