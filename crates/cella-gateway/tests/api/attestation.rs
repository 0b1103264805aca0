//! A client can check, before it sends anything, what will see its data.

use cella_tee::{Measurement, Policy, SimPlatformFiles, report_data_for};

use crate::harness::{Node, Options, assert_api_error};

fn anchor(node: &Node) -> String {
    std::fs::read_to_string(node.data_dir().join(SimPlatformFiles::ANCHOR))
        .unwrap()
        .trim()
        .to_owned()
}

/// A policy that accepts this node: its measurement pinned, its simulated platform trusted.
async fn accepting(node: &Node) -> Policy {
    let measurement = node.anonymous().attestation(b"").await.unwrap().measurement;
    Policy {
        measurements: vec![measurement],
        allow_simulated: true,
        sim_anchors: vec![anchor(node)],
        ..Policy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_binds_the_identity_key_and_nonce_and_needs_no_token() {
    let node = Node::start().await;
    let client = node.anonymous();
    let report = client.attestation(b"fresh nonce").await.unwrap();
    assert!(report.simulated, "no hardware here: the evidence says so");
    assert_eq!(report.nonce, hex::encode(b"fresh nonce"));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(
        report.measurement,
        cella_tee::sim::measure_file(&exe).unwrap(),
        "the measurement is the SHA-384 of the running build"
    );

    let sim = cella_tee::sim::SimVerifier::new(&[anchor(&node)]).unwrap();
    let claims =
        cella_tee::Verifier::verify(&sim, &report.evidence, std::time::SystemTime::now()).unwrap();
    let key = hex::decode(&report.identity_key).unwrap();
    assert_eq!(claims.report_data, report_data_for(&key, b"fresh nonce").0);
    assert_eq!(claims.measurement, report.measurement);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_node_passes_only_under_a_policy_that_accepts_this_node() {
    let node = Node::start().await;
    let client = node.anonymous();
    let policy = accepting(&node).await;
    let ok = client.verify_node(&policy).await.unwrap();
    assert!(ok.passed(), "{:#?}", ok.verification.checks);
    let names: Vec<&str> = ok.verification.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "evidence",
            "TEE type",
            "hardware",
            "measurement",
            "security version",
            "key and nonce",
            "TLS key"
        ]
    );

    let refused = |policy: Policy| {
        let client = client.clone();
        async move {
            let v = client.verify_node(&policy).await.unwrap();
            assert!(!v.passed());
            v.verification
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        refused(Policy {
            allow_simulated: false,
            ..policy.clone()
        })
        .await,
        ["TEE type", "hardware"],
        "simulated evidence is never accepted silently"
    );
    assert_eq!(
        refused(Policy {
            measurements: vec![Measurement([0; 48])],
            ..policy.clone()
        })
        .await,
        ["measurement"]
    );
    let stranger = tempfile::tempdir().unwrap();
    let other = cella_tee::sim::SimPlatform::load_or_create(stranger.path()).unwrap();
    assert_eq!(
        refused(Policy {
            sim_anchors: vec![other.anchor_hex()],
            ..policy.clone()
        })
        .await,
        ["evidence"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nonces_are_refused() {
    let node = Node::start().await;
    let http = reqwest::Client::new();
    for query in [
        "nonce=zz",
        "nonce=00&x=1",
        &format!("nonce={}", "ab".repeat(65)),
    ] {
        let response = http
            .get(format!("{}/v1/attestation?{query}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.headers()["cella-error"], "invalid_request");
    }
    assert_api_error(
        node.anonymous().attestation(&[0; 65]).await,
        400,
        "invalid_request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ra_tls_the_evidence_is_bound_to_the_connection() {
    let node = Node::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    assert!(node.url.starts_with("https://"));
    let measurement = cella_client::Client::new(&node.url, None)
        .attestation(b"")
        .await
        .map(|r| r.measurement);
    // A client without a policy gets nowhere: the certificate is not from any CA.
    assert!(
        measurement.is_err(),
        "an unverified client must not connect"
    );

    let exe = std::env::current_exe().unwrap();
    let policy = Policy {
        measurements: vec![cella_tee::sim::measure_file(&exe).unwrap()],
        allow_simulated: true,
        sim_anchors: vec![anchor(&node)],
        ..Policy::default()
    };
    let client = cella_client::Client::with_policy(&node.url, None, &policy).unwrap();
    let verified = client.verify_node(&policy).await.unwrap();
    assert!(verified.passed(), "{:#?}", verified.verification.checks);
    let tls = verified
        .verification
        .checks
        .iter()
        .find(|c| c.name == "TLS key")
        .unwrap();
    assert_eq!(
        tls.expected, verified.report.identity_key,
        "bound to this connection"
    );
    assert!(client.tls_verification().unwrap().passed());

    // Another build's policy is refused during the handshake, before any request is sent.
    let strict = Policy {
        measurements: vec![Measurement([0; 48])],
        ..policy.clone()
    };
    let refused = cella_client::Client::with_policy(&node.url, None, &strict).unwrap();
    assert!(refused.health().await.is_err());
    let verdict = refused.tls_verification().unwrap();
    assert!(!verdict.passed());
    assert!(
        verdict
            .checks
            .iter()
            .any(|c| c.name == "measurement" && !c.ok)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_states_its_plugins_under_its_attested_key() {
    let node = Node::start().await;
    let client = node.anonymous();
    let policy = accepting(&node).await;
    // No plug-ins: no line, nothing to list.
    let before = client.verify_node(&policy).await.unwrap();
    assert!(before.plugins.is_empty());
    assert!(
        !before
            .verification
            .checks
            .iter()
            .any(|c| c.name == "plug-ins")
    );

    let plugin = node
        .admin
        .add_plugin("quickjs", crate::harness::guest("quickjs.wasm"))
        .await
        .unwrap();
    let after = client.verify_node(&policy).await.unwrap();
    assert!(after.passed(), "{:?}", after.verification.checks);
    let line = after
        .verification
        .checks
        .iter()
        .find(|c| c.name == "plug-ins")
        .expect("a plug-ins line");
    assert!(
        line.ok && line.actual.contains(&plugin.image.to_string()),
        "{line:?}"
    );
    assert_eq!(after.plugins.len(), 1);
    assert_eq!(after.plugins[0].hash, plugin.hash.to_string());

    // The statement is bound to the nonce: one fetched for another nonce does not verify.
    let raw: serde_json::Value = reqwest::get(format!("{}/v1/attestation?nonce=01", node.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statement: cella_receipt::SignedPluginList =
        serde_json::from_value(raw["plugins"].clone()).unwrap();
    let key = raw["identity_key"].as_str().unwrap();
    statement.verify(key, &[1]).unwrap();
    assert_eq!(
        statement.verify(key, &[2]),
        Err(cella_receipt::PluginListError::Stale)
    );
}
