//! Signed function bundles. A bundle is a [`Manifest`] (name, version, kind, plug-ins,
//! permissions, limits) and the payload bytes, in one canonical binary encoding; its
//! [`BundleHash`] is the SHA-256 of that encoding, and a tenant signs the hash with an ed25519
//! key. Bundles are kept outside the trust boundary and re-verified whenever they are loaded:
//! the platform accepts one only if the signature verifies under a key the function's owner has
//! registered, and the hash is what its registry names.
//!
//! ```text
//! "CELLABND" | format u16 = 1 | manifest length u32 | manifest (canonical JSON)
//!            | payload length u64 | payload | signatures u8 (0 or 1) | [public key 32 | signature 64]
//! ```
//! Integers are little-endian. The hash covers everything before the signature count; the
//! signature is over `"cella bundle signature v1\0" ‖ hash`.
#![forbid(unsafe_code)]

mod encoding;
mod keys;
mod manifest;

pub use encoding::{Bundle, BundleError, BundleHash, Signature, looks_like_bundle};
pub use keys::{KeyError, KeyId, SigningKey, VerifyingKey};
pub use manifest::{BundleKind, Manifest, ManifestError, ManifestFile, PluginRef};
