//! `cella gateway` and `cella worker`: the two roles of a cluster on NATS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cella_runtime::{Platform, RuntimeError};
use cella_store::{RegistryError, SharedError, Sharing};
use cella_tee::{Measurement, Policy, TeeType};
use clap::Args;

use crate::config::{self, ConfigArgs};
use crate::up::{self, NodeArgs, UpArgs};

#[derive(Args)]
pub(crate) struct NatsArgs {
    /// URL of the NATS server the cluster's nodes share.
    #[arg(long, env = "CELLA_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
}

#[derive(Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    up: UpArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// Policy a worker's (or another gateway's) evidence must pass to join (TOML, as for
    /// `cella verify`). Default: this gateway's own build on its own kind of TEE.
    #[arg(long, env = "CELLA_WORKER_POLICY", value_name = "FILE")]
    worker_policy: Option<PathBuf>,
    /// A worker measurement to admit (96 hex digits; repeatable); replaces the default of
    /// this gateway's own.
    #[arg(long = "worker-measurement", value_name = "HEX")]
    worker_measurements: Vec<Measurement>,
    /// A gateway measurement to admit (repeatable): such a gateway is handed the registry's
    /// data key. Default: this gateway's own build only, whatever workers are admitted.
    #[arg(long = "admit-gateway-measurement", value_name = "HEX")]
    admit_gateway_measurements: Vec<Measurement>,
    /// Policy the running gateway's evidence must pass before this one, starting with a fresh
    /// data directory, takes the cluster's registry from it (TOML). Default: this gateway's
    /// own build on its own kind of TEE.
    #[arg(long, env = "CELLA_GATEWAY_POLICY", value_name = "FILE")]
    gateway_policy: Option<PathBuf>,
    /// A gateway measurement to trust when joining (repeatable); replaces the default of this
    /// gateway's own. With `--admit-gateway-measurement` on the running gateways, this hands
    /// the registry to a new build by attestation.
    #[arg(long = "gateway-measurement", value_name = "HEX")]
    gateway_measurements: Vec<Measurement>,
}

#[derive(Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// Policy the gateway's evidence must pass before this worker trusts it (TOML). Default:
    /// this worker's own build on its own kind of TEE.
    #[arg(long, env = "CELLA_GATEWAY_POLICY", value_name = "FILE")]
    gateway_policy: Option<PathBuf>,
    /// A gateway measurement to trust (repeatable); replaces the default of this worker's own.
    #[arg(long = "gateway-measurement", value_name = "HEX")]
    gateway_measurements: Vec<Measurement>,
}

/// The policy a peer must pass: the file if given, else "the same build as this node, on the
/// same kind of TEE" (for the simulated TEE: under this node's simulated platform key); the
/// measurements given replace the policy's.
pub(crate) fn peer_policy(
    platform: &Platform,
    file: Option<&PathBuf>,
    measurements: &[Measurement],
) -> anyhow::Result<Policy> {
    let mut policy = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read policy {}", path.display()))?;
            toml::from_str::<Policy>(&text)
                .with_context(|| format!("policy {} is not valid", path.display()))?
        }
        None => {
            let (tee, measurement) = platform.tee();
            let mut policy = Policy {
                allowed_tee: vec![tee],
                measurements: vec![measurement],
                ..Policy::default()
            };
            if tee == TeeType::Sim {
                policy.allow_simulated = true;
                if let Some(path) = platform.sim_anchor_file() {
                    let anchor = std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read the simulated platform key {}", path.display())
                    })?;
                    policy.sim_anchors.push(anchor.trim().to_owned());
                }
            }
            policy
        }
    };
    if !measurements.is_empty() {
        policy.measurements = measurements.to_vec();
    }
    Ok(policy)
}

