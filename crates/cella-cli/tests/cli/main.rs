//! End-to-end tests of the `cella` binary: a real `cella up` process (or a cluster of
//! `cella gateway` and `cella worker` processes on a real `nats-server`) and the CLI commands
//! a user types, checked by their output and exit status.

mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CELLA: &str = env!("CARGO_BIN_EXE_cella");

fn guests_dir() -> PathBuf {
    std::env::var_os("CELLA_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/dist"))
}

/// A running `cella up`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// A policy that trusts this node: its measurement, its simulated platform key.
    policy: PathBuf,
    lines: mpsc::Receiver<String>,
    banner: Vec<String>,
}

impl Server {
    /// Starts `cella up` on a free port and waits until its output contains `ready`.
    fn start(data_dir: &Path, extra: &[&str], ready: &str) -> Server {
        let mut command = Command::new(CELLA);
        command
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        Server::launch(command, data_dir, data_dir, ready)
    }

    /// Starts `command` (a node on a free port), writes a policy that trusts it to
    /// `policy_dir` (its simulated platform key is in `sim_dir`) and waits until its output
    /// contains `ready`.
    fn launch(command: Command, policy_dir: &Path, sim_dir: &Path, ready: &str) -> Server {
        Server::launch_logging_to(
            command,
            policy_dir,
            sim_dir,
            ready,
            Stdio::inherit(),
            "warn",
        )
    }

    /// [`Server::launch`] with the node's log (stderr) going to `log`, at `level`.
    fn launch_logging_to(
        mut command: Command,
        policy_dir: &Path,
        sim_dir: &Path,
        ready: &str,
        log: Stdio,
        level: &str,
    ) -> Server {
        let mut child = command
            .env_remove("CELLA_CONFIG")
            .env("CELLA_LOG", level)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cella starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            policy: policy_dir.join("test-policy.toml"),
            lines,
            banner: Vec::new(),
        };
        loop {
            let line = server
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("cella did not print {ready:?}: {:?}", server.banner));
            if let Some(rest) = line.split("listening on ").nth(1) {
                server.url = rest.split_whitespace().next().unwrap().to_owned();
            }
            if let Some(measurement) = line.strip_prefix("measurement: ") {
                let anchor = std::fs::read_to_string(sim_dir.join("sim-platform.pub")).unwrap();
                std::fs::write(
                    &server.policy,
                    format!(
                        "allow_simulated = true\nmeasurements = [\"{measurement}\"]\n\
                         sim_anchors = [\"{}\"]\n",
                        anchor.trim()
                    ),
                )
                .unwrap();
            }
            let done = line.contains(ready);
            server.banner.push(line);
            if done {
                return server;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against `server`, trusting it through its test policy.
fn cella(server: &Server, data_dir: &Path, token: Option<&str>, args: &[&str]) -> Output {
    cella_with_policy(server, data_dir, token, args, Some(&server.policy))
}

fn cella_with_policy(
    server: &Server,
    data_dir: &Path,
    token: Option<&str>,
    args: &[&str],
    policy: Option<&Path>,
) -> Output {
    let mut command = Command::new(CELLA);
    command
        .args(args)
        .env("CELLA_URL", &server.url)
        .env("CELLA_DATA_DIR", data_dir)
        .env_remove("CELLA_POLICY")
        .env_remove("CELLA_TOKEN");
    if let Some(policy) = policy {
        command.env("CELLA_POLICY", policy);
    }
    if let Some(token) = token {
        command.env("CELLA_TOKEN", token);
    }
    command.output().expect("cella runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_user_creates_a_tenant_deploys_invokes_and_lists() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[], "listening on");
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("admin token (shown once"))
    );
    let token_file = data.path().join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token file is private");
    }

    // The admin token is read from the data directory.
    let created: serde_json::Value = serde_json::from_str(&ok(cella(
        &server,
        data.path(),
        None,
        &["tenant", "create", "acme", "--format", "json"],
    )))
    .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cella_"));

