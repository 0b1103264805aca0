//! The one path configuration takes: defaults, then `cella.toml`, then `CELLA_*` environment
//! variables, then flags (clap reads flag-or-env; the file fills what both leave out).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cella_core::{Limits, LimitsOverride};
use clap::Args;
use serde::{Deserialize, Serialize};

const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
const DEFAULT_FILE: &str = "cella.toml";

#[derive(Args, Clone, Debug)]
pub(crate) struct ConfigArgs {
    /// Configuration file (TOML). Default: ./cella.toml when it exists.
    #[arg(long, env = "CELLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long, env = "CELLA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the registry and blobs are kept.
    #[arg(long, env = "CELLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where bundles are kept, as an object_store URL (`file:///ABSOLUTE/PATH`); a cluster's
    /// gateways and workers share one. Overrides `[storage] blobs`.
    #[arg(long, env = "CELLA_BLOBS", value_name = "URL")]
    pub blobs: Option<String>,
}

/// `cella.toml`; every field optional.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    gateway: GatewayFile,
    #[serde(default)]
    sandbox: SandboxFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    storage: StorageFile,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    /// object_store URL for bundles, e.g. `file:///srv/cella/blobs`.
    blobs: Option<String>,
    /// Largest key-value state one function may keep, in bytes.
    max_state_bytes: Option<u64>,
    /// Versions kept per function.
    max_versions: Option<usize>,
    /// Bytes of code one tenant may keep.
    max_tenant_bytes: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    instances: Option<u32>,
    keep_resident_bytes: Option<usize>,
    code_cache_bytes: Option<usize>,
    max_compile_functions: Option<u64>,
    max_compile_code_bytes: Option<u64>,
    max_compile_function_bytes: Option<u64>,
    compile_queue: Option<usize>,
    compile_seconds: Option<u64>,
    cpu_turns: Option<usize>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    max_body_bytes: Option<usize>,
    max_upload_bytes: Option<usize>,
    tenant_concurrency: Option<usize>,
    /// e.g. `"10s"`: how long a client may take to send a request's headers.
    header_read_timeout: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    default: LimitsOverride,
    #[serde(default)]
    maximum: LimitsOverride,
}

/// The configuration in force, as `cella config show` prints it.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub gateway: GatewaySettings,
    pub sandbox: SandboxSettings,
    pub limits: LimitSettings,
    pub storage: StorageSettings,
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct StorageSettings {
    /// Where bundles are kept (sealed): an object_store URL; `<data_dir>/blobs` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs: Option<String>,
    /// Largest key-value state one function may keep (keys and values), in bytes.
    pub max_state_bytes: u64,
    /// Versions kept per function; older ones are forgotten and their code deleted.
    pub max_versions: usize,
    /// Bytes of code one tenant may keep, all versions of all its functions.
    pub max_tenant_bytes: u64,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct GatewaySettings {
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub tenant_concurrency: usize,
    #[serde(with = "humantime_serde_duration")]
    pub header_read_timeout: std::time::Duration,
}

/// Durations as humans write them (`"10s"`), in `cella config show`.
mod humantime_serde_duration {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct SandboxSettings {
    /// Instance slots: how many invocations the node runs at once.
    pub instances: u32,
    pub keep_resident_bytes: usize,
    /// Bytes of compiled code kept in memory (least recently used forgotten beyond it).
    pub code_cache_bytes: usize,
    /// What one deploy may bring to the compiler (checked before compiling).
    pub max_compile_functions: u64,
    pub max_compile_code_bytes: u64,
    pub max_compile_function_bytes: u64,
    /// Deploys that may wait for the node's compiler (one compiles at a time).
    pub compile_queue: usize,
    /// Compile time one tenant may use per 10 minutes.
    pub compile_seconds: u64,
    /// Guests that run WebAssembly at once, shared round-robin between tenants (0: one per
    /// core).
    pub cpu_turns: usize,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct LimitSettings {
    pub default: Limits,
    pub maximum: Limits,
}

/// `$XDG_DATA_HOME/cella` (usually `~/.local/share/cella`), or `./cella-data` without a home.
pub(crate) fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("cella"))
        .unwrap_or_else(|| PathBuf::from("cella-data"))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "config file {} is not valid; `cella config show` prints the accepted keys",
            path.display()
        )
    })
}

