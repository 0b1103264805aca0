//! The canonical binary encoding of a bundle, its hash and its signature. Decoding is strict:
//! every length is bounded, the manifest must be in canonical form, and nothing may follow the
//! signature, so one bundle has exactly one encoding and any changed byte is noticed.

use std::fmt;

use ed25519_dalek::Verifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Manifest, SigningKey, VerifyingKey};

const MAGIC: &[u8; 8] = b"CELLABND";
const FORMAT: u16 = 1;
const HASH_CONTEXT: &[u8] = b"cella bundle v1\0";
const SIGNATURE_CONTEXT: &[u8] = b"cella bundle signature v1\0";
/// The largest manifest a bundle may carry.
const MAX_MANIFEST: usize = 64 * 1024;

/// Whether `bytes` start like a bundle (rather than, say, a bare `.wasm`).
pub fn looks_like_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// SHA-256 over the bundle's unsigned part: `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BundleHash(pub cella_core::ContentHash);

impl fmt::Display for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BundleHash({})", self.0)
    }
}

/// A signer's public key and its signature over the bundle hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub signer: VerifyingKey,
    pub bytes: [u8; 64],
}

/// A function bundle: manifest, payload and (once signed) its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub manifest: Manifest,
    pub payload: Vec<u8>,
    pub signature: Option<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(
        "not a cella bundle (it does not start with `CELLABND`); build one with `cella bundle build`"
    )]
    NotABundle,
    #[error("bundle format {0} is not supported by this cella (it reads format 1)")]
    Format(u16),
    #[error("the bundle is cut short: {0}")]
    Truncated(&'static str),
    #[error("the bundle's {what} has {size} bytes; at most {max} are allowed")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
    #[error("the bundle's manifest is invalid: {0}")]
    Manifest(String),
    #[error(
        "the bundle's manifest is not in canonical form, so its hash is ambiguous; rebuild it \
         with `cella bundle build`"
    )]
    NotCanonical,
    #[error("{0} unexpected bytes follow the bundle's signature")]
    TrailingBytes(usize),
    #[error("the bundle is not signed; sign it with `cella bundle sign`")]
    Unsigned,
    #[error(
        "the bundle's signature does not verify (signer {signer}): the manifest, the payload or \
         the signature was changed after signing"
    )]
    BadSignature { signer: String },
}

/// Reads the encoding front to back, bounds-checking each field.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BundleError> {
        if self.bytes.len() < n {
            return Err(BundleError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BundleError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returns N bytes"))
    }
}

impl Bundle {
    pub fn new(manifest: Manifest, payload: Vec<u8>) -> Self {
        Bundle {
            manifest,
            payload,
            signature: None,
        }
    }

