//! The invariants of ARCHITECTURE.md that this node can show: fresh state per invocation,
//! no capabilities by default, code runs only if it matches its registered hash, and what was
//! accepted survives a restart.

use crate::harness::{Node, Options, assert_api_error, clocks_random, guest, signed_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invocation_starts_from_fresh_state() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("counter", guest("counter.wasm"), &[])
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let acme = acme.clone();
        handles.push(tokio::spawn(async move {
            acme.invoke("counter", vec![], &[]).await
        }));
    }
    for handle in handles {
        let out = handle.await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.output),
            "count=1 heap=1 dirty=0\n"
        );
    }
    let out = acme.invoke("counter", vec![], &[]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.output),
        "count=1 heap=1 dirty=0\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_slot_is_clean() {
    // One slot: every invocation reuses the memory the previous one dirtied.
    let node = Node::start_with(Options {
        instances: 1,
        ..Options::default()
    })
    .await;
    let acme = node.tenant("acme").await;
    acme.deploy("counter", guest("counter.wasm"), &[])
        .await
        .unwrap();
    for _ in 0..10 {
        let out = acme.invoke("counter", vec![], &[]).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.output),
            "count=1 heap=1 dirty=0\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_gets_no_files_no_environment_and_no_network() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("probe", guest("capabilities.wasm"), &[])
        .await
        .unwrap();
    let out = acme.invoke("probe", vec![], &[]).await.unwrap();
    let report = String::from_utf8_lossy(&out.output);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 9, "{report}");
    for line in &lines {
        assert!(
            line.contains(": denied ("),
            "capability granted: {line}\n{report}"
        );
        assert!(!line.contains("GRANTED"), "{line}");
    }
}

