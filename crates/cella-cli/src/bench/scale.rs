//! Costs that must not grow with the node: an empty node and one filled with generated records
//! (by default 100,000 tenants, 10,000 functions, 1,000 versions of one function), measured
//! side by side in one run through a real node on loopback over RA-TLS: CPU per tenant
//! creation and per deploy's registry write, invoke p50/p99 of a random function, a pinned
//! invocation of a long history, list latency for a tenant owning one function, resident
//! memory, and resident memory after a burst of memory-hungry invocations against the bound
//! `cella up` prints.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cella_client::Client;
use cella_core::{FunctionName, FunctionRecord, TenantName};
use cella_runtime::{Platform, PlatformConfig};
use cella_store::Principal;
use serde_json::{Value, json};

use super::stats::Latencies;
use super::{read_guest, scaled};

/// Goal: a full node's writes and invokes within this factor of the empty node's.
const GOAL: f64 = 1.5;
/// Parallel memory-hungry invocations in the burst, and the memory each fills.
const BURST: usize = 4;
const BURST_MEMORY: &str = "memory=256MiB";

pub(super) async fn scale(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let echo = read_guest(guests, "echo.wasm")?;
    let bomb = read_guest(guests, "memory-bomb.wasm")?;
    let sizes = Sizes {
        tenants: scaled(100_000, scale, 100),
        functions: scaled(10_000, scale, 10),
        versions: scaled(1_000, scale, 10),
    };
    let samples = scaled(300, scale, 30);
    println!(
        "\nfull node: {} tenants, {} functions, {} versions of one function (generated); \
         {samples} samples per figure, taken from both nodes in turn",
        sizes.tenants, sizes.functions, sizes.versions
    );
    let rss_before = resident_mib();
    let empty = BenchNode::start("empty", &echo, &bomb, &Sizes::EMPTY).await?;
    let rss_empty = resident_mib();
    let full = BenchNode::start("full", &echo, &bomb, &sizes).await?;
    let rss_full = resident_mib();
    let nodes = [&empty, &full];

    // Writes, in batches taken from each node in turn (CPU time is counted in 10 ms ticks).
    let mut create_cpu = [Duration::ZERO; 2];
    let mut deploy_cpu = [Duration::ZERO; 2];
    const BATCH: usize = 10;
    for batch in 0..samples.div_ceil(BATCH) {
        for (n, node) in nodes.iter().enumerate() {
            let cpu = cpu_time();
            for i in batch * BATCH..(batch + 1) * BATCH {
                node.admin.create_tenant(&format!("new-{i}")).await?;
            }
            create_cpu[n] += cpu_time() - cpu;
            // A new function each: a deploy also reads its own function's history, at most
            // `max_versions` long — the tenant's cost, not the node's.
            let cpu = cpu_time();
            for i in batch * BATCH..(batch + 1) * BATCH {
                node.deploy_write(i).await?;
            }
            deploy_cpu[n] += cpu_time() - cpu;
        }
    }
    let per_op =
        |total: Duration| total.as_secs_f64() * 1e6 / (samples.div_ceil(BATCH) * BATCH) as f64;

    // Reads: a random function, a pinned version of the long history, the small tenant's list.
    let mut invoke = [Latencies::default(), Latencies::default()];
    let mut pinned = [Latencies::default(), Latencies::default()];
    let mut list = [Latencies::default(), Latencies::default()];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..samples {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for (n, node) in nodes.iter().enumerate() {
            invoke[n].push(node.invoke_one(seed).await?);
            pinned[n].push(node.invoke_pinned(seed).await?);
            list[n].push(node.list_small().await?);
        }
    }

    println!(
        "\n{:<36} {:>12} {:>12} {:>8}  goal",
        "", "empty node", "full node", "ratio"
    );
    let mut rows = Vec::new();
    let mut row = |what: &str, empty: f64, full: f64, unit: &str, goal: bool| {
        let ratio = full / empty.max(1e-9);
        let verdict = match goal {
            false => "",
            true if ratio <= GOAL => "✔ within 1.5×",
            true => "✗ over 1.5×",
        };
        println!(
            "{what:<36} {:>12} {:>12} {ratio:>7.2}×  {verdict}",
            format!("{empty:.0} {unit}"),
            format!("{full:.0} {unit}")
        );
        rows.push(json!({ "figure": what, "unit": unit, "empty": empty, "full": full,
                          "ratio": (ratio * 100.0).round() / 100.0, "goal_met": !goal || ratio <= GOAL }));
    };
    row(
        "CPU per tenant creation",
        per_op(create_cpu[0]),
        per_op(create_cpu[1]),
        "µs",
        true,
    );
    row(
        "CPU per deploy (registry write)",
        per_op(deploy_cpu[0]),
        per_op(deploy_cpu[1]),
        "µs",
        true,
    );
    row(
        "invoke p50 (random function)",
        invoke[0].p50_us(),
        invoke[1].p50_us(),
        "µs",
        true,
    );
    row(
        "invoke p99 (random function)",
        invoke[0].p99_us(),
        invoke[1].p99_us(),
        "µs",
        true,
    );
    row(
        "pinned invoke p50 (long history)",
        pinned[0].p50_us(),
        pinned[1].p50_us(),
        "µs",
        true,
    );
    row(
        "pinned invoke p99 (long history)",
        pinned[0].p99_us(),
        pinned[1].p99_us(),
        "µs",
        true,
    );
    row(
        "list p50 (tenant owning one)",
        list[0].p50_us(),
        list[1].p50_us(),
        "µs",
        true,
    );
    row(
        "list p99 (tenant owning one)",
        list[0].p99_us(),
        list[1].p99_us(),
        "µs",
        true,
    );
    row(
        "resident memory added by the node",
        rss_empty - rss_before,
        rss_full - rss_empty,
        "MiB",
        false,
    );

    // A burst of memory-hungry invocations on the full node, and what it holds a second later.
    empty.stop().await;
    let burst = full.burst().await?;
    let within = burst.settled_mib <= burst.before_mib + burst.bound_mib;
    println!(
        "\nburst of {BURST} × {BURST_MEMORY} on the full node: resident {} MiB before, {} MiB \
         right after, {} MiB a second later; guest memory kept between invocations is bounded \
         by {} MiB ({})",
        burst.before_mib,
        burst.after_mib,
        burst.settled_mib,
        burst.bound_mib,
        if within { "✔ within" } else { "✗ over" }
    );
    let fill = &full.fill;
    println!(
        "filling took {:.1} s ({:.0} tenants/s, {:.0} functions/s, {:.0} versions/s)",
        fill.total.as_secs_f64(),
        fill.rate(sizes.tenants, fill.tenants),
        fill.rate(sizes.functions, fill.functions),
        fill.rate(sizes.versions, fill.versions),
    );
    let fill_seconds = fill.total.as_secs_f64();
    full.stop().await;
    Ok(json!({
        "sizes": { "tenants": sizes.tenants, "functions": sizes.functions, "versions": sizes.versions },
        "samples": samples,
        "goal": "full node within 1.5x of the empty node for writes and invokes; memory back within a second, within the printed bound",
        "rows": rows,
        "latencies": {
            "invoke": { "empty": invoke[0].to_json(), "full": invoke[1].to_json() },
            "pinned_invoke": { "empty": pinned[0].to_json(), "full": pinned[1].to_json() },
            "list_small_tenant": { "empty": list[0].to_json(), "full": list[1].to_json() },
        },
        "resident_mib": { "before": rss_before, "with_empty_node": rss_empty, "with_full_node": rss_full },
        "burst": {
            "invocations": BURST,
            "memory": BURST_MEMORY,
            "before_mib": burst.before_mib,
            "after_mib": burst.after_mib,
            "one_second_later_mib": burst.settled_mib,
            "idle_bound_mib": burst.bound_mib,
            "within": within,
        },
        "fill_seconds": fill_seconds,
    }))
}