    /// The unsigned part of the encoding: what the hash covers.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let manifest = self.manifest.canonical_bytes();
        let mut out = Vec::with_capacity(32 + manifest.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(&manifest);
        out.extend_from_slice(&(self.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// SHA-256 over the context and the unsigned encoding, fed in parts (no copy of the
    /// payload).
    pub fn hash(&self) -> BundleHash {
        let manifest = self.manifest.canonical_bytes();
        let mut hash = Sha256::new();
        hash.update(HASH_CONTEXT);
        hash.update(MAGIC);
        hash.update(FORMAT.to_le_bytes());
        hash.update((manifest.len() as u32).to_le_bytes());
        hash.update(&manifest);
        hash.update((self.payload.len() as u64).to_le_bytes());
        hash.update(&self.payload);
        BundleHash(cella_core::ContentHash::from_digest(hash.finalize().into()))
    }

    fn signed_message(hash: &BundleHash) -> Vec<u8> {
        let mut message = SIGNATURE_CONTEXT.to_vec();
        message.extend_from_slice(hash.0.as_bytes());
        message
    }

    /// Signs the bundle (replacing any earlier signature).
    pub fn sign(&mut self, key: &SigningKey) {
        let bytes = key.sign(&Self::signed_message(&self.hash()));
        self.signature = Some(Signature {
            signer: key.verifying_key(),
            bytes,
        });
    }

    /// Checks the signature; returns the signer's key.
    pub fn verify_signature(&self) -> Result<VerifyingKey, BundleError> {
        let signature = self.signature.as_ref().ok_or(BundleError::Unsigned)?;
        let message = Self::signed_message(&self.hash());
        signature
            .signer
            .0
            .verify(
                &message,
                &ed25519_dalek::Signature::from_bytes(&signature.bytes),
            )
            .map_err(|_| BundleError::BadSignature {
                signer: signature.signer.id().to_string(),
            })?;
        Ok(signature.signer)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unsigned_bytes();
        match &self.signature {
            None => out.push(0),
            Some(signature) => {
                out.push(1);
                out.extend_from_slice(&signature.signer.to_bytes());
                out.extend_from_slice(&signature.bytes);
            }
        }
        out
    }

    /// Decodes a bundle whose payload has at most `max_payload` bytes. Does not check the
    /// signature (see [`Bundle::verify_signature`]).
    pub fn decode(bytes: &[u8], max_payload: u64) -> Result<Self, BundleError> {
        if !looks_like_bundle(bytes) {
            return Err(BundleError::NotABundle);
        }
        let mut reader = Reader { bytes };
        reader.take(MAGIC.len(), "magic")?;
        let format = u16::from_le_bytes(reader.array("format")?);
        if format != FORMAT {
            return Err(BundleError::Format(format));
        }
        let manifest_len = u32::from_le_bytes(reader.array("manifest length")?) as usize;
        if manifest_len > MAX_MANIFEST {
            return Err(BundleError::TooLarge {
                what: "manifest",
                size: manifest_len as u64,
                max: MAX_MANIFEST as u64,
            });
        }
        let manifest_bytes = reader.take(manifest_len, "manifest")?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest.canonical_bytes() != manifest_bytes {
            return Err(BundleError::NotCanonical);
        }
        let payload_len = u64::from_le_bytes(reader.array("payload length")?);
        if payload_len > max_payload {
            return Err(BundleError::TooLarge {
                what: "payload",
                size: payload_len,
                max: max_payload,
            });
        }
        let payload = reader.take(payload_len as usize, "payload")?.to_vec();
        let signature = match reader.array::<1>("signature count")?[0] {
            0 => None,
            1 => {
                let signer = reader.array::<32>("signer key")?;
                let bytes = reader.array::<64>("signature")?;
                let signer =
                    VerifyingKey::from_bytes(&signer).map_err(|_| BundleError::BadSignature {
                        signer: hex::encode(signer),
                    })?;
                Some(Signature { signer, bytes })
            }
            n => {
                return Err(BundleError::Manifest(format!(
                    "{n} signatures; expected 0 or 1"
                )));
            }
        };
        if !reader.bytes.is_empty() {
            return Err(BundleError::TrailingBytes(reader.bytes.len()));
        }
        Ok(Bundle {
            manifest,
            payload,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BundleKind;
    use proptest::prelude::*;

    fn manifest(version: &str) -> Manifest {
        Manifest {
            name: cella_core::FunctionName::new("brotli").unwrap(),
            version: version.parse().unwrap(),
            kind: BundleKind::WasiCommand,
            plugins: Vec::new(),
            permissions: Default::default(),
            limits: Default::default(),
        }
    }

    fn signed(payload: &[u8]) -> (Bundle, SigningKey) {
        let key = SigningKey::generate();
        let mut bundle = Bundle::new(manifest("1.0.0"), payload.to_vec());
        bundle.sign(&key);
        (bundle, key)
    }

    #[test]
    fn a_signed_bundle_round_trips_and_verifies() {
        let (bundle, key) = signed(b"\0asm payload");
        let bytes = bundle.encode();
        let decoded = Bundle::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(decoded, bundle);
        assert_eq!(decoded.hash(), bundle.hash());
        assert_eq!(decoded.verify_signature().unwrap(), key.verifying_key());
    }

    #[test]
    fn unsigned_foreign_and_oversized_bundles_are_refused() {
        let unsigned = Bundle::new(manifest("1.0.0"), b"x".to_vec());
        assert_eq!(unsigned.verify_signature(), Err(BundleError::Unsigned));
        assert_eq!(
            Bundle::decode(b"\0asm\x01\0\0\0", 10),
            Err(BundleError::NotABundle)
        );
        let (bundle, _) = signed(&[7; 100]);
        assert!(matches!(
            Bundle::decode(&bundle.encode(), 99),
            Err(BundleError::TooLarge {
                what: "payload",
                ..
            })
        ));
        let mut trailing = bundle.encode();
        trailing.push(0);
        assert_eq!(
            Bundle::decode(&trailing, 1000),
            Err(BundleError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_signature_moved_to_another_bundle_fails() {
        let (original, _) = signed(b"payload");
        let mut other = Bundle::new(manifest("1.0.1"), b"payload".to_vec());
        other.signature = original.signature.clone();
        assert!(matches!(
            other.verify_signature(),
            Err(BundleError::BadSignature { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn encoding_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..512),
                                major in 0u64..100, minor in 0u64..100) {
            let key = SigningKey::generate();
            let mut bundle = Bundle::new(manifest(&format!("{major}.{minor}.0")), payload);
            bundle.sign(&key);
            let decoded = Bundle::decode(&bundle.encode(), 1 << 20).unwrap();
            prop_assert_eq!(&decoded, &bundle);
            prop_assert!(decoded.verify_signature().is_ok());
        }

        #[test]
        fn any_single_byte_change_breaks_verification(
            payload in proptest::collection::vec(any::<u8>(), 1..256),
            position in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (bundle, _) = signed(&payload);
            let mut bytes = bundle.encode();
            let i = position.index(bytes.len());
            bytes[i] ^= flip;
            let verified = Bundle::decode(&bytes, 1 << 20)
                .and_then(|b| b.verify_signature().map(|_| b));
            prop_assert!(verified.is_err(), "byte {} changed and still verified", i);
        }
    }
}
