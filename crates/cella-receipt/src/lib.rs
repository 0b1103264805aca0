//! Invocation receipts. After each invocation the node signs, with its attested identity key
//! (the RA-TLS key, whose evidence names it), a statement of what ran and on what: the node's
//! measurement and registry version, the function's name, version and bundle hash, a hash of
//! its limits, SHA-256 of the input and of the output, the time it took, and the caller's nonce
//! if one was sent. A client keeps the receipt with the node's attestation report and can
//! later prove — offline, to anyone — that this output came from this code on this input inside
//! a TEE its policy accepts.
//!
//! Format `cella-receipt/1`: the [`Receipt`] as compact JSON, fields in the order below,
//! prefixed by `"cella receipt v1\0"`, signed with ECDSA P-256/SHA-256 (ASN.1 DER signature,
//! hex) by the key in `node.identity_key` (an uncompressed P-256 point, hex). Format
//! `cella-receipt/2` is the same with the fields `/1` lacks: `function.plugins` and `chain`. A
//! receipt uses `/2` only when it has them, so verifiers that know only `/1` refuse it by its
//! format instead of misreading it.
#![forbid(unsafe_code)]

use cella_tee::{AttestationReport, Check, Policy, report_data_for};
use serde::{Deserialize, Serialize};

mod plugins;

pub use plugins::{PLUGINS_FORMAT, PluginClaim, PluginList, PluginListError, SignedPluginList};

pub const FORMAT: &str = "cella-receipt/1";
/// The format of receipts that name plug-ins or a chain's steps.
pub const FORMAT_V2: &str = "cella-receipt/2";

/// The format a receipt with `function` and `chain` must declare.
pub fn format_for(function: &Function, chain: &[Function]) -> &'static str {
    if chain.is_empty() && function.plugins.is_empty() {
        FORMAT
    } else {
        FORMAT_V2
    }
}

/// `sha256:` of a function's arguments, as receipts record them.
pub fn args_hash(args: &[String]) -> String {
    sha256(&serde_json::to_vec(args).expect("strings serialize"))
}
const SIGNING_CONTEXT: &[u8] = b"cella receipt v1\0";

/// `sha256:<hex>` of `bytes`: the form cella writes every content hash in.
pub fn sha256(bytes: &[u8]) -> String {
    cella_core::ContentHash::of(bytes).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub tee: String,
    pub measurement: String,
    /// Hex of the node's identity (RA-TLS) public key, which signs the receipt.
    pub identity_key: String,
    pub registry_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    pub version: String,
    /// The bundle hash of the version that ran.
    pub hash: String,
    /// The plug-in images the function's image was made from (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginImage>,
}

/// A plug-in by name and the measurement (SHA-256) of the image that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginImage {
    pub name: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Wall-clock time of the invocation, in microseconds.
    pub wall_time_us: u64,
    /// The memory the function was allowed (for a chain, the most any step was).
    pub memory_limit_bytes: u64,
}

/// What a node states about one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub format: String,
    pub invocation_id: String,
    pub node: Node,
    /// The function that ran; for a chain, its first step.
    pub function: Function,
    /// For a chain, its later steps in order: each step's output was the next one's input,
    /// passed inside the node and recorded nowhere. Absent for a single function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Function>,
    /// `sha256:` of the limits the function ran under (canonical JSON); for a chain, of the
    /// JSON array of every step's limits.
    pub limits_hash: String,
    /// `sha256:` of the arguments (their compact JSON array), which shape the output as much
    /// as the input does.
    pub args_hash: String,
    /// `sha256:` of the input (for a chain, the first step's).
    pub input_hash: String,
    /// `sha256:` of the output (for a chain, the last step's).
    pub output_hash: String,
    pub resources: Resources,
    pub started_at: String,
    pub finished_at: String,
    /// Hex of the nonce the caller sent with the request (`cella-nonce`), if any.
    pub nonce: Option<String>,
}

impl Receipt {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(serde_json::to_vec(self).expect("receipts always serialize"));
        bytes
    }
}

/// A receipt and the node's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    /// Hex of the ECDSA P-256/SHA-256 signature (ASN.1 DER).
    pub signature: String,
}

/// What `cella invoke --receipt FILE` keeps: the signed receipt and the attestation report the
/// client verified before it sent the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptFile {
    pub signed: SignedReceipt,
    pub attestation: AttestationReport,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt is in format `{0}`; this cella reads `{FORMAT}` and `{FORMAT_V2}`")]
    Format(String),
    #[error("the receipt's signature does not verify under the node key it names")]
    BadSignature,
    #[error("the receipt is malformed: {0}")]
    Malformed(String),
}

