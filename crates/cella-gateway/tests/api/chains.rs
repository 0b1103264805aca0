//! Chains run inside the node: every step authorized before any runs, each step in a fresh
//! instance, intermediate results never leave, one receipt names every step.

use crate::harness::{Node, assert_api_error, clocks_random, guest, signed_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_data_between_steps_inside_the_node() {
    let node = Node::start().await;
    node.admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let acme_token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, acme_token).await;
    let other_token = node.admin.create_tenant("other").await.unwrap().token;
    let other = signed_client(&node.url, other_token).await;

    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    acme.deploy_js(
        "upper",
        b"export default (r) => r.text().toUpperCase();".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();
    acme.deploy_js(
        "wrap",
        b"export default (r) => ({ wrapped: r.text() });".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();
    acme.deploy_js(
        "fail",
        b"export default () => { throw new Error('step failed'); };".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();
    other
        .deploy("private", guest("echo.wasm"), &[])
        .await
        .unwrap();
    acme.deploy("hello-http", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();

    // A step the caller may not invoke stops the chain before anything runs.
    let steps = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let message = assert_api_error(
        acme.invoke_chain(&steps(&["echo", "private"]), b"x".to_vec(), None)
            .await,
        403,
        "forbidden",
    );
    assert!(message.contains("step 2 of 2"), "{message}");
    assert!(acme.logs("echo").await.unwrap().is_empty(), "nothing ran");

    let nonce = [7u8; 32];
    let out = acme
        .invoke_chain(
            &steps(&["echo", "upper", "wrap"]),
            b"pipe me".to_vec(),
            Some(&nonce),
        )
        .await
        .unwrap();
    assert_eq!(&out.output[..], br#"{"wrapped":"PIPE ME"}"#);
    let signed = out.receipt.unwrap();
    signed.verify_signature().unwrap();
    let receipt = signed.receipt;
    assert_eq!(
        receipt.format, "cella-receipt/2",
        "a chain needs the newer format"
    );
    assert_eq!(receipt.function.name, "echo");
    let later: Vec<_> = receipt.chain.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(later, ["upper", "wrap"]);
    assert_eq!(receipt.input_hash, cella_receipt::sha256(b"pipe me"));
    assert_eq!(receipt.output_hash, cella_receipt::sha256(&out.output));
    assert_eq!(receipt.nonce, Some(hex::encode(nonce)));

    // A failing step fails the chain: its error, and no partial output.
    let err = acme
        .invoke_chain(&steps(&["echo", "fail", "wrap"]), b"x".to_vec(), None)
        .await;
    assert_api_error(err, 502, "function_failed");
    assert_api_error(
        acme.invoke_chain(&steps(&["echo", "hello-http"]), b"x".to_vec(), None)
            .await,
        400,
        "wrong_kind",
    );
    assert_api_error(
        acme.invoke_chain(&[], b"x".to_vec(), None).await,
        400,
        "invalid_request",
    );
    assert_api_error(
        acme.invoke_chain(&steps(&["echo@9.9.9"]), b"x".to_vec(), None)
            .await,
        404,
        "not_found",
    );
}
