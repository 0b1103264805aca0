//! `cella bench cluster`: a cluster on this machine — a real nats-server, a gateway in this
//! process, workers as processes of this executable — measured side by side with a single
//! node in the same run:
//!
//! - synchronous throughput with one worker, then with a second one added to the running
//!   cluster (no restart), against one node running the same load itself;
//! - asynchronous end-to-end latency: from submission to the result recorded.
//!
//! On one small machine the workers, the gateway and NATS share the same cores, so the
//! second worker shows how the cluster spreads work more than what a second machine adds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cella_runtime::{AsyncRequest, InvokeOptions, Platform, PlatformConfig, TeeMode};
use cella_sandbox::CommandInput;
use cella_store::Principal;
use serde_json::{Value, json};

use super::stats::{Latencies, shown};
use super::{read_guest, scaled};

/// Invocations kept in flight during a throughput run.
const CONCURRENCY: usize = 8;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats(dir: &Path) -> anyhow::Result<(Process, String)> {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start nats-server; install it (Debian: apt-get install nats-server)")?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let url = lines
        .find_map(|l| {
            l.split("Listening for client connections on ")
                .nth(1)
                .map(|a| format!("nats://{}", a.trim()))
        })
        .context("nats-server did not start")?;
    std::thread::spawn(move || lines.for_each(drop));
    Ok((Process(child), url))
}

/// Starts worker `name`; with `cpu`, confined to that CPU (with `taskset`), as if it had a
/// machine of one CPU to itself.
fn worker(dir: &Path, name: &str, nats: &str, cpu: Option<usize>) -> anyhow::Result<Process> {
    let exe = std::env::current_exe()?;
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(cpu.to_string()).arg(exe);
            taskset
        }
        None => Command::new(exe),
    };
    let mut child = command
        .arg("worker")
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(["--nats", nats, "--tee", "sim", "--sim-platform"])
        .arg(dir.join("sim"))
        .arg("--blobs")
        .arg(format!("file://{}", dir.join("blobs").display()))
        .env("CELLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    if !lines.any(|l| l.contains("joined")) {
        anyhow::bail!("worker {name} did not join");
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Process(child))
}

/// A platform in `dir` with one tenant and `brotli` deployed; returns it and the tenant.
async fn platform(dir: &Path, guests: &Path) -> anyhow::Result<(Arc<Platform>, Principal)> {
    let mut config = PlatformConfig::new(dir.join("gateway"));
    config.sim_platform_dir = Some(dir.join("sim"));
    config.blob_store = Some(format!("file://{}", dir.join("blobs").display()));
    config.tee = TeeMode::Simulated;
    let platform = Arc::new(Platform::open(config)?);
    platform.ensure_admin_token().await?;
    platform.create_tenant(&Principal::Admin, "bench").await?;
    let tenant = Principal::Tenant("bench".parse()?);
    let key = cella_bundle::SigningKey::generate();
    platform
        .add_key(&tenant, &key.verifying_key().to_string())
        .await?;
    let payload = read_guest(guests, "brotli.wasm")?;
    let mut bundle = cella_bundle::Bundle::new(
        cella_bundle::Manifest {
            name: "brotli".parse()?,
            version: "1.0.0".parse()?,
            kind: cella_bundle::BundleKind::detect(&payload).context("not WebAssembly")?,
            plugins: Vec::new(),
            permissions: Default::default(),
            limits: Default::default(),
        },
        payload,
    );
    bundle.sign(&key);
    platform
        .deploy(&tenant, "brotli", Bytes::from(bundle.encode()))
        .await?;
    Ok((platform, tenant))
}

/// Text that takes brotli a few milliseconds.
fn input() -> Bytes {
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 256 * 1024 {
        text.push_str(&format!(
            "order {i} shipped to warehouse {} ",
            i * 7919 % 1013
        ));
        i += 1;
    }
    Bytes::from(text)
}

