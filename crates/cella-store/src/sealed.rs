//! Sealing of registry records. The registry file lives outside the trust boundary, so every
//! value in it is encrypted and authenticated (XChaCha20-Poly1305, random 192-bit nonces) and
//! every lookup key is blinded (HMAC-SHA256), so the host sees neither tenant and function
//! names nor token hashes, and cannot edit, truncate, swap or move a record unnoticed: the
//! associated data of each value names its table and its (blinded) key.
//!
//! Keys: a random *data key* encrypts the records; it is stored in the registry wrapped by a
//! *sealing key* that only the TEE can derive (bound to the platform and the measurement of the
//! build). Re-wrapping the data key is how a later build could take over a registry (after it
//! has been attested); the records themselves never need re-encrypting.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE_LEN: usize = 24;

/// A key from the TEE that seals the registry's data key, and what it is bound to (shown in
/// errors: usually the measurement of the build that can derive it).
#[derive(Clone)]
pub struct SealingKey {
    pub key: [u8; 32],
    pub bound_to: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey(bound to {})", self.bound_to)
    }
}

/// A sealed value failed to open: changed, truncated, moved to another key, or sealed with
/// another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct Unauthentic;

/// Encrypts with `key`, binding `context` (what the bytes are and where they belong).
pub(crate) fn seal(key: &[u8; 32], context: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random number generator");
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: context,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length a registry record has");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts what [`seal`] made with the same key and context.
pub(crate) fn open(key: &[u8; 32], context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unauthentic> {
    if sealed.len() < NONCE_LEN {
        return Err(Unauthentic);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: context,
            },
        )
        .map_err(|_| Unauthentic)
}

/// Seals and blinds the records of one registry with keys derived from its data key.
pub(crate) struct RecordSealer {
    encryption_key: [u8; 32],
    blinding_key: [u8; 32],
}

impl RecordSealer {
    pub(crate) fn new(data_key: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(None, data_key);
        let mut encryption_key = [0u8; 32];
        let mut blinding_key = [0u8; 32];
        hkdf.expand(b"cella registry records v1", &mut encryption_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(b"cella registry keys v1", &mut blinding_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RecordSealer {
            encryption_key,
            blinding_key,
        }
    }

    /// The key a record of `table` named `name` is stored under: the host cannot tell names
    /// from it, and the same name always gives the same key.
    pub(crate) fn blind(&self, table: &str, name: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.blinding_key)
            .expect("HMAC takes keys of any length");
        mac.update(table.as_bytes());
        mac.update(&[0]);
        mac.update(name);
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn seal(&self, table: &str, stored_key: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.encryption_key, &context(table, stored_key), plain)
    }

    pub(crate) fn open(
        &self,
        table: &str,
        stored_key: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, Unauthentic> {
        open(&self.encryption_key, &context(table, stored_key), sealed)
    }
}

fn context(table: &str, stored_key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(table.len() + 1 + stored_key.len());
    context.extend_from_slice(table.as_bytes());
    context.push(0);
    context.extend_from_slice(stored_key);
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_where_they_were_sealed() {
        let sealer = RecordSealer::new(&[7; 32]);
        let key = sealer.blind("tenants", b"acme");
        assert_eq!(key, sealer.blind("tenants", b"acme"));
        assert_ne!(key, sealer.blind("functions", b"acme"));
        let sealed = sealer.seal("tenants", &key, b"record");
        assert_eq!(sealer.open("tenants", &key, &sealed).unwrap(), b"record");

        let other_key = sealer.blind("tenants", b"beta");
        assert_eq!(
            sealer.open("tenants", &other_key, &sealed),
            Err(Unauthentic)
        );
        assert_eq!(sealer.open("functions", &key, &sealed), Err(Unauthentic));
        assert_eq!(
            sealer.open("tenants", &key, &sealed[..sealed.len() - 1]),
            Err(Unauthentic)
        );
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert_eq!(sealer.open("tenants", &key, &flipped), Err(Unauthentic));
        }
        let other = RecordSealer::new(&[8; 32]);
        assert_eq!(other.open("tenants", &key, &sealed), Err(Unauthentic));
    }
}
