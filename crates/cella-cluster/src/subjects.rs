//! The bus subjects and queue groups cella uses. Every subject is under `cella.`, so an
//! operator can give the cluster's NATS account exactly these.

/// A worker's first join message (unsealed: it has no key yet).
pub const JOIN_HELLO: &str = "cella.join.hello";
/// A worker's evidence, answered with the sealed cluster secrets or the failed checks.
pub const JOIN_ADMIT: &str = "cella.join.admit";
/// Synchronous invocations, gateway → one worker of the queue group.
pub const INVOKE: &str = "cella.invoke";
/// Workers' calls on functions' key-value state, worker → one gateway.
pub const STATE: &str = "cella.state";
/// The queue group workers take invocations in: NATS hands each to one of them.
pub const WORKERS: &str = "cella-workers";
/// The queue group gateways answer state calls in.
pub const GATEWAYS: &str = "cella-gateways";
