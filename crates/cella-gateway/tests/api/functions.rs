//! The example functions do real work through the API.

use std::io::Read;

use crate::harness::{Node, assert_api_error, clocks_random, guest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_round_trips_a_mebibyte_with_the_native_crate() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("brotli", guest("brotli.wasm"), &[])
        .await
        .unwrap();

    // 1.5 MiB of text with some variety, so compression does real work.
    let input: Vec<u8> = (0..1_572_864u32)
        .map(|i| b"confidential serverless "[(i as usize * 7 + (i as usize >> 10)) % 24])
        .collect();
    let compressed = acme.invoke("brotli", input.clone(), &[]).await.unwrap();
    assert!(compressed.output.len() < input.len() / 4, "it compressed");
    assert!(compressed.function_hash.unwrap().starts_with("sha256:"));
    assert!(compressed.invocation_id.is_some());

    let mut native = Vec::new();
    brotli::Decompressor::new(&compressed.output[..], 4096)
        .read_to_end(&mut native)
        .expect("the native brotli crate reads the guest's output");
    assert_eq!(native, input);

    let restored = acme
        .invoke("brotli", compressed.output.to_vec(), &["decompress".into()])
        .await
        .unwrap();
    assert_eq!(restored.output, input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnail_returns_a_png_of_the_requested_width() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("thumbnail", guest("thumbnail.wasm"), &[])
        .await
        .unwrap();
    let png = guest("sample.png");
    let source = image::load_from_memory(&png).unwrap();

    let thumb = acme
        .invoke("thumbnail", png.clone(), &["64".into()])
        .await
        .unwrap();
    let thumb = image::load_from_memory_with_format(&thumb.output, image::ImageFormat::Png)
        .expect("a valid PNG");
    assert_eq!(thumb.width(), 64);
    assert_eq!(
        thumb.height(),
        source.height() * 64 / source.width(),
        "aspect ratio kept"
    );
    assert!(thumb.color().has_color());

    let gray = acme.invoke("thumbnail", png.clone(), &[]).await.unwrap();
    assert_eq!(
        image::load_from_memory(&gray.output).unwrap().width(),
        128,
        "default width"
    );

    let gray = acme
        .invoke("thumbnail", png, &["width=32".into(), "grayscale".into()])
        .await
        .unwrap();
    let gray = image::load_from_memory(&gray.output).unwrap();
    assert_eq!(gray.width(), 32);
    assert!(!gray.color().has_color(), "grayscale: {:?}", gray.color());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_become_argv_and_stderr_becomes_the_log() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let out = acme
        .invoke(
            "echo",
            b"ping".to_vec(),
            &["one".into(), "two words".into()],
        )
        .await
        .unwrap();
    assert_eq!(&out.output[..], b"ping");

    let logs = acme.logs("echo").await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].outcome, "ok");
    assert_eq!(Some(&logs[0].id), out.invocation_id.as_ref());
    assert!(
        logs[0].log.contains(r#"args=["echo", "one", "two words"]"#),
        "{}",
        logs[0].log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exit_status_is_an_error_carrying_the_stderr_tail() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    acme.deploy("fails", guest("exit-fail.wasm"), &[])
        .await
        .unwrap();
    match acme.invoke("fails", Vec::new(), &[]).await {
        Err(cella_client::ClientError::Api {
            status,
            code,
            message,
            log,
        }) => {
            assert_eq!((status, code.as_str()), (502, "function_failed"));
            assert!(message.contains("exited with status 3"), "{message}");
            assert!(
                log.unwrap_or_default().contains("something went wrong"),
                "the log tail is in the error"
            );
        }
        other => panic!("expected a function failure, got {other:?}"),
    }
    // Statuses WASI libraries call invalid are the function's own too: the same error,
    // never a bare backtrace.
    for (arg, status) in [("126", "126"), ("255", "255"), ("-1", "-1"), ("0", "")] {
        let result = acme.invoke("fails", Vec::new(), &[arg.to_owned()]).await;
        if status.is_empty() {
            assert!(result.is_ok(), "status 0 is success: {result:?}");
            continue;
        }
        let message = assert_api_error(result, 502, "function_failed");
        assert!(
            message.contains(&format!("exited with status {status}")),
            "{arg}: {message}"
        );
        assert!(!message.contains("backtrace"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_listed_shown_redeployed_and_deleted() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    let first = acme
        .deploy("echo", guest("echo.wasm"), &["timeout=2s".into()])
        .await
        .unwrap();
    assert_eq!(first.kind.as_str(), "wasi-command");
    assert_eq!(first.limits.timeout_ms, 2000);
    assert_eq!(first.size, guest("echo.wasm").len() as u64);

    acme.deploy("hello", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();
    let names: Vec<String> = acme
        .functions()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name.to_string())
        .collect();
    assert_eq!(names, ["echo", "hello"]);
    assert_eq!(
        acme.function("hello").await.unwrap().kind.as_str(),
        "wasi-http"
    );

    // Redeploying replaces the code and keeps the creation time.
    let second = acme
        .deploy("echo", guest("counter.wasm"), &[])
        .await
        .unwrap();
    assert_ne!(second.hash, first.hash);
    assert_eq!(second.created_at, first.created_at);
    let out = acme.invoke("echo", Vec::new(), &[]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.output).trim(),
        "count=1 heap=1 dirty=0"
    );

    acme.delete("echo").await.unwrap();
    crate::harness::assert_api_error(acme.invoke("echo", Vec::new(), &[]).await, 404, "not_found");
    assert_eq!(acme.functions().await.unwrap().len(), 1);
}
