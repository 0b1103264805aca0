//! Signed bundles: only a bundle signed by a current key of the function's owner deploys,
//! versions only move forward, `name@version` pins one, and `expect-hash` refuses anything
//! else.

use cella_bundle::{Bundle, BundleKind, Manifest, SigningKey};
use cella_client::{Client, InvokeOptions, Paging};

use crate::harness::{Node, Options, assert_api_error, guest};

fn manifest(name: &str, version: &str) -> Manifest {
    Manifest {
        name: cella_core::FunctionName::new(name).unwrap(),
        version: version.parse().unwrap(),
        kind: BundleKind::WasiCommand,
        plugins: Vec::new(),
        permissions: Default::default(),
        limits: Default::default(),
    }
}

fn signed(name: &str, version: &str, payload: Vec<u8>, key: &SigningKey) -> Bundle {
    let mut bundle = Bundle::new(manifest(name, version), payload);
    bundle.sign(key);
    bundle
}

fn expecting(hash: &str) -> InvokeOptions<'_> {
    InvokeOptions {
        expect_hash: Some(hash),
        nonce: None,
    }
}

/// A tenant's client and the key it has registered.
async fn tenant_with_key(node: &Node, name: &str) -> (Client, SigningKey) {
    let token = node.admin.create_tenant(name).await.unwrap().token;
    let client = Client::new(&node.url, Some(token));
    let key = SigningKey::generate();
    client
        .add_key(&key.verifying_key().to_string())
        .await
        .unwrap();
    (client, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_intact_bundles_signed_by_a_current_key_of_the_owner_deploy() {
    let node = Node::start().await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    let (_beta, beta_key) = tenant_with_key(&node, "beta").await;
    let echo = guest("echo.wasm");
    let good = signed("echo", "1.0.0", echo.clone(), &key);

    // Tampered payload and tampered manifest: the signature no longer verifies.
    let mut bytes = good.encode();
    let last_payload_byte = bytes.len() - 1 - 1 - 32 - 64 - 1;
    bytes[last_payload_byte] ^= 1;
    let msg = assert_api_error(
        acme.deploy_bundle("echo", bytes).await,
        400,
        "invalid_bundle",
    );
    assert!(msg.contains("signature does not verify"), "{msg}");
    let mut other_manifest = good.clone();
    other_manifest.manifest.limits.timeout_ms = Some(60_000);
    assert_api_error(
        acme.deploy_bundle("echo", other_manifest.encode()).await,
        400,
        "invalid_bundle",
    );
    // Signed by another tenant's key, by an unknown key, or not at all.
    let msg = assert_api_error(
        acme.deploy_bundle(
            "echo",
            signed("echo", "1.0.0", echo.clone(), &beta_key).encode(),
        )
        .await,
        403,
        "untrusted_key",
    );
    assert!(msg.contains("cella keys add"), "{msg}");
    let stranger = SigningKey::generate();
    assert_api_error(
        acme.deploy_bundle(
            "echo",
            signed("echo", "1.0.0", echo.clone(), &stranger).encode(),
        )
        .await,
        403,
        "untrusted_key",
    );
    let unsigned = Bundle::new(manifest("echo", "1.0.0"), echo.clone());
    assert_api_error(
        acme.deploy_bundle("echo", unsigned.encode()).await,
        400,
        "invalid_bundle",
    );
    // A bare .wasm is not a bundle; a bundle for another name is refused.
    let msg = assert_api_error(
        acme.deploy_bundle("echo", echo.clone()).await,
        400,
        "invalid_bundle",
    );
    assert!(msg.contains("cella bundle build"), "{msg}");
    assert_api_error(
        acme.deploy_bundle("other", good.encode()).await,
        400,
        "invalid_request",
    );
    assert!(
        acme.functions().await.unwrap().is_empty(),
        "nothing deployed"
    );

    // The good one deploys; then the key is revoked: no new deploys with it, and the version
    // it signed keeps running until replaced.
    let record = acme.deploy_bundle("echo", good.encode()).await.unwrap();
    assert_eq!(record.hash, good.hash().0);
    assert_eq!(record.version.to_string(), "1.0.0");
    let id = key.verifying_key().id().to_string();
    let (revoked, still_running) = acme.revoke_key(&id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(still_running, ["echo"]);
    let msg = assert_api_error(
        acme.deploy_bundle("echo", signed("echo", "1.0.1", echo.clone(), &key).encode())
            .await,
        403,
        "untrusted_key",
    );
    assert!(msg.contains("revoked"), "{msg}");
    let out = acme.invoke("echo", b"still".to_vec(), &[]).await.unwrap();
    assert_eq!(&out.output[..], b"still");
    assert_api_error(
        acme.add_key(&key.verifying_key().to_string()).await,
        409,
        "conflict",
    );

    // Once a new key signs a newer version, the revoked key's version cannot be pinned.
    let fresh = SigningKey::generate();
    acme.add_key(&fresh.verifying_key().to_string())
        .await
        .unwrap();
    acme.deploy_bundle(
        "echo",
        signed("echo", "1.1.0", echo.clone(), &fresh).encode(),
    )
    .await
    .unwrap();
    let msg = assert_api_error(
        acme.invoke("echo@1.0.0", vec![], &[]).await,
        403,
        "untrusted_key",
    );
    assert!(msg.contains("revoked"), "{msg}");
    assert!(acme.invoke("echo@1.1.0", vec![], &[]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_move_forward_pin_and_expect_hash() {
    let node = Node::start().await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    let v1 = signed("fn", "1.0.0", guest("echo.wasm"), &key);
    let v2 = signed("fn", "1.2.0", guest("exit-fail.wasm"), &key);
    acme.deploy_bundle("fn", v1.encode()).await.unwrap();
    let record = acme.deploy_bundle("fn", v2.encode()).await.unwrap();
    assert_eq!(record.versions.len(), 2);

    for stale in ["1.2.0", "1.1.9", "0.9.0"] {
        let msg = assert_api_error(
            acme.deploy_bundle("fn", signed("fn", stale, guest("echo.wasm"), &key).encode())
                .await,
            409,
            "conflict",
        );
        assert!(msg.contains("only move forward"), "{msg}");
    }

    // `fn` runs 1.2.0 (which fails); `fn@1.0.0` the pinned echo.
    assert_api_error(acme.invoke("fn", vec![], &[]).await, 502, "function_failed");
    let pinned = acme.invoke("fn@1.0.0", b"old".to_vec(), &[]).await.unwrap();
    assert_eq!(&pinned.output[..], b"old");
    assert_eq!(
        pinned.function_hash.as_deref(),
        Some(v1.hash().to_string().as_str())
    );
    let msg = assert_api_error(acme.invoke("fn@3.0.0", vec![], &[]).await, 404, "not_found");
    assert!(msg.contains("1.0.0, 1.2.0"), "{msg}");

    // expect-hash: the right hash runs, any other is refused before anything runs.
    let v1_hash = v1.hash().to_string();
    let ok = acme
        .invoke_with("fn@1.0.0", b"x".to_vec(), &[], &expecting(&v1_hash))
        .await
        .unwrap();
    assert_eq!(&ok.output[..], b"x");
    let msg = assert_api_error(
        acme.invoke_with("fn", b"x".to_vec(), &[], &expecting(&v1_hash))
            .await,
        412,
        "hash_mismatch",
    );
    assert!(
        msg.contains(&v1_hash) && msg.contains(&v2.hash().to_string()),
        "{msg}"
    );
    assert_api_error(
        acme.invoke_with("fn", vec![], &[], &expecting("sha256:nothex"))
            .await,
        400,
        "invalid_request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invocation_returns_a_receipt_signed_by_the_attested_key() {
    let node = Node::start().await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    let bundle = signed("echo", "1.0.0", guest("echo.wasm"), &key);
    acme.deploy_bundle("echo", bundle.encode()).await.unwrap();
    let nonce = [7u8; 32];
    let result = acme
        .invoke_with(
            "echo",
            b"what ran on what".to_vec(),
            &[],
            &InvokeOptions {
                expect_hash: None,
                nonce: Some(&nonce),
            },
        )
        .await
        .unwrap();
    let signed_receipt = result.receipt.expect("a receipt");
    signed_receipt.verify_signature().unwrap();
    let receipt = &signed_receipt.receipt;
    let report = node.anonymous().attestation(b"").await.unwrap();
    assert_eq!(receipt.node.identity_key, report.identity_key);
    assert_eq!(receipt.node.measurement, report.measurement.to_hex());
    assert_eq!(receipt.function.hash, bundle.hash().to_string());
    assert_eq!(receipt.function.version, "1.0.0");
    assert_eq!(
        receipt.input_hash,
        cella_receipt::sha256(b"what ran on what")
    );
    assert_eq!(receipt.output_hash, cella_receipt::sha256(&result.output));
    assert_eq!(receipt.nonce.as_deref(), Some(hex::encode(nonce).as_str()));
    assert!(receipt.node.registry_version > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_live_sealed_in_the_blob_store_the_url_names() {
    let elsewhere = tempfile::tempdir().unwrap();
    let node = Node::start_with(crate::harness::Options {
        blob_store: Some(format!("file://{}/bundles", elsewhere.path().display())),
        ..Default::default()
    })
    .await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    let bundle = signed("echo", "1.0.0", guest("echo.wasm"), &key);
    acme.deploy_bundle("echo", bundle.encode()).await.unwrap();
    let stored: Vec<_> = std::fs::read_dir(elsewhere.path().join("bundles/sealed"))
        .unwrap()
        .collect();
    assert_eq!(stored.len(), 1, "one sealed bundle");
    let raw = std::fs::read(stored[0].as_ref().unwrap().path()).unwrap();
    assert!(
        !raw.windows(8).any(|w| w == b"CELLABND"),
        "sealed, not plain"
    );
    assert!(!node.data_dir().join("blobs").exists());
    let out = acme
        .invoke("echo", b"from afar".to_vec(), &[])
        .await
        .unwrap();
    assert_eq!(&out.output[..], b"from afar");
}

/// A tenant cannot fill the node's disk with code: each function keeps its newest versions
/// only (the forgotten ones' code is deleted), and all of a tenant's code fits its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_forgotten_and_a_tenant_keeps_code_within_its_quota() {
    let echo = guest("echo.wasm");
    let size = echo.len() as u64;
    let node = Node::start_with(Options {
        max_versions: 2,
        max_tenant_bytes: 2 * size + size / 2,
        ..Options::default()
    })
    .await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    // Three versions with distinct code (a trailing custom section changes the hash).
    let variant = |i: u8| {
        let mut wasm = echo.clone();
        wasm.extend_from_slice(&[0, 2, 1, b'a' + i]);
        wasm
    };
    let mut hashes = Vec::new();
    for (i, version) in ["1.0.0", "1.1.0", "1.2.0"].into_iter().enumerate() {
        let bundle = signed("echo", version, variant(i as u8), &key);
        hashes.push(bundle.hash().0.to_string());
        acme.deploy_bundle("echo", bundle.encode()).await.unwrap();
    }
    let record = acme.function("echo").await.unwrap();
    let kept: Vec<String> = record
        .versions
        .iter()
        .map(|v| v.version.to_string())
        .collect();
    assert_eq!(kept, ["1.1.0", "1.2.0"], "the oldest version is forgotten");
    assert_api_error(
        acme.invoke("echo@1.0.0", b"x".to_vec(), &[]).await,
        404,
        "not_found",
    );
    assert_eq!(
        &acme
            .invoke("echo@1.1.0", b"x".to_vec(), &[])
            .await
            .unwrap()
            .output[..],
        b"x"
    );
    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| if p.is_dir() { files(&p) } else { 1 })
                .sum()
        })
    }
    assert_eq!(
        files(&node.data_dir().join("blobs")),
        2,
        "the forgotten version's code is deleted"
    );

    // Two versions of echo are kept: one more function of the same size would pass the quota.
    let message = assert_api_error(
        acme.deploy_bundle("other", signed("other", "1.0.0", variant(7), &key).encode())
            .await,
        413,
        "payload_too_large",
    );
    assert!(message.contains("quota"), "{message}");
    acme.delete("echo").await.unwrap();
    acme.deploy_bundle("other", signed("other", "1.0.0", variant(7), &key).encode())
        .await
        .unwrap();
}

/// Every list comes in pages: a tenant's functions (read from its own index, not the node's
/// whole list), a function's versions, the tenants; cursors and limits out of range are
/// refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_in_pages_of_what_the_caller_may_see() {
    let node = Node::start().await;
    let (acme, key) = tenant_with_key(&node, "acme").await;
    let (beta, beta_key) = tenant_with_key(&node, "beta").await;
    let echo = guest("echo.wasm");
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        acme.deploy_bundle(name, signed(name, "1.0.0", echo.clone(), &key).encode())
            .await
            .unwrap();
    }
    for version in ["1.1.0", "1.2.0"] {
        acme.deploy_bundle("a1", signed("a1", version, echo.clone(), &key).encode())
            .await
            .unwrap();
    }
    beta.deploy_bundle(
        "b1",
        signed("b1", "1.0.0", echo.clone(), &beta_key).encode(),
    )
    .await
    .unwrap();

    let two = |cursor: Option<String>| Paging {
        cursor,
        limit: Some(2),
    };
    let mut names = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = acme.functions_page(&two(cursor)).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|f| f.name.to_string()));
        pages += 1;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    names.sort();
    assert_eq!(names, ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(pages, 3);
    assert_eq!(
        acme.functions().await.unwrap().len(),
        5,
        "every page, followed"
    );
    let listed: Vec<_> = beta
        .functions()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name.to_string())
        .collect();
    assert_eq!(listed, ["b1"], "a tenant lists its own functions only");

    // A function's versions, a page at a time.
    let first = acme.versions_page("a1", &two(None)).await.unwrap();
    let rest = acme
        .versions_page("a1", &two(first.next_cursor.clone()))
        .await
        .unwrap();
    assert!(rest.next_cursor.is_none());
    let mut versions: Vec<_> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|v| v.version.to_string())
        .collect();
    versions.sort();
    assert_eq!(versions, ["1.0.0", "1.1.0", "1.2.0"]);
    assert_api_error(
        beta.versions_page("a1", &Paging::default()).await,
        403,
        "forbidden",
    );

    // Tenants, for the operator.
    let tenants = node
        .admin
        .tenants_page(&Paging {
            cursor: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(tenants.items.len(), 1);
    assert!(tenants.next_cursor.is_some());
    assert_eq!(node.admin.tenants().await.unwrap().len(), 2);

    // Out of range, or a cursor not issued for this list: 400 with what to do.
    for limit in [0, 1001] {
        let message = assert_api_error(
            acme.functions_page(&Paging {
                cursor: None,
                limit: Some(limit),
            })
            .await,
            400,
            "invalid_request",
        );
        assert!(message.contains("1 to 1000"), "{message}");
    }
    let other_list = tenants.next_cursor.unwrap();
    let message = assert_api_error(
        acme.functions_page(&Paging {
            cursor: Some(other_list),
            limit: None,
        })
        .await,
        400,
        "invalid_request",
    );
    assert!(message.contains("without a cursor"), "{message}");
    // Another tenant's cursor is not one for this tenant's list either.
    let acme_cursor = acme.functions_page(&two(None)).await.unwrap().next_cursor;
    assert_api_error(
        beta.functions_page(&two(acme_cursor)).await,
        400,
        "invalid_request",
    );
}
