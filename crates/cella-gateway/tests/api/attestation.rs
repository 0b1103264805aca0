//! A client can check, before it sends anything, what will see its data.

use cella_tee::{Measurement, Policy, SimPlatformFiles, report_data_for};

use crate::harness::{Node, Options, assert_api_error};

fn anchor(node: &Node) -> String {
    std::fs::read_to_string(node.data_dir().join(SimPlatformFiles::ANCHOR))
        .unwrap()
        .trim()
        .to_owned()
}

/// A policy that accepts this node, but for its plain HTTP: its measurement pinned, its
/// simulated platform trusted.
async fn accepting(node: &Node) -> Policy {
    let measurement = node.anonymous().attestation(b"").await.unwrap().measurement;
    Policy {
        measurements: vec![measurement],
        allow_simulated: true,
        sim_anchors: vec![anchor(node)],
        ..Policy::default()
    }
}

/// [`accepting`], and the test nodes' plain HTTP allowed.
async fn accepting_unbound(node: &Node) -> Policy {
    Policy {
        allow_unbound: true,
        ..accepting(node).await
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
    let policy = accepting_unbound(&node).await;
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
    let policy = accepting_unbound(&node).await;
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

/// A plain-HTTP relay between a client and a genuine node passes the node's evidence on
/// unchanged; nothing binds that evidence to the client's connection, so the verdict fails
/// its `TLS key` check and no token is sent — unless the policy explicitly allows an
/// unbound node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_over_plain_http_gets_no_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start().await;
    let target: std::net::SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let recorder = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(target).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut node_read, mut node_write) = upstream.into_split();
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    recorder.lock().unwrap().extend_from_slice(&buf[..n]);
                    if node_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut node_read, &mut client_write).await;
            });
        }
    });

    let strict = accepting(&node).await;
    assert!(!strict.allow_unbound, "off by default");
    let verdict = cella_client::Client::with_policy(&relay_url, None, &strict)
        .unwrap()
        .verify_node(&strict)
        .await
        .unwrap();
    let failed: Vec<_> = verdict
        .verification
        .checks
        .iter()
        .filter(|c| !c.ok)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].name, "TLS key");
    assert!(
        failed[0].fix.as_deref().unwrap().contains("allow_unbound"),
        "{failed:?}"
    );
    let token = node.admin_token().to_owned();
    let refused = cella_client::Client::with_policy(&relay_url, Some(token.clone()), &strict);
    assert!(
        matches!(refused, Err(cella_client::ClientError::Unbound { .. })),
        "a client with a token is not even built"
    );
    let recorded = String::from_utf8_lossy(&seen.lock().unwrap()).to_lowercase();
    assert!(recorded.contains("/v1/attestation"), "the relay was used");
    assert!(!recorded.contains("authorization"), "{recorded}");
    assert!(!recorded.contains(&token.to_lowercase()));

    // Only an explicit opt-in (a local debugging node) sends the token without a binding.
    let lax = Policy {
        allow_unbound: true,
        ..strict
    };
    let client = cella_client::Client::with_policy(&relay_url, Some(token), &lax).unwrap();
    assert!(client.verify_node(&lax).await.unwrap().passed());
    client.tenants().await.unwrap();
}
