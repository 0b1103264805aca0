//! A `wasi:http/proxy` component served through `/v1/functions/{name}/http/{*path}`.

use cella_client::Method;

use crate::harness::{Node, assert_api_error, clocks_random, guest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_sees_method_path_and_body_and_its_response_comes_back() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("hello", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();

    let (status, headers, body) = acme
        .http(Method::GET, "hello", "/greet/you?x=1", Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "Hello from wasi:http/proxy! method=GET path=/greet/you\n"
    );
    assert!(headers.contains_key("cella-invocation-id"));

    let (status, headers, body) = acme
        .http(Method::GET, "hello", "/teapot", Vec::new())
        .await
        .unwrap();
    assert_eq!(
        status.as_u16(),
        418,
        "the function's own status is passed through"
    );
    assert_eq!(headers.get("x-hello").unwrap(), "short and stout");
    assert!(
        !headers.contains_key("cella-error"),
        "a function cannot forge the platform's error marker"
    );
    assert_eq!(&body[..], b"I'm a teapot\n");

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (status, _, body) = acme
        .http(Method::POST, "hello", "/echo", payload.clone())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(body.to_vec(), payload);

    // The root of the function is reachable too.
    let (status, _, body) = acme
        .http(Method::GET, "hello", "", Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert!(String::from_utf8_lossy(&body).contains("path=/\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_not_mixed_up() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("hello", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let msg = assert_api_error(
        acme.invoke("hello", Vec::new(), &[]).await,
        400,
        "wrong_kind",
    );
    assert!(msg.contains("/http/"), "{msg}");
    assert_api_error(
        acme.http(Method::GET, "echo", "/", Vec::new()).await,
        400,
        "wrong_kind",
    );
}
