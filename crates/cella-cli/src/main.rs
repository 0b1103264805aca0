//! `cella`: run a node (`cella up`) and talk to one (everything else).
#![forbid(unsafe_code)]

mod bench;
mod bundle_cmds;
mod client_cmds;
mod cluster_cmds;
mod config;
mod demo;
mod log_writer;
mod tee_cmds;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cella",
    version,
    about = "Confidential serverless functions: WebAssembly in a sandbox, inside a TEE",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Remote {
    /// The policy for checking things offline (receipts): the same flags and files as for a
    /// node, without a connection.
    pub(crate) fn policy_for_offline_use(
        &self,
    ) -> anyhow::Result<(cella_tee::Policy, Option<PathBuf>)> {
        self.policy.resolve(self)
    }
}

/// Which page of a list to print; without either flag, every page.
#[derive(Args, Clone, Default)]
pub(crate) struct PageArgs {
    /// Print one page of at most N items (1 to 1000) and the cursor of the next.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print the page after this cursor (printed with the page before).
    #[arg(long)]
    cursor: Option<String>,
}

/// How to reach a cella node (for every command except `up`).
#[derive(Args, Clone)]
pub(crate) struct Remote {
    /// URL of the cella node.
    #[arg(
        long,
        env = "CELLA_URL",
        default_value = "https://127.0.0.1:7070",
        global = true
    )]
    url: String,
    /// Bearer token. Defaults to the admin token a local `cella up` wrote to its data directory.
    #[arg(long, env = "CELLA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Data directory of a local node, where its admin token file is found.
    #[arg(long, env = "CELLA_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    /// What the node must prove before anything is sent to it.
    #[command(flatten)]
    policy: tee_cmds::PolicyArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node platform: HTTP API, sandbox, embedded stores.
    Up(up::UpArgs),
    /// Run a cluster's gateway: the HTTP API and the sealed registry of `up`, with every
    /// invocation run by an attested worker over NATS.
    Gateway(cluster_cmds::GatewayArgs),
    /// Run a cluster's worker: attest to a gateway over NATS, then run the invocations it
    /// hands out.
    Worker(cluster_cmds::WorkerArgs),
    /// Measure start-up, autoscaling and chaining against PIE's modes (a table and JSON).
    Bench(bench::BenchArgs),
    /// Show the configuration `cella up` would run with, and where each value came from.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Verify a node before trusting it: ✔/✗ per check against a policy; exits non-zero on ✗.
    Verify {
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a node's attestation evidence and claims (unverified).
    Attest {
        /// Hex nonce to bind into the evidence.
        #[arg(long)]
        nonce: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Which trusted execution environments this machine offers, and what `cella up` will use.
    Doctor {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also check the NATS server a cluster would use (JetStream, message size).
        #[arg(long, env = "CELLA_NATS", value_name = "URL")]
        nats: Option<String>,
    },
    /// Manage tenants (needs the admin token).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deploy a signed bundle (or a .wasm or .js file, or a plug-in's configuration with
    /// --plugin, bundled as the next version and signed with your key) as function NAME.
    Deploy {
        name: String,
        /// A bundle from `cella bundle build`/`sign`, a .wasm file, a JavaScript module
        /// (.js/.mjs) whose default export is the handler, or with --plugin the configuration
        /// the plug-in's initialiser reads.
        file: PathBuf,
        /// For a .wasm or .js file: a limit (`timeout=2s`, `memory=64MiB`, `output=1MiB`;
        /// repeatable).
        #[arg(long = "limit", value_name = "KEY=VALUE")]
        limits: Vec<String>,
        /// For a .wasm or .js file: a permission its manifest grants (`clocks`, `random`,
        /// `kv`, `env=NAME`, `http=HOST`, `scratch=MIB`; repeatable). Nothing is granted
        /// otherwise.
        #[arg(long = "allow", value_name = "PERMISSION")]
        allow: Vec<cella_core::Permission>,
        /// For a .wasm or .js file: the signing key (default: `default.key` from `cella keygen`).
        #[arg(long, env = "CELLA_KEY")]
        key: Option<PathBuf>,
        /// The node's plug-in the function is made from (for a .js file: the JavaScript
        /// engine, `quickjs` unless given).
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check a receipt from `cella invoke --receipt` offline: its signature, the node's
    /// evidence under your policy, and (if given) the input and output; exits non-zero on ✗.
    VerifyReceipt {
        file: PathBuf,
        /// The input that was sent: `@FILE`, `-` for stdin, or literal text.
        #[arg(long)]
        input: Option<String>,
        /// The output that came back.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a signing key pair for bundles (the secret file is readable by you only).
    Keygen {
        /// The key's file name (without extension).
        #[arg(long, default_value = "default")]
        name: String,
        /// Where to write it (default: your config directory's cella/keys).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build, sign and inspect function bundles (offline).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Register (admin token) and list plug-ins: pre-initialised WebAssembly images that
    /// functions share, such as the JavaScript engine.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Register, list and revoke the public keys your bundles are signed with.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Invoke a function (`NAME` or `NAME@VERSION`): the data is its input, its output is
    /// printed (or written with -o).
    Invoke {
        name: String,
        /// Run nothing unless the function's bundle hash is this (`sha256:…`).
        #[arg(long, value_name = "HASH")]
        expect_hash: Option<String>,
        /// Save the node's signed receipt, with its attestation report, to this file.
        #[arg(long, value_name = "FILE")]
        receipt: Option<PathBuf>,
        /// Input: `@FILE`, `-` for stdin, or literal text. Empty when left out.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// An argument passed to the function (repeatable).
        #[arg(long = "arg", short = 'a', value_name = "ARG")]
        args: Vec<String>,
        /// Write the output to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Run it asynchronously: print the invocation's id once it is stored (needs a
        /// cluster); follow it with `cella invocation ID`.
        #[arg(long = "async")]
        asynchronous: bool,
        /// With --async: wait for it to finish and print its output.
        #[arg(long, requires = "asynchronous")]
        wait: bool,
        /// With --async: your name for this request; sending it again returns the same
        /// invocation instead of running another.
        #[arg(long, value_name = "KEY", requires = "asynchronous")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Manage the cluster (admin token).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Event triggers: invoke a function for every event on a NATS subject.
    Trigger {
        #[command(subcommand)]
        command: TriggerCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show an asynchronous invocation of yours: its status, and its output once it succeeded.
    Invocation {
        id: String,
        /// Wait until it finished.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run functions as a chain inside the node (`a | b | c`): each step's output is the
    /// next one's input and never leaves the node; prints the last output.
    Chain {
        /// The steps in order: `NAME` or `NAME@VERSION`.
        #[arg(required = true)]
        steps: Vec<String>,
        /// Save the node's signed receipt (naming every step), with its attestation report.
        #[arg(long, value_name = "FILE")]
        receipt: Option<PathBuf>,
        /// Input of the first step: `@FILE`, `-` for stdin, or literal text.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// Write the output to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List your functions, or show one.
    Functions {
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the kept versions of a function you own.
    Versions {
        name: String,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a function you own.
    Delete {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Let another tenant (or, with --public, every tenant) invoke your function.
    Grant {
        name: String,
        #[arg(required_unless_present = "public")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        public: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Take back what `grant` gave.
    Revoke {
        name: String,
        #[arg(required_unless_present = "public")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        public: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Recent invocations of your function: what they wrote to stderr and what the host
    /// refused them.
    Logs {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Your function's invocations, host calls and refused host calls since the node started.
    Stats {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set the values of your function's environment variables (sealed on the node; never
    /// shown again).
    Env {
        #[command(subcommand)]
        command: EnvCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Set variables (each must be named by `env = [...]` in the function's manifest).
    Set {
        function: String,
        #[arg(value_name = "NAME=VALUE", required = true)]
        values: Vec<String>,
    },
    /// Remove variables' values.
    Unset {
        function: String,
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Which variables are set and granted (values are never shown).
    List { function: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration.
    Show(config::ConfigArgs),
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Make a bundle from a directory with `cella.toml`, or from one .wasm file.
    #[command(disable_version_flag = true)]
    Build {
        /// A directory holding `cella.toml` and the payload it names, or a .wasm file.
        source: PathBuf,
        /// For a .wasm file: the function's name.
        #[arg(long)]
        name: Option<String>,
        /// For a .wasm file: the version (semver, e.g. 1.2.0).
        #[arg(long)]
        version: Option<String>,
        /// For a .wasm file: a limit (`timeout=2s`, …; repeatable).
        #[arg(long = "limit", value_name = "KEY=VALUE")]
        limits: Vec<String>,
        /// Where to write it (default: NAME-VERSION.cella).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Sign it right away (with --key or your default key).
        #[arg(long)]
        sign: bool,
        #[arg(long, env = "CELLA_KEY")]
        key: Option<PathBuf>,
    },
    /// Sign a bundle (replacing any signature).
    Sign {
        bundle: PathBuf,
        #[arg(long, env = "CELLA_KEY")]
        key: Option<PathBuf>,
        /// Write the signed bundle here instead of in place.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Show a bundle's manifest and hash, and check its signature (✔/✗).
    Inspect {
        bundle: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Register a public key: a `.pub` file from `cella keygen`, or `ed25519:<hex>`.
    Add { key: String },
    /// List your keys, revoked ones included.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a key: bundles signed with it no longer deploy.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Register a module exporting `wizer-initialize` as plug-in NAME: the node runs the
    /// initialiser once and keeps the measured image.
    Add { name: String, file: PathBuf },
    /// List plug-ins with their hashes (what manifests name) and image measurements.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Retire the cluster key: the gateway derives the next one and every worker must pass
    /// the worker policy again to get it.
    Rotate,
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// Invoke FUNCTION asynchronously for every event published on a subject (needs a
    /// cluster). Prints the trigger and, when results are sealed, their key (shown once).
    Add {
        function: String,
        /// The NATS subject events arrive on, under your tenant's name (`acme.orders.>`; `*`
        /// matches one token, `>` the rest).
        #[arg(long)]
        subject: String,
        /// Publish each result on this subject.
        #[arg(long, value_name = "SUBJECT")]
        reply_subject: Option<String>,
        /// Publish results in clear: the function's output is public. Otherwise they are
        /// sealed, and only the result key opens them.
        #[arg(long)]
        public_output: bool,
    },
    /// List FUNCTION's triggers.
    List {
        function: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Remove one of FUNCTION's triggers.
    Remove { function: String, id: String },
    /// Open a result published on a reply subject: prints the function's output.
    Open {
        /// The result as published (JSON): a file, or `-` for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// The trigger's result key, as hex or @FILE (for sealed results).
        #[arg(long, env = "CELLA_RESULT_KEY", hide_env_values = true)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its token (shown once).
    Create { name: String },
    /// List tenants.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Issue a new token for a tenant; the old one stops working.
    RotateToken { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use client_cmds as c;
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Gateway(args) => cluster_cmds::gateway(args).await,
        Command::Worker(args) => cluster_cmds::worker(args).await,
        Command::Config {
            command: ConfigCommand::Show(args),
        } => config::show(&args),
        Command::Verify { remote } => tee_cmds::verify(&remote).await,
        Command::Attest { nonce, remote } => tee_cmds::attest(&remote, nonce.as_deref()).await,
        Command::Doctor { format, nats } => tee_cmds::doctor(format, nats.as_deref()).await,
        Command::Cluster {
            command: ClusterCommand::Rotate,
            remote,
        } => c::cluster_rotate(&remote).await,
        Command::Trigger { command, remote } => match command {
            TriggerCommand::Add {
                function,
                subject,
                reply_subject,
                public_output,
            } => {
                c::trigger_add(
                    &remote,
                    &function,
                    &subject,
                    reply_subject.as_deref(),
                    public_output,
                )
                .await
            }
            TriggerCommand::List { function, page } => {
                c::trigger_list(&remote, &function, &page).await
            }
            TriggerCommand::Remove { function, id } => {
                c::trigger_remove(&remote, &function, &id).await
            }
            TriggerCommand::Open { file, key } => c::trigger_open(&file, key.as_deref()),
        },
        Command::Tenant { command, remote } => match command {
            TenantCommand::Create { name } => c::tenant_create(&remote, &name).await,
            TenantCommand::List { page } => c::tenant_list(&remote, &page).await,
            TenantCommand::RotateToken { name } => c::tenant_rotate(&remote, &name).await,
        },
        Command::Deploy {
            name,
            file,
            limits,
            allow,
            key,
            plugin,
            remote,
        } => {
            let how = c::DeployArgs {
                limits: &limits,
                allow,
                key: key.as_deref(),
                plugin: plugin.as_deref(),
            };
            c::deploy(&remote, &name, &file, how).await
        }
        Command::Keygen { name, dir } => bundle_cmds::keygen(&name, dir.as_deref()),
        Command::Bundle { command } => match command {
            BundleCommand::Build {
                source,
                name,
                version,
                limits,
                output,
                sign,
                key,
            } => bundle_cmds::build(bundle_cmds::BuildArgs {
                source: &source,
                name: name.as_deref(),
                version: version.as_deref(),
                limits: &limits,
                output: output.as_deref(),
                key: key.as_deref(),
                sign,
            }),
            BundleCommand::Sign {
                bundle,
                key,
                output,
            } => bundle_cmds::sign(&bundle, key.as_deref(), output.as_deref()),
            BundleCommand::Inspect { bundle, format } => bundle_cmds::inspect(&bundle, format),
        },
        Command::Bench(args) => bench::run(args).await,
        Command::Plugin { command, remote } => match command {
            PluginCommand::Add { name, file } => c::plugin_add(&remote, &name, &file).await,
            PluginCommand::List { page } => c::plugin_list(&remote, &page).await,
        },
        Command::Keys { command, remote } => match command {
            KeysCommand::Add { key } => c::keys_add(&remote, &key).await,
            KeysCommand::List { page } => c::keys_list(&remote, &page).await,
            KeysCommand::Revoke { id } => c::keys_revoke(&remote, &id).await,
        },
        Command::VerifyReceipt {
            file,
            input,
            output,
            remote,
        } => c::verify_receipt(&remote, &file, input.as_deref(), output.as_deref()),
        Command::Invoke {
            name,
            expect_hash,
            receipt,
            data,
            args,
            output,
            asynchronous,
            wait,
            idempotency_key,
            remote,
        } => {
            let input = c::InvokeInput {
                data: data.as_deref(),
                args: &args,
                receipt: receipt.as_deref(),
                expect_hash: expect_hash.as_deref(),
            };
            if asynchronous {
                c::invoke_async(&remote, &name, input, idempotency_key.as_deref(), wait).await
            } else {
                c::invoke(&remote, &name, input, output.as_deref()).await
            }
        }
        Command::Invocation { id, wait, remote } => c::invocation(&remote, &id, wait).await,
        Command::Chain {
            steps,
            receipt,
            data,
            output,
            remote,
        } => {
            let input = c::InvokeInput {
                data: data.as_deref(),
                args: &[],
                receipt: receipt.as_deref(),
                expect_hash: None,
            };
            c::chain(&remote, &steps, input, output.as_deref()).await
        }
        Command::Functions { name, page, remote } => {
            c::functions(&remote, name.as_deref(), &page).await
        }
        Command::Versions { name, page, remote } => c::versions(&remote, &name, &page).await,
        Command::Delete { name, remote } => c::delete(&remote, &name).await,
        Command::Grant {
            name,
            tenant,
            public,
            remote,
        } => c::access(&remote, &name, tenant.as_deref(), public, true).await,
        Command::Revoke {
            name,
            tenant,
            public,
            remote,
        } => c::access(&remote, &name, tenant.as_deref(), public, false).await,
        Command::Logs { name, remote } => c::logs(&remote, &name).await,
        Command::Stats { name, remote } => c::stats(&remote, &name).await,
        Command::Env { command, remote } => match command {
            EnvCommand::Set { function, values } => c::env_set(&remote, &function, &values).await,
            EnvCommand::Unset { function, names } => c::env_unset(&remote, &function, &names).await,
            EnvCommand::List { function } => c::env_list(&remote, &function).await,
        },
    }
}
