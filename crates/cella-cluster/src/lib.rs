//! cella across machines, on NATS.
//!
//! `cella up` is one process with everything. In a cluster the same code runs in two roles:
//! **gateways** ([`Gateway`]) keep the HTTP API and the sealed registry and authorize every
//! call; **workers** ([`Worker`]) run invocations. They talk over NATS, which the operator
//! runs and which is therefore untrusted: it carries only join messages (evidence, public
//! keys, HPKE ciphertext, signatures) and messages sealed under the cluster's bus key
//! (`cella-bus`), which only attested nodes that passed the cluster's policy hold.
//!
//! - [`join`]: admission, attested both ways.
//! - [`bus`]: sealed request-reply; refusals counted.
//! - [`wire`]: what jobs, outcomes and state calls look like inside a sealed message.
//! - [`state`]: functions' key-value state, kept by the gateway, reached by workers.
//! - `registry_log`: the registry's log in JetStream KV, which every gateway shares.
//! - `asynchronous`: jobs in a JetStream stream, each finishing exactly once in effect.
//! - `triggers`: events on tenants' subjects, each an asynchronous invocation.
//! - `capacity`: workers' spare capacity, summed up in the gateway's metrics.
//! - `warm`: the functions in demand, loaded by workers ahead of their requests.
#![forbid(unsafe_code)]

mod asynchronous;
pub mod bus;
mod capacity;
mod gateway;
pub mod join;
mod registry_log;
mod state;
pub mod subjects;
mod triggers;
mod warm;
pub mod wire;
mod worker;

use std::time::Duration;

pub use asynchronous::MAX_ATTEMPTS;
pub use gateway::Gateway;
pub use join::{JoinFailure, Policies, Role};
pub use registry_log::KvLog;

/// A connection to NATS (what [`connect`] returns).
pub type NatsClient = async_nats::Client;
pub use worker::Worker;

/// How long connecting to NATS may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach NATS at {url}: {reason}. Start a server with JetStream (`nats-server -js`), \
     or pass its URL with --nats"
)]
pub struct ConnectError {
    pub url: String,
    pub reason: String,
}

/// Connects to the NATS server at `url` as `name` (how the server's monitoring lists it).
/// After the first connection the client reconnects on its own.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| ConnectError {
            url: url.to_owned(),
            reason: e.to_string(),
        })
}

/// What `cella doctor` reports about a NATS server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NatsHealth {
    pub url: String,
    pub server_version: String,
    pub max_payload: usize,
    /// JetStream answers (asynchronous invocations need it).
    pub jetstream: Result<(), String>,
}

/// Connects to `url` and checks what a cluster needs of it.
pub async fn probe(url: &str) -> Result<NatsHealth, ConnectError> {
    let client = connect(url, "cella-doctor").await?;
    let info = client.server_info();
    // The account-info request, read loosely: any server version's answer will do.
    let fix = "start nats-server with JetStream (`-js`, and a store directory `-sd`)";
    let jetstream = match client.request("$JS.API.INFO", "".into()).await {
        Err(e) => Err(format!("not enabled ({e}); {fix}")),
        Ok(answer) => match serde_json::from_slice::<serde_json::Value>(&answer.payload) {
            Ok(info) if info.get("error").is_none() => Ok(()),
            Ok(info) => Err(format!("{}; {fix}", info["error"])),
            Err(e) => Err(format!("unreadable answer ({e}); {fix}")),
        },
    };
    Ok(NatsHealth {
        url: url.to_owned(),
        server_version: info.version,
        max_payload: info.max_payload,
        jetstream,
    })
}