    // A signing key, registered for the tenant.
    let keys = data.path().join("keys");
    let generated = ok(cella(
        &server,
        data.path(),
        None,
        &["keygen", "--dir", keys.to_str().unwrap()],
    ));
    assert!(generated.contains("cella keys add"), "{generated}");
    let key = keys.join("default.key");
    let public = keys.join("default.pub");
    let added = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["keys", "add", public.to_str().unwrap()],
    ));
    assert!(added.starts_with("registered ed25519:"), "{added}");

    let echo = guests_dir().join("echo.wasm");
    let deployed = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &[
            "deploy",
            "echo",
            echo.to_str().unwrap(),
            "--limit",
            "timeout=2s",
            "--key",
            key.to_str().unwrap(),
        ],
    ));
    assert!(
        deployed.starts_with("deployed `echo` 0.1.0 (wasi-command"),
        "{deployed}"
    );

    // The operator registers the JavaScript engine; the tenant deploys a .js file and chains.
    let quickjs = guests_dir().join("quickjs.wasm");
    let added = ok(cella(
        &server,
        data.path(),
        None,
        &["plugin", "add", "quickjs", quickjs.to_str().unwrap()],
    ));
    assert!(added.starts_with("plug-in `quickjs` sha256:"), "{added}");
    let listed = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["plugin", "list"],
    ));
    assert!(listed.contains("quickjs"), "{listed}");
    let hello = guests_dir().join("hello.js");
    let deploy_hello = |allow: &[&str]| {
        let mut args = vec![
            "deploy",
            "hello",
            hello.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        args.extend(allow);
        cella(&server, data.path(), Some(&token), &args)
    };
    // Nothing is granted unless asked for: the refusal names the flags that grant it.
    let refused = deploy_hello(&[]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("--allow clocks --allow random") && message.contains("missing_permission"),
        "{message}"
    );
    let deployed = ok(deploy_hello(&["--allow", "clocks", "--allow", "random"]));
    assert!(
        deployed.starts_with("deployed `hello` 0.1.0 (js"),
        "{deployed}"
    );
    let chained = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["chain", "echo", "hello", "--data", r#"{"name":"cli"}"#],
    ));
    assert_eq!(chained, r#"{"message":"Hello, cli!","invocations":1}"#);
    let stats = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["stats", "hello"],
    ));
    assert!(
        stats.starts_with("invocations  1\nhost calls   "),
        "{stats}"
    );

    // The same code as a signed bundle, built and checked offline, then pinned by hash.
    let bundle = data.path().join("echo.cella");
    ok(cella(
        &server,
        data.path(),
        None,
        &[
            "bundle",
            "build",
            echo.to_str().unwrap(),
            "--name",
            "echo",
            "--version",
            "2.0.0",
            "--sign",
            "--key",
            key.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
    ));
    let inspected = ok(cella(
        &server,
        data.path(),
        None,
        &["bundle", "inspect", bundle.to_str().unwrap()],
    ));
    assert!(inspected.contains("✔ signature by ed25519:"), "{inspected}");
    let hash = inspected
        .lines()
        .find_map(|l| l.strip_prefix("✔ hash"))
        .unwrap()
        .trim()
        .to_owned();
    ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["deploy", "echo", bundle.to_str().unwrap()],
    ));
    let pinned = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &[
            "invoke",
            "echo@2.0.0",
            "--expect-hash",
            &hash,
            "--data",
            "pinned",
        ],
    ));
    assert_eq!(pinned, "pinned");
    let other = format!("sha256:{}", "0".repeat(64));
    let refused = cella(
        &server,
        data.path(),
        Some(&token),
        &["invoke", "echo", "--expect-hash", &other],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("hash_mismatch"), "{stderr}");
    // A receipt, checked offline against the input, the output and the policy.
    let receipt = data.path().join("receipt.json");
    let out_file = data.path().join("receipted.out");
    ok(cella(
        &server,
        data.path(),
        Some(&token),
        &[
            "invoke",
            "echo",
            "--data",
            "receipted",
            "-o",
            out_file.to_str().unwrap(),
            "--receipt",
            receipt.to_str().unwrap(),
        ],
    ));
    let verify_receipt = |input: &str| {
        cella(
            &server,
            data.path(),
            None,
            &[
                "verify-receipt",
                receipt.to_str().unwrap(),
                "--input",
                input,
                "--output",
                out_file.to_str().unwrap(),
            ],
        )
    };
    let verified = ok(verify_receipt("receipted"));
    for line in [
        "✔ signature",
        "✔ node evidence",
        "✔ ran on",
        "✔ input",
        "✔ output",
    ] {
        assert!(verified.contains(line), "{line}: {verified}");
    }
    assert!(!verified.contains('✗'), "{verified}");
    let wrong = verify_receipt("something else");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("✗ input"));
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    edited["signed"]["receipt"]["function"]["version"] = "9.9.9".into();
    std::fs::write(&receipt, serde_json::to_vec(&edited).unwrap()).unwrap();
    let forged = verify_receipt("receipted");
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stdout).contains("✗ signature"));

    // A flipped byte in the bundle file: inspect says ✗ and fails.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&bundle, bytes).unwrap();
    let broken = cella(
        &server,
        data.path(),
        None,
        &["bundle", "inspect", bundle.to_str().unwrap()],
    );
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stdout).contains("✗ signature"));

    let out = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &[
            "invoke",
            "echo",
            "--data",
            "hello from the CLI",
            "--arg",
            "x",
        ],
    ));
    assert_eq!(out, "hello from the CLI");

    let input = data.path().join("in.bin");
    let output = data.path().join("out.bin");
    std::fs::write(&input, [0u8, 1, 2, 255]).unwrap();
    ok(cella(
        &server,
        data.path(),
        Some(&token),
        &[
            "invoke",
            "echo",
            "--data",
            &format!("@{}", input.display()),
            "-o",
            output.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&output).unwrap(), [0u8, 1, 2, 255]);

    let listed: serde_json::Value = serde_json::from_str(&ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["functions", "--format", "json"],
    )))
    .unwrap();
    assert_eq!(listed[0]["name"], "echo");
    // Version 2.0.0's manifest sets no limits; the first version's kept its own.
    assert_eq!(listed[0]["version"], "2.0.0");
    assert_eq!(listed[0]["limits"]["timeout_ms"], 5000);
    // A list shows current versions; the function itself shows its history.
    let shown: serde_json::Value = serde_json::from_str(&ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["functions", "echo", "--format", "json"],
    )))
    .unwrap();
    assert_eq!(shown["versions"][0]["limits"]["timeout_ms"], 2000);
    let versions = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["versions", "echo"],
    ));
    assert!(
        versions.contains("0.1.0") && versions.contains("2.0.0"),
        "{versions}"
    );
    let page = ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["versions", "echo", "--limit", "1"],
    ));
    assert!(page.contains("more: repeat with --cursor "), "{page}");
    let table = ok(cella(&server, data.path(), Some(&token), &["functions"]));
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{:<20} wasi-command ", "echo")),
        "{table}"
    );

    let logs = ok(cella(&server, data.path(), Some(&token), &["logs", "echo"]));
    assert!(logs.contains(r#"args=["echo", "x"]"#), "{logs}");

    // Errors: a message that says what to do, and a failing exit status.
    let missing = cella(&server, data.path(), Some(&token), &["invoke", "nope"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("function `nope` does not exist"),
        "{stderr}"
    );

    // Verification before trust: simulated evidence needs --allow-simulated and a pinned
    // measurement; the failing line says how to pin it.
    let unpinned = cella_with_policy(
        &server,
        data.path(),
        None,
        &["verify", "--allow-simulated"],
        None,
    );
    assert!(!unpinned.status.success());
    let text = String::from_utf8_lossy(&unpinned.stdout);
    assert!(text.contains("SIMULATED"), "{text}");
    assert!(text.contains("✗ measurement"), "{text}");
    assert!(
        text.contains("fix: if you trust this build, pin it"),
        "{text}"
    );
    let measurement = server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("measurement: "))
        .expect("cella up prints its measurement")
        .to_owned();
    let pinned = ok(cella_with_policy(
        &server,
        data.path(),
        None,
        &["verify", "--allow-simulated", "--measurement", &measurement],
        None,
    ));
    assert!(pinned.contains("✔ key and nonce"), "{pinned}");
    assert!(pinned.contains("verified"), "{pinned}");
    let strict = cella_with_policy(
        &server,
        data.path(),
        None,
        &["verify", "--measurement", &measurement],
        None,
    );
    assert!(
        !strict.status.success(),
        "simulated evidence is refused by default"
    );
    assert!(String::from_utf8_lossy(&strict.stdout).contains("✗ hardware"));

    // Every command verifies first: without a policy that trusts the node, nothing is sent.
    let refused = cella_with_policy(&server, data.path(), Some(&token), &["functions"], None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("nothing was sent to it"), "{stderr}");
    assert!(stderr.contains("✗ hardware"), "{stderr}");

    let doctor = ok(cella(&server, data.path(), None, &["doctor"]));
    assert!(
        doctor.contains("`cella up` will use: SIMULATED"),
        "{doctor}"
    );

    let bad = cella(&server, data.path(), Some("cella_wrong"), &["functions"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CELLA_TOKEN"));
}

/// The node's log on a device that is always full: every line fails to be written, and
/// every request is still served (logging never decides a request's outcome).
#[test]
fn a_log_that_cannot_be_written_never_breaks_a_request() {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(CELLA);
    command
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let server = Server::launch_logging_to(
        command,
        data.path(),
        data.path(),
        "listening on",
        Stdio::from(full),
        "debug",
    );
    for i in 0..20 {
        let name = format!("tenant-{i}");
        ok(cella(
            &server,
            data.path(),
            None,
            &["tenant", "create", &name],
        ));
    }
    let listed = ok(cella(&server, data.path(), None, &["tenant", "list"]));
    assert!(listed.contains("tenant-19"), "{listed}");
}

/// A plain-HTTP node's evidence is not bound to the connection (anything in between can relay
/// it), so the CLI sends it no token unless the policy explicitly allows an unbound node.
#[test]
fn a_plain_http_node_gets_no_token_unless_the_policy_allows_unbound() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--insecure-http"], "listening on");
    assert!(server.url.starts_with("http://"), "{}", server.url);
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let refused = cella(
        &server,
        data.path(),
        Some(token.trim()),
        &["tenant", "list"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("✗ TLS key"), "{stderr}");
    assert!(stderr.contains("allow_unbound = true"), "{stderr}");
    assert!(stderr.contains("nothing was sent to it"), "{stderr}");
    let verify = cella(&server, data.path(), None, &["verify"]);
    assert!(!verify.status.success(), "a strict policy refuses it too");

    ok(cella(
        &server,
        data.path(),
        Some(token.trim()),
        &["tenant", "create", "acme", "--allow-unbound"],
    ));
    let allowed = ok(cella(
        &server,
        data.path(),
        Some(token.trim()),
        &["tenant", "list", "--allow-unbound"],
    ));
    assert!(allowed.contains("acme"), "{allowed}");
}

#[test]
fn up_demo_deploys_and_invokes_the_examples() {
    let data = tempfile::tempdir().unwrap();
    let guests = guests_dir();
    let server = Server::start(
        data.path(),
        &["--demo", "--guests", guests.to_str().unwrap()],
        "Press Ctrl-C",
    );
    let banner = server.banner.join("\n");
    for example in ["brotli", "thumbnail", "hello-http", "hello-js", "visits"] {
        assert!(banner.contains(&format!("deployed {example}")), "{banner}");
        assert!(banner.contains(&format!("✔ {example}")), "{banner}");
    }
    // The demo shows what deploying without a needed permission is told.
    assert!(
        banner.contains("refused  hello-http without permissions")
            && banner.contains("clocks = true"),
        "{banner}"
    );
    assert!(banner.contains("✔ receipt"), "{banner}");
    let export = server
        .banner
        .iter()
        .find(|l| l.contains("export CELLA_URL="))
        .expect("ready-to-paste commands");
    let value = |key: &str| {
        export
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing in {export}"))
            .to_owned()
    };
    let token = value("CELLA_TOKEN=");
    // The policy the demo printed is enough to trust the node.
    let policy = PathBuf::from(value("CELLA_POLICY="));
    let verified = ok(cella_with_policy(
        &server,
        data.path(),
        None,
        &["verify"],
        Some(&policy),
    ));
    assert!(verified.contains("verified"), "{verified}");
    let compressed = cella_with_policy(
        &server,
        data.path(),
        Some(&token),
        &["invoke", "brotli", "--data", "hello hello hello hello"],
        Some(&policy),
    );
    assert!(
        compressed.status.success(),
        "{}",
        String::from_utf8_lossy(&compressed.stderr)
    );
    assert!(!compressed.stdout.is_empty());
}

#[test]
fn config_comes_from_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cella.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9001\"\ndata_dir = \"/srv/cella\"\n\
         [limits.default]\ntimeout_ms = 1500\n[gateway]\ntenant_concurrency = 7\n",
    )
    .unwrap();
    let show = |env: &[(&str, &str)], flags: &[&str]| {
        let mut command = Command::new(CELLA);
        command
            .args(["config", "show", "--config"])
            .arg(&file)
            .args(flags)
            .env_remove("CELLA_LISTEN")
            .env_remove("CELLA_DATA_DIR");
        for (k, v) in env {
            command.env(k, v);
        }
        ok(command.output().unwrap())
    };
    let from_file = show(&[], &[]);
    assert!(
        from_file.contains("listen = \"127.0.0.1:9001\""),
        "{from_file}"
    );
    assert!(from_file.contains("data_dir = \"/srv/cella\""));
    assert!(from_file.contains("timeout_ms = 1500"));
    assert!(from_file.contains("tenant_concurrency = 7"));
    let from_env = show(&[("CELLA_LISTEN", "127.0.0.1:9002")], &[]);
    assert!(
        from_env.contains("listen = \"127.0.0.1:9002\""),
        "{from_env}"
    );
    let from_flag = show(
        &[("CELLA_LISTEN", "127.0.0.1:9002")],
        &["--listen", "127.0.0.1:9003"],
    );
    assert!(
        from_flag.contains("listen = \"127.0.0.1:9003\""),
        "{from_flag}"
    );

    std::fs::write(&file, "listen = \"127.0.0.1:9001\"\nlisten_port = 3\n").unwrap();
    let bad = Command::new(CELLA)
        .args(["config", "show", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("listen_port"), "{stderr}");
}

/// The node's resident memory, in bytes (Linux).
fn resident_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

#[test]
fn memory_a_burst_of_large_guests_used_is_handed_back_within_the_printed_bound() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("cella.toml");
    std::fs::write(
        &config,
        "[sandbox]\ninstances = 8\nkeep_resident_bytes = 4194304\n",
    )
    .unwrap();
    let server = Server::start(
        data.path(),
        &["--config", config.to_str().unwrap()],
        "listening on",
    );
    // The banner states the bound: instances × (2 × keep_resident_bytes + 5 × 64 KiB).
    let bound_mib: u64 = server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("guest memory: at most "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no guest memory bound in {:?}", server.banner));
    assert_eq!(bound_mib, (8 * (2 * 4 * 1024 + 5 * 64)) / 1024);

    let created: serde_json::Value = serde_json::from_str(&ok(cella(
        &server,
        data.path(),
        None,
        &["tenant", "create", "hungry", "--format", "json"],
    )))
    .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let keys = data.path().join("keys");
    ok(cella(
        &server,
        data.path(),
        None,
        &["keygen", "--dir", keys.to_str().unwrap()],
    ));
    let public = keys.join("default.pub");
    ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["keys", "add", public.to_str().unwrap()],
    ));
    let key = keys.join("default.key");
    let bomb = guests_dir().join("memory-bomb.wasm");
    let echo = guests_dir().join("echo.wasm");
    for (name, path, memory) in [
        ("bomb", &bomb, "memory=192MiB"),
        ("echo", &echo, "memory=16MiB"),
    ] {
        ok(cella(
            &server,
            data.path(),
            Some(&token),
            &[
                "deploy",
                name,
                path.to_str().unwrap(),
                "--limit",
                memory,
                "--key",
                key.to_str().unwrap(),
            ],
        ));
    }
    ok(cella(
        &server,
        data.path(),
        Some(&token),
        &["invoke", "echo", "--data", "x"],
    ));
    let before = resident_bytes(&server);

    // Four guests at once, each filling 192 MiB until its limit stops it, twice over.
    for _ in 0..2 {
        let burst: Vec<_> = (0..4)
            .map(|_| {
                let mut command = Command::new(CELLA);
                command
                    .args(["invoke", "bomb"])
                    .env("CELLA_URL", &server.url)
                    .env("CELLA_DATA_DIR", data.path())
                    .env("CELLA_POLICY", &server.policy)
                    .env("CELLA_TOKEN", &token)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        for child in burst {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("memory"),
                "the bomb hits its limit: {stderr}"
            );
        }
    }
    // Within a second the node holds no more than the bound above what it held before
    // (plus room for the allocator's own caches).
    std::thread::sleep(Duration::from_secs(1));
    let after = resident_bytes(&server);
    let grown = after.saturating_sub(before);
    let slack = 32 << 20;
    println!(
        "resident: {} MiB before, {} MiB a second after the burst",
        before >> 20,
        after >> 20
    );
    assert!(
        grown <= (bound_mib << 20) + slack,
        "resident memory grew by {} MiB after the burst (bound {bound_mib} MiB): {} → {} MiB",
        grown >> 20,
        before >> 20,
        after >> 20
    );
}
