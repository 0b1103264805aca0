//! The node's statement of the plug-ins it has, signed by its identity key for a client's
//! nonce. Served beside the attestation evidence (which binds that key to the node's
//! measurement), it makes the plug-in list part of what a client verifies about a node:
//! only the attested node holds the key, and the nonce makes the statement fresh.
//!
//! Format `cella-plugins/1`: the [`PluginList`] as compact JSON prefixed by
//! `"cella plugins v1\0"`, signed like a receipt (ECDSA P-256/SHA-256, DER, hex).

use serde::{Deserialize, Serialize};

pub const PLUGINS_FORMAT: &str = "cella-plugins/1";
const SIGNING_CONTEXT: &[u8] = b"cella plugins v1\0";

/// One registered plug-in: its name, the SHA-256 of its module (what manifests name) and the
/// measurement of its pre-initialised image (what instances are made from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginClaim {
    pub name: String,
    pub hash: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginList {
    pub format: String,
    /// Hex of the nonce the client sent for the evidence.
    pub nonce: String,
    pub plugins: Vec<PluginClaim>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginListError {
    #[error("the plug-in list is in format `{0}`; this cella reads `{PLUGINS_FORMAT}`")]
    Format(String),
    #[error("the plug-in list answers another nonce than the one sent (a replayed statement?)")]
    Stale,
    #[error("the plug-in list is not signed by the node key the evidence binds")]
    BadSignature,
    #[error("the plug-in list is malformed: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPluginList {
    pub list: PluginList,
    /// Hex of the ECDSA P-256/SHA-256 signature (ASN.1 DER) by the node's identity key.
    pub signature: String,
}

impl PluginList {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(serde_json::to_vec(self).expect("plug-in lists always serialize"));
        bytes
    }
}

impl SignedPluginList {
    /// Signs `plugins` for `nonce` with `sign` (the node's identity key).
    pub fn sign(
        nonce: &[u8],
        plugins: Vec<PluginClaim>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Self {
        let list = PluginList {
            format: PLUGINS_FORMAT.into(),
            nonce: hex::encode(nonce),
            plugins,
        };
        let signature = hex::encode(sign(&list.signed_bytes()));
        SignedPluginList { list, signature }
    }

    /// Checks that the statement answers `nonce` and is signed by `identity_key` (hex of the
    /// uncompressed P-256 point the evidence binds).
    pub fn verify(&self, identity_key: &str, nonce: &[u8]) -> Result<(), PluginListError> {
        if self.list.format != PLUGINS_FORMAT {
            return Err(PluginListError::Format(self.list.format.clone()));
        }
        if self.list.nonce != hex::encode(nonce) {
            return Err(PluginListError::Stale);
        }
        let key = hex::decode(identity_key)
            .map_err(|_| PluginListError::Malformed("the identity key is not hex".into()))?;
        let signature = hex::decode(&self.signature)
            .map_err(|_| PluginListError::Malformed("the signature is not hex".into()))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(&self.list.signed_bytes(), &signature)
            .map_err(|_| PluginListError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_list_verifies_only_for_its_nonce_and_key_and_unchanged() {
        use rcgen::SigningKey as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let identity = hex::encode(key.public_key_raw());
        let claims = vec![PluginClaim {
            name: "quickjs".into(),
            hash: crate::sha256(b"module"),
            image: crate::sha256(b"image"),
        }];
        let nonce = [9u8; 32];
        let signed = SignedPluginList::sign(&nonce, claims, |m| key.sign(m).unwrap());
        signed.verify(&identity, &nonce).unwrap();
        assert_eq!(
            signed.verify(&identity, &[8u8; 32]),
            Err(PluginListError::Stale)
        );

        let mut swapped = signed.clone();
        swapped.list.plugins[0].image = crate::sha256(b"another image");
        assert_eq!(
            swapped.verify(&identity, &nonce),
            Err(PluginListError::BadSignature)
        );
        let mut hidden = signed.clone();
        hidden.list.plugins.clear();
        assert_eq!(
            hidden.verify(&identity, &nonce),
            Err(PluginListError::BadSignature)
        );
        let other = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            signed.verify(&hex::encode(other.public_key_raw()), &nonce),
            Err(PluginListError::BadSignature)
        );
    }
}
