//! Asynchronous invocations on JetStream.
//!
//! - The gateway stores each job, sealed, in the `CELLA_ASYNC` stream (on disk, work-queue
//!   retention) with the invocation id as `Nats-Msg-Id`, so a job stored twice within the
//!   stream's duplicate window is kept once; it answers 202 only after JetStream acknowledged
//!   the store.
//! - Workers share one durable pull consumer: JetStream delivers each job to one worker at a
//!   time and again if it is not acknowledged in time (a worker killed mid-run), up to
//!   [`MAX_ATTEMPTS`] deliveries.
//! - A worker runs the job with its state writes held back ([`BufferedState`]) and reports
//!   the outcome to a gateway, which records it — the result and the state writes in one
//!   registry transaction, only if every value the job read still holds, and only once. Only
//!   then is the message acknowledged. A job delivered again after it finished is
//!   acknowledged without running; one whose reads went stale runs again. So each job takes
//!   effect exactly once however often it is delivered.
//! - A failed attempt is retried with backoff unless retrying cannot help; after the last
//!   attempt the invocation is dead-lettered (status `dead_letter`, and counted).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use cella_runtime::{JobQueue, Outcome, Platform, RuntimeError};
use cella_sandbox::{StateError, StateStore};
use cella_store::{AsyncError, AsyncStatus, Finish, Finished, StateRead, StateWrite};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::bus::{BusError, SealedBus};
use crate::state::RemoteState;
use crate::subjects::{ASYNC_CONTROL, GATEWAYS, JOBS, JOBS_CONSUMER, JOBS_STREAM, STATE};
use crate::wire;

/// Attempts of one job (runs that failed) at most; the last failure dead-letters it.
pub const MAX_ATTEMPTS: u32 = 5;
/// Deliveries of one job at most: besides attempts, a job is delivered again when its worker
/// died or could not reach a gateway. A safety net against a job that kills its workers.
const MAX_DELIVERIES: i64 = 25;
/// How long a delivered job may go unacknowledged before JetStream delivers it again; a
/// worker running a job reports progress well within it.
const ACK_WAIT: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long the stream remembers ids to drop duplicates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Runs of one delivery whose reads went stale before another writer's, at most.
const MAX_CONFLICT_RUNS: usize = 50;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Asynchronous jobs one worker runs at once, at most: jobs of one function often touch the
/// same keys, and each one more in flight is one more whose reads may go stale.
const ASYNC_SLOTS: usize = 8;

/// Asynchronous jobs a worker with `instances` sandbox slots runs at once.
pub(crate) fn async_slots(instances: u32) -> usize {
    (instances as usize).clamp(1, ASYNC_SLOTS)
}

