//! Invocations that run on another node of a cluster.
//!
//! A gateway authorizes an invocation exactly as a single node does, then hands a [`Job`] —
//! the function's record, the values of its granted environment variables and the input — to
//! its [`Dispatcher`] (cella-cluster's NATS transport), which has an attested worker run it
//! with [`Platform::execute`] and brings back the [`Outcome`]. The gateway then accounts for
//! it and signs the receipt as usual. The worker loads the code from the shared blob store
//! and verifies it as a single node does; the record it runs is the one the gateway read
//! from its sealed registry.

use std::sync::Arc;

use bytes::Bytes;
use cella_core::{FunctionName, FunctionRecord};
use cella_sandbox::{CommandInput, CommandOutput, Grants, HttpResponse, LogTail, StateStore};
use cella_store::Principal;
use cella_tee::Attester;

use crate::platform::Platform;
use crate::{ErrorCode, RuntimeError};

/// One invocation, as a gateway hands it to a worker.
pub struct Job {
    /// The function as the gateway's registry has it (the version to run included).
    pub record: FunctionRecord,
    /// The granted environment variables that have a value, with it.
    pub env: Vec<(String, String)>,
    pub work: Work,
}

/// The input of a [`Job`].
pub enum Work {
    Command { args: Vec<String>, stdin: Bytes },
    Http(http::Request<Bytes>),
}

/// What a worker brings back from a job that ran.
pub enum Outcome {
    Command(CommandOutput),
    Http(HttpResponse),
}

/// Has jobs run elsewhere.
#[async_trait::async_trait]
pub trait Dispatcher: Send + Sync {
    /// Runs `job` on some worker; its failures (the function's, or a refusal) come back as
    /// errors with the worker's code, message and log ([`RemoteFailure`]).
    async fn dispatch(&self, job: Job) -> Result<Outcome, RuntimeError>;
}

/// A failure on the node that ran a job, as it reported it.
#[derive(Debug, Clone)]
pub struct RemoteFailure {
    pub code: ErrorCode,
    pub message: String,
    /// The invocation's log, when the function ran.
    pub log: Option<LogTail>,
}

/// A worker answered with the other kind of output than the function's.
pub(crate) fn mismatched(record: &FunctionRecord) -> RuntimeError {
    RuntimeError::Internal(format!(
        "a worker answered an invocation of `{}` with the wrong kind of output",
        record.name
    ))
}

impl Platform {
    /// Runs every invocation on workers from now on (a cluster's gateway). Set once.
    pub fn dispatch_to(&self, dispatcher: Arc<dyn Dispatcher>) -> Result<(), RuntimeError> {
        self.dispatcher
            .set(dispatcher)
            .map_err(|_| RuntimeError::Internal("this node already dispatches".into()))
    }

    /// Reads bundles with the cluster's blob key from now on (a worker, once admitted).
    pub fn use_cluster_blob_key(&self, key: cella_store::BlobKey) -> Result<(), RuntimeError> {
        self.cluster_blobs
            .set(self.blobs().with_key(key))
            .map_err(|_| RuntimeError::Internal("this node already joined a cluster".into()))
    }

    /// The secrets this node's registry keeps for the cluster it founds (a gateway).
    pub fn cluster_secrets(&self) -> Result<cella_store::ClusterSecrets, RuntimeError> {
        Ok(self.registry().cluster_secrets()?)
    }

    /// Shares this node's registry with the cluster's other gateways through `log` (see
    /// `cella-store`'s `shared.rs`): founds it, or checks this copy against it and catches up.
    pub async fn share_registry(
        &self,
        log: Arc<dyn cella_store::SharedLog>,
    ) -> Result<cella_store::Sharing, RuntimeError> {
        let registry = self.registry().clone();
        crate::platform::blocking(move || Ok(registry.share(log)?)).await
    }

    /// Applies what other gateways wrote to the shared registry since, and tells the
    /// platform's followers (triggers) when something changed. Returns how many versions.
    pub async fn catch_up_registry(&self) -> Result<u64, RuntimeError> {
        let registry = self.registry().clone();
        let applied = crate::platform::blocking(move || Ok(registry.catch_up()?)).await?;
        Ok(applied)
    }

    /// [`Platform::catch_up_registry`], taking the log's genesis first if it was compacted
    /// past this node's copy.
    pub async fn catch_up_registry_fully(&self) -> Result<u64, RuntimeError> {
        let registry = self.registry().clone();
        crate::platform::blocking(move || Ok(registry.catch_up_fully()?)).await
    }

    /// Compacts the shared registry's log if `min_entries` gathered since its genesis; the
    /// new genesis's version if this node did it.
    pub async fn compact_registry(&self, min_entries: u64) -> Result<Option<u64>, RuntimeError> {
        let registry = self.registry().clone();
        crate::platform::blocking(move || Ok(registry.compact(min_entries)?)).await
    }

