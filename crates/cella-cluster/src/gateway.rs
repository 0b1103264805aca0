//! The gateway role: the HTTP API and the sealed registry, as on a single node, with every
//! invocation run by a worker. The gateway admits workers, answers their state calls and
//! hands each invocation to the `cella-workers` queue group: NATS gives it to one worker, so
//! load spreads with no scheduler of cella's own.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use cella_runtime::{Dispatcher, ErrorCode, Job, Outcome, Platform, RemoteFailure, RuntimeError};

use crate::bus::{BusError, SealedBus, short_id};
use crate::join::{Admissions, Policies};
use crate::subjects::{INVOKE, ROTATED};
use crate::wire;

/// How much longer than the function's own timeout a gateway waits for a worker's answer
/// (loading and compiling the code, and the trip over the bus).
const DISPATCH_MARGIN: Duration = Duration::from_secs(30);

/// A running gateway's part on the bus.
pub struct Gateway {
    bus: Arc<SealedBus>,
}

impl Gateway {
    /// Joins `platform` to the bus as one of the cluster's gateways: admits workers and
    /// gateways that pass their `policies`, serves their state calls, dispatches every invocation
    /// to them, and follows the registry it shares through `log` with the other gateways
    /// (see [`crate::share_registry`]).
    pub async fn start(
        platform: Arc<Platform>,
        client: Client,
        policies: Policies,
        log: Arc<crate::KvLog>,
    ) -> Result<Gateway, RuntimeError> {
        let secrets = platform.cluster_secrets()?;
        let bus = Arc::new(
            SealedBus::new(client.clone(), &secrets, platform.clone()).leading_rotations(),
        );
        let admissions = Admissions::new(platform.clone(), bus.node(), policies);
        tokio::spawn(crate::registry_log::follow(
            log,
            bus.clone(),
            platform.clone(),
        ));
        tokio::spawn(async move {
            if let Err(e) = admissions.serve(client).await {
                tracing::error!("the join service stopped: {e}");
            }
        });
        let in_flight = Arc::new(crate::state::InFlight::default());
        let demand = Arc::new(crate::warm::Demand::default());
        tokio::spawn(crate::warm::announce(bus.clone(), demand.clone()));
        let state = (bus.clone(), platform.clone(), in_flight.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::state::serve(state.0, state.1, state.2).await {
                tracing::error!("the state service stopped: {e}");
            }
        });
        let exhausted = (bus.clone(), platform.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::asynchronous::dead_letter_exhausted(exhausted.0, exhausted.1).await
            {
                tracing::error!("the dead-letter sweep stopped: {e}");
            }
        });
        tokio::spawn(crate::asynchronous::sweep_finished(
            bus.clone(),
            platform.clone(),
        ));
        let control = (bus.clone(), platform.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::asynchronous::serve_control(control.0, control.1).await {
                tracing::error!("the asynchronous-job service stopped: {e}");
            }
        });
        let queue = crate::asynchronous::JetStreamQueue::new(bus.clone())
            .await
            .map_err(|e| {
                RuntimeError::Internal(format!(
                    "cannot set up the JetStream stream for asynchronous jobs: {e}; start \
                     nats-server with JetStream enabled (`nats-server -js`)"
                ))
            })?;
        platform.queue_to(Arc::new(queue))?;
        platform.publish_events_to(Arc::new(crate::triggers::NatsEvents {
            client: bus.client().clone(),
        }))?;
        tokio::spawn(crate::triggers::follow(
            platform.clone(),
            bus.client().clone(),
        ));
        tokio::spawn(announce_rotations(bus.clone(), platform.clone()));
        tokio::spawn(crate::capacity::follow(bus.clone(), platform.clone()));
        tokio::spawn(prune(platform.clone()));
        platform.dispatch_to(Arc::new(NatsDispatcher {
            bus: bus.clone(),
            platform: platform.clone(),
            in_flight,
            demand,
        }))?;
        Ok(Gateway { bus })
    }

    pub fn epoch(&self) -> u32 {
        self.bus.epoch()
    }

    pub fn node_id(&self) -> String {
        self.bus.node_id()
    }
}

/// Forgets old finished asynchronous invocations every ten minutes.
async fn prune(platform: Arc<Platform>) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        every.tick().await;
        match platform.prune_async().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("forgot {n} asynchronous invocations finished over a day ago"),
            Err(e) => tracing::warn!("cannot prune asynchronous invocations: {e}"),
        }
    }
}

/// When the cluster key is rotated: tells the members (under the old key, so only they can
/// read it) to join again, then seals with the new key.
async fn announce_rotations(bus: Arc<SealedBus>, platform: Arc<Platform>) {
    let mut rotations = platform.watch_cluster_key();
    while rotations.changed().await.is_ok() {
        let secrets = match platform.cluster_secrets() {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::error!("cannot read the rotated cluster key: {e}");
                continue;
            }
        };
        match bus.seal_event(ROTATED, &secrets.epoch.to_le_bytes()) {
            Ok(notice) => {
                if let Err(e) = bus.client().publish(ROTATED, notice).await {
                    tracing::error!("cannot announce the rotation: {e}");
                }
            }
            Err(e) => tracing::error!("cannot seal the rotation notice: {e}"),
        }
        bus.rotate(&secrets);
        tracing::info!(epoch = secrets.epoch, "rotated the cluster key");
    }
}

struct NatsDispatcher {
    bus: Arc<SealedBus>,
    platform: Arc<Platform>,
    in_flight: Arc<crate::state::InFlight>,
    demand: Arc<crate::warm::Demand>,
}

#[async_trait::async_trait]
impl Dispatcher for NatsDispatcher {
    async fn dispatch(&self, job: Job) -> Result<Outcome, RuntimeError> {
        let timeout = Duration::from_millis(job.record.limits.timeout_ms) + DISPATCH_MARGIN;
        self.demand.invoked(&job.record);
        let payload = wire::encode_job(&job);
        let id = cella_bus::random_id();
        self.in_flight.open(id);
        let answer = self
            .bus
            .request_as(id, INVOKE, "worker", &payload, timeout)
            .await;
        self.in_flight.close(&id);
        let answer = answer.map_err(failure)?;
        self.platform
            .metrics()
            .job_ran_on(&short_id(&answer.header.sender));
        wire::decode_outcome(&answer.payload).map_err(|e| {
            RuntimeError::Internal(format!("a worker's answer could not be read: {e}"))
        })?
    }
}

/// What a caller is told when the bus failed an invocation.
fn failure(e: BusError) -> RuntimeError {
    let code = match &e {
        BusError::NoResponders { .. } => ErrorCode::Overloaded,
        BusError::TimedOut { .. } => ErrorCode::Timeout,
        BusError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        BusError::Refused(_) => ErrorCode::IntegrityError,
        BusError::Nats(_) => ErrorCode::Internal,
    };
    RuntimeError::Remote(Box::new(RemoteFailure {
        code,
        message: e.to_string(),
        log: None,
    }))
}