/// How full a node is filled.
struct Sizes {
    tenants: usize,
    functions: usize,
    versions: usize,
}

impl Sizes {
    /// What both nodes have: the few records the measurements need.
    const EMPTY: Sizes = Sizes {
        tenants: 0,
        functions: 0,
        versions: 1,
    };
}

struct Burst {
    before_mib: u64,
    after_mib: u64,
    settled_mib: u64,
    bound_mib: u64,
}

#[derive(Default)]
struct Fill {
    tenants: Duration,
    functions: Duration,
    versions: Duration,
    total: Duration,
}

impl Fill {
    fn rate(&self, n: usize, took: Duration) -> f64 {
        n as f64 / took.as_secs_f64().max(1e-9)
    }
}

trait Micros {
    fn p50_us(&self) -> f64;
    fn p99_us(&self) -> f64;
}

impl Micros for Latencies {
    fn p50_us(&self) -> f64 {
        self.p50().as_secs_f64() * 1e6
    }
    fn p99_us(&self) -> f64 {
        self.p99().as_secs_f64() * 1e6
    }
}

/// A node served on loopback over RA-TLS, filled with generated records, and the clients
/// that measure it.
struct BenchNode {
    dir: std::path::PathBuf,
    platform: Arc<Platform>,
    served: super::Served,
    admin: Client,
    /// Owns the long history and the burst's function; invokes the public functions.
    bench: Client,
    /// Owns one function.
    small: Client,
    model: FunctionRecord,
    functions: Vec<FunctionName>,
    versions: usize,
    fill: Fill,
}