impl SignedReceipt {
    /// Signs `receipt` with `sign` (the node's identity key; ECDSA P-256/SHA-256, DER).
    pub fn sign(receipt: Receipt, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Self {
        let signature = hex::encode(sign(&receipt.signed_bytes()));
        SignedReceipt { receipt, signature }
    }

    /// Checks the signature against the identity key the receipt names.
    pub fn verify_signature(&self) -> Result<(), ReceiptError> {
        let receipt = &self.receipt;
        if receipt.format != format_for(&receipt.function, &receipt.chain) {
            return Err(ReceiptError::Format(self.receipt.format.clone()));
        }
        let key = hex::decode(&self.receipt.node.identity_key)
            .map_err(|_| ReceiptError::Malformed("node.identity_key is not hex".into()))?;
        let signature = hex::decode(&self.signature)
            .map_err(|_| ReceiptError::Malformed("the signature is not hex".into()))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(&self.receipt.signed_bytes(), &signature)
            .map_err(|_| ReceiptError::BadSignature)
    }
}

fn check(name: &'static str, ok: bool, expected: String, actual: String) -> Check {
    Check {
        name,
        ok,
        expected,
        actual,
        fix: None,
    }
}

impl ReceiptFile {
    /// Every check a verifier makes, one ✔/✗ line each: the signature, the node's evidence
    /// under `policy` (bound to the receipt's key) as of the invocation (the signed
    /// `finished_at`, so a receipt stays checkable after the vendor's collateral expires), the
    /// measurement, and — when given — the input and output against their hashes.
    pub fn checks(
        &self,
        policy: &Policy,
        input: Option<&[u8]>,
        output: Option<&[u8]>,
    ) -> Vec<Check> {
        let receipt = &self.signed.receipt;
        let mut checks = vec![match self.signed.verify_signature() {
            Ok(()) => check(
                "signature",
                true,
                "by the node's identity key".into(),
                format!("valid ({})", short(&receipt.node.identity_key)),
            ),
            Err(e) => check(
                "signature",
                false,
                "by the node's identity key".into(),
                e.to_string(),
            ),
        }];
        checks.push(check(
            "node key",
            self.attestation.identity_key == receipt.node.identity_key,
            format!("the attested key {}", short(&self.attestation.identity_key)),
            short(&receipt.node.identity_key),
        ));
        let nonce = hex::decode(&self.attestation.nonce).unwrap_or_default();
        let expected = report_data_for(
            &hex::decode(&self.attestation.identity_key).unwrap_or_default(),
            &nonce,
        );
        let invoked_at = match humantime::parse_rfc3339(&receipt.finished_at) {
            Ok(at) => at,
            Err(e) => {
                checks.push(check(
                    "finished_at",
                    false,
                    "an RFC 3339 time".into(),
                    format!("{:?}: {e}", receipt.finished_at),
                ));
                return checks;
            }
        };
        match policy.verify_with_anchors(&self.attestation.evidence, Some(&expected), invoked_at) {
            Ok(verdict) => {
                let measurement = verdict.claims.as_ref().map(|c| c.measurement.to_hex());
                for mut c in verdict.checks {
                    c.name = match c.name {
                        "evidence" => "node evidence",
                        other => other,
                    };
                    checks.push(c);
                }
                checks.push(check(
                    "ran on",
                    measurement.as_deref() == Some(receipt.node.measurement.as_str()),
                    format!(
                        "the attested measurement {}",
                        short(measurement.as_deref().unwrap_or("(none)"))
                    ),
                    short(&receipt.node.measurement),
                ));
            }
            Err(e) => checks.push(check(
                "node evidence",
                false,
                "verifiable under the policy".into(),
                e.to_string(),
            )),
        }
        for (name, data, hash) in [
            ("input", input, &receipt.input_hash),
            ("output", output, &receipt.output_hash),
        ] {
            if let Some(data) = data {
                let actual = sha256(data);
                checks.push(check(name, actual == *hash, short(hash), short(&actual)));
            }
        }
        checks
    }
}

/// A long value cut for a ✔/✗ line. The text comes from a receipt file, which anyone may
/// have written: it is cut by characters, never inside one (found by fuzzing).
fn short(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(32).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_between_characters() {
        let key = format!("{}é{}", "0".repeat(31), "0".repeat(10));
        assert_eq!(short(&key), format!("{}é…", "0".repeat(31)));
        assert_eq!(short("short"), "short");
    }

    fn receipt(identity_key: &[u8]) -> Receipt {
        Receipt {
            format: FORMAT.into(),
            invocation_id: "0123456789abcdef".into(),
            node: Node {
                tee: "sim".into(),
                measurement: "ab".repeat(48),
                identity_key: hex::encode(identity_key),
                registry_version: 7,
            },
            function: Function {
                name: "echo".into(),
                version: "1.0.0".into(),
                hash: sha256(b"bundle"),
                plugins: Vec::new(),
            },
            chain: Vec::new(),
            limits_hash: sha256(b"limits"),
            args_hash: args_hash(&["decompress".into()]),
            input_hash: sha256(b"in"),
            output_hash: sha256(b"out"),
            resources: Resources {
                wall_time_us: 1200,
                memory_limit_bytes: 1 << 26,
            },
            started_at: "2026-11-28T01:00:00Z".into(),
            finished_at: "2026-11-28T01:00:01Z".into(),
            nonce: None,
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_any_changed_field_fails() {
        use rcgen::SigningKey as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let signed = SignedReceipt::sign(receipt(key.public_key_raw()), |m| key.sign(m).unwrap());
        signed.verify_signature().unwrap();
        let round_trip: SignedReceipt =
            serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        round_trip.verify_signature().unwrap();

        let changes: [fn(&mut Receipt); 9] = [
            |r| r.args_hash = args_hash(&[]),
            |r| r.invocation_id.push('0'),
            |r| r.node.registry_version += 1,
            |r| r.node.measurement = "cd".repeat(48),
            |r| r.function.version = "1.0.1".into(),
            |r| r.input_hash = sha256(b"other"),
            |r| r.output_hash = sha256(b"other"),
            |r| r.resources.wall_time_us += 1,
            |r| r.nonce = Some("00".into()),
        ];
        for change in changes {
            let mut forged = signed.clone();
            change(&mut forged.receipt);
            assert_eq!(forged.verify_signature(), Err(ReceiptError::BadSignature));
        }
        // Another key cannot sign for this node.
        let other = rcgen::KeyPair::generate().unwrap();
        let forged = SignedReceipt::sign(receipt(key.public_key_raw()), |m| other.sign(m).unwrap());
        assert_eq!(forged.verify_signature(), Err(ReceiptError::BadSignature));
    }
}
