//! A cluster on one machine, as a user runs it: a real `nats-server` (with JetStream) on
//! loopback, a `cella gateway` and `cella worker` processes started by the test, and the CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{CELLA, Server, guests_dir, ok};

/// A `nats-server` with JetStream on disk, on a loopback port, stopped when dropped.
struct Nats {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Nats {
    /// Starts a server on a free port, keeping JetStream's files under `dir`.
    fn start(dir: &Path) -> Nats {
        Nats::on_port(dir, "-1")
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and files.
    fn restart(&mut self) {
        self.restart_after(Duration::ZERO);
    }

    /// Kills the server (SIGKILL), leaves it down for `down`, and starts it again on the same
    /// port and files.
    fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let port = self.url.rsplit(':').next().unwrap().to_owned();
        *self = Nats::on_port(&self.dir, &port);
    }

    fn on_port(dir: &Path, port: &str) -> Nats {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect(
                "nats-server is not installed; ./scripts/test installs it (Debian package \
                 nats-server)",
            );
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines().map_while(Result::ok);
        let url = lines
            .find_map(|line| {
                line.split("Listening for client connections on ")
                    .nth(1)
                    .map(|address| format!("nats://{}", address.trim()))
            })
            .expect("nats-server starts listening");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Nats {
            child,
            url,
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `cella worker` process, its log kept in a file; killed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One machine's cluster: NATS, a gateway, and the workers the test adds.
struct Cluster {
    dir: tempfile::TempDir,
    nats: Nats,
    gateway: Server,
    token: String,
    key: PathBuf,
}

impl Cluster {
    /// Every node of the cluster shares the NATS server, the blob store and the simulated
    /// machine (so they trust each other's simulated evidence).
    fn node(&self, role: &str) -> Command {
        node_command(self.dir.path(), &self.nats.url, role)
    }

    /// Starts NATS and a gateway (with `gateway_flags`), and makes tenant `acme` with a
    /// registered signing key.
    fn start(gateway_flags: &[&str]) -> Cluster {
        Cluster::start_after(gateway_flags, |_| {})
    }

    /// [`Cluster::start`], with `prepare` run on the NATS server before the gateway starts.
    fn start_after(gateway_flags: &[&str], prepare: impl FnOnce(&Nats)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path());
        prepare(&nats);
        let mut gateway = node_command(dir.path(), &nats.url, "gateway");
        gateway
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("gateway"))
            .args(gateway_flags);
        let gateway = Server::launch(gateway, dir.path(), &dir.path().join("sim"), "listening on");
        assert!(
            gateway
                .banner
                .iter()
                .any(|l| l.contains("invocations run on workers")),
            "{:?}",
            gateway.banner
        );
        let mut cluster = Cluster {
            dir,
            nats,
            gateway,
            token: String::new(),
            key: PathBuf::new(),
        };
        let created: serde_json::Value = serde_json::from_str(&ok(
            cluster.cella(None, &["tenant", "create", "acme", "--format", "json"])
        ))
        .unwrap();
        cluster.token = created["token"].as_str().unwrap().to_owned();
        let keys = cluster.dir.path().join("keys");
        ok(cluster.cella(None, &["keygen", "--dir", keys.to_str().unwrap()]));
        let token = cluster.token.clone();
        ok(cluster.cella(
            Some(&token),
            &["keys", "add", keys.join("default.pub").to_str().unwrap()],
        ));
        cluster.key = keys.join("default.key");
        cluster
    }

    /// Starts a worker; returns it once it joined (or panics with its log).
    fn worker(&self, name: &str) -> Worker {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = self
            .node("worker")
            .arg("--data-dir")
            .arg(self.dir.path().join(name))
            .env("CELLA_LOG", "warn,cella_cluster=debug")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("cella worker starts");
        let mut worker = Worker { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !worker.log().contains("joined") {
            if let Some(status) = worker.child.try_wait().unwrap() {
                panic!("worker {name} exited ({status}): {}", worker.log());
            }
            assert!(Instant::now() < deadline, "worker {name}: {}", worker.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        worker
    }

    /// Starts another gateway with its own data directory `name`: it shares the cluster's
    /// registry, joining it by attestation on its first start.
    fn another_gateway(&self, name: &str) -> Server {
        let mut gateway = self.node("gateway");
        gateway
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join(name));
        Server::launch(
            gateway,
            self.dir.path(),
            &self.dir.path().join("sim"),
            "listening on",
        )
    }

    /// Runs the CLI against the gateway as the admin (`None`) or a tenant.
    fn cella(&self, token: Option<&str>, args: &[&str]) -> Output {
        super::cella(&self.gateway, &self.dir.path().join("gateway"), token, args)
    }

    fn tenant(&self, args: &[&str]) -> Output {
        self.cella(Some(&self.token), args)
    }

    /// Deploys a guest from guests/dist as `name`, signed with the tenant's key.
    fn deploy(&self, name: &str, file: &str, allow: &[&str]) {
        let path = guests_dir().join(file);
        let mut args = vec![
            "deploy",
            name,
            path.to_str().unwrap(),
            "--key",
            self.key.to_str().unwrap(),
        ];
        for permission in allow {
            args.extend(["--allow", permission]);
        }
        ok(self.tenant(&args));
    }
}

fn node_command(dir: &Path, nats: &str, role: &str) -> Command {
    let mut command = Command::new(CELLA);
    command
        .arg(role)
        .env("CELLA_NATS", nats)
        .env("CELLA_SIM_PLATFORM", dir.join("sim"))
        .env(
            "CELLA_BLOBS",
            format!("file://{}", dir.join("blobs").display()),
        )
        .env("CELLA_TEE", "sim");
    command
}

/// Waits until every worker says it joined again at `epoch`, after a rotation.
fn all_joined_again(workers: &[Worker], epoch: u32) {
    let joined = format!("joined again (cluster key epoch {epoch})");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers.iter().all(|w| w.log().contains(&joined)) {
        assert!(Instant::now() < deadline, "workers did not join again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many invocations a worker's log says it ran.
fn ran(worker: &Worker) -> usize {
    worker.log().matches("ran an invocation").count()
}

#[test]
fn a_gateway_spreads_invocations_over_two_attested_workers() {
    let cluster = Cluster::start(&[]);
    let workers = [cluster.worker("worker-1"), cluster.worker("worker-2")];
    cluster.deploy("primes", "primes.wasm", &[]);
    cluster.deploy("counter", "state.wasm", &["kv"]);

    for n in 0..16 {
        let out = ok(cluster.tenant(&["invoke", "primes", "-d", &format!("{}", 100 + n)]));
        assert!(out.contains(&format!("\"n\":{}", 100 + n)), "{out}");
    }
    let counts: Vec<usize> = workers.iter().map(ran).collect();
    // The gateway knows both workers and their spare slots.
    let client = api_client(&cluster);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = runtime.block_on(client.metrics()).unwrap();
        if metrics.contains("cella_cluster_workers 2") {
            assert!(
                metrics.contains("cella_cluster_slots{state=\"free\"}"),
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers' capacity unseen: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        counts.iter().all(|&c| c > 0) && counts.iter().sum::<usize>() >= 16,
        "every worker takes a share: {counts:?}"
    );

    // The function's state is one wherever it runs: ten increments on either worker.
    for _ in 0..10 {
        ok(cluster.tenant(&["invoke", "counter", "-a", "incr", "-a", "hits"]));
    }
    let hits = ok(cluster.tenant(&["invoke", "counter", "-a", "get", "-a", "hits"]));
    assert_eq!(hits.trim(), "10");

    // A worker that joins now is told which functions are in demand and loads them before
    // its first request.
    {
        let late = cluster.worker("worker-3");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !late.log().contains("warmed functions in demand") {
            assert!(Instant::now() < deadline, "not warmed: {}", late.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The operator's checks of the bus pass.
    let doctor = Command::new(CELLA)
        .args(["doctor", "--nats", &cluster.nats.url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ok(doctor).into_bytes()).contains("JetStream enabled"),
        "doctor sees JetStream"
    );

    // Rotating the cluster key: both workers are admitted again and keep working; tenants
    // may not rotate it.
    let by_tenant = cluster.tenant(&["cluster", "rotate"]);
    assert!(!by_tenant.status.success());
    let rotated = ok(cluster.cella(None, &["cluster", "rotate"]));
    assert!(rotated.contains("epoch 2"), "{rotated}");
    // At once, before the workers have joined again: the gateway seals under the previous
    // key for a grace period, so no request waits for a worker that cannot open it.
    let started = Instant::now();
    for n in 0..4 {
        ok(cluster.tenant(&["invoke", "primes", "-d", &n.to_string()]));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "invocations right after a rotation took {:?}",
        started.elapsed()
    );
    all_joined_again(&workers, 2);
    for n in 0..4 {
        ok(cluster.tenant(&["invoke", "primes", "-d", &n.to_string()]));
    }
    let hits = ok(cluster.tenant(&["invoke", "counter", "-a", "incr", "-a", "hits"]));
    assert_eq!(hits.trim(), "11");

    // With every worker gone, an invocation fails with what to do.
    drop(workers);
    let refused = cluster.tenant(&["invoke", "primes", "-d", "7"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no worker answers") && stderr.contains("cella worker"),
        "{stderr}"
    );
}

#[test]
fn a_worker_of_another_build_gets_no_keys_and_no_work() {
    let other_build = "ab".repeat(48);
    let cluster = Cluster::start(&["--worker-measurement", &other_build]);
    let log = cluster.dir.path().join("refused.log");
    let refused = cluster
        .node("worker")
        .arg("--data-dir")
        .arg(cluster.dir.path().join("refused"))
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the worker must not join");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused this node") && stderr.contains("measurement"),
        "{stderr}"
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains("joined"));

    // Gateways are admitted under a policy of their own (they get the registry's key): a
    // cluster that admits this build's workers, but only another build's gateways, refuses a
    // gateway of this build.
    let strict = Cluster::start(&["--admit-gateway-measurement", &other_build]);
    let _worker = strict.worker("admitted-worker");
    let gateway = strict
        .node("gateway")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(strict.dir.path().join("refused-gateway"))
        .output()
        .unwrap();
    assert!(!gateway.status.success(), "the gateway must not join");
    let stderr = String::from_utf8_lossy(&gateway.stderr);
    assert!(
        stderr.contains("could not join the cluster's registry")
            && stderr.contains("refused this node")
            && stderr.contains("measurement"),
        "{stderr}"
    );

    // Nor does a worker trust a gateway its own policy does not name.
    let distrustful = cluster
        .node("worker")
        .arg("--data-dir")
        .arg(cluster.dir.path().join("distrustful"))
        .args(["--gateway-measurement", &other_build])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!distrustful.status.success());
    let stderr = String::from_utf8_lossy(&distrustful.stderr);
    assert!(
        stderr.contains("gateway's evidence does not pass") && stderr.contains("measurement"),
        "{stderr}"
    );

    cluster.deploy("primes", "primes.wasm", &[]);
    let invoked = cluster.tenant(&["invoke", "primes", "-d", "7"]);
    assert!(!invoked.status.success(), "no worker may take the work");
    assert!(String::from_utf8_lossy(&invoked.stderr).contains("no worker answers"));
}

#[test]
fn messages_altered_or_replayed_on_the_bus_are_refused() {
    let cluster = Cluster::start(&[]);
    let worker = cluster.worker("worker");
    cluster.deploy("counter", "state.wasm", &["kv"]);
    let (runtime, bus) = bus_client(&cluster);

    // Plays the operator of the bus: records a real sealed invocation as it passes.
    let mut recorder = runtime.block_on(async {
        let recorder = bus.subscribe("cella.invoke").await.expect("subscribes");
        bus.flush()
            .await
            .expect("the subscription reaches the server");
        recorder
    });
    ok(cluster.tenant(&["invoke", "counter", "-a", "incr", "-a", "hits"]));
    let recorded = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), recorder.next())
            .await
            .expect("the invocation crossed the bus")
            .unwrap()
    });
    assert!(
        !String::from_utf8_lossy(&recorded.payload).contains("counter"),
        "the bus sees ciphertext only"
    );

    let send = |payload: Vec<u8>| {
        runtime.block_on(async {
            let request = async_nats::Request::new()
                .payload(payload.into())
                .timeout(Some(Duration::from_secs(2)));
            bus.send_request("cella.invoke", request).await
        })
    };
    // Replayed byte for byte: refused, nothing runs again.
    assert!(send(recorded.payload.to_vec()).is_err(), "no answer");
    // A worker that joins now has never seen it, so its own guard lets it through; but the
    // gateway takes state writes only for a request it has in flight: the counter stays.
    let first_log = worker.log();
    drop(worker);
    let newcomer = cluster.worker("newcomer");
    // It answers the replayer, sealed: the bus cannot read what it ran.
    if let Ok(answer) = send(recorded.payload.to_vec()) {
        assert!(!String::from_utf8_lossy(&answer.payload).contains("error"));
    }
    assert_eq!(
        ran(&newcomer),
        1,
        "the newcomer ran the replay: {}",
        newcomer.log()
    );
    // One byte changed: refused.
    let mut altered = recorded.payload.to_vec();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    assert!(send(altered).is_err(), "no answer");
    // Cut short: refused.
    assert!(send(recorded.payload[..40].to_vec()).is_err(), "no answer");

    let hits = ok(cluster.tenant(&["invoke", "counter", "-a", "get", "-a", "hits"]));
    assert_eq!(hits.trim(), "1", "only the real invocation counted");
    // Refused by whichever worker NATS handed each message to.
    let log = first_log + &newcomer.log();
    for reason in ["replayed", "unauthentic", "malformed"] {
        assert!(log.contains(reason), "refusal {reason} logged: {log}");
    }
}

/// A plain NATS client on the cluster's server, as any other system (or the bus's operator)
/// has one; its runtime's own thread keeps the connection going while the test runs the CLI.
fn bus_client(cluster: &Cluster) -> (tokio::runtime::Runtime, async_nats::Client) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = runtime
        .block_on(async_nats::connect(cluster.nats.url.as_str()))
        .unwrap();
    (runtime, bus)
}

/// The tenant's API client, trusting the gateway through the test policy.
fn api_client(cluster: &Cluster) -> cella_client::Client {
    client_of(cluster, &cluster.gateway)
}

/// A tenant's client of one of the cluster's gateways.
fn client_of(cluster: &Cluster, gateway: &Server) -> cella_client::Client {
    let text = std::fs::read_to_string(&gateway.policy).unwrap();
    let policy: cella_tee::Policy = toml::from_str(&text).unwrap();
    cella_client::Client::with_policy(&gateway.url, Some(cluster.token.clone()), &policy).unwrap()
}

#[test]
fn two_gateways_share_one_registry_and_one_cluster() {
    let cluster = Cluster::start(&[]);
    let workers = [cluster.worker("worker-1"), cluster.worker("worker-2")];
    cluster.deploy("counter", "state.wasm", &["kv"]);

    // A second gateway with a fresh data directory joins the registry by attestation.
    let second = cluster.another_gateway("gateway-2");
    let banner = second.banner.join("\n");
    assert!(
        banner.contains("joining the cluster's registry through a running gateway")
            && banner.contains("shares the cluster's registry"),
        "{banner}"
    );
    let on_second = |token: Option<&str>, args: &[&str]| {
        super::cella(&second, &cluster.dir.path().join("gateway"), token, args)
    };
    let token = cluster.token.clone();

    // The tenant, its token, its functions and their state are one, whichever gateway
    // serves the call.
    for _ in 0..3 {
        ok(cluster.tenant(&["invoke", "counter", "-a", "incr", "-a", "hits"]));
        ok(on_second(
            Some(&token),
            &["invoke", "counter", "-a", "incr", "-a", "hits"],
        ));
    }
    let hits = ok(on_second(
        Some(&token),
        &["invoke", "counter", "-a", "get", "-a", "hits"],
    ));
    assert_eq!(hits.trim(), "6");
    // A tenant made on one gateway is known on the other at once.
    let created: serde_json::Value = serde_json::from_str(&ok(
        cluster.cella(None, &["tenant", "create", "beta", "--format", "json"])
    ))
    .unwrap();
    let beta = created["token"].as_str().unwrap();
    ok(on_second(Some(beta), &["functions"]));
    let primes = guests_dir().join("primes.wasm");
    ok(on_second(
        Some(&token),
        &[
            "deploy",
            "primes",
            primes.to_str().unwrap(),
            "--key",
            cluster.key.to_str().unwrap(),
        ],
    ));
    let out = ok(cluster.tenant(&["invoke", "primes", "-d", "30"]));
    assert!(out.contains("\"n\":30"), "{out}");

    // Asked for on one gateway, its result read on the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let args = ["incr".to_owned(), "hits".to_owned()];
    let through_second = client_of(&cluster, &second);
    let accepted = through_second.invoke_async("counter", Vec::new(), &args, None);
    let id = runtime.block_on(accepted).unwrap().id;
    let first = api_client(&cluster);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let invocation = runtime.block_on(first.async_invocation(&id));
        if let Ok(invocation) = invocation
            && invocation.is_final()
        {
            assert_eq!(invocation.status, "succeeded", "{invocation:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{id} unfinished on the first gateway"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A rotation made on one gateway is the cluster's: the other seals under the new key
    // too, and the workers, admitted again, serve both.
    let rotated = ok(cluster.cella(None, &["cluster", "rotate"]));
    assert!(rotated.contains("epoch 2"), "{rotated}");
    all_joined_again(&workers, 2);
    std::thread::sleep(Duration::from_secs(11)); // past the grace for the previous key
    ok(on_second(
        Some(&token),
        &["invoke", "counter", "-a", "incr", "-a", "hits"],
    ));
    let hits = ok(cluster.tenant(&["invoke", "counter", "-a", "get", "-a", "hits"]));
    assert_eq!(hits.trim(), "8");

    // Restarted, the second gateway checks its copy against the log and catches up.
    drop(second);
    ok(cluster.tenant(&["invoke", "counter", "-a", "incr", "-a", "hits"]));
    let second = cluster.another_gateway("gateway-2");
    assert!(
        second
            .banner
            .iter()
            .any(|l| l.contains("caught up from version")),
        "{:?}",
        second.banner
    );
    let hits = super::cella(
        &second,
        &cluster.dir.path().join("gateway"),
        Some(&token),
        &["invoke", "counter", "-a", "get", "-a", "hits"],
    );
    assert_eq!(ok(hits).trim(), "9");
}

/// Submits invocation `i` until the gateway accepts it (a refusal while NATS is down is
/// retried with the same idempotency key, as a client should); returns its id.
async fn submit(client: &cella_client::Client, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let key = format!("request-{i}");
        let args = ["incr".to_owned(), "hits".to_owned()];
        match client
            .invoke_async("counter", Vec::new(), &args, Some(&key))
            .await
        {
            Ok(accepted) => return accepted.id,
            Err(e) => {
                assert!(Instant::now() < deadline, "request {i} never accepted: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[test]
fn no_async_invocation_is_lost_or_doubled_when_a_worker_dies_or_nats_restarts() {
    const INVOCATIONS: usize = 1000;
    let mut cluster = Cluster::start(&[]);
    let mut doomed = Some(cluster.worker("worker-1"));
    let _survivor = cluster.worker("worker-2");
    cluster.deploy("counter", "state.wasm", &["kv"]);
    let client = api_client(&cluster);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Submitted 50 at a time, faster than they run, so jobs are in flight at each fault: a
    // worker is killed mid-run, then NATS itself, at once and then three times for 3 s (jobs'
    // state calls then reach a bus without a gateway, or time out: a fault once lost about
    // one increment in three runs of this test, each recorded as succeeded).
    let mut ids = Vec::with_capacity(INVOCATIONS);
    for batch in (0..INVOCATIONS).collect::<Vec<_>>().chunks(50) {
        let submitted = runtime.block_on(futures::future::join_all(
            batch.iter().map(|&i| submit(&client, i)),
        ));
        ids.extend(submitted);
        match ids.len() {
            300 => drop(doomed.take()),
            450 => cluster.nats.restart(),
            600 | 750 | 900 => cluster.nats.restart_after(Duration::from_secs(3)),
            _ => {}
        }
    }
    // The same idempotency key returns the same invocation, and runs nothing again.
    let again = runtime.block_on(submit(&client, 7));
    assert_eq!(again, ids[7]);
    // … and a key used for another request is refused, not mixed up with it.
    let other = ["get".to_owned(), "hits".to_owned()];
    let reused =
        runtime.block_on(client.invoke_async("counter", Vec::new(), &other, Some("request-7")));
    let refused = reused.expect_err("an idempotency key names one request");
    assert_eq!(refused.code(), Some("conflict"), "{refused}");

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} invocations never finished",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(500));
        let statuses = runtime.block_on(futures::future::join_all(
            pending.iter().map(|id| client.async_invocation(id)),
        ));
        let mut still = Vec::new();
        for (id, status) in pending.iter().zip(statuses) {
            match status {
                Ok(invocation) if invocation.is_final() => {
                    assert_eq!(
                        invocation.status, "succeeded",
                        "invocation {id}: {invocation:?}"
                    );
                    // Its own count, never a state error the platform handed the guest.
                    let output = invocation.output.as_deref().unwrap_or_default();
                    assert!(
                        output.trim().parse::<u64>().is_ok(),
                        "invocation {id} succeeded with {output:?}"
                    );
                }
                // Not yet, or the gateway is between NATS connections.
                _ => still.push(*id),
            }
        }
        pending = still;
    }

    // Exactly once in effect: the counter in sealed state moved once per invocation.
    let hits = ok(cluster.tenant(&["invoke", "counter", "-a", "get", "-a", "hits"]));
    assert_eq!(hits.trim(), INVOCATIONS.to_string());

    // No finished job stays in the stream (acknowledgements lost with NATS are swept).
    let (bus_runtime, bus) = bus_client(&cluster);
    let js = {
        let _inside = bus_runtime.enter();
        async_nats::jetstream::new(bus)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = bus_runtime.block_on(async {
            let mut stream = js.get_stream("CELLA_ASYNC").await.unwrap();
            stream.info().await.unwrap().state.messages
        });
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} finished jobs stay in the stream"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn events_on_a_subject_invoke_a_function_and_results_go_out_sealed() {
    const EVENTS: usize = 100;
    let cluster = Cluster::start(&[]);
    let _workers = [cluster.worker("worker-1"), cluster.worker("worker-2")];
    cluster.deploy("echo", "echo.wasm", &[]);
    let added: serde_json::Value = serde_json::from_str(&ok(cluster.tenant(&[
        "trigger",
        "add",
        "echo",
        "--subject",
        "acme.orders.>",
        "--reply-subject",
        "acme.results.orders",
        "--format",
        "json",
    ])))
    .unwrap();
    let key = added["result_key"]
        .as_str()
        .expect("a sealed trigger has a key");
    // A reply subject the trigger listens to would feed results back in without end.
    let looping = cluster.tenant(&[
        "trigger",
        "add",
        "echo",
        "--subject",
        "acme.orders.>",
        "--reply-subject",
        "acme.orders.results",
    ]);
    assert!(!looping.status.success());
    assert!(String::from_utf8_lossy(&looping.stderr).contains("without end"));
    let listed = ok(cluster.tenant(&["trigger", "list", "echo"]));
    assert!(
        listed.contains("acme.orders.>") && listed.contains("sealed"),
        "{listed}"
    );

    let (runtime, bus) = bus_client(&cluster);
    let results = runtime.block_on(async {
        let mut results = bus.subscribe("acme.results.orders").await.unwrap();
        bus.flush().await.unwrap();
        // Another system publishes orders; one is delivered twice with the same id.
        for i in 0..EVENTS {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("order-{i}").as_str(),
            );
            bus.publish_with_headers(
                format!("acme.orders.eu.{i}"),
                headers,
                format!("order {i}").into(),
            )
            .await
            .unwrap();
        }
        let mut again = async_nats::HeaderMap::new();
        again.insert(async_nats::header::NATS_MESSAGE_ID, "order-0");
        bus.publish_with_headers("acme.orders.eu.0", again, "order 0".into())
            .await
            .unwrap();
        bus.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < EVENTS {
            let message = tokio::time::timeout(Duration::from_secs(120), results.next())
                .await
                .unwrap_or_else(|_| panic!("only {} results came", got.len()))
                .unwrap();
            got.push(message.payload);
        }
        // The duplicate ran nothing: no result beyond one per order.
        let extra = tokio::time::timeout(Duration::from_secs(2), results.next()).await;
        assert!(extra.is_err(), "one result per order");
        got
    });
    let mut outputs: Vec<String> = results
        .iter()
        .map(|payload| {
            assert!(
                !String::from_utf8_lossy(payload).contains("order "),
                "results cross the bus sealed"
            );
            let result: cella_runtime::TriggerResult = serde_json::from_slice(payload).unwrap();
            assert_eq!(result.status, "succeeded");
            assert!(result.output(None).is_err(), "sealed results need the key");
            String::from_utf8(result.output(Some(key)).unwrap()).unwrap()
        })
        .collect();
    outputs.sort();
    let mut expected: Vec<String> = (0..EVENTS).map(|i| format!("order {i}")).collect();
    expected.sort();
    assert_eq!(outputs, expected);
}

#[test]
fn a_job_whose_deliveries_all_die_is_dead_lettered_not_left_queued() {
    use async_nats::jetstream::{self, consumer, stream};
    // The stream as the gateway makes it, but a consumer that delivers each job once and
    // waits 2 s for its acknowledgement (the gateway takes what exists).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start_after(&[], |nats| {
        runtime.block_on(async {
            let js = jetstream::new(async_nats::connect(nats.url.as_str()).await.unwrap());
            let jobs = js
                .get_or_create_stream(stream::Config {
                    name: "CELLA_ASYNC".into(),
                    subjects: vec!["cella.async.jobs".into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .unwrap();
            jobs.get_or_create_consumer(
                "cella-workers",
                consumer::pull::Config {
                    durable_name: Some("cella-workers".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(2),
                    max_deliver: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        })
    });
    cluster.deploy("echo", "echo.wasm", &[]);
    let client = api_client(&cluster);
    let id = runtime.block_on(submit_to(&client, "echo"));

    // A worker takes the job and dies before it finishes: nothing acknowledges it.
    runtime.block_on(async {
        let bus = async_nats::connect(cluster.nats.url.as_str())
            .await
            .unwrap();
        let js = jetstream::new(bus);
        let taker: consumer::PullConsumer = js
            .get_stream("CELLA_ASYNC")
            .await
            .unwrap()
            .get_consumer("cella-workers")
            .await
            .unwrap();
        let mut batch = taker.fetch().max_messages(1).messages().await.unwrap();
        batch.next().await.expect("the job is delivered").unwrap();
    });
    // Workers keep asking for jobs; JetStream finds this one out of deliveries.
    let _worker = cluster.worker("worker");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let invocation = runtime.block_on(client.async_invocation(&id)).unwrap();
        if invocation.is_final() {
            assert_eq!(invocation.status, "dead_letter", "{invocation:?}");
            let error = invocation.error.unwrap();
            assert!(error.message.contains("without an outcome"), "{error:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still {invocation:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Submits one asynchronous invocation of `function` (empty input); its id.
async fn submit_to(client: &cella_client::Client, function: &str) -> String {
    client
        .invoke_async(function, b"x".to_vec(), &[], None)
        .await
        .unwrap()
        .id
}

#[test]
fn the_registry_log_in_jetstream_kv_keeps_every_slot_written_once() {
    use cella_store::SharedLog;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = runtime.block_on(async {
        let client = cella_cluster::connect(&nats.url, "cella-test")
            .await
            .unwrap();
        cella_cluster::KvLog::open(&client).await.unwrap()
    });
    // The registry calls from blocking threads, as here.
    let checked = runtime.block_on(runtime.spawn_blocking(move || {
        assert_eq!(log.genesis().unwrap(), None);
        assert_eq!(log.base().unwrap(), 0);
        assert!(log.found(b"first".to_vec(), 0).unwrap());
        assert!(!log.found(b"second".to_vec(), 0).unwrap(), "one founder");
        let (genesis, revision) = log.genesis().unwrap().unwrap();
        assert_eq!(genesis, b"first");

        assert!(log.append(1, b"one".to_vec()).unwrap());
        assert!(
            !log.append(1, b"other".to_vec()).unwrap(),
            "one writer per version"
        );
        assert_eq!(log.entry(1).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(log.entry(2).unwrap(), None);

        // Compaction: the genesis is replaced once per revision, and a forgotten slot stays
        // taken for good.
        assert!(log.replace_genesis(b"at 1".to_vec(), 1, revision).unwrap());
        assert!(!log.replace_genesis(b"stale".to_vec(), 1, revision).unwrap());
        assert_eq!(log.base().unwrap(), 1);
        log.forget(1).unwrap();
        assert_eq!(log.entry(1).unwrap(), None);
        assert!(!log.append(1, b"again".to_vec()).unwrap());
        assert_eq!(log.genesis().unwrap().unwrap().0, b"at 1");

        // A genesis larger than one value (NATS's max_payload, 1 MB here) is kept in chunks.
        let large: Vec<u8> = (0..2_500_000u32).map(|n| (n % 251) as u8).collect();
        let (_, revision) = log.genesis().unwrap().unwrap();
        assert!(log.replace_genesis(large.clone(), 2, revision).unwrap());
        assert_eq!(log.genesis().unwrap().unwrap().0, large);
        assert_eq!(log.base().unwrap(), 2);
    }));
    checked.unwrap();
}
