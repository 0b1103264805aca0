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
use cella_core::{FunctionName, TenantName};
use cella_runtime::{Platform, PlatformConfig};
use cella_store::Principal;
use serde_json::{Value, json};

use super::stats::{Latencies, shown};
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
         {samples} samples per figure",
        sizes.tenants, sizes.functions, sizes.versions
    );
    let empty = measure(&echo, &bomb, &Sizes::EMPTY, samples).await?;
    let full = measure(&echo, &bomb, &sizes, samples).await?;

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
        empty.create_cpu_us,
        full.create_cpu_us,
        "µs",
        true,
    );
    row(
        "CPU per deploy (registry write)",
        empty.deploy_cpu_us,
        full.deploy_cpu_us,
        "µs",
        true,
    );
    row(
        "invoke p50 (random function)",
        empty.invoke.p50_us(),
        full.invoke.p50_us(),
        "µs",
        true,
    );
    row(
        "invoke p99 (random function)",
        empty.invoke.p99_us(),
        full.invoke.p99_us(),
        "µs",
        true,
    );
    row(
        "pinned invoke p50 (long history)",
        empty.pinned.p50_us(),
        full.pinned.p50_us(),
        "µs",
        true,
    );
    row(
        "list p50 (tenant owning one)",
        empty.list.p50_us(),
        full.list.p50_us(),
        "µs",
        true,
    );
    row(
        "resident memory after filling",
        empty.rss_mib,
        full.rss_mib,
        "MiB",
        false,
    );
    println!(
        "\nburst of {BURST} × {} on the full node: resident {} MiB before, {} MiB right after, \
         {} MiB a second later; bound kept between invocations: {} MiB ({})",
        BURST_MEMORY,
        full.burst.before_mib,
        full.burst.after_mib,
        full.burst.settled_mib,
        full.burst.bound_mib,
        if full.burst.settled_mib <= full.burst.before_mib + full.burst.bound_mib {
            "✔ within"
        } else {
            "✗ over"
        }
    );
    println!(
        "filling took {:.1} s ({:.0} tenants/s, {:.0} functions/s, {:.0} versions/s)",
        full.fill.total.as_secs_f64(),
        full.fill.rate(sizes.tenants, full.fill.tenants),
        full.fill.rate(sizes.functions, full.fill.functions),
        full.fill.rate(sizes.versions, full.fill.versions),
    );
    Ok(json!({
        "sizes": { "tenants": sizes.tenants, "functions": sizes.functions, "versions": sizes.versions },
        "samples": samples,
        "goal": "full node within 1.5x of the empty node for writes and invokes; memory back within a second, within the printed bound",
        "rows": rows,
        "empty": empty.to_json(),
        "full": full.to_json(),
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

struct Figures {
    create_cpu_us: f64,
    deploy_cpu_us: f64,
    invoke: Latencies,
    pinned: Latencies,
    list: Latencies,
    rss_mib: f64,
    burst: Burst,
    fill: Fill,
}

impl Figures {
    fn to_json(&self) -> Value {
        json!({
            "create_tenant_cpu_us": self.create_cpu_us,
            "deploy_write_cpu_us": self.deploy_cpu_us,
            "invoke": self.invoke.to_json(),
            "pinned_invoke": self.pinned.to_json(),
            "list_small_tenant": self.list.to_json(),
            "rss_mib": self.rss_mib,
            "burst": {
                "before_mib": self.burst.before_mib,
                "after_mib": self.burst.after_mib,
                "one_second_later_mib": self.burst.settled_mib,
                "idle_bound_mib": self.burst.bound_mib,
            },
            "fill_seconds": self.fill.total.as_secs_f64(),
        })
    }
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

/// Fills a new node to `sizes` and measures it.
async fn measure(
    echo: &[u8],
    bomb: &[u8],
    sizes: &Sizes,
    samples: usize,
) -> anyhow::Result<Figures> {
    let label = if sizes.tenants == 0 { "empty" } else { "full" };
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
    let served = super::Served::start(&platform, cella_gateway::GatewayConfig::default()).await?;
    let policy = crate::demo::demo_policy(&platform)?;
    let client = |token: &str| Client::with_policy(&served.url, Some(token.to_owned()), &policy);

    // The measurements' own tenants: one deploying for real, one owning a single function.
    let (_, bench_token) = platform.create_tenant(&Principal::Admin, "bench").await?;
    let key = cella_bundle::SigningKey::generate();
    let public = key.verifying_key().to_string();
    let bench = client(bench_token.secret())?.with_signing_key(key);
    bench.add_key(&public).await?;
    let model = bench.deploy("echo", echo.to_vec(), &[]).await?;
    bench
        .deploy(
            "bomb",
            bomb.to_vec(),
            &[BURST_MEMORY.to_owned(), "timeout=30s".to_owned()],
        )
        .await?;
    let (_, small_token) = platform.create_tenant(&Principal::Admin, "small").await?;
    let small = client(small_token.secret())?;
    let bench_tenant = TenantName::new("bench")?;
    platform
        .register_generated(
            &model,
            &FunctionName::new("one")?,
            &TenantName::new("small")?,
            "1.0.0".parse()?,
            false,
        )
        .await?;

    // Fill.
    let mut fill = Fill::default();
    let started = Instant::now();
    for i in 0..sizes.tenants {
        platform
            .create_tenant(&Principal::Admin, &format!("t{i}"))
            .await?;
    }
    fill.tenants = started.elapsed();
    let at = Instant::now();
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
        platform
            .register_generated(
                &model,
                &history,
                &bench_tenant,
                format!("1.0.{v}").parse()?,
                true,
            )
            .await?;
    }
    fill.versions = at.elapsed();
    fill.total = started.elapsed();
    let rss_mib = resident_bytes() as f64 / (1 << 20) as f64;

    // Writes: tenant creation over the API, and a deploy's registry write (a new version).
    let admin = client(admin_token.secret())?;
    let cpu = cpu_time();
    for i in 0..samples {
        admin.create_tenant(&format!("new-{i}")).await?;
    }
    let create_cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / samples as f64;
    // (A new function each: a deploy also reads its own function's history, at most
    // `max_versions` long, which is the tenant's cost, not the node's.)
    let cpu = cpu_time();
    for i in 0..samples {
        let name = FunctionName::new(format!("new-{i}"))?;
        platform
            .register_generated(&model, &name, &bench_tenant, "1.0.0".parse()?, false)
            .await?;
    }
    let deploy_cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / samples as f64;

    // Invokes: a random function each time; a pinned version of the long history.
    let mut invoke = Latencies::default();
    let mut pinned = Latencies::default();
    let mut list = Latencies::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..samples {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = &functions[(seed % functions.len() as u64) as usize];
        let at = Instant::now();
        bench.invoke(name.as_str(), b"x".to_vec(), &[]).await?;
        invoke.push(at.elapsed());
        let version = seed % sizes.versions as u64;
        let at = Instant::now();
        bench
            .invoke(&format!("history@1.0.{version}"), b"x".to_vec(), &[])
            .await?;
        pinned.push(at.elapsed());
        let at = Instant::now();
        let page = small
            .functions_page(&cella_client::Paging::default())
            .await?;
        list.push(at.elapsed());
        anyhow::ensure!(page.items.len() == 1, "the small tenant owns one function");
    }

    // A burst of memory-hungry invocations, and what the node holds a second later.
    let bound_mib = platform.config().sandbox.idle_guest_memory_bound() >> 20;
    let before = resident_bytes();
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let bench = bench.clone();
            tokio::spawn(async move { bench.invoke("bomb", Vec::new(), &[]).await })
        })
        .collect();
    for task in burst {
        // Each stops at its memory limit.
        let _ = task.await?;
    }
    let after = resident_bytes();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = resident_bytes();
    served.stop().await;
    drop(platform);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{label} node: invoke p50 {}, pinned p50 {}, list p50 {}",
        shown(invoke.p50()),
        shown(pinned.p50()),
        shown(list.p50())
    );
    Ok(Figures {
        create_cpu_us,
        deploy_cpu_us,
        invoke,
        pinned,
        list,
        rss_mib,
        burst: Burst {
            before_mib: before >> 20,
            after_mib: after >> 20,
            settled_mib: settled >> 20,
            bound_mib,
        },
        fill,
    })
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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
