//! Sealing keys: derived from a root only the TEE holds, bound to the measurement of the code
//! and to a purpose, so another build (or another purpose) gets another key.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::Measurement;

/// A source of sealing keys (a TEE backend).
pub trait SealingKeys {
    /// The root secret, never leaving the TEE.
    fn sealing_root(&self) -> [u8; 32];
    fn measurement(&self) -> Measurement;

    /// A 256-bit key for `purpose` (e.g. `"registry"`), bound to this platform and measurement.
    fn sealing_key(&self, purpose: &str) -> [u8; 32] {
        derive_sealing_key(&self.sealing_root(), &self.measurement(), purpose)
    }
}

/// HKDF-SHA256(ikm = root, salt = measurement, info = "cella sealing v1" ‖ purpose).
pub fn derive_sealing_key(root: &[u8; 32], measurement: &Measurement, purpose: &str) -> [u8; 32] {
    let hkdf = Hkdf::<Sha256>::new(Some(&measurement.0), root);
    let mut info = b"cella sealing v1\0".to_vec();
    info.extend_from_slice(purpose.as_bytes());
    let mut key = [0u8; 32];
    hkdf.expand(&info, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_root_measurement_and_purpose() {
        let m1 = Measurement([1; 48]);
        let m2 = Measurement([2; 48]);
        let k = derive_sealing_key(&[9; 32], &m1, "registry");
        assert_eq!(k, derive_sealing_key(&[9; 32], &m1, "registry"));
        assert_ne!(k, derive_sealing_key(&[9; 32], &m2, "registry"));
        assert_ne!(k, derive_sealing_key(&[9; 32], &m1, "logs"));
        assert_ne!(k, derive_sealing_key(&[8; 32], &m1, "registry"));
    }
}
