//! [`Platform`]: every operation a front end can ask for, each authorized against the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_core::FunctionRecord;
use cella_core::{ContentHash, FunctionKind, FunctionName, Limits, TenantName};
use cella_sandbox::{
    CommandInput, CommandOutput, Compiled, HttpResponse, LogTail, Sandbox, SandboxConfig,
};
use cella_store::{BlobStore, Principal, Registry, RegistryError, Tenant, Token};
use cella_tee::{AttestationReport, Measurement, TeeType};

use crate::attestation::{Identity, MAX_NONCE_BYTES, TeeMode};
use crate::code_cache::CodeCache;
use crate::compile_budget::{CompileBudget, CompileTurn};
use crate::concurrency::ConcurrencyLimits;
use crate::logs::{FunctionStats, InvocationLog, InvocationLogs, invocation_id};
use crate::plugins::PluginImages;
use crate::{Metrics, RuntimeError};

/// Settings of one platform (one `cella up` process).
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Holds `registry.redb` and (unless `blob_store` says otherwise) the `blobs/` directory.
    pub data_dir: PathBuf,
    /// Where bundles are kept, as an object_store URL (`file:///…`, `memory:///`); the
    /// data directory's `blobs/` when `None`.
    pub blob_store: Option<String>,
    /// A blob store given as a value (wins over `blob_store`): embedders' own backends, and
    /// tests that play a hostile storage host.
    pub blob_backend: Option<Arc<dyn cella_store::ObjectStore>>,
    /// Limits of functions deployed without their own.
    pub default_limits: Limits,
    /// Largest payload a bundle may carry, in bytes.
    pub max_bundle_bytes: u64,
    /// The most any function may ask for.
    pub max_limits: Limits,
    /// Invocations one caller may have running at once.
    pub tenant_concurrency: usize,
    /// Largest key-value state one function may keep (keys and values), in bytes.
    pub max_state_bytes: u64,
    /// Compile time one tenant's deploys may use per [`COMPILE_WINDOW`] on this node.
    pub compile_seconds: u64,
    /// Versions kept per function (the oldest are forgotten, and their code deleted).
    pub max_versions: usize,
    /// Bytes of code one tenant may keep on the node, all versions of all its functions.
    pub max_tenant_bytes: u64,
    /// Bytes of compiled code kept in memory; the least recently used beyond it is loaded
    /// again from its sealed precompiled form when next invoked.
    pub code_cache_bytes: usize,
    pub sandbox: SandboxConfig,
    /// The platform build the simulated TEE measures (the running executable by default).
    pub executable: Option<PathBuf>,
    /// Hardware TEE where found, or the simulated one regardless.
    pub tee: TeeMode,
    /// The data key a gateway admitted to a cluster was handed: its registry takes it (see
    /// [`cella_store::Registry::open_with_key`]).
    pub registry_key: Option<cella_store::RegistryKey>,
    /// Where the simulated TEE's platform key is kept (the data directory when `None`).
    /// Nodes that share one stand for one simulated machine, so they trust each other's
    /// evidence under the same anchor.
    pub sim_platform_dir: Option<PathBuf>,
}

/// The window over which each tenant's compile time is counted (`compile_seconds`).
pub const COMPILE_WINDOW: Duration = Duration::from_secs(600);

impl PlatformConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PlatformConfig {
            data_dir: data_dir.into(),
            default_limits: Limits::default(),
            max_bundle_bytes: 64 * 1024 * 1024,
            blob_store: None,
            blob_backend: None,
            max_limits: Limits::default_maximum(),
            tenant_concurrency: 64,
            max_state_bytes: 1 << 20,
            compile_seconds: 120,
            max_versions: 16,
            max_tenant_bytes: 1 << 30,
            code_cache_bytes: 512 << 20,
            sandbox: SandboxConfig::default(),
            executable: None,
            tee: TeeMode::Auto,
            registry_key: None,
            sim_platform_dir: None,
        }
    }
}

/// How an invocation is asked for, beyond its input.
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// Run nothing unless the function's bundle hash is this (`expect-hash`).
    pub expect: Option<ContentHash>,
    /// The caller's nonce, echoed in the receipt (at most 64 bytes).
    pub nonce: Option<Vec<u8>>,
}