/// Invocations per second with `CONCURRENCY` in flight for `run`.
async fn throughput(platform: &Arc<Platform>, tenant: &Principal, run: Duration) -> f64 {
    let input = input();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (platform, tenant, input) = (platform.clone(), tenant.clone(), input.clone());
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = CommandInput {
                        stdin: input.clone(),
                        ..CommandInput::default()
                    };
                    let ran = platform
                        .invoke(&tenant, "brotli", &InvokeOptions::default(), request)
                        .await;
                    if ran.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Submission to recorded result, one invocation at a time.
async fn async_latency(platform: &Platform, tenant: &Principal, samples: usize) -> Latencies {
    let mut latencies = Latencies::default();
    for _ in 0..samples {
        let started = Instant::now();
        let request = AsyncRequest {
            stdin: Bytes::from_static(b"hello, asynchronous world"),
            ..AsyncRequest::default()
        };
        let Ok((submitted, _)) = platform.submit(tenant, "brotli", request).await else {
            continue;
        };
        loop {
            match platform.async_invocation(tenant, &submitted.id).await {
                Ok(i) if i.status.is_final() => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(_) => break,
            }
        }
        latencies.push(started.elapsed());
    }
    latencies
}

pub(super) async fn cluster(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let run = Duration::from_secs_f64((5.0 * scale).max(1.0));
    let samples = scaled(200, scale, 20);

    // One node running the load itself.
    let local_dir = scratch("local")?;
    let (local, tenant) = platform(&local_dir, guests).await?;
    throughput(&local, &tenant, run / 5).await;
    let single = throughput(&local, &tenant, run).await;
    drop(local);

    let dir = scratch("cluster")?;
    let (_nats, url) = nats(&dir)?;
    let (gateway, tenant) = platform(&dir, guests).await?;
    let policy = crate::cluster_cmds::peer_policy(&gateway, None, &[])?;
    let client = cella_cluster::connect(&url, "cella-bench").await?;
    let log = cella_cluster::KvLog::open(&client).await?;
    gateway.share_registry(log.clone()).await?;
    let policies = cella_cluster::Policies {
        workers: policy.clone(),
        gateways: policy,
    };
    cella_cluster::Gateway::start(gateway.clone(), client, policies, log).await?;
    // Each worker gets a CPU of its own where there are two and `taskset` is here.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2
        && Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    let cpu = |n: usize| pinned.then_some(n % cpus);
    let _first = worker(&dir, "worker-1", &url, cpu(0))?;
    throughput(&gateway, &tenant, run / 5).await;
    let one = throughput(&gateway, &tenant, run).await;
    // A second worker joins the running cluster.
    let _second = worker(&dir, "worker-2", &url, cpu(1))?;
    throughput(&gateway, &tenant, run / 5).await;
    let two = throughput(&gateway, &tenant, run).await;
    let latency = async_latency(&gateway, &tenant, samples).await;

    println!(
        "\nsynchronous throughput (brotli, 256 KiB in, {CONCURRENCY} in flight, {:.0} s each)",
        run.as_secs_f64()
    );
    println!("{:<34} {:>12} {:>10}", "", "invocations/s", "vs 1 worker");
    println!(
        "{:<34} {:>12.1} {:>10.2}",
        "one node, no bus, all CPUs",
        single,
        single / one
    );
    if pinned {
        println!("(each worker confined to a CPU of its own, as if on its own machine)");
    }
    println!("{:<34} {:>12.1} {:>10.2}", "cluster, 1 worker", one, 1.0);
    println!(
        "{:<34} {:>12.1} {:>10.2}",
        "cluster, 2 workers (added live)",
        two,
        two / one
    );
    println!(
        "\nasynchronous end to end (submit → result recorded, one at a time, {} samples): \
         p50 {}, p99 {}",
        samples,
        shown(latency.p50()),
        shown(latency.p99())
    );
    println!(
        "caveat: gateway, workers and NATS share this machine's {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = std::fs::remove_dir_all(&local_dir);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "concurrency": CONCURRENCY,
        "workers_pinned_to_one_cpu_each": pinned,
        "seconds_per_run": run.as_secs_f64(),
        "throughput_per_s": {
            "single_node": round1(single),
            "cluster_1_worker": round1(one),
            "cluster_2_workers": round1(two),
        },
        "ratio_2_workers_to_1": round2(two / one),
        "ratio_single_node_to_1_worker": round2(single / one),
        "async_end_to_end": latency.to_json(),
    }))
}

fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cella-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
