//! Permissions: default deny, checked on a function's imports at deploy; the monitor counts
//! every host call and records every refusal; environment variables and sealed key-value
//! state exist only where granted, and only for their function's owner.

use std::collections::BTreeMap;

use cella_client::DeployOptions;

use crate::harness::{Node, assert_api_error, clocks_random, guest, signed_client};

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_imports_what_it_is_not_granted_fails_at_deploy_naming_the_fix() {
    let node = Node::start().await;
    node.admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token).await;

    // The JavaScript engine reads the clock and random numbers: both must be granted.
    let hello = b"export default () => 'hi';".to_vec();
    let message = assert_api_error(
        acme.deploy_js("hello", hello.clone(), "quickjs", &[]).await,
        403,
        "missing_permission",
    );
    for expected in [
        "`clocks` (the time)",
        "`random`",
        "clocks = true",
        "random = true",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert!(
        message.contains("--allow clocks --allow random"),
        "{message}"
    );
    let only_clocks = DeployOptions::default().allow("clocks");
    let message = assert_api_error(
        acme.deploy_js("hello", hello.clone(), "quickjs", only_clocks)
            .await,
        403,
        "missing_permission",
    );
    assert!(!message.contains("clocks = true") && message.contains("random = true"));
    acme.deploy_js("hello", hello, "quickjs", clocks_random())
        .await
        .unwrap();

    // A module that imports the state functions needs `kv`.
    let message = assert_api_error(
        acme.deploy("state", guest("state.wasm"), &[]).await,
        403,
        "missing_permission",
    );
    assert!(message.contains("kv = true"), "{message}");
    // A plain module needs nothing: environment and stdio are no request.
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    let record = acme
        .deploy(
            "state",
            guest("state.wasm"),
            DeployOptions::default().allow("kv"),
        )
        .await
        .unwrap();
    assert!(record.permissions.kv && !record.permissions.clocks);
    // Nothing was deployed by the refused attempts.
    assert_eq!(acme.functions().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_state_persists_per_function_is_bounded_and_refusals_are_logged_and_counted() {
    let node = Node::start().await;
    let acme_token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, acme_token).await;
    let other_token = node.admin.create_tenant("other").await.unwrap().token;
    let other = signed_client(&node.url, other_token).await;
    let kv = || DeployOptions::default().allow("kv");
    acme.deploy("visits", guest("state.wasm"), kv())
        .await
        .unwrap();
    other
        .deploy("theirs", guest("state.wasm"), kv())
        .await
        .unwrap();

    for expected in 1..=3 {
        let out = acme
            .invoke("visits", Vec::new(), &args(&["incr", "n"]))
            .await;
        assert_eq!(text(&out.unwrap().output), expected.to_string());
    }
    // Another function (of another tenant) has its own state.
    let theirs = other
        .invoke("theirs", Vec::new(), &args(&["get", "n"]))
        .await;
    assert_eq!(text(&theirs.unwrap().output), "(absent)");

    // Past the state limit (1 MiB by default) the write is refused — an error code for the
    // guest, an entry in the invocation's log — and the state is unchanged.
    let out = acme
        .invoke("visits", Vec::new(), &args(&["put", "big", "1100000"]))
        .await
        .unwrap();
    assert_eq!(text(&out.output), "-3", "StateCode::Full");
    let get = acme
        .invoke("visits", Vec::new(), &args(&["get", "n"]))
        .await;
    assert_eq!(text(&get.unwrap().output), "3");
    let logs = acme.logs("visits").await.unwrap();
    let refused = logs
        .iter()
        .find(|l| l.denials == 1)
        .expect("a logged denial");
    assert!(
        refused.log.contains("[cella] denied (kv-quota)"),
        "{}",
        refused.log
    );
    assert!(refused.host_calls > 0);

    let stats = acme.stats("visits").await.unwrap();
    assert_eq!(stats.invocations, 5);
    assert_eq!(stats.denials.get("kv-quota"), Some(&1));
    assert!(stats.host_calls >= 5 * 3, "{stats:?}");
    assert_api_error(other.stats("visits").await, 403, "forbidden");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"cella_host_call_denials_total{by="kv-quota"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("visits"), "metrics never name functions");

    // A pointer outside the guest's memory traps the guest; the host reads nothing.
    let wild = acme
        .invoke("visits", Vec::new(), &args(&["wild-pointer"]))
        .await;
    assert_api_error(wild, 502, "function_failed");

    // Deleting the function deletes its state: a new function of that name starts empty.
    acme.delete("visits").await.unwrap();
    other
        .deploy("visits", guest("state.wasm"), kv())
        .await
        .unwrap();
    let fresh = other
        .invoke("visits", Vec::new(), &args(&["get", "n"]))
        .await;
    assert_eq!(text(&fresh.unwrap().output), "(absent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_sees_only_the_environment_its_manifest_names_and_its_owner_set() {
    let node = Node::start().await;
    let acme_token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, acme_token.clone()).await;
    let other_token = node.admin.create_tenant("other").await.unwrap().token;
    let other = signed_client(&node.url, other_token).await;
    let granted = DeployOptions::default()
        .allow("kv")
        .allow("env=GREETING")
        .allow("env=UNSET");
    acme.deploy("env", guest("state.wasm"), granted)
        .await
        .unwrap();
    let env = |out: cella_client::Invocation| text(&out.output);
    assert_eq!(
        env(acme
            .invoke("env", Vec::new(), &args(&["env"]))
            .await
            .unwrap()),
        ""
    );

    let set = |pairs: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    };
    let listed = acme
        .set_env("env", &set(&[("GREETING", Some("hello there"))]))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|e| e.name == "GREETING" && e.set && e.granted)
    );
    assert!(
        listed
            .iter()
            .any(|e| e.name == "UNSET" && !e.set && e.granted)
    );
    let seen = env(acme
        .invoke("env", Vec::new(), &args(&["env"]))
        .await
        .unwrap());
    assert_eq!(seen, "GREETING=hello there");

    // A name the manifest does not grant cannot be set; the message says how to grant it.
    let message = assert_api_error(
        acme.set_env("env", &set(&[("HOME", Some("/root"))])).await,
        400,
        "invalid_request",
    );
    assert!(message.contains("env = [\"HOME\"]"), "{message}");
    assert_api_error(
        acme.set_env("env", &set(&[("BAD=NAME", Some("x"))])).await,
        400,
        "invalid_request",
    );
    let too_long = "x".repeat(cella_core::MAX_ENV_VALUE_BYTES + 1);
    assert_api_error(
        acme.set_env("env", &set(&[("GREETING", Some(&too_long))]))
            .await,
        400,
        "invalid_request",
    );
    // Only the owner may set or list them; values are never sent back.
    assert_api_error(
        other
            .set_env("env", &set(&[("GREETING", Some("hijacked"))]))
            .await,
        403,
        "forbidden",
    );
    assert_api_error(other.env("env").await, 403, "forbidden");
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/functions/env/env", node.url))
        .bearer_auth(&acme_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains("hello there"), "{raw}");

    acme.set_env("env", &set(&[("GREETING", None)]))
        .await
        .unwrap();
    assert_eq!(
        env(acme
            .invoke("env", Vec::new(), &args(&["env"]))
            .await
            .unwrap()),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_reaches_its_state_only_when_granted() {
    let node = Node::start().await;
    node.admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let acme = node.tenant("acme").await;
    let counter = b"export default () => {
        const n = Number(cella.state.get('n') ?? 0) + 1;
        cella.state.set('n', n);
        return n;
    };"
    .to_vec();
    acme.deploy_js(
        "visits",
        counter.clone(),
        "quickjs",
        clocks_random().allow("kv"),
    )
    .await
    .unwrap();
    for expected in ["1", "2", "3"] {
        let out = acme.invoke("visits", Vec::new(), &[]).await.unwrap();
        assert_eq!(text(&out.output), expected);
    }
    // Without `kv` the same code deploys, and its first state call throws with the fix.
    acme.deploy_js("nosy", counter, "quickjs", clocks_random())
        .await
        .unwrap();
    let failed = acme.invoke("nosy", Vec::new(), &[]).await;
    match &failed {
        Err(cella_client::ClientError::Api { log: Some(log), .. }) => {
            assert!(log.contains("needs `kv = true`"), "{log}");
            assert!(log.contains("[cella] denied (kv)"), "{log}");
        }
        other => panic!("expected the thrown error in the log, got {other:?}"),
    }
    assert_api_error(failed, 502, "function_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_keeps_its_state_only_when_granted() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    // It imports cella:state/store: without `kv` it is refused at deploy.
    let message = assert_api_error(
        acme.deploy("visits", guest("visits-http.wasm"), clocks_random())
            .await,
        403,
        "missing_permission",
    );
    assert!(message.contains("kv = true"), "{message}");
    acme.deploy(
        "visits",
        guest("visits-http.wasm"),
        clocks_random().allow("kv"),
    )
    .await
    .unwrap();
    for expected in ["visit 1\n", "visit 2\n"] {
        let (status, _, body) = acme
            .http(cella_client::Method::GET, "visits", "/", Vec::new())
            .await
            .unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, expected.as_bytes()));
    }
    let stats = acme.stats("visits").await.unwrap();
    assert_eq!(stats.invocations, 2);
    assert!(stats.host_calls >= 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_gets_a_private_capped_scratch_directory_only_when_granted() {
    let node = Node::start().await;
    let acme = node.tenant("acme").await;
    let scratch = async |name: &str| {
        let (status, _, body) = acme
            .http(cella_client::Method::GET, name, "/scratch", Vec::new())
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200);
        text(&body)
    };

    // Without the permission there is no directory to open.
    acme.deploy("plain", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();
    let report = scratch("plain").await;
    assert!(report.starts_with("entries at start: Err("), "{report}");

    acme.deploy(
        "scratchy",
        guest("hello-http.wasm"),
        clocks_random().allow("scratch=1"),
    )
    .await
    .unwrap();
    // Twice: the second invocation finds nothing of the first's files.
    for _ in 0..2 {
        let report = scratch("scratchy").await;
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[0], "entries at start: Ok(0)", "{report}");
        assert_eq!(
            lines[1], r#"read back: Ok("private (7 bytes) in [\"moved.txt\", \"sub\"]")"#,
            "{report}"
        );
        // `..` past the directory: refused by the host, not only by the guest's libc.
        assert_eq!(lines[2], "escape: Err(PermissionDenied)", "{report}");
        // 1 MiB holds fifteen 64 KiB chunks beside the entries; the sixteenth is refused
        // (wasi-libc reports a failed stream write as EIO; the log names the limit).
        assert!(
            lines[3].starts_with("filled 960 KiB, then: I/O error"),
            "{report}"
        );
        assert_eq!(lines[4], "after removing it: Ok(())", "{report}");
    }
    let stats = acme.stats("scratchy").await.unwrap();
    assert_eq!(stats.denials.get("scratch"), Some(&2), "{stats:?}");
    assert_eq!(stats.denials.get("scratch-quota"), Some(&2), "{stats:?}");

    // Only components get one; and it is capped.
    let message = assert_api_error(
        acme.deploy(
            "echo",
            guest("echo.wasm"),
            DeployOptions::default().allow("scratch=1"),
        )
        .await,
        400,
        "invalid_request",
    );
    assert!(message.contains("wasm32-wasip2"), "{message}");
    let mut huge = clocks_random();
    huge.permissions.scratch_mib = 100_000;
    let message = assert_api_error(
        acme.deploy("huge", guest("hello-http.wasm"), huge).await,
        400,
        "invalid_request",
    );
    assert!(message.contains("1 to 256 MiB"), "{message}");
}