    /// Moves whenever other gateways' writes were applied here (by a catch-up, or by a write
    /// that lost a race and took the winner's first).
    pub fn watch_registry(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registry().watch_applied()
    }

    /// Tells whoever follows the registry's triggers that other gateways may have changed
    /// them.
    pub fn triggers_may_have_changed(&self) {
        self.triggers_changed.send_modify(|v| *v += 1);
    }

    /// The registry's data key, only to seal to a gateway admitted to share the registry.
    pub fn registry_key(&self) -> cella_store::RegistryKey {
        self.registry().shared_key()
    }

    /// Retires the cluster's bus key (admin only): the next epoch's is derived, and workers
    /// must be admitted again to get it. Returns the new epoch.
    pub async fn rotate_cluster(&self, caller: &Principal) -> Result<u32, RuntimeError> {
        crate::platform::require_admin(caller, "rotate the cluster key")?;
        if self.dispatcher.get().is_none() {
            return Err(RuntimeError::Invalid(
                "this node runs alone (`cella up`); only a cluster's gateway has a cluster key"
                    .into(),
            ));
        }
        let registry = self.registry().clone();
        let epoch = crate::platform::blocking(move || Ok(registry.rotate_cluster()?)).await?;
        self.cluster_rotated.send_replace(epoch);
        Ok(epoch)
    }

    /// A channel that changes when the cluster key is rotated (to the new epoch).
    pub fn watch_cluster_key(&self) -> tokio::sync::watch::Receiver<u32> {
        self.cluster_rotated.subscribe()
    }

    /// The job that runs `work` with `record`.
    pub(crate) fn job(&self, record: &FunctionRecord, work: Work) -> Result<Job, RuntimeError> {
        Ok(Job {
            record: record.clone(),
            env: self.granted_env(record)?,
            work,
        })
    }

    /// Runs a job a gateway sent (a worker): the code is loaded from the shared blob store and
    /// verified, its permissions checked again, and `state` (how this worker reaches the
    /// function's state) given only if the record grants `kv`.
    pub async fn execute(
        &self,
        job: Job,
        state: Option<Arc<dyn StateStore>>,
    ) -> Result<Outcome, RuntimeError> {
        let Job { record, env, work } = job;
        let granted = &record.permissions;
        let grants = Grants {
            env: env
                .into_iter()
                .filter(|(name, _)| granted.env.iter().any(|g| g.as_str() == name))
                .collect(),
            state: state.filter(|_| granted.kv),
            http: granted.http.clone(),
            scratch_bytes: granted.scratch_bytes(),
            cpu_share: cella_sandbox::CpuShare::new(record.owner.as_str()),
        };
        let started = std::time::Instant::now();
        let result = match work {
            Work::Command { args, stdin } => self
                .run_command_here(
                    &record,
                    CommandInput {
                        stdin,
                        args,
                        grants,
                    },
                )
                .await
                .map(Outcome::Command),
            Work::Http(request) => self
                .run_http_here(&record, request, grants)
                .await
                .map(Outcome::Http),
        };
        let log = result.as_ref().map(|outcome| match outcome {
            Outcome::Command(output) => &output.log,
            Outcome::Http(response) => &response.log,
        });
        if let Ok(log) = log {
            self.metrics().monitored(&log.monitor);
        }
        self.metrics().invoked(
            record.kind,
            log.map(|_| ()).map_err(RuntimeError::code),
            started.elapsed(),
        );
        result
    }

    /// Loads `record`'s code ahead of its first invocation here (verified as on any load),
    /// so that invocation finds it warm.
    pub async fn prepare(&self, record: &FunctionRecord) -> Result<(), RuntimeError> {
        self.load(record).await.map(|_| ())
    }

    /// Now, by the node's guarded clock (clamped when the host's clock goes back or jumps).
    pub fn wall_time(&self) -> std::time::SystemTime {
        self.sandbox().wall_time()
    }

    /// The attester of this node's TEE (a worker's join evidence comes from it).
    pub fn attester(&self) -> &dyn Attester {
        self.identity().attester()
    }

    /// Signs `message` with this node's attested identity key (ECDSA P-256/SHA-256, DER);
    /// [`Platform::attest`] binds the key to the node's evidence.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.identity().sign(message)
    }

    /// The key-value state of function `name` as this node's registry keeps it, for a worker
    /// that runs it: only if the function exists, still belongs to `owner` (the owner of the
    /// record the job carried) and is granted `kv`.
    pub fn state_for_worker(
        &self,
        name: &str,
        owner: &str,
    ) -> Result<Arc<dyn StateStore>, RuntimeError> {
        let name = FunctionName::new(name)?;
        let record = self
            .registry()
            .function(&name)?
            .filter(|r| r.owner.as_str() == owner)
            .ok_or_else(|| RuntimeError::NoSuchFunction(name.clone()))?;
        if !record.permissions.kv {
            return Err(RuntimeError::Forbidden(format!(
                "function `{name}` is not granted `kv`"
            )));
        }
        Ok(self.state_store(&record))
    }
}
