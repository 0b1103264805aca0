//! `cella up`: one process with everything a single node needs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cella_runtime::{Platform, PlatformConfig, RuntimeError, TeeMode};
use cella_store::{RegistryError, Token};
use clap::Args;
use tokio::net::TcpListener;

use crate::config::{self, ConfigArgs};

#[derive(Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Deploy the example functions under tenant `demo`, invoke them once, and print commands
    /// to try.
    #[arg(long)]
    pub(crate) demo: bool,
    /// Serve plain HTTP instead of RA-TLS, for local debugging only: clients then cannot bind
    /// the node's evidence to their connection.
    #[arg(long)]
    insecure_http: bool,
    /// Where the built example functions are (for --demo).
    #[arg(long, env = "CELLA_GUESTS_DIR", default_value = "guests/dist")]
    guests: PathBuf,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

/// What every node process (`up`, `gateway`, `worker`) is started with.
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// `auto`: the hardware TEE where one is found (an error if its attester fails), else the
    /// simulated one; `sim`: the simulated TEE even on hardware.
    #[arg(long, env = "CELLA_TEE", value_enum, default_value_t = Tee::Auto)]
    tee: Tee,
    /// Where the simulated TEE keeps its platform key (default: the data directory). Nodes
    /// given the same directory stand for one simulated machine and trust each other's
    /// evidence.
    #[arg(long, env = "CELLA_SIM_PLATFORM", value_name = "DIR")]
    sim_platform: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Tee {
    Auto,
    Sim,
}

/// The admin token file in a data directory, readable only by its owner.
pub(crate) fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

fn save_admin_token(data_dir: &Path, token: &Token) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = admin_token_path(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    writeln!(file, "{}", token.secret())?;
    Ok(path)
}

/// Renames the registry (and its version file) so a fresh one can be made; returns the new name
/// of the database.
fn set_registry_aside(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut database = None;
    for name in ["registry.redb", "registry.version"] {
        let from = data_dir.join(name);
        if !from.exists() {
            continue;
        }
        let to = data_dir.join(format!("{name}.set-aside-{stamp}"));
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
        database.get_or_insert(to);
    }
    database.context("no registry to set aside")
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| crate::log_writer::LossyStderr)
        // By default a failed write is reported with `eprintln!`, which panics when stderr
        // itself cannot be written (a full disk under a redirected log): in a request
        // handler that dropped the client's connection after its change had committed.
        .log_internal_errors(false)
        .try_init();
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = config::resolve(&args.config)?;
    let platform = open(&config, &args.node, args.demo)?;
    serve(platform, config, &args).await
}

/// Opens the node's platform as configured (a demo may set a registry of another build aside).
pub(crate) fn open(
    config: &config::ServerConfig,
    node: &NodeArgs,
    demo: bool,
) -> anyhow::Result<Arc<Platform>> {
    open_with_key(config, node, demo, None)
}

