//! Joining a cluster: a worker proves what it runs before it gets the cluster key.
//!
//! 1. The control plane sends a fresh challenge.
//! 2. The worker makes a fresh X25519 key pair inside its enclave and asks its TEE for
//!    evidence binding the public key and the challenge ([`JoinKey::request`]).
//! 3. The control plane judges the evidence under the cluster's policy (measurement, TEE type,
//!    simulated or not, freshness through the challenge) and, only if every check passes,
//!    seals the cluster key of the current epoch to that public key with HPKE ([`admit`]).
//!    A worker with the wrong measurement gets the failed checks, never a key.
//! 4. Only the enclave holding the private key can open the grant ([`JoinKey::accept`]); the
//!    bus and the host see an HPKE ciphertext.
//!
//! The grant is sealed in HPKE's base mode, so by itself it does not say who sealed it (the
//! worker's public key crosses the bus, and a host could seal secrets of its own choosing to
//! it). The cluster's roles close that: the worker checks the control plane's evidence first,
//! and accepts only a grant signed with the key that evidence binds (`cella-cluster`).

use std::time::SystemTime;

use cella_tee::{Attester, Evidence, Policy, Verification, Verifier, report_data_for};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

/// Binds the sealed key to its purpose and epoch (HPKE `info`).
fn info(epoch: u32) -> Vec<u8> {
    let mut info = b"cella cluster key v1\0".to_vec();
    info.extend_from_slice(&epoch.to_le_bytes());
    info
}

/// A worker's request to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The worker's fresh X25519 public key.
    pub public_key: Vec<u8>,
    /// Evidence whose report data binds `public_key` and the control plane's challenge.
    pub evidence: Evidence,
}

/// The control plane's answer to an admitted worker: the cluster key sealed to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    pub epoch: u32,
    /// HPKE's encapsulated key.
    pub encapsulated: Vec<u8>,
    pub sealed_key: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the worker's evidence does not pass the cluster's policy: {}", .0.failures())]
    Refused(Box<Verification>),
    #[error("the join request is malformed: {0}")]
    Malformed(String),
    #[error("the worker's TEE could not attest: {0}")]
    Attest(String),
    #[error("the grant does not open with this worker's key (not for it, or changed)")]
    Unauthentic,
}

/// The worker's side: a key pair made in the enclave for one join.
pub struct JoinKey {
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: <X25519HkdfSha256 as hpke::Kem>::PublicKey,
}

impl JoinKey {
    pub fn generate() -> JoinKey {
        let (private, public) = X25519HkdfSha256::gen_keypair();
        JoinKey { private, public }
    }

    /// Asks `attester` for evidence binding this key and `challenge`.
    pub fn request(
        &self,
        attester: &dyn Attester,
        challenge: &[u8],
    ) -> Result<JoinRequest, JoinError> {
        let public_key = self.public.to_bytes().to_vec();
        let evidence = attester
            .attest(&report_data_for(&public_key, challenge))
            .map_err(|e| JoinError::Attest(e.to_string()))?;
        Ok(JoinRequest {
            public_key,
            evidence,
        })
    }

    /// Opens a grant: the cluster's secrets of its epoch.
    pub fn accept(&self, grant: &JoinGrant) -> Result<Vec<u8>, JoinError> {
        let encapsulated =
            <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&grant.encapsulated)
                .map_err(|_| JoinError::Unauthentic)?;
        let key = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &encapsulated,
            &info(grant.epoch),
            &grant.sealed_key,
            b"",
        )
        .map_err(|_| JoinError::Unauthentic)?;
        Ok(key)
    }
}

/// The control plane's side: admits `request` under `policy` (evidence checked by
/// `verifiers` at `now`, bound to the worker's key and `challenge`) and seals `secrets` (the
/// cluster's, of `epoch`) to it; refuses with every failed check otherwise.
pub fn admit(
    request: &JoinRequest,
    challenge: &[u8],
    policy: &Policy,
    verifiers: &[&dyn Verifier],
    now: SystemTime,
    secrets: &[u8],
    epoch: u32,
) -> Result<JoinGrant, JoinError> {
    let public = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&request.public_key)
        .map_err(|_| JoinError::Malformed("the public key is not an X25519 key".into()))?;
    let expected = report_data_for(&request.public_key, challenge);
    let verification = policy.verify(&request.evidence, verifiers, Some(&expected), now);
    if !verification.passed() {
        return Err(JoinError::Refused(Box::new(verification)));
    }
    let (encapsulated, sealed_key) = hpke::single_shot_seal::<
        ChaCha20Poly1305,
        HkdfSha256,
        X25519HkdfSha256,
    >(&OpModeS::Base, &public, &info(epoch), secrets, b"")
    .map_err(|e| JoinError::Malformed(format!("sealing failed: {e}")))?;
    Ok(JoinGrant {
        epoch,
        encapsulated: encapsulated.to_bytes().to_vec(),
        sealed_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_tee::Measurement;
    use cella_tee::sim::{SimAttester, SimPlatform, SimVerifier};

    fn platform() -> (SimAttester, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let platform = SimPlatform::load_or_create(dir.path()).unwrap();
        let attester = SimAttester::new(platform, Measurement([7u8; 48]), 1);
        let anchor = attester.anchor_hex();
        (attester, anchor, dir)
    }

    #[test]
    fn an_admitted_worker_and_only_it_gets_the_cluster_key() {
        let (attester, anchor, _dir) = platform();
        let policy = Policy {
            measurements: vec![attester.measurement()],
            allow_simulated: true,
            sim_anchors: vec![anchor.clone()],
            ..Policy::default()
        };
        let verifier = SimVerifier::new(&[anchor]).unwrap();
        let verifiers: [&dyn Verifier; 1] = [&verifier];
        let worker = JoinKey::generate();
        let challenge = b"fresh challenge";
        let request = worker.request(&attester, challenge).unwrap();
        let grant = admit(
            &request,
            challenge,
            &policy,
            &verifiers,
            SystemTime::now(),
            &[42; 32],
            5,
        )
        .unwrap();
        assert_eq!(worker.accept(&grant).unwrap(), [42; 32].to_vec());
        // Another enclave's key cannot open it; a changed grant does not open.
        assert!(JoinKey::generate().accept(&grant).is_err());
        let mut changed = grant.clone();
        changed.sealed_key[0] ^= 1;
        assert!(worker.accept(&changed).is_err());
        let mut other_epoch = grant;
        other_epoch.epoch = 6;
        assert!(worker.accept(&other_epoch).is_err());

        // Evidence for another challenge (a replayed join) is refused.
        let replayed = admit(
            &request,
            b"the next challenge",
            &policy,
            &verifiers,
            SystemTime::now(),
            &[42; 32],
            5,
        );
        assert!(matches!(replayed, Err(JoinError::Refused(_))));
    }

    #[test]
    fn a_worker_with_another_measurement_gets_no_key() {
        let (attester, anchor, _dir) = platform();
        let policy = Policy {
            measurements: vec![Measurement([9u8; 48])],
            allow_simulated: true,
            sim_anchors: vec![anchor.clone()],
            ..Policy::default()
        };
        let verifier = SimVerifier::new(&[anchor]).unwrap();
        let worker = JoinKey::generate();
        let request = worker.request(&attester, b"c").unwrap();
        let refused = admit(
            &request,
            b"c",
            &policy,
            &[&verifier],
            SystemTime::now(),
            &[42; 32],
            1,
        );
        match refused {
            Err(e @ JoinError::Refused(_)) => {
                assert!(e.to_string().contains("measurement"), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