impl BenchNode {
    async fn start(label: &str, echo: &[u8], bomb: &[u8], sizes: &Sizes) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("cella-bench-scale-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut config = PlatformConfig::new(&dir);
        config.max_versions = sizes.versions;
        config.sandbox.instances = 32;
        let platform = Arc::new(Platform::open(config)?);
        let admin_token = platform
            .ensure_admin_token()
            .await?
            .context("a new node makes its admin token")?;
        let served =
            super::Served::start(&platform, cella_gateway::GatewayConfig::default()).await?;
        let policy = crate::demo::demo_policy(&platform)?;
        let client =
            |token: &str| Client::with_policy(&served.url, Some(token.to_owned()), &policy);
        let admin = client(admin_token.secret())?;

        // The measurements' own tenants: one deploying for real, one owning a single function.
        let (_, bench_token) = platform.create_tenant(&Principal::Admin, "bench").await?;
        let key = cella_bundle::SigningKey::generate();
        let public = key.verifying_key().to_string();
        let bench = client(bench_token.secret())?.with_signing_key(key);
        bench.add_key(&public).await?;
        let model = bench.deploy("echo", echo.to_vec(), &[]).await?;
        let burst_limits = [BURST_MEMORY.to_owned(), "timeout=30s".to_owned()];
        bench.deploy("bomb", bomb.to_vec(), &burst_limits).await?;
        let (_, small_token) = platform.create_tenant(&Principal::Admin, "small").await?;
        let small = client(small_token.secret())?;
        let small_tenant = TenantName::new("small")?;
        let one = FunctionName::new("one")?;
        platform
            .register_generated(&model, &one, &small_tenant, "1.0.0".parse()?, false)
            .await?;

        let mut fill = Fill::default();
        let started = Instant::now();
        for i in 0..sizes.tenants {
            platform
                .create_tenant(&Principal::Admin, &format!("t{i}"))
                .await?;
        }
        fill.tenants = started.elapsed();
        let at = Instant::now();
        let bench_tenant = TenantName::new("bench")?;
        let functions: Vec<FunctionName> = (0..sizes.functions.max(1))
            .map(|i| FunctionName::new(format!("f{i}")))
            .collect::<Result<_, _>>()?;
        for (i, name) in functions.iter().enumerate() {
            let owner = match sizes.tenants {
                0 => bench_tenant.clone(),
                n => TenantName::new(format!("t{}", i % n))?,
            };
            platform
                .register_generated(&model, name, &owner, "1.0.0".parse()?, true)
                .await?;
        }
        fill.functions = at.elapsed();
        let at = Instant::now();
        let history = FunctionName::new("history")?;
        for v in 0..sizes.versions {
            let version = format!("1.0.{v}").parse()?;
            platform
                .register_generated(&model, &history, &bench_tenant, version, true)
                .await?;
        }
        fill.versions = at.elapsed();
        fill.total = started.elapsed();
        Ok(BenchNode {
            dir,
            platform,
            served,
            admin,
            bench,
            small,
            model,
            functions,
            versions: sizes.versions,
            fill,
        })
    }

    /// A deploy's registry write: a new function of the bench tenant.
    async fn deploy_write(&self, i: usize) -> anyhow::Result<()> {
        let name = FunctionName::new(format!("new-{i}"))?;
        let owner = TenantName::new("bench")?;
        self.platform
            .register_generated(&self.model, &name, &owner, "1.0.0".parse()?, false)
            .await?;
        Ok(())
    }

    /// Invokes the function `seed` picks.
    async fn invoke_one(&self, seed: u64) -> anyhow::Result<Duration> {
        let name = &self.functions[(seed % self.functions.len() as u64) as usize];
        let at = Instant::now();
        self.bench.invoke(name.as_str(), b"x".to_vec(), &[]).await?;
        Ok(at.elapsed())
    }

    /// Invokes the version of the long history `seed` picks.
    async fn invoke_pinned(&self, seed: u64) -> anyhow::Result<Duration> {
        let version = (seed >> 17) % self.versions as u64;
        let at = Instant::now();
        self.bench
            .invoke(&format!("history@1.0.{version}"), b"x".to_vec(), &[])
            .await?;
        Ok(at.elapsed())
    }

    /// Lists the small tenant's functions (one page).
    async fn list_small(&self) -> anyhow::Result<Duration> {
        let at = Instant::now();
        let page = self
            .small
            .functions_page(&cella_client::Paging::default())
            .await?;
        let took = at.elapsed();
        anyhow::ensure!(page.items.len() == 1, "the small tenant owns one function");
        Ok(took)
    }

    /// [`BURST`] memory-hungry invocations at once; resident memory before, right after and
    /// a second later, and the bound on guest memory kept between invocations.
    async fn burst(&self) -> anyhow::Result<Burst> {
        let bound_mib = self.platform.config().sandbox.idle_guest_memory_bound() >> 20;
        let before = resident_mib() as u64;
        let burst: Vec<_> = (0..BURST)
            .map(|_| {
                let bench = self.bench.clone();
                tokio::spawn(async move { bench.invoke("bomb", Vec::new(), &[]).await })
            })
            .collect();
        for task in burst {
            // Each stops at its memory limit.
            let _ = task.await?;
        }
        let after = resident_mib() as u64;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Burst {
            before_mib: before,
            after_mib: after,
            settled_mib: resident_mib() as u64,
            bound_mib,
        })
    }

    async fn stop(self) {
        self.served.stop().await;
        drop(self.platform);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// This process's resident memory, in MiB.
fn resident_mib() -> f64 {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// CPU time this process has used (user and system, every thread), from `/proc/self/stat`
/// (in clock ticks of 10 ms; samples are many enough for that).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
