//! Asynchronous invocations. The gateway authorizes the call, records it as queued in its
//! sealed registry (once per idempotency key), and stores the job durably in a [`JobQueue`]
//! (a JetStream stream in a cluster) before it answers 202. A worker runs the job and
//! reports how it ended with [`Platform::finish_async`]: a success's state changes and its
//! result are recorded in one transaction, once, so redelivered or duplicated jobs change
//! nothing (exactly once in effect).

use std::sync::Arc;

use bytes::Bytes;
use cella_core::FunctionKind;
use cella_store::{
    AsyncError, AsyncInvocation, AsyncStatus, Finish, Finished, Principal, RegistryError,
    SharedError,
};

use crate::platform::{Platform, blocking, tenant_of};
use crate::remote::{Job, Work};
use crate::{ErrorCode, RuntimeError};

/// Longest idempotency key a caller may choose.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Where asynchronous jobs wait for a worker.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Stores `job` durably as invocation `id` and returns once it is stored; storing the same
    /// id again stores nothing new.
    async fn enqueue(&self, id: &str, job: Job) -> Result<(), RuntimeError>;
}

/// What an asynchronous invocation is asked with.
#[derive(Debug, Clone, Default)]
pub struct AsyncRequest {
    pub stdin: Bytes,
    pub args: Vec<String>,
    /// The caller's name for this request: the same key again returns the invocation it
    /// made the first time instead of running another.
    pub idempotency_key: Option<String>,
    /// Run nothing unless the function's bundle hash is this.
    pub expect: Option<cella_core::ContentHash>,
}

fn check_idempotency_key(key: &str) -> Result<(), RuntimeError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RuntimeError::Invalid(format!(
            "an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters \
             (a UUID is a good choice)"
        )));
    }
    Ok(())
}

fn async_invocation_id() -> String {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the operating system's random number generator");
    hex::encode(id)
}

impl Platform {
    /// Stores asynchronous jobs in `queue` from now on (a cluster's gateway). Set once.
    pub fn queue_to(&self, queue: Arc<dyn JobQueue>) -> Result<(), RuntimeError> {
        self.job_queue
            .set(queue)
            .map_err(|_| RuntimeError::Internal("this node already has a job queue".into()))
    }

    /// Accepts an asynchronous invocation of `target` (`name` or `name@version`): returns its
    /// record once the job is stored durably, and whether it is new (`false`: the caller
    /// sent this idempotency key before, and gets that invocation back).
    pub async fn submit(
        &self,
        caller: &Principal,
        target: &str,
        request: AsyncRequest,
    ) -> Result<(AsyncInvocation, bool), RuntimeError> {
        self.submit_as(caller, target, request, None).await
    }

    /// [`Platform::submit`], for an event of trigger `trigger` when given.
    pub(crate) async fn submit_as(
        &self,
        caller: &Principal,
        target: &str,
        request: AsyncRequest,
        trigger: Option<&str>,
    ) -> Result<(AsyncInvocation, bool), RuntimeError> {
        let Some(queue) = self.job_queue.get() else {
            return Err(RuntimeError::Invalid(
                "asynchronous invocations need a cluster: run `cella gateway --nats URL` with \
                 at least one `cella worker`, or invoke without async=1"
                    .into(),
            ));
        };
        if let Some(key) = &request.idempotency_key {
            check_idempotency_key(key)?;
        }
        let record = self.authorize_invoke(caller, target)?;
        crate::deploy::check_expected(&record, request.expect.as_ref())?;
        if record.kind == FunctionKind::WasiHttp {
            return Err(RuntimeError::WrongKind {
                name: record.name.clone(),
                kind: record.kind,
                hint: "only command and JavaScript functions run asynchronously; send HTTP \
                       requests to /v1/functions/NAME/http/",
            });
        }
        let request_sha256 = {
            let mut what = Vec::new();
            for part in std::iter::once(target.as_bytes())
                .chain(request.args.iter().map(|a| a.as_bytes()))
                .chain(std::iter::once(&request.stdin[..]))
            {
                what.extend_from_slice(&(part.len() as u64).to_le_bytes());
                what.extend_from_slice(part);
            }
            cella_receipt::sha256(&what)
        };
        let invocation = AsyncInvocation {
            id: async_invocation_id(),
            caller: tenant_of(caller)?.clone(),
            function: record.name.clone(),
            version: record.version.to_string(),
            status: AsyncStatus::Queued,
            attempts: 0,
            submitted_at: self.now_rfc3339(),
            finished_at: None,
            idempotency_key: request.idempotency_key,
            output_hex: None,
            error: None,
            log: None,
            trigger: trigger.map(str::to_owned),
            function_owner: Some(record.owner.clone()),
            request_sha256: Some(request_sha256.clone()),
        };
        let registry = self.registry().clone();
        let submitted = blocking(move || Ok(registry.submit_invocation(invocation)?)).await?;
        let (invocation, new) = match submitted {
            Ok(new) => (new, true),
            Err(earlier) => (earlier, false),
        };
        if !new && invocation.request_sha256.as_deref() != Some(request_sha256.as_str()) {
            return Err(RuntimeError::IdempotencyConflict(format!(
                "this Idempotency-Key was used for another request (invocation {}); use a new \
                 key for a new request",
                invocation.id
            )));
        }
        // A repeated request re-stores a job still queued: if the first store never happened
        // (the gateway stopped in between) this one does; otherwise the queue drops it.
        if invocation.status == AsyncStatus::Queued {
            let work = Work::Command {
                args: request.args,
                stdin: request.stdin,
            };
            let stored = queue
                .enqueue(&invocation.id, self.job(&record, work)?)
                .await;
            if let Err(e) = stored {
                if new {
                    // Not accepted: a retry starts afresh.
                    let registry = self.registry().clone();
                    let id = invocation.id.clone();
                    blocking(move || Ok(registry.forget_invocation(&id)?)).await?;
                }
                return Err(e);
            }
        }
        if new {
            self.metrics().async_submitted();
        }
        Ok((invocation, new))
    }

