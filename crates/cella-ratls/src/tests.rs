//! Handshakes over an in-memory duplex: a server with an attested certificate, a client that
//! verifies it under a policy.

use std::sync::Arc;

use cella_tee::Measurement;
use cella_tee::sim::{SimAttester, SimPlatform};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

struct Node {
    _dir: tempfile::TempDir,
    attester: SimAttester,
}

fn node(measurement: u8) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let platform = SimPlatform::load_or_create(dir.path()).unwrap();
    Node {
        attester: SimAttester::new(platform, Measurement([measurement; 48]), 1),
        _dir: dir,
    }
}

fn trusting(node: &Node, measurement: u8) -> Policy {
    Policy {
        measurements: vec![Measurement([measurement; 48])],
        allow_simulated: true,
        sim_anchors: vec![node.attester.anchor_hex()],
        ..Policy::default()
    }
}

/// Runs one TLS exchange; returns what the client read, or the client's handshake error.
async fn exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<String, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        if let Ok(mut tls) = acceptor.accept(server_io).await {
            let _ = tls.write_all(b"hello from the enclave").await;
            let _ = tls.shutdown().await;
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("localhost").unwrap();
    let result = match connector.connect(name, client_io).await {
        Ok(mut tls) => {
            let mut text = String::new();
            tls.read_to_string(&mut text)
                .await
                .map_err(|e| e.to_string())?;
            Ok(text)
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = server_task.await;
    result
}

#[tokio::test]
async fn a_client_with_the_right_policy_connects() {
    let node = node(1);
    let cert = AttestedCert::issue(&node.attester, vec!["localhost".into()]).unwrap();
    let verifier = RaTlsVerifier::new(trusting(&node, 1));
    let text = exchange(
        cert.server_config().unwrap(),
        verifier.client_config().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(text, "hello from the enclave");
    let verdict = verifier.last_verification().unwrap();
    assert!(verdict.passed());
    assert_eq!(
        verdict.claims.unwrap().report_data,
        report_data_for(&cert.public_key, b"").0
    );
}

#[tokio::test]
async fn a_wrong_measurement_or_refused_simulation_stops_the_handshake() {
    let node = node(1);
    let cert = AttestedCert::issue(&node.attester, vec!["localhost".into()]).unwrap();

    let other_build = RaTlsVerifier::new(trusting(&node, 2));
    let err = exchange(
        cert.server_config().unwrap(),
        other_build.client_config().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("measurement"), "{err}");

    let strict = RaTlsVerifier::new(Policy {
        allow_simulated: false,
        ..trusting(&node, 1)
    });
    let err = exchange(
        cert.server_config().unwrap(),
        strict.client_config().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("hardware"), "{err}");
}

#[tokio::test]
async fn evidence_copied_into_another_certificate_is_refused() {
    let node = node(1);
    let genuine = AttestedCert::issue(&node.attester, vec!["localhost".into()]).unwrap();
    // An impostor with its own key but the genuine node's evidence in its certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            EVIDENCE_OID,
            serde_json::to_vec(&genuine.evidence).unwrap(),
        ));
    let forged = params.self_signed(&key).unwrap();
    let impostor = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![forged.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let verifier = RaTlsVerifier::new(trusting(&node, 1));
    let err = exchange(impostor, verifier.client_config().unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("key and nonce"), "{err}");
}

#[tokio::test]
async fn a_plain_certificate_is_not_ra_tls() {
    let key = rcgen::KeyPair::generate().unwrap();
    let plain = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err = read_cert(plain.der()).err().unwrap();
    assert!(err.contains("no TEE evidence"), "{err}");
}