/// What a successful command invocation returns.
#[derive(Debug, Clone)]
pub struct InvokeOutput {
    /// The node's signed statement of what ran on what (see `cella-receipt`).
    pub receipt: cella_receipt::SignedReceipt,
    pub invocation_id: String,
    pub output: Bytes,
    pub log: LogTail,
    pub function: FunctionRecord,
    pub duration: Duration,
}

/// What a successful HTTP invocation returns.
#[derive(Debug)]
pub struct HttpOutput {
    pub invocation_id: String,
    pub response: http::Response<Bytes>,
}

/// A change to who may invoke a function.
#[derive(Debug, Clone)]
pub enum AccessChange {
    Grant(TenantName),
    Revoke(TenantName),
    Public(bool),
}

pub struct Platform {
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    blobs: BlobStore,
    /// The shared blob store under the cluster's key, once this node joined one as a worker.
    pub(crate) cluster_blobs: std::sync::OnceLock<BlobStore>,
    /// Sealed precompiled code, local to this node (see `artifacts.rs`).
    artifacts: BlobStore,
    code: CodeCache,
    plugin_images: PluginImages,
    logs: InvocationLogs,
    concurrency: ConcurrencyLimits,
    compile_budget: CompileBudget,
    metrics: Metrics,
    identity: Identity,
    config: PlatformConfig,
    /// Where invocations run when not here: set on a cluster's gateway.
    pub(crate) dispatcher: std::sync::OnceLock<Arc<dyn crate::remote::Dispatcher>>,
    /// Where asynchronous jobs are stored: set on a cluster's gateway.
    pub(crate) job_queue: std::sync::OnceLock<Arc<dyn crate::asynchronous::JobQueue>>,
    /// Where triggers' results go: set on a cluster's gateway.
    pub(crate) event_sink: std::sync::OnceLock<Arc<dyn crate::triggers::EventSink>>,
    /// Moves whenever a trigger is added or removed.
    pub(crate) triggers_changed: tokio::sync::watch::Sender<u64>,
    /// Moves to the new epoch when the cluster key is rotated.
    pub(crate) cluster_rotated: tokio::sync::watch::Sender<u32>,
}

