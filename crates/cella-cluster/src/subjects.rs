//! The bus subjects and queue groups cella uses. Every subject is under `cella.`, so an
//! operator can give the cluster's NATS account exactly these.

/// A worker's first join message (unsealed: it has no key yet).
pub const JOIN_HELLO: &str = "cella.join.hello";
/// A joining node's evidence, sent to the gateway that welcomed it (`cella.join.admit.<id>`)
/// and answered with the sealed secrets or the failed checks.
pub const JOIN_ADMIT: &str = "cella.join.admit";
/// Synchronous invocations, gateway → one worker of the queue group.
pub const INVOKE: &str = "cella.invoke";
/// Workers' calls on functions' key-value state, worker → one gateway (an asynchronous
/// job's reads); a synchronous invocation's calls go to the gateway that sent it, on
/// [`state_of`].
pub const STATE: &str = "cella.state";
/// The queue group workers take invocations in: NATS hands each to one of them.
pub const WORKERS: &str = "cella-workers";
/// The queue group gateways answer state calls in.
pub const GATEWAYS: &str = "cella-gateways";
/// Asynchronous jobs, stored in the JetStream stream [`JOBS_STREAM`].
pub const JOBS: &str = "cella.async.jobs";
/// The durable stream of asynchronous jobs (work-queue retention, on disk).
pub const JOBS_STREAM: &str = "CELLA_ASYNC";
/// The durable consumer all workers share: each job goes to one of them at a time.
pub const JOBS_CONSUMER: &str = "cella-workers";
/// Workers asking a gateway whether a job still waits, and reporting how it ended.
pub const ASYNC_CONTROL: &str = "cella.async.control";
/// The gateway's notice that the cluster key was rotated (sealed under the old key): workers
/// join again to get the new one.
pub const ROTATED: &str = "cella.cluster.rotated";
/// Workers' announcements of their spare capacity (sealed).
pub const CAPACITY: &str = "cella.workers.capacity";
/// The gateway naming the functions in demand, for workers to load ahead (sealed).
pub const WARM: &str = "cella.workers.warm";
/// The JetStream KV bucket holding the shared registry's log (sealed; see `registry_log.rs`).
pub const REGISTRY_BUCKET: &str = "CELLA_REGISTRY";

/// Where the gateway `node` takes the state calls of the synchronous invocations it sent.
pub fn state_of(node: &cella_bus::MessageId) -> String {
    format!("{STATE}.{}", hex::encode(node))
}

/// Where the gateway `node` takes the evidence of the nodes it welcomed.
pub fn admit_at(node: &cella_bus::MessageId) -> String {
    format!("{JOIN_ADMIT}.{}", hex::encode(node))
}