/// A TCP listener on loopback that counts who connects to it.
async fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok(connection) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(connection);
        }
    });
    (address, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_cannot_reach_the_network() {
    let (address, connections) = counting_listener().await;
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("hello", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();
    let probe = async |path: String| {
        let (status, _, body) = acme
            .http(cella_client::Method::GET, "hello", &path, Vec::new())
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200);
        String::from_utf8_lossy(&body).into_owned()
    };

    // Outgoing HTTP: refused by the platform's hook (it counts the refusal).
    let target = format!("http://{address}/");
    let report = probe(format!("/fetch?{target}")).await;
    assert!(
        report.contains(&format!("fetch {target}: denied (")),
        "{report}"
    );
    assert_eq!(node.platform.sandbox_refusals().0, 1, "{report}");
    // A TCP connection through wasi:sockets: refused too.
    let report = probe(format!("/connect?{address}")).await;
    assert!(
        report.contains(&format!("connect {address}: denied (Permission denied")),
        "{report}"
    );
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_functions_and_tokens_survive_a_restart() {
    let node = Node::start().await;
    let created = node.admin.create_tenant("acme").await.unwrap();
    let acme = signed_client(&node.url, created.token.clone()).await;
    let before = acme
        .deploy("echo", guest("echo.wasm"), &["timeout=3s".into()])
        .await
        .unwrap();
    acme.deploy("hello", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();
    let beta_token = node.admin.create_tenant("beta").await.unwrap().token;
    acme.grant("echo", "beta").await.unwrap();

    let node = node.restart().await;
    let acme = cella_client::Client::new(&node.url, Some(created.token));
    let beta = cella_client::Client::new(&node.url, Some(beta_token));
    let after = acme.function("echo").await.unwrap();
    assert_eq!(after, before.clone_with_access(&after));
    assert_eq!(acme.functions().await.unwrap().len(), 2);
    assert_eq!(
        &beta
            .invoke("echo", b"again".to_vec(), &[])
            .await
            .unwrap()
            .output[..],
        b"again"
    );
    let (status, _, _) = acme
        .http(cella_client::Method::GET, "hello", "/", vec![])
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        node.admin.tenants().await.unwrap().len(),
        2,
        "admin token still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_registry_put_back_is_refused_and_clients_notice_rollback() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    node.admin.create_tenant("beta").await.unwrap();
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let deployed = acme.registry_version();
    assert!(deployed > 0, "responses carry the registry version");
    let before_grant = std::fs::read(node.data_dir().join("registry.redb")).unwrap();
    acme.grant("echo", "beta").await.unwrap();
    assert!(
        acme.registry_version() > deployed,
        "every change moves it forward"
    );

    // A client that remembers a later version than the node serves refuses the answer.
    let wary = cella_client::Client::new(&node.url, None);
    wary.expect_registry_version(acme.registry_version() + 5);
    let refused = wary.health().await.unwrap_err();
    assert!(
        matches!(refused, cella_client::ClientError::RolledBack { .. }),
        "{refused}"
    );

    // The host puts back the registry from before the grant: the node refuses to start on it.
    let dir = node.stop().await;
    std::fs::write(dir.path().join("registry.redb"), before_grant).unwrap();
    let error = cella_runtime::Platform::open(cella_runtime::PlatformConfig::new(dir.path()))
        .err()
        .expect("an older registry must be refused");
    assert_eq!(error.code(), cella_runtime::ErrorCode::IntegrityError);
    assert!(error.to_string().contains("older copy"), "{error}");
}

trait WithAccess {
    fn clone_with_access(&self, other: &Self) -> Self;
}

impl WithAccess for cella_core::FunctionRecord {
    /// The record as it should read after the grant made before the restart.
    fn clone_with_access(&self, other: &Self) -> Self {
        let mut record = self.clone();
        record.access = other.access.clone();
        record.updated_at = other.updated_at.clone();
        record
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_changed_in_the_blob_store_is_never_run() {
    let node = Node::start().await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token.clone()).await;
    let record = acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let other = acme
        .deploy("probe", guest("capabilities.wasm"), &[])
        .await
        .unwrap();
    // The untrusted storage host swaps in another function's sealed bytes: each blob is
    // intact, but not the one the registry names.
    let blobs = node.platform.blobs();
    let swapped = blobs.raw(&other.hash).await.unwrap();
    blobs.overwrite_raw(&record.hash, swapped).await.unwrap();
    // A restart empties the in-memory cache; without the node's precompiled code (a fresh
    // node, or a lost cache) the next invocation must load the bundle from storage.
    std::fs::remove_dir_all(node.data_dir().join("compiled")).unwrap();
    let node = node.restart().await;
    let acme = signed_client(&node.url, token).await;
    let msg = assert_api_error(
        acme.invoke("echo", b"x".to_vec(), &[]).await,
        500,
        "integrity_error",
    );
    assert!(msg.contains("changed in the blob store"), "{msg}");
    let metrics = node.platform.metrics().encode();
    assert!(
        metrics.contains("cella_blob_integrity_failures_total 1"),
        "{metrics}"
    );
    // Redeploying the right bytes repairs it.
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    assert_eq!(
        &acme
            .invoke("echo", b"ok".to_vec(), &[])
            .await
            .unwrap()
            .output[..],
        b"ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_code_loads_precompiled_and_swapped_code_is_never_loaded() {
    let node = Node::start().await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token.clone()).await;
    let record = acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();

    // After a restart the first invocation compiles nothing: the sealed native code is used.
    let node = node.restart().await;
    let acme = cella_client::Client::new(&node.url, Some(token.clone()));
    let out = acme.invoke("echo", b"warm".to_vec(), &[]).await.unwrap();
    assert_eq!(&out.output[..], b"warm");
    let metrics = node.platform.metrics().encode();
    assert!(metrics.contains("cella_compilations_total 0"), "{metrics}");
    assert!(
        metrics.contains("cella_precompiled_loads_total 1"),
        "{metrics}"
    );

    // The host puts other sealed bytes (the bundle's) where the native code was: refused,
    // counted, and the bundle is verified and compiled instead.
    let bundle = node.platform.blobs().raw(&record.hash).await.unwrap();
    let sealed = node.data_dir().join("compiled/sealed");
    for entry in std::fs::read_dir(&sealed).unwrap() {
        std::fs::write(entry.unwrap().path(), &bundle).unwrap();
    }
    let node = node.restart().await;
    let acme = cella_client::Client::new(&node.url, Some(token));
    let out = acme.invoke("echo", b"cold".to_vec(), &[]).await.unwrap();
    assert_eq!(&out.output[..], b"cold");
    let metrics = node.platform.metrics().encode();
    assert!(metrics.contains("cella_compilations_total 1"), "{metrics}");
    assert!(
        metrics.contains("cella_precompiled_loads_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cella_blob_integrity_failures_total 1"),
        "{metrics}"
    );
}

/// The cache of compiled code is bounded: with room for one image, invoking another function
/// forgets the first, and invoking that again loads its sealed precompiled code (nothing is
/// compiled) and answers as before, with a receipt for the same code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_forgotten_by_the_bounded_cache_is_loaded_again_with_the_same_answer() {
    let node = Node::start_with(Options {
        code_cache_bytes: 1,
        ..Options::default()
    })
    .await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token).await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    acme.deploy("primes", guest("primes.wasm"), &[])
        .await
        .unwrap();
    let metric = |name: &str| -> u64 {
        let text = node.platform.metrics().encode();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let compiled = metric("cella_compilations_total");

    let first = acme.invoke("echo", b"same".to_vec(), &[]).await.unwrap();
    acme.invoke("primes", b"10".to_vec(), &[]).await.unwrap();
    let loads_before = metric("cella_precompiled_loads_total");
    let again = acme.invoke("echo", b"same".to_vec(), &[]).await.unwrap();
    assert!(
        metric("cella_precompiled_loads_total") > loads_before,
        "the forgotten code was loaded again"
    );
    assert_eq!(
        metric("cella_compilations_total"),
        compiled,
        "nothing compiled again"
    );
    assert_eq!(again.output, first.output);
    let (first, again) = (
        first.receipt.unwrap().receipt,
        again.receipt.unwrap().receipt,
    );
    assert_eq!(again.function, first.function);
    assert_eq!(again.output_hash, first.output_hash);
    assert_eq!(again.limits_hash, first.limits_hash);
    // What the cache holds is counted for the operator.
    let held = metric("cella_code_cache_bytes");
    assert!(held > 0 && held < 64 << 20, "{held}");
}
