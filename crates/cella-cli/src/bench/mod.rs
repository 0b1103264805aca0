//! `cella bench startup|autoscale|chain`: the figures of PIE's evaluation, measured side by
//! side in one run on this machine; `cella bench monitor`: what the per-call monitor costs;
//! `cella bench cluster`: a cluster's throughput and asynchronous latency; `cella bench noisy`:
//! a quiet tenant's latency beside tenants that saturate their limits; `cella bench scale`: an
//! empty node against one filled with generated records. Absolute times on a shared machine
//! mean little; the ratios between modes measured together are the result. Each run prints a
//! table and writes JSON.

mod chain;
mod cluster;
mod monitor;
mod noisy;
mod scale;
mod startup;
mod stats;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Suite {
    /// Latency per request: cold (verify + compile + instantiate + run), warm (pre-created
    /// instance), plug-in cold (fresh instance from the pre-initialised image).
    Startup,
    /// Bursts of 1, 10, 100 and 1000 concurrent first requests, per mode.
    Autoscale,
    /// A 3-step chain inside the node against the same steps called one by one by a client.
    Chain,
    /// Nanoseconds per host call with and without the monitor counting.
    Monitor,
    /// A cluster on this machine (nats-server, a gateway, workers): throughput with 1 and 2
    /// workers against one node, and asynchronous end-to-end latency.
    Cluster,
    /// A quiet tenant's latency alone and while one and two other tenants saturate their
    /// limits with busy loops, with the fair CPU scheduler and without it.
    Noisy,
    /// An empty node against one filled with generated records (100,000 tenants, 10,000
    /// functions, 1,000 versions of one at scale 1): write CPU, invoke and list latency,
    /// resident memory, and memory after a burst of large guests.
    Scale,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Startup => "startup",
            Suite::Autoscale => "autoscale",
            Suite::Chain => "chain",
            Suite::Monitor => "monitor",
            Suite::Cluster => "cluster",
            Suite::Noisy => "noisy",
            Suite::Scale => "scale",
        }
    }
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum)]
    suite: Suite,
    /// Where the example functions are (`./scripts/build-guests` builds them).
    #[arg(long, env = "CELLA_GUESTS_DIR", default_value = "guests/dist")]
    guests: PathBuf,
    /// Where to write the results as JSON (default: `cella-bench-SUITE.json`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Scale the number of requests measured (1 = the default counts; lower is quicker and
    /// noisier).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let machine = machine();
    println!(
        "cella bench {} on {} ({} CPUs); ratios are measured side by side in this run",
        args.suite.name(),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"]
    );
    let results = match args.suite {
        Suite::Startup => startup::startup(&args.guests, args.scale).await?,
        Suite::Autoscale => startup::autoscale(&args.guests, args.scale).await?,
        Suite::Chain => chain::chain(&args.guests, args.scale).await?,
        Suite::Monitor => monitor::monitor(&args.guests, args.scale).await?,
        Suite::Cluster => cluster::cluster(&args.guests, args.scale).await?,
        Suite::Noisy => noisy::noisy(&args.guests, args.scale).await?,
        Suite::Scale => scale::scale(&args.guests, args.scale).await?,
    };
    let report = serde_json::json!({
        "suite": args.suite.name(),
        "cella": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "results": results,
    });
    let path = args
        .json
        .unwrap_or_else(|| PathBuf::from(format!("cella-bench-{}.json", args.suite.name())));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "cpu": cpu, "cpus": cpus, "os": std::env::consts::OS })
}

fn read_guest(guests: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = guests.join(file);
    std::fs::read(&path).with_context(|| {
        format!(
            "{} not found; build the guests with ./scripts/build-guests or pass --guests",
            path.display()
        )
    })
}

/// `n` scaled, at least `min`.
fn scaled(n: usize, scale: f64, min: usize) -> usize {
    ((n as f64 * scale).round() as usize).max(min)
}

/// A node's API served over RA-TLS on a free loopback port, for a bench's clients.
pub(super) struct Served {
    pub(super) url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub(super) async fn start(
        platform: &std::sync::Arc<cella_runtime::Platform>,
        gateway: cella_gateway::GatewayConfig,
    ) -> anyhow::Result<Self> {
        let router = cella_gateway::router(platform.clone(), gateway.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(cella_gateway::serve_tls(
            listener,
            router,
            platform.tls_config()?,
            gateway.header_read_timeout,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Served { url, stop, server })
    }

    /// Stops serving: gracefully, or after 5 s even if clients keep connections open.
    pub(super) async fn stop(mut self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}