pub(crate) async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    up::init_tracing();
    let config = config::resolve(&args.up.config)?;
    let platform = up::open(&config, &args.up.node, args.up.demo)?;
    let client = cella_cluster::connect(&args.nats.nats, "cella-gateway").await?;
    let peers = Peers {
        policy: args.gateway_policy.as_ref(),
        measurements: &args.gateway_measurements,
    };
    let (platform, log) = share_registry(platform, &client, &config, &args.up.node, peers).await?;
    let policies = cella_cluster::Policies {
        workers: peer_policy(
            &platform,
            args.worker_policy.as_ref(),
            &args.worker_measurements,
        )?,
        gateways: peer_policy(&platform, None, &args.admit_gateway_measurements)?,
    };
    let gateway = cella_cluster::Gateway::start(platform.clone(), client, policies, log)
        .await
        .context("cannot start the gateway on the bus")?;
    println!(
        "gateway {} on {} (cluster key epoch {}): invocations run on workers",
        gateway.node_id(),
        args.nats.nats,
        gateway.epoch()
    );
    up::serve(platform, config, &args.up).await
}

/// Makes `platform`'s registry the cluster's: founds the shared registry if the cluster has
/// none, or catches up with it; a gateway with a fresh data directory first joins a running
/// gateway (attested both ways) for the registry's data key and opens again with it.
/// What a joining gateway asks of the gateway it takes the registry from.
struct Peers<'a> {
    policy: Option<&'a PathBuf>,
    measurements: &'a [Measurement],
}

async fn share_registry(
    platform: Arc<Platform>,
    client: &cella_cluster::NatsClient,
    config: &config::ServerConfig,
    node: &NodeArgs,
    peers: Peers<'_>,
) -> anyhow::Result<(Arc<Platform>, Arc<cella_cluster::KvLog>)> {
    let log = cella_cluster::KvLog::open(client)
        .await
        .context("cannot open the cluster's shared registry in JetStream")?;
    let not_shared = "cannot share this gateway's registry with the cluster";
    let (platform, sharing) = match platform.share_registry(log.clone()).await {
        Ok(sharing) => (platform, sharing),
        Err(RuntimeError::Registry(RegistryError::Shared(SharedError::OtherCluster)))
            if platform.registry_version() == 0 =>
        {
            println!("joining the cluster's registry through a running gateway");
            let policy = peer_policy(&platform, peers.policy, peers.measurements)?;
            let key = cella_cluster::join::join_registry(client, &platform, &policy)
                .await
                .context("this gateway could not join the cluster's registry")?;
            // Close the registry made at this first start (nothing was ever written to
            // it) before opening it again under the cluster's key.
            drop(platform);
            let platform = up::open_with_key(config, node, false, Some(key))?;
            let sharing = platform
                .share_registry(log.clone())
                .await
                .context(not_shared)?;
            (platform, sharing)
        }
        Err(e) => return Err(e).context(not_shared),
    };
    match sharing {
        Sharing::Founded { version } => {
            println!("founded the cluster's shared registry (version {version})")
        }
        Sharing::Joined { from, to } => {
            println!("shares the cluster's registry (caught up from version {from} to {to})")
        }
    }
    Ok((platform, log))
}

/// How long a stopping worker lets running invocations finish.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    up::init_tracing();
    let config = config::resolve(&args.config)?;
    let platform: Arc<Platform> = up::open(&config, &args.node, false)?;
    let policy = peer_policy(
        &platform,
        args.gateway_policy.as_ref(),
        &args.gateway_measurements,
    )?;
    let client = cella_cluster::connect(&args.nats.nats, "cella-worker").await?;
    println!("worker joining the cluster on {}", args.nats.nats);
    let worker = cella_cluster::Worker::join(platform, client, &policy)
        .await
        .context("this worker could not join the cluster")?;
    println!(
        "worker {} joined (cluster key epoch {}); taking invocations",
        worker.node_id(),
        worker.epoch()
    );
    tokio::select! {
        ran = worker.run() => ran.map_err(|e| anyhow::anyhow!("the bus connection failed: {e}"))?,
        () = up::shutdown_signal() => {
            // No new work comes now; let what runs finish.
            println!("worker stopping: finishing the invocations it runs (at most {DRAIN_GRACE:?})");
            if !worker.drain(DRAIN_GRACE).await {
                println!("worker stopping with invocations unfinished (asynchronous ones run again elsewhere)");
            }
        }
    }
    println!("worker stopped");
    Ok(())
}