/// Runs blocking registry work off the async threads.
/// Checks every row of `registry` against its sealed digest every
/// [`cella_store::VERIFY_INTERVAL`], on a thread of its own, for as long as the registry lives.
fn verify_periodically(registry: std::sync::Weak<Registry>) {
    let spawned = std::thread::Builder::new()
        .name("cella-verify".into())
        .spawn(move || {
            loop {
                std::thread::sleep(cella_store::VERIFY_INTERVAL);
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                // A failure is logged, and refuses every later request, by the check itself.
                let _ = registry.verify_state();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("could not start the registry's periodic check: {e}");
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Internal(format!("background task failed: {e}")))?
}

pub(crate) fn tenant_of(caller: &Principal) -> Result<&TenantName, RuntimeError> {
    match caller {
        Principal::Tenant(name) => Ok(name),
        Principal::Admin => Err(RuntimeError::Forbidden(
            "the admin token manages tenants and owns no functions; use a tenant's token \
             (create one with `cella tenant create NAME`)"
                .into(),
        )),
    }
}

pub(crate) fn require_admin(caller: &Principal, action: &str) -> Result<(), RuntimeError> {
    match caller {
        Principal::Admin => Ok(()),
        Principal::Tenant(_) => Err(RuntimeError::Forbidden(format!(
            "only the platform's admin token may {action}"
        ))),
    }
}

impl Platform {
    /// Opens the platform's stores under `config.data_dir`, creating them on first start.
    pub fn open(config: PlatformConfig) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            RuntimeError::Internal(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let identity = Identity::open(
            &config.data_dir,
            config.sim_platform_dir.as_deref(),
            config.executable.as_deref(),
            config.tee,
        )?;
        let registry = Registry::open_with_key(
            &config.data_dir.join("registry.redb"),
            &identity.registry_key,
            config.registry_key.as_ref(),
        )?;
        let blobs = match (&config.blob_backend, &config.blob_store) {
            (Some(backend), _) => BlobStore::new(backend.clone(), registry.blob_key()),
            (None, Some(url)) => BlobStore::from_url(url, registry.blob_key())?,
            (None, None) => BlobStore::local(&config.data_dir.join("blobs"), registry.blob_key())?,
        };
        let artifacts = BlobStore::local(&config.data_dir.join("compiled"), registry.blob_key())?;
        // The instance pool must fit the largest memory any function may ask for.
        let mut config = config;
        config.sandbox.max_memory_bytes = config.max_limits.memory_bytes;
        let sandbox = Sandbox::new(config.sandbox.clone())?;
        let registry = Arc::new(registry);
        verify_periodically(Arc::downgrade(&registry));
        Ok(Platform {
            sandbox: Arc::new(sandbox),
            registry,
            blobs,
            cluster_blobs: std::sync::OnceLock::new(),
            artifacts,
            code: CodeCache::new(config.code_cache_bytes),
            plugin_images: PluginImages::default(),
            logs: InvocationLogs::default(),
            concurrency: ConcurrencyLimits::new(
                config.tenant_concurrency,
                config.sandbox.instances as usize,
            ),
            compile_budget: CompileBudget::new(
                Duration::from_secs(config.compile_seconds.max(1)),
                COMPILE_WINDOW,
            ),
            metrics: Metrics::default(),
            identity,
            config,
            dispatcher: std::sync::OnceLock::new(),
            job_queue: std::sync::OnceLock::new(),
            event_sink: std::sync::OnceLock::new(),
            triggers_changed: tokio::sync::watch::Sender::new(0),
            cluster_rotated: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Which TEE vouches for this node (`sim` when none is usable) and the measurement of this
    /// build.
    pub fn tee(&self) -> (TeeType, Measurement) {
        (self.identity.tee(), self.identity.measurement())
    }

    /// A hardware TEE found on this machine but not used (`TeeMode::Simulated`).
    pub fn unused_hardware(&self) -> Option<TeeType> {
        self.identity.hardware_found
    }

    /// Where clients find the simulated platform's trust anchor, when simulated.
    pub fn sim_anchor_file(&self) -> Option<&std::path::Path> {
        self.identity.sim_anchor_file.as_deref()
    }

    /// The TLS configuration of this node: its RA-TLS certificate, whose key never leaves the
    /// process.
    pub fn tls_config(&self) -> Result<rustls::ServerConfig, RuntimeError> {
        self.identity.tls_config()
    }

    /// Evidence about this node bound to its identity key and the client's `nonce`. Anyone may
    /// ask: clients verify a node before they send it a token or data.
    pub fn attest(&self, nonce: &[u8]) -> Result<AttestationReport, RuntimeError> {
        check_nonce_length(nonce)?;
        self.identity.attest(nonce)
    }

    /// The registry's version: one more with every change, never back. Responses carry it so
    /// clients can notice a node whose state was rolled back.
    pub fn registry_version(&self) -> u64 {
        self.registry.version()
    }

    /// Whether the node can serve: `Err` says why not (its storage failed), in words fit for
    /// anyone who asks. Checking tries a failed storage again, so a node recovers by itself.
    pub async fn health(&self) -> Result<(), String> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.health())
            .await
            .unwrap_or_else(|e| Err(format!("the health check failed: {e}")))
    }

    /// The time as RFC 3339, read through the guarded clock (an Iago check: the host's clock
    /// may not date receipts and records as it likes).
    pub(crate) fn now_rfc3339(&self) -> String {
        cella_core::rfc3339(self.sandbox.wall_time())
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn artifacts(&self) -> &BlobStore {
        &self.artifacts
    }

    pub(crate) fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub(crate) fn code_cache(&self) -> &CodeCache {
        &self.code
    }

    pub(crate) fn compile_budget(&self) -> &CompileBudget {
        &self.compile_budget
    }

    pub(crate) fn concurrency(&self) -> &ConcurrencyLimits {
        &self.concurrency
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn plugin_images(&self) -> &PluginImages {
        &self.plugin_images
    }

    /// Guards of the sandbox that operators and tests watch: outgoing HTTP requests refused,
    /// and corrections of a host clock that went back or jumped.
    pub fn sandbox_refusals(&self) -> (u64, u64) {
        (
            self.sandbox.outgoing_denied(),
            self.sandbox.clock_corrections(),
        )
    }

    /// The blob store (operators' tools and tests that play a hostile storage host use it).
    pub fn blobs(&self) -> &BlobStore {
        self.cluster_blobs.get().unwrap_or(&self.blobs)
    }

    /// Creates the admin token on first start; `Some` only then (show it once).
    pub async fn ensure_admin_token(&self) -> Result<Option<Token>, RuntimeError> {
        let registry = self.registry.clone();
        blocking(move || Ok(registry.ensure_admin_token()?)).await
    }

    /// Who holds the bearer token `secret`.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>, RuntimeError> {
        Ok(self.registry.authenticate(secret)?)
    }

    /// [`Platform::authenticate`] without looking in a shared registry for tokens this copy
    /// has not seen yet: cheap, for requests from an address over its budget of failures.
    pub fn authenticate_known(&self, secret: &str) -> Result<Option<Principal>, RuntimeError> {
        Ok(self.registry.authenticate_here(secret)?)
    }

    pub async fn create_tenant(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<(Tenant, Token), RuntimeError> {
        require_admin(caller, "manage tenants")?;
        let name = TenantName::new(name)?;
        let registry = self.registry.clone();
        blocking(move || Ok(registry.create_tenant(&name)?)).await
    }

    /// Issues a fresh token for tenant `name`, retiring the old one (admin only).
    pub async fn rotate_tenant_token(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<Token, RuntimeError> {
        require_admin(caller, "manage tenants")?;
        let name = TenantName::new(name)?;
        let registry = self.registry.clone();
        blocking(move || Ok(registry.rotate_tenant_token(&name)?)).await
    }

    /// A page of the tenants (operator only).
    pub fn tenants_page(
        &self,
        caller: &Principal,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<Tenant>, RuntimeError> {
        require_admin(caller, "manage tenants")?;
        let limit = request.limit()?;
        Ok(self
            .registry
            .tenants_page(request.cursor.as_deref(), limit)?)
    }

    /// A page of the functions the caller owns: reads that page only, whatever the node holds.
    pub fn functions_page(
        &self,
        caller: &Principal,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<FunctionRecord>, RuntimeError> {
        let limit = request.limit()?;
        Ok(self
            .registry
            .functions_page(tenant_of(caller)?, request.cursor.as_deref(), limit)?)
    }

    /// A page of a function's kept versions, for its owner.
    pub fn versions_page(
        &self,
        caller: &Principal,
        name: &str,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<cella_core::FunctionVersion>, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        let limit = request.limit()?;
        let mut page =
            self.registry
                .function_versions_page(&record.name, request.cursor.as_deref(), limit)?;
        page.items.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(page)
    }

    /// A function's head (its current version), for its owner: what checks and changes of a
    /// function read.
    pub(crate) fn owned(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<FunctionRecord, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        Ok(record)
    }

    /// A function's record with every kept version, for its owner.
    pub fn function(&self, caller: &Principal, name: &str) -> Result<FunctionRecord, RuntimeError> {
        let record = self.owned(caller, name)?;
        Ok(self
            .registry
            .function_with_history(&record.name)?
            .unwrap_or(record))
    }

    pub async fn delete(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<FunctionRecord, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        let registry = self.registry.clone();
        let function = record.name.clone();
        let (record, unused) = blocking(move || {
            let removed = registry
                .delete_function(&function)?
                .ok_or_else(|| RuntimeError::NoSuchFunction(function.clone()))?;
            let mut unused: Vec<ContentHash> = Vec::new();
            for version in &removed.versions {
                if !unused.contains(&version.hash) && !registry.blob_in_use(&version.hash)? {
                    unused.push(version.hash);
                }
            }
            Ok((removed, unused))
        })
        .await?;
        self.logs.forget(&record.name);
        // Its triggers went with it: stop listening.
        self.triggers_changed.send_modify(|v| *v += 1);
        for hash in unused {
            self.code.remove(&hash);
            self.forget_precompiled(&hash).await;
            self.blobs().delete(&hash).await?;
        }
        Ok(record)
    }

    pub async fn change_access(
        &self,
        caller: &Principal,
        name: &str,
        change: AccessChange,
    ) -> Result<FunctionRecord, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        if let AccessChange::Grant(tenant) = &change
            && self.registry.tenant(tenant)?.is_none()
        {
            return Err(RegistryError::NoSuchTenant(tenant.clone()).into());
        }
        let registry = self.registry.clone();
        blocking(move || {
            Ok(
                registry.update_access(&record.name, |access| match &change {
                    AccessChange::Grant(t) => {
                        access.tenants.insert(t.clone());
                    }
                    AccessChange::Revoke(t) => {
                        access.tenants.remove(t);
                    }
                    AccessChange::Public(public) => access.public = *public,
                })?,
            )
        })
        .await
    }

    /// Runs a WASI command function once: `input.stdin` in, stdout out. `target` is `name`
    /// (the current version) or `name@version`; see [`InvokeOptions`]. The output comes with a
    /// receipt signed by the node's attested key.
    pub async fn invoke(
        &self,
        caller: &Principal,
        target: &str,
        options: &InvokeOptions,
        input: CommandInput,
    ) -> Result<InvokeOutput, RuntimeError> {
        check_nonce(options)?;
        let started = Instant::now();
        let started_at = self.now_rfc3339();
        let input_hash = cella_receipt::sha256(&input.stdin);
        let args_hash = cella_receipt::args_hash(&input.args);
        let (function, output, invocation_id) = self
            .invoke_step(caller, target, options.expect.as_ref(), input)
            .await?;
        Ok(self.answer(
            vec![function],
            invocation_id,
            output,
            Receipted {
                args_hash,
                input_hash,
                started,
                started_at,
                nonce: options.nonce.as_deref(),
            },
        ))
    }

    /// One run of a command (or JavaScript) function, without a receipt: an invocation, or
    /// one step of a chain.
    pub(crate) async fn invoke_step(
        &self,
        caller: &Principal,
        target: &str,
        expect: Option<&ContentHash>,
        input: CommandInput,
    ) -> Result<(FunctionRecord, CommandOutput, String), RuntimeError> {
        let (invocation_id, function, output) = self
            .invocation(
                caller,
                target,
                expect,
                |o: &CommandOutput| &o.log,
                async |record| self.run_command(record, input).await,
            )
            .await?;
        Ok((function, output, invocation_id))
    }

    /// The answer to an invocation (`steps` is the function, or every step of a chain in
    /// order, and `output` the last one's), with a receipt signed by the node's attested key.
    pub(crate) fn answer(
        &self,
        mut steps: Vec<FunctionRecord>,
        invocation_id: String,
        output: CommandOutput,
        what: Receipted<'_>,
    ) -> InvokeOutput {
        let duration = what.started.elapsed();
        let (tee, measurement) = self.tee();
        let described: Vec<cella_receipt::Function> = steps.iter().map(receipt_function).collect();
        let (first, rest) = described
            .split_first()
            .expect("an invocation runs at least one function");
        // A chain's limits are all its steps'; one function's are its own.
        let limits_hash = match steps.as_slice() {
            [one] => {
                cella_receipt::sha256(&serde_json::to_vec(&one.limits).expect("limits serialize"))
            }
            steps => {
                let all: Vec<_> = steps.iter().map(|s| s.limits).collect();
                cella_receipt::sha256(&serde_json::to_vec(&all).expect("limits serialize"))
            }
        };
        let memory_limit_bytes = steps.iter().map(|s| s.limits.memory_bytes).max();
        let receipt = self.identity.sign_receipt(cella_receipt::Receipt {
            format: cella_receipt::format_for(first, rest).into(),
            invocation_id: invocation_id.clone(),
            node: cella_receipt::Node {
                tee: tee.to_string(),
                measurement: measurement.to_hex(),
                identity_key: self.identity.public_key_hex(),
                registry_version: self.registry.version(),
            },
            function: first.clone(),
            chain: rest.to_vec(),
            limits_hash,
            args_hash: what.args_hash,
            input_hash: what.input_hash,
            output_hash: cella_receipt::sha256(&output.stdout),
            resources: cella_receipt::Resources {
                wall_time_us: duration.as_micros() as u64,
                memory_limit_bytes: memory_limit_bytes.unwrap_or(0),
            },
            started_at: what.started_at,
            finished_at: self.now_rfc3339(),
            nonce: what.nonce.map(hex::encode),
        });
        InvokeOutput {
            receipt,
            invocation_id,
            output: output.stdout,
            log: output.log,
            function: steps
                .pop()
                .expect("an invocation runs at least one function"),
            duration,
        }
    }

    /// Serves one HTTP request with a `wasi:http` component function (`target` and `expect`
    /// as for [`Platform::invoke`]).
    pub async fn serve_http(
        &self,
        caller: &Principal,
        target: &str,
        expect: Option<&ContentHash>,
        request: http::Request<Bytes>,
    ) -> Result<HttpOutput, RuntimeError> {
        let (invocation_id, _, output) = self
            .invocation(
                caller,
                target,
                expect,
                |r: &HttpResponse| &r.log,
                async |record| self.run_http(record, request).await,
            )
            .await?;
        Ok(HttpOutput {
            invocation_id,
            response: output.response,
        })
    }

    /// Runs a command function here, or on a worker when this node dispatches.
    async fn run_command(
        &self,
        record: &FunctionRecord,
        input: CommandInput,
    ) -> Result<CommandOutput, RuntimeError> {
        if let Some(dispatcher) = self.dispatcher.get() {
            let work = crate::remote::Work::Command {
                args: input.args,
                stdin: input.stdin,
            };
            return match dispatcher.dispatch(self.job(record, work)?).await? {
                crate::remote::Outcome::Command(output) => Ok(output),
                crate::remote::Outcome::Http(_) => Err(crate::remote::mismatched(record)),
            };
        }
        let input = CommandInput {
            grants: self.grants(record)?,
            ..input
        };
        self.run_command_here(record, input).await
    }

    /// Runs a command function in this node's sandbox.
    pub(crate) async fn run_command_here(
        &self,
        record: &FunctionRecord,
        input: CommandInput,
    ) -> Result<CommandOutput, RuntimeError> {
        match self.load(record).await? {
            Compiled::Command(pre) => {
                let _instance = self.metrics.instance();
                self.sandbox
                    .run_command(&pre, record.name.as_str(), input, &record.limits)
                    .await
                    .map_err(|source| RuntimeError::Run {
                        name: record.name.clone(),
                        source,
                    })
            }
            Compiled::Http(_) => Err(RuntimeError::WrongKind {
                name: record.name.clone(),
                kind: FunctionKind::WasiHttp,
                hint: "send HTTP requests to /v1/functions/NAME/http/ instead of /invoke",
            }),
        }
    }

    /// Serves one HTTP request with a component function here, or on a worker when this node
    /// dispatches.
    async fn run_http(
        &self,
        record: &FunctionRecord,
        request: http::Request<Bytes>,
    ) -> Result<HttpResponse, RuntimeError> {
        if let Some(dispatcher) = self.dispatcher.get() {
            let work = crate::remote::Work::Http(request);
            return match dispatcher.dispatch(self.job(record, work)?).await? {
                crate::remote::Outcome::Http(response) => Ok(response),
                crate::remote::Outcome::Command(_) => Err(crate::remote::mismatched(record)),
            };
        }
        let grants = self.grants(record)?;
        self.run_http_here(record, request, grants).await
    }

    /// Serves one HTTP request in this node's sandbox.
    pub(crate) async fn run_http_here(
        &self,
        record: &FunctionRecord,
        request: http::Request<Bytes>,
        grants: cella_sandbox::Grants,
    ) -> Result<HttpResponse, RuntimeError> {
        match self.load(record).await? {
            Compiled::Http(pre) => {
                let _instance = self.metrics.instance();
                self.sandbox
                    .serve_http(&pre, request, &record.limits, grants)
                    .await
                    .map_err(|source| RuntimeError::Run {
                        name: record.name.clone(),
                        source,
                    })
            }
            Compiled::Command(_) => Err(RuntimeError::WrongKind {
                name: record.name.clone(),
                kind: FunctionKind::WasiCommand,
                hint: "invoke it with POST /v1/functions/NAME/invoke",
            }),
        }
    }

    /// The steps every invocation shares: authorize, take a concurrency slot, `run` it (here
    /// or on a worker), and account for the outcome (metrics and the owner's log).
    async fn invocation<T>(
        &self,
        caller: &Principal,
        target: &str,
        expect: Option<&ContentHash>,
        log_of: fn(&T) -> &LogTail,
        run: impl AsyncFnOnce(&FunctionRecord) -> Result<T, RuntimeError>,
    ) -> Result<(String, FunctionRecord, T), RuntimeError> {
        let started = Instant::now();
        let record = self.authorize_invoke(caller, target)?;
        crate::deploy::check_expected(&record, expect)?;
        let result = async {
            let _slot = self.concurrency.acquire(caller)?;
            run(&record).await
        }
        .await;
        let id = invocation_id();
        self.account(&record, &id, result.as_ref().map(log_of), started);
        Ok((id, record, result?))
    }

    /// Counts an invocation in the metrics and keeps its log for the function's owner.
    fn account(
        &self,
        record: &FunctionRecord,
        id: &str,
        result: Result<&LogTail, &RuntimeError>,
        started: Instant,
    ) {
        let took = started.elapsed();
        let (outcome, log, monitor) = match result {
            Ok(log) => ("ok", log.to_text(), Some(&*log.monitor)),
            Err(e) => (
                e.code().as_str(),
                e.log().unwrap_or_else(|| e.to_string()),
                e.monitor(),
            ),
        };
        if let Some(report) = monitor {
            self.metrics.monitored(report);
        }
        self.metrics.invoked(
            record.kind,
            result.map(|_| ()).map_err(RuntimeError::code),
            took,
        );
        self.logs
            .record(&record.name, id.to_owned(), outcome, took, log, monitor);
    }

    /// A function's totals since this node started: invocations, host calls and denials
    /// (owner only).
    pub fn stats(&self, caller: &Principal, name: &str) -> Result<FunctionStats, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        Ok(self.logs.stats(&record.name))
    }

    /// The most recent invocations of a function and what they logged (owner only).
    pub fn logs(&self, caller: &Principal, name: &str) -> Result<Vec<InvocationLog>, RuntimeError> {
        let record = self.lookup(name)?;
        self.require_owner(caller, &record)?;
        Ok(self.logs.recent(&record.name))
    }

    fn lookup(&self, name: &str) -> Result<FunctionRecord, RuntimeError> {
        let name = FunctionName::new(name)?;
        self.registry
            .function(&name)?
            .ok_or(RuntimeError::NoSuchFunction(name))
    }

    fn require_owner(
        &self,
        caller: &Principal,
        record: &FunctionRecord,
    ) -> Result<(), RuntimeError> {
        if tenant_of(caller)? == &record.owner {
            Ok(())
        } else {
            Err(RuntimeError::Forbidden(format!(
                "function `{}` belongs to another tenant; only its owner may read or change it",
                record.name
            )))
        }
    }

    /// The record (its head, as [`Registry::function`] reads it) as it reads with `version`
    /// (text from `name@version`) current; `versions` still ends with the current version.
    /// Reads that one version only.
    fn pin(&self, record: FunctionRecord, version: &str) -> Result<FunctionRecord, RuntimeError> {
        let no_such = || -> RuntimeError {
            let known = match self.registry.function_with_history(&record.name) {
                Ok(Some(history)) => history
                    .versions
                    .iter()
                    .map(|v| v.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => record.version.to_string(),
            };
            RuntimeError::NoSuchVersion {
                name: record.name.clone(),
                version: version.chars().take(40).collect(),
                known,
            }
        };
        let Ok(version) = version.parse::<semver::Version>() else {
            return Err(no_such());
        };
        match self.registry.function_version(&record.name, &version)? {
            Some(pinned) => Ok(record.showing(&pinned)),
            None => Err(no_such()),
        }
    }

    /// A revoked key's versions keep running only while current: no one can pin their way
    /// back to an older one. (Called once the caller may invoke the function at all.)
    fn require_pinnable(&self, pinned: &FunctionRecord) -> Result<(), RuntimeError> {
        let current = pinned.versions.last().map(|v| &v.version);
        if current == Some(&pinned.version) {
            return Ok(());
        }
        let key = self.registry.key(&pinned.owner, &pinned.signer)?;
        if key.is_some_and(|k| k.is_active()) {
            Ok(())
        } else {
            Err(RuntimeError::UntrustedKey(format!(
                "version {} of `{}` was signed by key {}, which its owner revoked; only the \
                 current version can run",
                pinned.version, pinned.name, pinned.signer
            )))
        }
    }

    /// `target` is `name` or `name@version`: access is decided on the function first, then
    /// the version is pinned.
    pub(crate) fn authorize_invoke(
        &self,
        caller: &Principal,
        target: &str,
    ) -> Result<FunctionRecord, RuntimeError> {
        let (name, version) = match target.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (target, None),
        };
        let record = self.lookup(name)?;
        let tenant = tenant_of(caller)?;
        if *tenant != record.owner && !record.access.allows(tenant) {
            return Err(RuntimeError::Forbidden(format!(
                "tenant `{tenant}` may not invoke function `{}`; its owner can grant access with \
                 `cella grant {} {tenant}`",
                record.name, record.name
            )));
        }
        let Some(version) = version else {
            return Ok(record);
        };
        let pinned = self.pin(record, version)?;
        self.require_pinnable(&pinned)?;
        Ok(pinned)
    }

    /// The compiled code of `record`: from the in-memory cache, else its sealed precompiled
    /// code, else the bundle — verified again and compiled.
    pub(crate) async fn load(&self, record: &FunctionRecord) -> Result<Compiled, RuntimeError> {
        let compiled = self
            .code
            .get_or_load(&record.hash, async {
                let compiled = match self.load_precompiled(record).await {
                    Some(compiled) => compiled,
                    None => {
                        let compiled = self.load_bundle(record).await?;
                        self.keep_precompiled(&record.hash, &compiled).await;
                        compiled
                    }
                };
                // As at deploy: a record from before permissions existed grants nothing.
                crate::deploy::check_permissions(
                    &record.name,
                    record.kind,
                    &record.permissions,
                    compiled.needed_permissions(),
                )?;
                Ok(compiled)
            })
            .await?;
        self.metrics.code_cached(self.code.held_bytes());
        Ok(compiled)
    }

    /// What untrusted storage returned for `subject`, unless it failed authentication or is
    /// missing: that is refused, counted and logged, never used.
    pub(crate) async fn checked_from_storage(
        &self,
        subject: &str,
        fetch: impl Future<Output = Result<Bytes, cella_store::BlobError>>,
    ) -> Result<Bytes, RuntimeError> {
        use cella_store::BlobError;
        match fetch.await {
            Ok(bytes) => Ok(bytes),
            Err(e @ (BlobError::Tampered { .. } | BlobError::Missing(_))) => {
                Err(self.refuse(subject, e.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counts and logs a refusal to use `subject` because it failed a check.
    pub(crate) fn refuse(&self, subject: &str, e: RuntimeError) -> RuntimeError {
        self.metrics.integrity_failure();
        tracing::error!("refusing {subject}: {e}");
        e
    }

    /// Compiles on the node's compiler; the time it took is charged to `turn`'s tenant.
    pub(crate) async fn compile(
        &self,
        wasm: Bytes,
        turn: Option<&CompileTurn<'_>>,
    ) -> Result<Compiled, RuntimeError> {
        let (compiled, took) = self.sandbox.compile_queued(wasm).await?;
        if let Some(turn) = turn {
            turn.charge(took);
        }
        self.metrics.compiled();
        Ok(compiled)
    }
}

/// A caller's nonce is echoed in receipts: it must be short.
pub(crate) fn check_nonce(options: &InvokeOptions) -> Result<(), RuntimeError> {
    options.nonce.as_deref().map_or(Ok(()), check_nonce_length)
}

pub(crate) fn check_nonce_length(nonce: &[u8]) -> Result<(), RuntimeError> {
    if nonce.len() > MAX_NONCE_BYTES {
        return Err(RuntimeError::Invalid(format!(
            "the nonce has {} bytes; send at most {MAX_NONCE_BYTES} (hex-encoded)",
            nonce.len()
        )));
    }
    Ok(())
}

/// What a receipt states besides the functions and the output.
pub(crate) struct Receipted<'a> {
    pub args_hash: String,
    pub input_hash: String,
    pub started: Instant,
    pub started_at: String,
    pub nonce: Option<&'a [u8]>,
}

fn receipt_function(record: &FunctionRecord) -> cella_receipt::Function {
    cella_receipt::Function {
        name: record.name.to_string(),
        version: record.version.to_string(),
        hash: record.hash.to_string(),
        plugins: record
            .plugins
            .iter()
            .map(|p| cella_receipt::PluginImage {
                name: p.name.to_string(),
                image: p.image.to_string(),
            })
            .collect(),
    }
}

pub(crate) fn taken(name: &FunctionName) -> RuntimeError {
    RuntimeError::Forbidden(format!(
        "function name `{name}` belongs to another tenant (names are global on a platform); \
         choose another name"
    ))
}
