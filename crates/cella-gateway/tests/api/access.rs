//! Authentication and authorization (Se-Lambda's gateway core).

use crate::harness::{Node, assert_api_error, guest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_grants_decide_who_may_invoke() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    let beta = node.tenant("beta").await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();

    // No token, a wrong token: 401.
    let msg = assert_api_error(
        node.anonymous().invoke("echo", b"x".to_vec(), &[]).await,
        401,
        "unauthenticated",
    );
    assert!(msg.contains("Authorization: Bearer"), "{msg}");
    let forged = cella_client::Client::new(&node.url, Some("cella_0000".into()));
    assert_api_error(
        forged.invoke("echo", vec![], &[]).await,
        401,
        "unauthenticated",
    );

    // Another tenant's function: 403, with the fix in the message.
    let msg = assert_api_error(
        beta.invoke("echo", b"x".to_vec(), &[]).await,
        403,
        "forbidden",
    );
    assert!(msg.contains("cella grant echo beta"), "{msg}");
    assert_api_error(beta.function("echo").await, 403, "forbidden");
    assert_api_error(beta.delete("echo").await, 403, "forbidden");
    assert_api_error(beta.logs("echo").await, 403, "forbidden");
    assert_api_error(beta.grant("echo", "beta").await, 403, "forbidden");
    // Nor may another tenant take over the name by deploying over it.
    let msg = assert_api_error(
        beta.deploy("echo", guest("counter.wasm"), &[]).await,
        403,
        "forbidden",
    );
    assert!(msg.contains("choose another name"), "{msg}");

    // Granted: 200. Revoked: 403 again.
    let record = acme.grant("echo", "beta").await.unwrap();
    assert!(record.access.tenants.iter().any(|t| t.as_str() == "beta"));
    assert_eq!(
        &beta
            .invoke("echo", b"hi".to_vec(), &[])
            .await
            .unwrap()
            .output[..],
        b"hi"
    );
    acme.revoke("echo", "beta").await.unwrap();
    assert_api_error(
        beta.invoke("echo", b"x".to_vec(), &[]).await,
        403,
        "forbidden",
    );

    // Public: every tenant, and back.
    acme.set_public("echo", true).await.unwrap();
    assert!(beta.invoke("echo", vec![], &[]).await.is_ok());
    acme.set_public("echo", false).await.unwrap();
    assert_api_error(beta.invoke("echo", vec![], &[]).await, 403, "forbidden");

    // A grant to a tenant that does not exist is refused, not stored.
    assert_api_error(acme.grant("echo", "nobody").await, 404, "not_found");
    // Only the owner's functions are listed.
    assert!(beta.functions().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_tenants_and_tenants_do_not() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();

    assert_api_error(acme.create_tenant("mallory").await, 403, "forbidden");
    assert_api_error(acme.tenants().await, 403, "forbidden");
    assert_api_error(node.admin.create_tenant("acme").await, 409, "conflict");
    let msg = assert_api_error(
        node.admin.invoke("echo", vec![], &[]).await,
        403,
        "forbidden",
    );
    assert!(msg.contains("tenant"), "{msg}");
    let names: Vec<String> = node
        .admin
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme"]);

    // Rotating a token retires the old one.
    let rotated = node.admin.rotate_token("acme").await.unwrap();
    assert_api_error(acme.functions().await, 401, "unauthenticated");
    let acme = cella_client::Client::new(&node.url, Some(rotated.token));
    assert_eq!(acme.functions().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_need_no_token_and_reveal_no_names() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("secret-fn", guest("echo.wasm"), &[])
        .await
        .unwrap();
    acme.invoke("secret-fn", b"x".to_vec(), &[]).await.unwrap();
    let _ = acme.invoke("nope", vec![], &[]).await;

    assert_eq!(node.anonymous().health().await.unwrap()["status"], "ok");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"cella_invocations_total{kind="wasi-command",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("cella_invocation_duration_seconds_bucket"));
    assert!(metrics.contains("cella_instances_active 0"));
    assert!(!metrics.contains("secret-fn") && !metrics.contains("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_guessing_tokens_is_refused_for_a_while() {
    let node = Node::start().await;
    let guesser = cella_client::Client::new(&node.url, Some(format!("cella_{}", "0".repeat(64))));
    for _ in 0..20 {
        assert_api_error(guesser.functions().await, 401, "unauthenticated");
    }
    // The budget is spent: unknown tokens from this address are refused for the rest of
    // the minute, and no longer counted or looked for beyond this copy of the registry.
    let msg = assert_api_error(guesser.functions().await, 429, "too_many_requests");
    assert!(msg.contains("retry in"), "{msg}");
    // Authenticated work from the same address (clients behind one NAT) goes on.
    node.admin.tenants().await.unwrap();
    let acme = node.tenant("acme").await;
    acme.functions().await.unwrap();
    assert_api_error(guesser.functions().await, 429, "too_many_requests");
    // What needs no token is still served.
    assert!(node.anonymous().health().await.is_ok());
}