    /// An asynchronous invocation, for the tenant that asked for it (to anyone else it does
    /// not exist).
    pub async fn async_invocation(
        &self,
        caller: &Principal,
        id: &str,
    ) -> Result<AsyncInvocation, RuntimeError> {
        let tenant = tenant_of(caller)?;
        if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RuntimeError::NoSuchInvocation(
                id.chars().take(64).collect(),
            ));
        }
        let (registry, key) = (self.registry().clone(), id.to_owned());
        // In a cluster this asks the shared registry for what other gateways recorded.
        match blocking(move || Ok(registry.invocation(&key)?)).await? {
            Some(mut invocation) if &invocation.caller == tenant => {
                // The log (stderr, denials) is the function owner's, as for synchronous calls.
                if invocation.function_owner.as_ref() != Some(tenant) {
                    invocation.log = None;
                }
                Ok(invocation)
            }
            _ => Err(RuntimeError::NoSuchInvocation(id.to_owned())),
        }
    }

    /// The attempts invocation `id` has had if it still waits to run, `None` once it finished
    /// (a worker asks before it starts a job).
    pub async fn async_pending(&self, id: &str) -> Result<Option<u32>, RuntimeError> {
        let registry = self.registry().clone();
        let id = id.to_owned();
        blocking(move || {
            Ok(registry
                .invocation(&id)?
                .filter(|i| i.status == AsyncStatus::Queued)
                .map(|i| i.attempts))
        })
        .await
    }

    /// Whether invocation `id` is recorded here as finished for good (an unknown one is not).
    pub async fn async_is_final(&self, id: &str) -> Result<bool, RuntimeError> {
        let registry = self.registry().clone();
        let id = id.to_owned();
        blocking(move || {
            Ok(registry
                .invocation(&id)?
                .is_some_and(|i| i.status.is_final()))
        })
        .await
    }

    /// Records how an attempt of invocation `id` ended (a worker reports it); see
    /// [`Finished`].
    pub async fn finish_async(
        &self,
        id: &str,
        mut finish: Finish,
    ) -> Result<Finished, RuntimeError> {
        finish.state_limit = self.config().max_state_bytes;
        finish.finished_at = self.now_rfc3339();
        let registry = self.registry().clone();
        let id = id.to_owned();
        let finished = blocking(move || match registry.finish_invocation(&id, finish.clone()) {
            // In a cluster the result travels in one entry of the shared registry: one too
            // large for it fails the invocation instead of being retried for ever.
            Err(RegistryError::Shared(SharedError::TooLarge { size, limit })) => {
                let failed = Finish {
                    status: AsyncStatus::Failed,
                    output: None,
                    error: Some(AsyncError {
                        code: ErrorCode::OutputLimit.as_str().to_owned(),
                        message: format!(
                            "the result ({size} bytes sealed) is larger than the cluster's shared \
                             registry takes ({limit}); return less, or invoke synchronously"
                        ),
                    }),
                    reads: Vec::new(),
                    writes: Vec::new(),
                    ..finish
                };
                Ok(registry.finish_invocation(&id, failed)?)
            }
            finished => Ok(finished?),
        })
        .await?;
        if let Finished::Recorded(invocation) = &finished
            && invocation.status.is_final()
        {
            self.metrics().async_finished(invocation.status.as_str());
            self.publish_result(invocation).await;
        }
        Ok(finished)
    }
}

/// How long a finished asynchronous invocation stays readable (and its idempotency key
/// remembered).
pub const ASYNC_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Platform {
    /// Forgets asynchronous invocations finished more than [`ASYNC_RETENTION`] ago; returns
    /// how many (a gateway calls it now and then).
    pub async fn prune_async(&self) -> Result<usize, RuntimeError> {
        let before = cella_core::rfc3339(self.wall_time() - ASYNC_RETENTION);
        let registry = self.registry().clone();
        blocking(move || Ok(registry.prune_invocations(&before)?)).await
    }
}

/// Errors no retry can fix: the job is failed at once rather than tried again.
pub fn is_final_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound
            | ErrorCode::Forbidden
            | ErrorCode::WrongKind
            | ErrorCode::HashMismatch
            | ErrorCode::MissingPermission
            | ErrorCode::UntrustedKey
            | ErrorCode::InvalidRequest
            | ErrorCode::PayloadTooLarge
            | ErrorCode::OutputLimit
    )
}
