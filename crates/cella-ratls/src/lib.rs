//! RA-TLS: TLS whose certificate proves what runs behind it.
//!
//! The server makes a fresh key pair inside the trusted process at start-up, asks its TEE for
//! evidence whose report data is [`report_data_for`]`(public key, "")`, and puts the evidence
//! into its self-signed certificate under [`EVIDENCE_OID`]. The key never leaves the process.
//! A client's [`RaTlsVerifier`] accepts the certificate only if the evidence verifies under
//! the client's [`Policy`] *and* binds the very key the TLS handshake proves possession of —
//! so evidence copied into another certificate is refused. No certificate authority is
//! involved: trust comes from the TEE and the policy.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use cella_tee::{Attester, Evidence, Policy, Verification, report_data_for};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// OID of the certificate extension that carries the evidence (JSON of
/// [`Evidence`](cella_tee::Evidence)). Project-defined under the `2.25` (UUID) arc with a
/// random 62-bit number, because certificate libraries take 64-bit arcs; clients and servers
/// must agree on it, so it only ever changes with the evidence format.
pub const EVIDENCE_OID: &[u64] = &[2, 25, 3383459113093135110];

#[derive(Debug, thiserror::Error)]
pub enum RaTlsError {
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the TEE refused to attest the TLS key: {0}")]
    Attest(#[from] cella_tee::AttestError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate with evidence for its own key, and that key.
pub struct AttestedCert {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The same key, ready to sign (receipts).
    signer: rcgen::KeyPair,
    /// The raw public key the evidence binds.
    pub public_key: Vec<u8>,
    pub evidence: Evidence,
}

impl AttestedCert {
    /// Makes a key pair and a self-signed certificate for `names` (DNS names or IP addresses)
    /// carrying `attester`'s evidence for the key.
    pub fn issue(attester: &dyn Attester, names: Vec<String>) -> Result<Self, RaTlsError> {
        let key = rcgen::KeyPair::generate()?;
        let public_key = key.public_key_raw().to_vec();
        let evidence = attester.attest(&report_data_for(&public_key, b""))?;
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cella node (RA-TLS)");
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                EVIDENCE_OID,
                serde_json::to_vec(&evidence).expect("evidence serializes"),
            ));
        let cert = params.self_signed(&key)?;
        Ok(AttestedCert {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            signer: key,
            public_key,
            evidence,
        })
    }

    /// Signs `message` with the certificate's key (ECDSA P-256/SHA-256, ASN.1 DER): evidence
    /// binds this key, so what it signs is the attested node's word.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use rcgen::SigningKey as _;
        self.signer
            .sign(message)
            .expect("ECDSA P-256 signing with a generated key does not fail")
    }

    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, RaTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?)
    }
}

/// What a certificate says about itself: the evidence and the key it must bind.
pub struct CertEvidence {
    pub evidence: Evidence,
    pub public_key: Vec<u8>,
}

/// Reads the evidence extension and the public key of a DER certificate.
pub fn read_cert(der: &[u8]) -> Result<CertEvidence, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let oid = x509_parser::der_parser::oid::Oid::from(EVIDENCE_OID)
        .map_err(|_| "bad evidence OID".to_owned())?;
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or("the certificate carries no TEE evidence (not an RA-TLS certificate)")?;
    let evidence: Evidence = serde_json::from_slice(extension.value)
        .map_err(|e| format!("the certificate's evidence is malformed: {e}"))?;
    Ok(CertEvidence {
        evidence,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Accepts a server certificate only if its evidence passes the policy and binds its key.
/// The last verdict is kept so a client can show the ✔/✗ lines.
#[derive(Debug)]
pub struct RaTlsVerifier {
    policy: Policy,
    provider: Arc<CryptoProvider>,
    last: Mutex<Option<Verification>>,
    last_key: Mutex<Option<Vec<u8>>>,
}

impl RaTlsVerifier {
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(RaTlsVerifier {
            policy,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            last: Mutex::new(None),
            last_key: Mutex::new(None),
        })
    }

    /// The verdict on the last certificate seen.
    pub fn last_verification(&self) -> Option<Verification> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The public key of the last certificate that passed (the node's identity key).
    pub fn last_public_key(&self) -> Option<Vec<u8>> {
        self.last_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A rustls client configuration that trusts servers through this verifier only.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, RaTlsError> {
        Ok(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous() // no certificate authorities: the evidence is the trust
                .with_custom_certificate_verifier(self.clone())
                .with_no_client_auth(),
        )
    }

    fn judge(&self, der: &[u8], now: SystemTime) -> Result<(), String> {
        let cert = read_cert(der)?;
        let expected = report_data_for(&cert.public_key, b"");
        let verification = self
            .policy
            .verify_with_anchors(&cert.evidence, Some(&expected), now)
            .map_err(|e| e.to_string())?;
        let failed: Vec<String> = verification
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual))
            .collect();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(verification);
        if failed.is_empty() {
            *self.last_key.lock().unwrap_or_else(PoisonError::into_inner) = Some(cert.public_key);
            Ok(())
        } else {
            Err(format!("RA-TLS verification failed: {}", failed.join("; ")))
        }
    }
}

impl ServerCertVerifier for RaTlsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        self.judge(end_entity.as_ref(), now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
