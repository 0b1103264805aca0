//! Noisy neighbours: a quiet tenant's small invocation (echo) alone, then while one and two
//! other tenants keep every invocation they may run (64 each) busy in an endless loop. Run
//! twice in one go: with the fair CPU scheduler (turns per core, handed to tenants
//! round-robin) and unscheduled, as before it existed (every running guest gets an equal share
//! of the CPU, so a tenant's share grows with its concurrency). Through a real node on
//! loopback over RA-TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use cella_client::Client;
use cella_runtime::{Platform, PlatformConfig};
use cella_store::Principal;
use serde_json::{Value, json};

use super::stats::{Latencies, shown};
use super::{read_guest, scaled};

/// Invocations each noisy tenant keeps running.
const NOISE: usize = 64;
/// A guest's time slice: one epoch tick.
const SLICE: Duration = Duration::from_millis(10);

pub(super) async fn noisy(guests: &Path, scale: f64) -> anyhow::Result<Value> {
    let echo = read_guest(guests, "echo.wasm")?;
    let spin = read_guest(guests, "loop-forever.wasm")?;
    let samples = scaled(200, scale, 20);
    println!(
        "\nquiet tenant: echo, {samples} invocations one after another; each noisy tenant keeps \
         {NOISE} endless loops running"
    );
    println!(
        "{:<12} {:<14} {:>10} {:>10} {:>10} {:>10}  goal (p50 ≤ 2× alone + {} ms slice, p99 ≤ 3× alone + slice)",
        "scheduler",
        "neighbours",
        "p50",
        "p99",
        "p50 ×",
        "p99 ×",
        SLICE.as_millis()
    );
    let mut modes = Vec::new();
    for (mode, turns) in [("fair", 0usize), ("unscheduled", 1 << 20)] {
        let node = BenchNode::start(turns).await?;
        let quiet = node.tenant("quiet", &[("echo", &echo)]).await?;
        let noisy = [
            node.tenant("noisy-a", &[("spin-a", &spin)]).await?,
            node.tenant("noisy-b", &[("spin-b", &spin)]).await?,
        ];
        let mut rows = Vec::new();
        let mut alone = None;
        let mut noise = Vec::new();
        for neighbours in 0..=noisy.len() {
            if neighbours > 0 {
                let spin = ["spin-a", "spin-b"][neighbours - 1];
                noise.extend(keep_busy(&noisy[neighbours - 1], spin));
                // Let every loop start.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let latencies = measure(&quiet, samples).await?;
            let alone = alone.get_or_insert_with(|| latencies.clone()).clone();
            let (p50x, p99x) = (
                ratio(latencies.p50(), alone.p50()),
                ratio(latencies.p99(), alone.p99()),
            );
            let within = latencies.p50() <= alone.p50() * 2 + SLICE
                && latencies.p99() <= alone.p99() * 3 + SLICE;
            let label = match neighbours {
                0 => "none".to_owned(),
                n => format!("{n} saturating"),
            };
            println!(
                "{:<12} {:<14} {:>10} {:>10} {:>9.1}× {:>9.1}×  {}",
                mode,
                label,
                shown(latencies.p50()),
                shown(latencies.p99()),
                p50x,
                p99x,
                if neighbours == 0 {
                    ""
                } else if within {
                    "✔ within"
                } else {
                    "✗ outside"
                }
            );
            rows.push(json!({
                "noisy_tenants": neighbours,
                "quiet": latencies.to_json(),
                "p50_vs_alone": round2(p50x),
                "p99_vs_alone": round2(p99x),
                "within_goal": neighbours == 0 || within,
            }));
        }
        for task in noise {
            task.abort();
        }
        node.stop().await;
        modes.push(json!({ "scheduler": mode, "rows": rows }));
    }
    Ok(json!({
        "noise_per_tenant": NOISE,
        "slice_ms": SLICE.as_millis() as u64,
        "goal": "p50 <= 2 x alone + one slice, p99 <= 3 x alone + one slice",
        "modes": modes,
    }))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The quiet tenant's latencies over `samples` sequential echoes.
async fn measure(quiet: &Client, samples: usize) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    for _ in 0..samples {
        let started = Instant::now();
        let out = quiet.invoke("echo", b"calm".to_vec(), &[]).await?;
        latencies.push(started.elapsed());
        if &out.output[..] != b"calm" {
            bail!("echo changed its input");
        }
    }
    Ok(latencies)
}

/// Keeps [`NOISE`] endless loops of `tenant` running: each is stopped at its time limit and
/// started again.
fn keep_busy(tenant: &Client, function: &'static str) -> Vec<tokio::task::JoinHandle<()>> {
    (0..NOISE)
        .map(|_| {
            let tenant = tenant.clone();
            tokio::spawn(async move {
                loop {
                    let _ = tenant.invoke(function, Vec::new(), &[]).await;
                }
            })
        })
        .collect()
}

/// A node on loopback for the bench, with room for every tenant's invocations.
struct BenchNode {
    platform: Arc<Platform>,
    url: String,
    policy: cella_tee::Policy,
    dir: std::path::PathBuf,
    served: super::Served,
}

impl BenchNode {
    async fn start(cpu_turns: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "cella-bench-noisy-{}-{cpu_turns}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut config = PlatformConfig::new(&dir);
        config.tenant_concurrency = NOISE;
        config.sandbox.instances = (NOISE * 3) as u32;
        config.sandbox.cpu_turns = cpu_turns;
        let platform = Arc::new(Platform::open(config)?);
        platform.ensure_admin_token().await?;
        let served =
            super::Served::start(&platform, cella_gateway::GatewayConfig::default()).await?;
        let policy = crate::demo::demo_policy(&platform)?;
        Ok(BenchNode {
            platform,
            url: served.url.clone(),
            policy,
            dir,
            served,
        })
    }

    /// A tenant with a signing key and `functions` deployed (endless loops stop at 2 s).
    async fn tenant(&self, name: &str, functions: &[(&str, &[u8])]) -> anyhow::Result<Client> {
        let (_, token) = self.platform.create_tenant(&Principal::Admin, name).await?;
        let key = cella_bundle::SigningKey::generate();
        let public = key.verifying_key().to_string();
        let client = Client::with_policy(&self.url, Some(token.secret().to_owned()), &self.policy)?
            .with_signing_key(key);
        client.add_key(&public).await?;
        for (function, wasm) in functions {
            client
                .deploy(function, wasm.to_vec(), &["timeout=2s".to_owned()])
                .await?;
        }
        Ok(client)
    }

    async fn stop(self) {
        self.served.stop().await;
        drop(self.platform);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