pub(crate) fn resolve(args: &ConfigArgs) -> anyhow::Result<ServerConfig> {
    let (file, source) = match &args.config {
        Some(path) => (read_file(path)?, Some(path.clone())),
        None if Path::new(DEFAULT_FILE).exists() => (
            read_file(Path::new(DEFAULT_FILE))?,
            Some(DEFAULT_FILE.into()),
        ),
        None => (FileConfig::default(), None),
    };
    let defaults = cella_gateway::GatewayConfig::default();
    let sandbox = cella_sandbox::SandboxConfig::default();
    let platform = cella_runtime::PlatformConfig::new(".");
    let unbounded = Limits {
        timeout_ms: u64::MAX,
        memory_bytes: u64::MAX,
        output_bytes: u64::MAX,
    };
    let maximum = Limits::resolve(&Limits::default_maximum(), &file.limits.maximum, &unbounded)
        .context("in [limits.maximum]")?;
    let default = Limits::resolve(&Limits::default(), &file.limits.default, &maximum)
        .context("in [limits.default]")?;
    Ok(ServerConfig {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir),
        gateway: GatewaySettings {
            max_body_bytes: file
                .gateway
                .max_body_bytes
                .unwrap_or(defaults.max_body_bytes),
            max_upload_bytes: file
                .gateway
                .max_upload_bytes
                .unwrap_or(defaults.max_upload_bytes),
            tenant_concurrency: file.gateway.tenant_concurrency.unwrap_or(64),
            header_read_timeout: match &file.gateway.header_read_timeout {
                Some(text) => humantime::parse_duration(text).with_context(|| {
                    format!(
                        "[gateway] header_read_timeout = {text:?} is not a duration like \"10s\""
                    )
                })?,
                None => defaults.header_read_timeout,
            },
        },
        sandbox: SandboxSettings {
            instances: file.sandbox.instances.unwrap_or(sandbox.instances),
            keep_resident_bytes: file
                .sandbox
                .keep_resident_bytes
                .unwrap_or(sandbox.keep_resident_bytes),
            code_cache_bytes: file
                .sandbox
                .code_cache_bytes
                .unwrap_or(platform.code_cache_bytes),
            max_compile_functions: file
                .sandbox
                .max_compile_functions
                .unwrap_or(sandbox.compile.max_functions),
            max_compile_code_bytes: file
                .sandbox
                .max_compile_code_bytes
                .unwrap_or(sandbox.compile.max_code_bytes),
            max_compile_function_bytes: file
                .sandbox
                .max_compile_function_bytes
                .unwrap_or(sandbox.compile.max_function_bytes),
            compile_queue: file.sandbox.compile_queue.unwrap_or(sandbox.compile_queue),
            compile_seconds: file
                .sandbox
                .compile_seconds
                .unwrap_or(platform.compile_seconds),
            cpu_turns: file.sandbox.cpu_turns.unwrap_or(sandbox.cpu_turns),
        },
        limits: LimitSettings { default, maximum },
        storage: StorageSettings {
            blobs: args.blobs.clone().or(file.storage.blobs),
            max_state_bytes: file.storage.max_state_bytes.unwrap_or(1 << 20),
            max_versions: file
                .storage
                .max_versions
                .unwrap_or(platform.max_versions)
                .max(1),
            max_tenant_bytes: file
                .storage
                .max_tenant_bytes
                .unwrap_or(platform.max_tenant_bytes),
        },
        file: source,
    })
}

pub(crate) fn show(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = resolve(args)?;
    match &config.file {
        Some(path) => println!(
            "# from {} (then CELLA_* variables, then flags)",
            path.display()
        ),
        None => println!("# no config file; built-in defaults, then CELLA_* variables, then flags"),
    }
    print!("{}", toml::to_string_pretty(&config)?);
    Ok(())
}
