//! Receipts as a verifier reads them: arbitrary bytes as the JSON of a `ReceiptFile` (what
//! `cella invoke --receipt FILE` keeps and `cella receipt verify` checks offline), a bare
//! `SignedReceipt` and a `SignedPluginList`. Whatever deserializes is put through every check
//! the CLI makes, under a policy that lets every backend's verifier run.
//!
//! Mutating JSON bytes seldom makes valid JSON with unusual text in it, so an input that
//! starts with a zero byte (never JSON) instead builds a receipt file field by field from the
//! rest: string fields get any text, often long with multi-byte characters at any place;
//! the evidence gets any bytes.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Unstructured;
use cella_receipt::{
    Function, Node, PluginImage, Receipt, ReceiptFile, Resources, SignedPluginList, SignedReceipt,
};
use cella_tee::{AttestationReport, Evidence, Measurement, Policy, TeeType};
use libfuzzer_sys::fuzz_target;

/// Trusts one simulated platform (a fixed key) and accepts every TEE type, so evidence of any
/// kind reaches its verifier and the policy's checks.
static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let anchor = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    Policy {
        allowed_tee: vec![TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp],
        allow_simulated: true,
        sim_anchors: vec![hex::encode(anchor.as_bytes())],
        ..Policy::default()
    }
});

/// A valid P-256 public key (the curve's generator, uncompressed): the identity key plug-in
/// lists are checked against, so the check runs to the signature.
const P256_GENERATOR: &str = concat!(
    "04",
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
);

const TEES: [TeeType; 4] = [TeeType::Sim, TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp];

/// Text for a string field: any string, or runs of ASCII (hex digits, as most fields hold)
/// and single characters of any width, so long strings with multi-byte characters anywhere
/// in them are common (code that cuts strings by byte index meets them).
fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    if u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let mut text = String::new();
    for _ in 0..u.int_in_range(0..=8)? {
        if u.arbitrary()? {
            let run = u.int_in_range(0..=48)?;
            let digit = *u.choose(b"0123456789abcdef")?;
            text.extend(std::iter::repeat_n(char::from(digit), run));
        } else {
            text.push(u.arbitrary()?);
        }
    }
    Ok(text)
}

fn function(u: &mut Unstructured) -> arbitrary::Result<Function> {
    Ok(Function {
        name: text(u)?,
        version: text(u)?,
        hash: text(u)?,
        plugins: (0..u.int_in_range(0..=2)?)
            .map(|_| {
                Ok(PluginImage {
                    name: text(u)?,
                    image: text(u)?,
                })
            })
            .collect::<arbitrary::Result<_>>()?,
    })
}

/// A receipt file made field by field.
fn structured(u: &mut Unstructured) -> arbitrary::Result<ReceiptFile> {
    let receipt = Receipt {
        format: u
            .choose(&[cella_receipt::FORMAT, cella_receipt::FORMAT_V2, ""])?
            .to_string(),
        invocation_id: text(u)?,
        node: Node {
            tee: text(u)?,
            measurement: text(u)?,
            identity_key: text(u)?,
            registry_version: u.arbitrary()?,
        },
        function: function(u)?,
        chain: (0..u.int_in_range(0..=2)?)
            .map(|_| function(u))
            .collect::<arbitrary::Result<_>>()?,
        limits_hash: text(u)?,
        args_hash: text(u)?,
        input_hash: text(u)?,
        output_hash: text(u)?,
        resources: Resources {
            wall_time_us: u.arbitrary()?,
            memory_limit_bytes: u.arbitrary()?,
        },
        started_at: text(u)?,
        // Often a time inside the samples' validity, so the evidence is judged too.
        finished_at: if u.arbitrary()? {
            "2025-07-01T00:00:00Z".to_owned()
        } else {
            text(u)?
        },
        nonce: if u.arbitrary()? { Some(text(u)?) } else { None },
    };
    let tee = *u.choose(&TEES)?;
    let attestation = AttestationReport {
        tee,
        simulated: u.arbitrary()?,
        measurement: Measurement(u.arbitrary()?),
        identity_key: text(u)?,
        nonce: text(u)?,
        evidence: Evidence {
            tee,
            quote: u.arbitrary()?,
            collateral: u.arbitrary()?,
        },
    };
    Ok(ReceiptFile {
        signed: SignedReceipt {
            receipt,
            signature: text(u)?,
        },
        attestation,
    })
}

/// Every check `cella receipt verify` makes, and the file written back and read again.
fn check(file: &ReceiptFile, output: &[u8]) {
    let checks = file.checks(&POLICY, Some(b"input"), Some(output));
    assert!(!checks.is_empty(), "a receipt file got no checks at all");
    for check in &checks {
        let _ = format!(
            "{} {} {} {:?}",
            check.name, check.expected, check.actual, check.fix
        );
    }
    // `cella invoke --receipt` writes what verifiers read: writing is the inverse of reading.
    let json = serde_json::to_vec(file).expect("receipt files serialize");
    let again: ReceiptFile =
        serde_json::from_slice(&json).expect("a serialized receipt file reads back");
    assert_eq!(&again, file);
}

fuzz_target!(|data: &[u8]| {
    if let Some((0, rest)) = data.split_first() {
        if let Ok(file) = structured(&mut Unstructured::new(rest)) {
            check(&file, rest);
        }
        return;
    }
    if let Ok(file) = serde_json::from_slice::<ReceiptFile>(data) {
        check(&file, data);
    }
    if let Ok(signed) = serde_json::from_slice::<SignedReceipt>(data) {
        if let Err(e) = signed.verify_signature() {
            let _ = e.to_string();
        }
    }
    if let Ok(list) = serde_json::from_slice::<SignedPluginList>(data) {
        let nonce = hex::decode(&list.list.nonce).unwrap_or_default();
        if let Err(e) = list.verify(P256_GENERATOR, &nonce) {
            let _ = e.to_string();
        }
    }
});
