//! Plug-ins and JavaScript functions: the operator registers the engine, tenants deploy
//! JavaScript that runs in it, each function in its own image and every invocation in a fresh
//! context; a plug-in image changed in storage is never used.

use cella_bundle::{Bundle, BundleKind, Manifest, PluginRef};
use cella_client::ClientError;

use crate::harness::{Node, assert_api_error, clocks_random, guest, signed_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_functions_run_in_the_registered_engine_each_in_its_own_context() {
    let node = Node::start().await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token).await;

    // Only the operator registers plug-ins; everyone may list them.
    assert_api_error(
        acme.add_plugin("quickjs", guest("quickjs.wasm")).await,
        403,
        "forbidden",
    );
    let engine = node
        .admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let again = node
        .admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    assert_eq!(
        again, engine,
        "registering the same module again changes nothing"
    );
    let message = assert_api_error(
        node.admin.add_plugin("quickjs", guest("echo.wasm")).await,
        409,
        "conflict",
    );
    assert!(message.contains("new name"), "{message}");
    let message = assert_api_error(
        node.admin.add_plugin("echo", guest("echo.wasm")).await,
        400,
        "invalid_wasm",
    );
    assert!(message.contains("wizer-initialize"), "{message}");
    assert_eq!(acme.plugins().await.unwrap(), vec![engine.clone()]);

    let greet = br#"
        let calls = 0;
        export default function (request) {
            calls += 1;
            console.log("greeting", request.json().name);
            return { hello: request.json().name, calls };
        }
    "#;
    let record = acme
        .deploy_js("greet", greet.to_vec(), "quickjs", clocks_random())
        .await
        .unwrap();
    assert_eq!(record.kind.as_str(), "js");
    assert_eq!(record.plugins, vec![engine.used()]);
    for _ in 0..2 {
        let out = acme
            .invoke("greet", br#"{"name":"ada"}"#.to_vec(), &[])
            .await
            .unwrap();
        assert_eq!(&out.output[..], br#"{"hello":"ada","calls":1}"#);
        let receipt = out.receipt.unwrap().receipt;
        assert_eq!(receipt.function.plugins.len(), 1);
        assert_eq!(receipt.function.plugins[0].image, engine.image.to_string());
    }
    let logs = acme.logs("greet").await.unwrap();
    assert!(logs[0].log.contains("greeting ada"), "{logs:?}");

    // One function's globals are not another's: each has its own image and context.
    let keeper = b"globalThis.secret = 'acme-only'; export default () => globalThis.secret;";
    let peeker = b"export default () => ({ seen: globalThis.secret ?? null });";
    acme.deploy_js("keeper", keeper.to_vec(), "quickjs", clocks_random())
        .await
        .unwrap();
    acme.deploy_js("peeker", peeker.to_vec(), "quickjs", clocks_random())
        .await
        .unwrap();
    let kept = acme.invoke("keeper", Vec::new(), &[]).await.unwrap();
    assert_eq!(&kept.output[..], b"acme-only");
    let peeked = acme.invoke("peeker", Vec::new(), &[]).await.unwrap();
    assert_eq!(&peeked.output[..], br#"{"seen":null}"#);

    // Errors say what went wrong: at deploy for a syntax error, at invocation for a throw.
    let err = acme
        .deploy_js(
            "broken",
            b"export default function (".to_vec(),
            "quickjs",
            clocks_random(),
        )
        .await;
    match &err {
        Err(ClientError::Api { log: Some(log), .. }) => {
            assert!(log.contains("SyntaxError"), "{log}")
        }
        other => panic!("expected the engine's message, got {other:?}"),
    }
    assert_api_error(err, 400, "invalid_bundle");
    acme.deploy_js(
        "thrower",
        b"export default () => { throw new RangeError('out of range'); };".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();
    let err = acme.invoke("thrower", Vec::new(), &[]).await;
    match &err {
        Err(ClientError::Api { log: Some(log), .. }) => {
            assert!(log.contains("RangeError: out of range"), "{log}")
        }
        other => panic!("expected the exception in the log, got {other:?}"),
    }
    assert_api_error(err, 502, "function_failed");
    acme.deploy_js(
        "spinner",
        b"export default () => { for (;;) {} };".to_vec(),
        "quickjs",
        clocks_random().limit("timeout=300ms"),
    )
    .await
    .unwrap();
    assert_api_error(
        acme.invoke("spinner", Vec::new(), &[]).await,
        504,
        "timeout",
    );

    // A manifest must name the plug-in by the hash the node has.
    let mut bundle = Bundle::new(
        Manifest {
            name: "other".parse().unwrap(),
            version: "1.0.0".parse().unwrap(),
            kind: BundleKind::Js,
            plugins: vec![PluginRef {
                name: "quickjs".into(),
                hash: cella_core::ContentHash::of(b"another engine"),
            }],
            permissions: Default::default(),
            limits: Default::default(),
        },
        b"export default () => 1;".to_vec(),
    );
    let key = cella_bundle::SigningKey::generate();
    acme.add_key(&key.verifying_key().to_string())
        .await
        .unwrap();
    bundle.sign(&key);
    let message = assert_api_error(
        acme.deploy_bundle("other", bundle.encode()).await,
        404,
        "not_found",
    );
    assert!(message.contains("cella plugin list"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_image_changed_in_storage_is_refused() {
    let node = Node::start().await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let engine = node
        .admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let acme = signed_client(&node.url, token.clone()).await;
    acme.deploy_js(
        "answer",
        b"export default () => 42;".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();

    // The storage host swaps the image for another valid one: the plain engine module.
    let stolen = node.platform.blobs().raw(&engine.hash).await;
    assert!(
        stolen.is_err(),
        "the module itself is not kept, only its image"
    );
    node.platform
        .blobs()
        .overwrite_raw(&engine.image, guest("quickjs.wasm").into())
        .await
        .unwrap();
    let node = node.restart().await;
    // Precompiled code was sealed by the node itself: the deployed function still runs.
    let acme = signed_client(&node.url, token.clone()).await;
    let out = acme.invoke("answer", Vec::new(), &[]).await.unwrap();
    assert_eq!(&out.output[..], b"42");
    // A new function would need the image: refused, and counted.
    assert_api_error(
        acme.deploy_js(
            "again",
            b"export default () => 1;".to_vec(),
            "quickjs",
            clocks_random(),
        )
        .await,
        500,
        "integrity_error",
    );
    let metrics = node.platform.metrics().encode();
    assert!(
        metrics.contains("cella_blob_integrity_failures_total 1"),
        "{metrics}"
    );
    // Without its precompiled code, the deployed function is refused too.
    std::fs::remove_dir_all(node.data_dir().join("compiled")).unwrap();
    let node = node.restart().await;
    let acme = signed_client(&node.url, token).await;
    assert_api_error(
        acme.invoke("answer", Vec::new(), &[]).await,
        500,
        "integrity_error",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holding_a_large_table_serves_functions_from_its_image() {
    let node = Node::start().await;
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token).await;
    // Registration builds the 8 MiB table once; the image carries it.
    let primes = node
        .admin
        .add_plugin("primes", guest("primes.wasm"))
        .await
        .unwrap();
    assert!(primes.image_size > 8_000_000, "{primes:?}");
    let command = cella_bundle::BundleKind::WasiCommand;

    // The plug-in's own table (empty configuration) and a smaller one a function asks for.
    acme.deploy_from_plugin("primes", command, "primes", Vec::new(), &[])
        .await
        .unwrap();
    acme.deploy_from_plugin("small", command, "primes", b"limit=1000".to_vec(), &[])
        .await
        .unwrap();
    let out = acme
        .invoke("primes", b"97 100, 1000003".to_vec(), &[])
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.output),
        "{\"n\":97,\"prime\":true,\"next\":101}\n\
         {\"n\":100,\"prime\":false,\"next\":101}\n\
         {\"n\":1000003,\"prime\":true,\"next\":1000033}\n"
    );
    let receipt = out.receipt.unwrap().receipt;
    assert_eq!(receipt.function.plugins[0].image, primes.image.to_string());
    let out = acme.invoke("small", b"991".to_vec(), &[]).await.unwrap();
    assert_eq!(
        &out.output[..],
        b"{\"n\":991,\"prime\":true,\"next\":997}\n"
    );
    let err = acme.invoke("small", b"5000".to_vec(), &[]).await;
    match &err {
        Err(ClientError::Api { log: Some(log), .. }) => {
            assert!(log.contains("beyond this table"), "{log}")
        }
        other => panic!("expected the guest's message, got {other:?}"),
    }
    assert_api_error(err, 502, "function_failed");

    // A configuration the plug-in refuses stops the deploy, with its message.
    let err = acme
        .deploy_from_plugin("bad", command, "primes", b"limit=lots".to_vec(), &[])
        .await;
    match &err {
        Err(ClientError::Api { log: Some(log), .. }) => {
            assert!(log.contains("limit="), "{log}")
        }
        other => panic!("expected the plug-in's message, got {other:?}"),
    }
    assert_api_error(err, 400, "invalid_bundle");
}