/// The stream and the consumer, created if missing (gateways and workers both make sure).
async fn jobs_consumer(
    client: &async_nats::Client,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![JOBS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            JOBS_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(JOBS_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVERIES,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// What travels in the stream: the invocation id and the job (sealed together).
#[derive(Serialize, Deserialize)]
struct JobHead {
    id: String,
}

/// The gateway's queue: JetStream.
pub(crate) struct JetStreamQueue {
    pub(crate) bus: Arc<SealedBus>,
    pub(crate) js: jetstream::Context,
}

impl JetStreamQueue {
    pub(crate) async fn new(bus: Arc<SealedBus>) -> Result<Self, async_nats::Error> {
        jobs_consumer(bus.client()).await?;
        let js = jetstream::new(bus.client().clone());
        Ok(JetStreamQueue { bus, js })
    }
}

fn unavailable(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Overloaded(format!(
        "the job could not be stored ({what}); it was not accepted: retry once the cluster's \
         NATS server is back"
    ))
}

#[async_trait::async_trait]
impl JobQueue for JetStreamQueue {
    async fn enqueue(&self, id: &str, job: cella_runtime::Job) -> Result<(), RuntimeError> {
        let payload = wire::frame(&JobHead { id: id.to_owned() }, &wire::encode_job(&job));
        let sealed = self
            .bus
            .seal_event(JOBS, &payload)
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(sealed)
            .message_id(id);
        let ack = self
            .js
            .send_publish(JOBS, publish)
            .await
            .map_err(unavailable)?;
        tokio::time::timeout(CONTROL_TIMEOUT, ack)
            .await
            .map_err(|_| unavailable("JetStream did not confirm in time"))?
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A worker's call to a gateway about an asynchronous invocation.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control {
    /// Does it still wait to run, and after how many attempts?
    Pending { id: String },
    /// How an attempt ended (its output, if any, is the body).
    Finish(FinishHead),
}

#[derive(Serialize, Deserialize)]
struct FinishHead {
    id: String,
    attempt: u32,
    status: AsyncStatus,
    error: Option<AsyncError>,
    log: Option<String>,
    /// Keys (base64) and the SHA-256 (hex) of the value read, or none if absent.
    reads: Vec<(String, Option<String>)>,
    /// Keys (base64) and the value written (base64), or none if deleted.
    writes: Vec<(String, Option<String>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ControlAnswer {
    /// Still queued, after this many attempts.
    Waiting(u32),
    /// Finished (or unknown): nothing to run.
    Done,
    Recorded(AsyncStatus),
    AlreadyFinal,
    Conflict,
    Full {
        would_be: u64,
        limit: u64,
    },
    Unavailable(String),
}

/// The gateway's side of [`Control`].
pub(crate) async fn serve_control(
    bus: Arc<SealedBus>,
    platform: Arc<Platform>,
) -> Result<(), async_nats::Error> {
    crate::bus::serve_requests(bus, ASYNC_CONTROL.to_owned(), GATEWAYS, move |opened| {
        let platform = platform.clone();
        async move {
            let answer = match wire::unframe::<Control>(&opened.payload) {
                Ok((control, body)) => control_answer(&platform, control, body).await,
                Err(e) => ControlAnswer::Unavailable(e.to_string()),
            };
            wire::frame(&answer, b"")
        }
    })
    .await
}

async fn control_answer(platform: &Platform, control: Control, body: Bytes) -> ControlAnswer {
    let unavailable = |e: &dyn std::fmt::Display| ControlAnswer::Unavailable(e.to_string());
    match control {
        Control::Pending { id } => match platform.async_pending(&id).await {
            Ok(Some(attempts)) => ControlAnswer::Waiting(attempts),
            Ok(None) => ControlAnswer::Done,
            Err(e) => unavailable(&e),
        },
        Control::Finish(head) => {
            let id = head.id.clone();
            let finish = match finish_from(head, body) {
                Ok(finish) => finish,
                Err(e) => return unavailable(&e),
            };
            match platform.finish_async(&id, finish).await {
                Ok(Finished::Recorded(invocation)) => ControlAnswer::Recorded(invocation.status),
                Ok(Finished::AlreadyFinal(_)) => ControlAnswer::AlreadyFinal,
                Ok(Finished::Conflict) => ControlAnswer::Conflict,
                Ok(Finished::Full { would_be, limit }) => ControlAnswer::Full { would_be, limit },
                Err(e) => unavailable(&e),
            }
        }
    }
}

fn finish_from(head: FinishHead, output: Bytes) -> Result<Finish, wire::Malformed> {
    let reads = head
        .reads
        .into_iter()
        .map(|(key, hash)| {
            let value_sha256 = match hash {
                None => None,
                Some(hex_hash) => Some(
                    hex::decode(hex_hash)
                        .ok()
                        .and_then(|h| h.try_into().ok())
                        .ok_or_else(|| wire::Malformed("a read's hash".into()))?,
                ),
            };
            Ok(StateRead {
                key: wire::decode_key(&key)?,
                value_sha256,
            })
        })
        .collect::<Result<Vec<_>, wire::Malformed>>()?;
    let writes = head
        .writes
        .into_iter()
        .map(|(key, value)| {
            Ok(StateWrite {
                key: wire::decode_key(&key)?,
                value: value.map(|v| wire::decode_key(&v)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, wire::Malformed>>()?;
    Ok(Finish {
        attempt: head.attempt,
        status: head.status,
        output: (head.status == AsyncStatus::Succeeded).then(|| output.to_vec()),
        error: head.error,
        log: head.log,
        reads,
        writes,
        // Set by the gateway.
        state_limit: 0,
        finished_at: String::new(),
    })
}

/// A job's key-value state with its writes held back: reads go to the gateway (each key
/// once, remembered with a hash of what was read), writes stay here until the outcome is
/// recorded with them, or dropped with a failed attempt.
pub(crate) struct BufferedState {
    remote: RemoteState,
    /// The most the held-back writes may hold (keys and values), the function's state limit:
    /// a guest cannot fill the worker's memory through them.
    limit: u64,
    /// Each key as first read: the value (kept, so the job sees one value per key).
    read: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    written: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl BufferedState {
    fn new(remote: RemoteState, limit: u64) -> Self {
        BufferedState {
            remote,
            limit,
            read: Mutex::default(),
            written: Mutex::default(),
        }
    }

    fn reads(&self) -> Vec<(String, Option<String>)> {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.iter()
            .map(|(key, value)| {
                let hash = value
                    .as_deref()
                    .map(|v| hex::encode(cella_store::value_sha256(v)));
                (wire::encode_key(key), hash)
            })
            .collect()
    }

    fn writes(&self) -> Vec<(String, Option<String>)> {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written
            .iter()
            .map(|(key, value)| {
                (
                    wire::encode_key(key),
                    value.as_deref().map(wire::encode_key),
                )
            })
            .collect()
    }
}

impl StateStore for BufferedState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(value) = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Ok(value.clone());
        }
        if let Some(value) = self
            .read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Ok(value.clone());
        }
        let value = self.remote.get(key)?;
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_vec(), value.clone());
        Ok(value)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let others: u64 = written
            .iter()
            .filter(|(k, _)| k.as_slice() != key)
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let would_be = others + (key.len() + value.len()) as u64;
        if would_be > self.limit {
            return Err(StateError::Full {
                would_be,
                limit: self.limit,
            });
        }
        written.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StateError> {
        let existed = self.get(key)?.is_some();
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_vec(), None);
        Ok(existed)
    }
}

/// JetStream's advisory that a job was delivered its last time without being acknowledged.
#[derive(Deserialize)]
struct Exhausted {
    stream_seq: u64,
    deliveries: u64,
}

/// The gateway's side: a job JetStream gave up on (every delivery lost with its worker, or
/// cut off from the gateway) is dead-lettered, so no invocation stays queued for ever.
pub(crate) async fn dead_letter_exhausted(
    bus: Arc<SealedBus>,
    platform: Arc<Platform>,
) -> Result<(), async_nats::Error> {
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{JOBS_CONSUMER}");
    // In the gateways' queue group: one gateway handles each advisory.
    let mut advisories = bus
        .client()
        .queue_subscribe(subject, GATEWAYS.to_owned())
        .await?;
    let js = jetstream::new(bus.client().clone());
    while let Some(advisory) = advisories.next().await {
        // The advisory itself is unsealed (the server's); what it points at must be a job
        // of this cluster, and only a job still queued is touched.
        let Ok(exhausted) = serde_json::from_slice::<Exhausted>(&advisory.payload) else {
            continue;
        };
        let Ok(stream) = js.get_stream(JOBS_STREAM).await else {
            continue;
        };
        let Ok(stored) = stream.get_raw_message(exhausted.stream_seq).await else {
            continue;
        };
        let Ok(opened) = bus.open_event(&stored.payload, JOBS) else {
            continue;
        };
        let Ok((head, _)) = wire::unframe::<JobHead>(&opened.payload) else {
            continue;
        };
        if let Ok(Some(attempts)) = platform.async_pending(&head.id).await {
            let finish = Finish {
                attempt: attempts,
                status: AsyncStatus::DeadLetter,
                output: None,
                error: Some(AsyncError {
                    code: "dead_letter".into(),
                    message: format!(
                        "the job was delivered {} times without an outcome (its workers were \
                         lost or could not reach a gateway); it will not be tried again",
                        exhausted.deliveries
                    ),
                }),
                log: None,
                reads: Vec::new(),
                writes: Vec::new(),
                state_limit: 0,
                finished_at: String::new(),
            };
            if let Err(e) = platform.finish_async(&head.id, finish).await {
                tracing::warn!(job = %head.id, "cannot dead-letter an exhausted job: {e}");
                continue;
            }
        }
        let _ = stream.delete_message(exhausted.stream_seq).await;
    }
    Ok(())
}

/// How often a gateway looks for messages of finished jobs left in the stream.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Messages one sweep looks at, at most (the stream normally holds only jobs in flight).
const SWEEP_MAX: u64 = 10_000;

/// The gateway's side: deletes the messages of jobs recorded as finished that are still in
/// the stream. A job's message goes when its worker acknowledges it, but an acknowledgement
/// JetStream lost in a crash, or a max-deliveries advisory sent while no gateway was
/// connected, leaves the message behind for good.
pub(crate) async fn sweep_finished(bus: Arc<SealedBus>, platform: Arc<Platform>) {
    let js = jetstream::new(bus.client().clone());
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match sweep_once(&js, &bus, &platform).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!("deleted {swept} finished jobs left in the job stream"),
            Err(e) => tracing::debug!("cannot sweep the job stream now: {e}"),
        }
    }
}

async fn sweep_once(
    js: &jetstream::Context,
    bus: &SealedBus,
    platform: &Platform,
) -> Result<usize, async_nats::Error> {
    let mut stream = js.get_stream(JOBS_STREAM).await?;
    let (messages, first, last) = {
        let state = &stream.info().await?.state;
        (state.messages, state.first_sequence, state.last_sequence)
    };
    if messages == 0 {
        return Ok(0);
    }
    let last = last.min(first.saturating_add(SWEEP_MAX));
    let mut swept = 0;
    for sequence in first..=last {
        let Ok(stored) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let Ok(opened) = bus.open_event(&stored.payload, JOBS) else {
            continue;
        };
        let Ok((head, _)) = wire::unframe::<JobHead>(&opened.payload) else {
            continue;
        };
        if let Ok(true) = platform.async_is_final(&head.id).await
            && stream.delete_message(sequence).await.is_ok()
        {
            swept += 1;
        }
    }
    Ok(swept)
}

/// A worker's side: takes jobs from the shared consumer until the connection closes.
pub(crate) async fn take_jobs(
    bus: Arc<SealedBus>,
    platform: Arc<Platform>,
    slots: Arc<Semaphore>,
) -> Result<(), async_nats::Error> {
    loop {
        // The stream of messages ends or fails when the server goes away; begin again.
        let messages = match jobs_consumer(bus.client()).await {
            // Pull no more than can run: a job waiting here gets no progress reports and
            // would be delivered again elsewhere.
            Ok(consumer) => consumer
                .stream()
                .max_messages_per_batch(slots.available_permits().max(1))
                .messages()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!("cannot take asynchronous jobs yet: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!("asynchronous jobs: {e}");
                    break;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let (bus, platform) = (bus.clone(), platform.clone());
            tokio::spawn(async move {
                run_job(&bus, &platform, message).await;
                drop(slot);
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn control(
    bus: &SealedBus,
    control: &Control,
    body: &[u8],
) -> Result<ControlAnswer, BusError> {
    let answer = bus
        .request(
            ASYNC_CONTROL,
            "gateway",
            &wire::frame(control, body),
            CONTROL_TIMEOUT,
        )
        .await?;
    wire::unframe::<ControlAnswer>(&answer.payload)
        .map(|(answer, _)| answer)
        .map_err(|e| BusError::Nats(e.to_string()))
}

/// Backoff before the next attempt after `attempt` failed.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.min(6)))
}

async fn run_job(bus: &Arc<SealedBus>, platform: &Arc<Platform>, message: jetstream::Message) {
    let opened = match bus.open_event(&message.payload, JOBS) {
        Ok(opened) => opened,
        // Sealed under an epoch this worker does not hold (yet): another worker, or this
        // one once it joined again, can open it.
        Err(cella_bus::SealError::WrongEpoch { .. }) => {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
            return;
        }
        // Not sealed by this cluster: it can never run.
        Err(_) => {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let Ok((head, job_bytes)) = wire::unframe::<JobHead>(&opened.payload) else {
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let id = head.id;
    // Attempts are the runs that failed, as the gateway counted them: a delivery lost with a
    // worker is no attempt.
    let attempt = match control(bus, &Control::Pending { id: id.clone() }, b"").await {
        Ok(ControlAnswer::Waiting(attempts)) => attempts.saturating_add(1),
        Ok(ControlAnswer::Done) => {
            // It finished before (its acknowledgement was lost): nothing to do.
            let _ = message.ack().await;
            return;
        }
        other => {
            tracing::warn!(job = %id, "cannot ask about a job yet ({})", describe(&other));
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };

    // Tell JetStream the job is being worked on, so it is not delivered to another worker.
    let progress = {
        let message = message.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                if message.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        })
    };
    let ack = finish_job(bus, platform, &id, attempt, &job_bytes).await;
    progress.abort();
    let sent = match ack {
        Some(kind) => message.ack_with(kind).await,
        None => message.ack().await,
    };
    if let Err(e) = sent {
        tracing::warn!(job = %id, "could not acknowledge a job (it will be delivered again and finish once): {e}");
    }
}

fn describe(answer: &Result<ControlAnswer, BusError>) -> String {
    match answer {
        Ok(ControlAnswer::Unavailable(why)) => why.clone(),
        Ok(_) => "an unexpected answer".into(),
        Err(e) => e.to_string(),
    }
}

/// Runs the job until its outcome is recorded; returns how to acknowledge the message
/// (`None`: done).
async fn finish_job(
    bus: &Arc<SealedBus>,
    platform: &Arc<Platform>,
    id: &str,
    attempt: u32,
    job_bytes: &[u8],
) -> Option<AckKind> {
    for _ in 0..MAX_CONFLICT_RUNS {
        let job = match wire::decode_job(job_bytes) {
            Ok(job) => job,
            Err(_) => return Some(AckKind::Term),
        };
        let state = job.record.permissions.kv.then(|| {
            Arc::new(BufferedState::new(
                RemoteState {
                    bus: bus.clone(),
                    subject: STATE.to_owned(),
                    function: job.record.name.to_string(),
                    owner: job.record.owner.to_string(),
                    job: String::new(),
                },
                platform.config().max_state_bytes,
            ))
        });
        let outcome = platform
            .execute(job, state.clone().map(|s| s as Arc<dyn StateStore>))
            .await;
        let (head, output) = finish_head(id, attempt, outcome, state.as_deref());
        let status = head.status;
        match control(bus, &Control::Finish(head), &output).await {
            Ok(ControlAnswer::Recorded(AsyncStatus::Queued)) => {
                return Some(AckKind::Nak(Some(backoff(attempt))));
            }
            Ok(ControlAnswer::Recorded(_) | ControlAnswer::AlreadyFinal) => return None,
            // Another job changed what this one read: run it again on the new values, after
            // a short random pause so that jobs colliding on one key spread out.
            Ok(ControlAnswer::Conflict) => {
                let mut jitter = [0u8; 1];
                let _ = getrandom::fill(&mut jitter);
                tokio::time::sleep(Duration::from_millis(u64::from(jitter[0] % 20))).await;
                continue;
            }
            Ok(ControlAnswer::Full { would_be, limit }) => {
                let failure = RuntimeError::Invalid(format!(
                    "the invocation's writes would grow the function's state to {would_be} \
                     bytes, past its limit of {limit}; nothing was written"
                ));
                return fail(bus, id, attempt, failure).await;
            }
            // The outcome does not fit on the bus: it is recorded as a failure that says so.
            Err(BusError::TooLarge { bytes, max }) => {
                let failure = RuntimeError::Invalid(format!(
                    "the function's output ({bytes} bytes with its log, sealed) is larger than \
                     the bus carries ({max}); raise the NATS server's max_payload or return less"
                ));
                return fail(bus, id, attempt, failure).await;
            }

            other => {
                tracing::warn!(job = %id, ?status, "could not record a job's outcome ({}); it will run again", describe(&other));
                return Some(AckKind::Nak(Some(Duration::from_secs(1))));
            }
        }
    }
    tracing::warn!(job = %id, "a job's reads kept going stale; it will be delivered again");
    Some(AckKind::Nak(Some(backoff(attempt))))
}

/// Records the invocation as failed for good with `failure`; how to acknowledge the message.
async fn fail(bus: &SealedBus, id: &str, attempt: u32, failure: RuntimeError) -> Option<AckKind> {
    let (head, _) = finish_head(id, attempt, Err(failure), None);
    let head = FinishHead {
        status: AsyncStatus::Failed,
        ..head
    };
    match control(bus, &Control::Finish(head), b"").await {
        Ok(ControlAnswer::Recorded(_) | ControlAnswer::AlreadyFinal) => None,
        _ => Some(AckKind::Nak(Some(Duration::from_secs(1)))),
    }
}

/// The report of one attempt: its status, error, log and state changes, and the output.
fn finish_head(
    id: &str,
    attempt: u32,
    outcome: Result<Outcome, RuntimeError>,
    state: Option<&BufferedState>,
) -> (FinishHead, Vec<u8>) {
    let (reads, writes) = state.map_or_else(Default::default, |s| (s.reads(), s.writes()));
    let head = |status, error, log| FinishHead {
        id: id.to_owned(),
        attempt,
        status,
        error,
        log,
        reads: Vec::new(),
        writes: Vec::new(),
    };
    match outcome {
        Ok(Outcome::Command(output)) => (
            FinishHead {
                reads,
                writes,
                ..head(AsyncStatus::Succeeded, None, Some(output.log.to_text()))
            },
            output.stdout.to_vec(),
        ),
        Ok(Outcome::Http(_)) => {
            let error = AsyncError {
                code: "wrong_kind".into(),
                message: "an HTTP function cannot run asynchronously".into(),
            };
            (head(AsyncStatus::Failed, Some(error), None), Vec::new())
        }
        Err(e) => {
            let code = e.code();
            let status = if cella_runtime::is_final_failure(code) {
                AsyncStatus::Failed
            } else if attempt >= MAX_ATTEMPTS {
                AsyncStatus::DeadLetter
            } else {
                AsyncStatus::Queued
            };
            let error = AsyncError {
                code: code.as_str().to_owned(),
                message: e.to_string(),
            };
            (head(status, Some(error), e.log()), Vec::new())
        }
    }
}
