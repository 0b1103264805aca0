//! The worker role: joins the cluster (attested both ways), then takes invocations from the
//! `cella-workers` queue group, runs each in its sandbox exactly as a single node would
//! (the code from the shared blob store, verified; permissions checked again) and answers
//! sealed. A worker keeps nothing of a tenant's beyond an invocation: state lives with the
//! gateway and is reached through sealed calls.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Message};
use cella_runtime::{Platform, RuntimeError};
use cella_sandbox::StateStore;
use cella_tee::Policy;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::bus::{BusError, SealedBus};
use crate::join::{JoinFailure, join};
use crate::state::RemoteState;
use crate::subjects::{INVOKE, ROTATED, WORKERS};
use crate::wire;

/// How often a worker asks again while no gateway answers, at most.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);

/// A worker that joined, ready to take work.
pub struct Worker {
    platform: Arc<Platform>,
    bus: Arc<SealedBus>,
    /// Synchronous and asynchronous invocations running: all permits back means idle.
    sync_slots: Arc<Semaphore>,
    async_slots: Arc<Semaphore>,
    epoch: u32,
    /// What the gateway must pass when the worker joins again (after a rotation).
    gateway_policy: Policy,
}

impl Worker {
    /// Joins through a gateway that passes `gateway_policy`, waiting for one to answer.
    pub async fn join(
        platform: Arc<Platform>,
        client: Client,
        gateway_policy: &Policy,
    ) -> Result<Worker, JoinFailure> {
        let secrets = join_when_answered(&client, &platform, gateway_policy).await?;
        platform
            .use_cluster_blob_key(secrets.blobs.clone())
            .map_err(|e| JoinFailure::Protocol(e.to_string()))?;
        let bus = Arc::new(SealedBus::new(client, &secrets, platform.clone()));
        let instances = platform.config().sandbox.instances;
        Ok(Worker {
            sync_slots: Arc::new(Semaphore::new(instances as usize)),
            async_slots: Arc::new(Semaphore::new(crate::asynchronous::async_slots(instances))),
            platform,
            bus,
            epoch: secrets.epoch,
            gateway_policy: gateway_policy.clone(),
        })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn node_id(&self) -> String {
        self.bus.node_id()
    }

    /// Takes invocations, synchronous and asynchronous, until the connection closes or the
    /// worker is not admitted again after a rotation of the cluster key.
    pub async fn run(&self) -> Result<(), async_nats::Error> {
        let jobs = crate::asynchronous::take_jobs(
            self.bus.clone(),
            self.platform.clone(),
            self.async_slots.clone(),
        );
        let warming = AbortOnDrop(tokio::spawn(crate::warm::follow(
            self.bus.clone(),
            self.platform.clone(),
        )));
        let outcome = tokio::select! {
            taken = jobs => taken,
            served = self.serve_invocations() => served,
            rejoined = self.follow_rotations() => rejoined,
        };
        drop(warming);
        outcome
    }

    /// Waits, at most `grace`, for the invocations still running to finish (after `run` was
    /// stopped, so no new ones come); returns whether all did. Asynchronous jobs cut short are
    /// delivered again to another worker.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = |slots: &Arc<Semaphore>, n: usize| {
            let slots = slots.clone();
            async move { slots.acquire_many_owned(n as u32).await.is_ok() }
        };
        let sync = self.platform.config().sandbox.instances as usize;
        let asynchronous = crate::asynchronous::async_slots(sync as u32);
        tokio::time::timeout(grace, async {
            all(&self.sync_slots, sync).await && all(&self.async_slots, asynchronous).await
        })
        .await
        .unwrap_or(false)
    }

    /// Joins again whenever the gateway announces a new cluster key; a worker refused then
    /// stops (it could open no more work).
    async fn follow_rotations(&self) -> Result<(), async_nats::Error> {
        let mut notices = self.bus.client().subscribe(ROTATED).await?;
        while let Some(notice) = notices.next().await {
            let Ok(opened) = self.bus.open_event(&notice.payload, ROTATED) else {
                continue;
            };
            // A notice replayed later names an epoch already reached: nothing to do.
            let announced = <[u8; 4]>::try_from(opened.payload.as_slice()).map(u32::from_le_bytes);
            if announced.is_ok_and(|epoch| epoch <= self.bus.epoch()) {
                continue;
            }
            let client = self.bus.client().clone();
            let wanted = announced.unwrap_or(0);
            let mut joined =
                join_when_answered(&client, &self.platform, &self.gateway_policy).await;
            // A gateway that has not yet applied the rotation grants the old epoch: ask again.
            for _ in 0..20 {
                match &joined {
                    Ok(secrets) if secrets.epoch < wanted => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        joined =
                            join_when_answered(&client, &self.platform, &self.gateway_policy).await;
                    }
                    _ => break,
                }
            }
            match joined {
                Ok(secrets) => {
                    self.bus.rotate(&secrets);
                    // Not `println!`: a stdout that cannot be written must not stop a worker.
                    let _ = writeln!(
                        std::io::stdout(),
                        "worker {} joined again (cluster key epoch {})",
                        self.node_id(),
                        secrets.epoch
                    );
                }
                Err(e) => {
                    return Err(format!("not admitted again after a key rotation: {e}").into());
                }
            }
        }
        Ok(())
    }

    /// Answers synchronous invocations; at most as many run at once as the sandbox has
    /// instances.
    async fn serve_invocations(&self) -> Result<(), async_nats::Error> {
        let mut jobs = self
            .bus
            .client()
            .queue_subscribe(INVOKE, WORKERS.to_owned())
            .await?;
        let total = self.platform.config().sandbox.instances;
        let slots = self.sync_slots.clone();
        let announcing = tokio::spawn(crate::capacity::announce(
            self.bus.clone(),
            slots.clone(),
            total,
        ));
        let _stop_announcing = AbortOnDrop(announcing);
        while let Some(message) = jobs.next().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (bus, platform) = (self.bus.clone(), self.platform.clone());
            tokio::spawn(async move {
                serve(&bus, &platform, message).await;
                drop(slot);
            });
        }
        Ok(())
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Joins, waiting while no gateway answers.
async fn join_when_answered(
    client: &Client,
    platform: &Platform,
    gateway_policy: &Policy,
) -> Result<cella_store::ClusterSecrets, JoinFailure> {
    let mut wait = Duration::from_millis(200);
    loop {
        match join(client, platform, gateway_policy).await {
            Ok(secrets) => return Ok(secrets),
            // No gateway yet, or a passing hiccup (the bus, too many joins at once): again.
            Err(e @ (JoinFailure::NoGateway | JoinFailure::Protocol(_))) => {
                tracing::info!("cannot join yet ({e}); asking again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(JOIN_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve(bus: &Arc<SealedBus>, platform: &Platform, message: Message) {
    let Some(opened) = bus.open_request(&message, INVOKE) else {
        return;
    };
    let outcome = match wire::decode_job(&opened.payload) {
        Ok(job) => {
            let state = job.record.permissions.kv.then(|| {
                Arc::new(RemoteState {
                    bus: bus.clone(),
                    // The gateway that sent it holds the invocation open; only it takes
                    // its writes.
                    subject: crate::subjects::state_of(&opened.header.sender),
                    function: job.record.name.to_string(),
                    owner: job.record.owner.to_string(),
                    job: hex::encode(opened.header.id),
                }) as Arc<dyn StateStore>
            });
            platform.execute(job, state).await
        }
        Err(e) => Err(RuntimeError::Internal(e.to_string())),
    };
    // The operator's log names the message, never the function or tenant.
    tracing::debug!(
        job = %crate::bus::short_id(&opened.header.id),
        outcome = outcome.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok"),
        "ran an invocation"
    );
    let answer = wire::encode_outcome(&outcome);
    let sent = match bus.reply(&message, &opened.header, &answer).await {
        Err(BusError::TooLarge { bytes, max }) => {
            // The gateway still gets an answer: one that fits and says why.
            let too_large = RuntimeError::Invalid(format!(
                "the function's answer ({bytes} bytes sealed) is larger than the bus carries \
                 ({max} bytes); raise the NATS server's max_payload or return less"
            ));
            bus.reply(
                &message,
                &opened.header,
                &wire::encode_outcome(&Err(too_large)),
            )
            .await
        }
        sent => sent,
    };
    if let Err(e) = sent {
        tracing::warn!("could not answer an invocation: {e}");
    }
}
