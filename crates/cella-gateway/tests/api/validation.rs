//! Bad input gets a clear 4xx JSON error and never reaches a guest.

use crate::harness::{Node, assert_api_error, guest, signed_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_names_are_refused_clearly() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;

    let msg = assert_api_error(
        acme.deploy("notwasm", b"#!/bin/sh\nrm -rf /\n".to_vec(), &[])
            .await,
        400,
        "invalid_wasm",
    );
    assert!(msg.contains("not WebAssembly"), "{msg}");
    let mut truncated = guest("echo.wasm");
    truncated.truncate(truncated.len() / 2);
    assert_api_error(
        acme.deploy("half", truncated, &[]).await,
        400,
        "invalid_wasm",
    );

    for bad in ["../etc", "...", "Upper", "a b", "x/y", "-lead", "a%00"] {
        let msg = assert_api_error(
            acme.deploy(bad, guest("echo.wasm"), &[]).await,
            400,
            "invalid_name",
        );
        assert!(msg.contains("lowercase letters"), "{bad}: {msg}");
        assert_api_error(acme.invoke(bad, vec![], &[]).await, 400, "invalid_name");
    }
    assert_api_error(
        node.admin.create_tenant("../root").await,
        400,
        "invalid_name",
    );

    let msg = assert_api_error(acme.invoke("ghost", vec![], &[]).await, 404, "not_found");
    assert!(msg.contains("`ghost`"), "{msg}");
    assert!(
        acme.functions().await.unwrap().is_empty(),
        "nothing was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors() {
    let node = Node::start().await;
    let http = reqwest::Client::new();
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(node.admin_secret());

    let response = admin(http.post(format!("{}/v1/tenants", node.url)))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["cella-error"], "invalid_request");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"{"name":"acme"}"#)
    );

    let response = http
        .get(format!("{}/v2/nothing", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let response = http
        .patch(format!("{}/v1/health", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    let response = http
        .get(format!("{}/v1/functions", node.url))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token.clone()).await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let response = http
        .post(format!("{}/v1/functions/echo/invoke?mode=fast", node.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        400,
        "unknown query parameters are refused"
    );
}