/// [`open`], for a gateway admitted to a cluster: its registry takes the cluster's data key.
pub(crate) fn open_with_key(
    config: &config::ServerConfig,
    node: &NodeArgs,
    demo: bool,
    registry_key: Option<cella_store::RegistryKey>,
) -> anyhow::Result<Arc<Platform>> {
    let mut platform_config = PlatformConfig::new(&config.data_dir);
    platform_config.registry_key = registry_key;
    platform_config.default_limits = config.limits.default;
    platform_config.max_limits = config.limits.maximum;
    platform_config.tenant_concurrency = config.gateway.tenant_concurrency;
    platform_config.max_state_bytes = config.storage.max_state_bytes;
    platform_config.max_versions = config.storage.max_versions;
    platform_config.max_tenant_bytes = config.storage.max_tenant_bytes;
    platform_config.blob_store = config.storage.blobs.clone();
    platform_config.sandbox.instances = config.sandbox.instances;
    platform_config.sandbox.keep_resident_bytes = config.sandbox.keep_resident_bytes;
    platform_config.code_cache_bytes = config.sandbox.code_cache_bytes;
    platform_config.sandbox.compile = cella_sandbox::CompileLimits {
        max_functions: config.sandbox.max_compile_functions,
        max_code_bytes: config.sandbox.max_compile_code_bytes,
        max_function_bytes: config.sandbox.max_compile_function_bytes,
    };
    platform_config.sandbox.compile_queue = config.sandbox.compile_queue;
    platform_config.compile_seconds = config.sandbox.compile_seconds;
    platform_config.sandbox.cpu_turns = config.sandbox.cpu_turns;
    platform_config.sim_platform_dir = node.sim_platform.clone();
    platform_config.tee = match node.tee {
        Tee::Auto => TeeMode::Auto,
        Tee::Sim => TeeMode::Simulated,
    };
    let platform = match Platform::open(platform_config.clone()) {
        Err(RuntimeError::Registry(
            sealed @ (RegistryError::SealedForAnotherBuild { .. } | RegistryError::Unsealed { .. }),
        )) if demo => {
            // The demo re-creates everything it needs, so it may start afresh; a real node
            // never does this on its own.
            let aside = set_registry_aside(&config.data_dir)?;
            println!("demo: {sealed}");
            println!("demo: set that registry aside as {}", aside.display());
            Platform::open(platform_config)
        }
        opened => opened,
    };
    let platform = platform
        .with_context(|| format!("cannot open the platform in {}", config.data_dir.display()))?;
    print_tee(&platform);
    let sandbox = &platform.config().sandbox;
    println!(
        "guest memory: at most {} MiB kept between invocations, {} MiB with all {} instances \
         at the {} MiB maximum (see README, Performance)",
        sandbox.idle_guest_memory_bound() >> 20,
        sandbox.busy_guest_memory_bound() >> 20,
        sandbox.instances,
        sandbox.max_memory_bytes >> 20,
    );
    println!(
        "caches: compiled code at most {} MiB, registry at most {} MiB",
        platform.config().code_cache_bytes >> 20,
        cella_store::REGISTRY_CACHE_BYTES >> 20
    );
    Ok(Arc::new(platform))
}

/// Says which TEE vouches for this node, loudly when it is the simulated one.
fn print_tee(platform: &Platform) {
    let (tee, measurement) = platform.tee();
    if tee == cella_tee::TeeType::Sim {
        println!(
            "TEE: SIMULATED — {}; evidence is signed by the simulated platform key (trust \
             anchor: {}) and proves nothing about hardware",
            match platform.unused_hardware() {
                Some(found) => format!("{found} found but left unused (--tee sim)"),
                None => "no hardware TEE found".to_owned(),
            },
            platform
                .sim_anchor_file()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    } else {
        println!("TEE: {tee}");
    }
    println!("measurement: {measurement}");
}

/// Serves the HTTP API of `platform` until a shutdown signal.
pub(crate) async fn serve(
    platform: Arc<Platform>,
    config: config::ServerConfig,
    args: &UpArgs,
) -> anyhow::Result<()> {
    if let Some(token) = platform.ensure_admin_token().await? {
        let path = save_admin_token(&config.data_dir, &token)?;
        println!(
            "admin token (shown once; saved for the CLI in {}):",
            path.display()
        );
        println!("  {}", token.secret());
    }

    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another cella running? choose another address with --listen",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let router = cella_gateway::router(
        platform.clone(),
        cella_gateway::GatewayConfig {
            max_body_bytes: config.gateway.max_body_bytes,
            max_upload_bytes: config.gateway.max_upload_bytes,
            header_read_timeout: config.gateway.header_read_timeout,
        },
    );
    let header_read_timeout = config.gateway.header_read_timeout;
    let scheme = if args.insecure_http { "http" } else { "https" };
    println!(
        "cella {} listening on {scheme}://{addr} (data: {})",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display()
    );
    let server = if args.insecure_http {
        println!(
            "WARNING: plain HTTP (--insecure-http): tokens and data cross the network in clear \
             and evidence is not bound to connections"
        );
        tokio::spawn(cella_gateway::serve(
            listener,
            router,
            header_read_timeout,
            shutdown_signal(),
        ))
    } else {
        let tls = platform.tls_config()?;
        tokio::spawn(cella_gateway::serve_tls(
            listener,
            router,
            tls,
            header_read_timeout,
            shutdown_signal(),
        ))
    };
    if args.demo {
        crate::demo::run(&platform, &args.guests, &format!("{scheme}://{addr}")).await?;
    }
    server
        .await
        .context("the server task failed")?
        .context("the server stopped with an error")?;
    println!("cella stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
