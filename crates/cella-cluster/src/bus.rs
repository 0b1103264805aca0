//! The sealed bus: NATS request-reply in which every message is a cella-bus [`Envelope`]
//! sealed under the cluster's bus key, bound to its subject (and a reply to its request), and
//! accepted once within the freshness window. NATS only routes ciphertext; whatever it
//! changes, replays, reorders or misdirects is refused here and counted in
//! `cella_bus_messages_rejected_total{reason}`.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_nats::{Client, Message, RequestErrorKind};
use cella_bus::{BusKey, Envelope, Header, Kind, MessageId, Opened, ReplayGuard, SealError, Stale};
use cella_runtime::Platform;
use cella_store::ClusterSecrets;
use futures::StreamExt;

/// How far a message's issue time may be from the receiver's clock; ids are remembered this
/// long, so a replay inside the window is caught by id and one outside it by age.
const FRESHNESS_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "no {who} answers on the bus subject `{subject}`; start one (`cella {who} --nats URL`) \
         or check that it uses the same NATS server"
    )]
    NoResponders { subject: String, who: &'static str },
    #[error("no answer on `{subject}` within {after:?}")]
    TimedOut { subject: String, after: Duration },
    #[error(
        "the message has {bytes} bytes, more than the NATS server's max_payload of {max}; raise \
         `max_payload` in the server's configuration (up to 64 MB) or send less"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error("an answer from the bus was refused ({0}); it is counted in the bus metrics")]
    Refused(&'static str),
    #[error("NATS: {0}")]
    Nats(String),
}

/// The name a refusal is counted under.
fn reason(e: &SealError) -> &'static str {
    match e {
        SealError::Malformed => "malformed",
        SealError::WrongEpoch { .. } => "wrong_epoch",
        SealError::Unauthentic => "unauthentic",
        SealError::WrongSubject { .. } => "wrong_subject",
        SealError::WrongKind { .. } => "wrong_kind",
        SealError::NotTheReply => "not_the_reply",
    }
}

fn stale_reason(e: &Stale) -> &'static str {
    match e {
        Stale::Replayed => "replayed",
        Stale::TooOld { .. } | Stale::FromTheFuture { .. } => "stale",
    }
}

/// How long after a rotation requests and replies under the previous epoch's key are still
/// accepted, and the gateway still seals its requests under it: the time members have to join
/// again. Without it, a request sealed under the new key that reaches a worker still on the
/// old one would go unanswered until its deadline.
pub const ROTATION_GRACE: Duration = Duration::from_secs(10);

pub struct SealedBus {
    client: Client,
    key: RwLock<BusKey>,
    /// The key of the epoch before and when it was replaced: kept to open stored events (jobs
    /// queued before a rotation), and requests and replies for [`ROTATION_GRACE`].
    previous: RwLock<Option<(BusKey, Instant)>>,
    /// Whether this node seals its requests under the previous key during the grace (the
    /// gateway, whose rotation the members have not all followed yet).
    leads_rotations: bool,
    /// This node's id on the bus (the sender of what it seals).
    node: MessageId,
    guard: Mutex<ReplayGuard>,
    /// The guarded clock, and the metrics refusals are counted in.
    platform: Arc<Platform>,
}

impl SealedBus {
    pub fn new(client: Client, secrets: &ClusterSecrets, platform: Arc<Platform>) -> Self {
        SealedBus {
            client,
            key: RwLock::new(BusKey::derive(&secrets.bus, secrets.epoch)),
            previous: RwLock::new(None),
            leads_rotations: false,
            node: cella_bus::random_id(),
            guard: Mutex::new(ReplayGuard::new(FRESHNESS_WINDOW.as_millis() as u64)),
            platform,
        }
    }

    /// For the gateway: during [`ROTATION_GRACE`] after a rotation, requests are sealed
    /// under the previous key, which every member holds until it has joined again.
    pub fn leading_rotations(mut self) -> Self {
        self.leads_rotations = true;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This node's id on the bus (the sender of everything it seals).
    pub fn node(&self) -> MessageId {
        self.node
    }

    /// Short hex id of this node on the bus (what metrics and logs name it by).
    pub fn node_id(&self) -> String {
        short_id(&self.node)
    }

    /// Seals with the key of a new epoch from now on; messages under older ones are refused.
    pub fn rotate(&self, secrets: &ClusterSecrets) {
        if secrets.epoch <= self.epoch() {
            return;
        }
        let next = BusKey::derive(&secrets.bus, secrets.epoch);
        let old = std::mem::replace(
            &mut *self.key.write().unwrap_or_else(PoisonError::into_inner),
            next,
        );
        *self
            .previous
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some((old, Instant::now()));
    }

    /// The previous epoch's key, if any.
    fn previous(&self) -> Option<BusKey> {
        let previous = self.previous.read().unwrap_or_else(PoisonError::into_inner);
        previous.as_ref().map(|(key, _)| key.clone())
    }

    /// The previous epoch's key while the grace after the rotation lasts.
    fn previous_in_grace(&self) -> Option<BusKey> {
        let previous = self.previous.read().unwrap_or_else(PoisonError::into_inner);
        previous
            .as_ref()
            .filter(|(_, replaced)| replaced.elapsed() < ROTATION_GRACE)
            .map(|(key, _)| key.clone())
    }

    /// Opens with the current key or, for a message of the epoch before, with `previous`.
    fn open_either<T>(
        &self,
        open: impl Fn(&BusKey) -> Result<T, SealError>,
        previous: Option<BusKey>,
    ) -> Result<T, SealError> {
        match (open(&self.key()), previous) {
            (Err(SealError::WrongEpoch { .. }), Some(previous)) => open(&previous),
            (opened, _) => opened,
        }
    }

    pub fn epoch(&self) -> u32 {
        self.key().epoch()
    }

    fn key(&self) -> BusKey {
        self.key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.platform
            .wall_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn header(&self, kind: Kind, subject: &str, in_reply_to: MessageId) -> Header {
        Header {
            kind,
            epoch: 0,
            sender: self.node,
            id: cella_bus::random_id(),
            in_reply_to,
            issued_at_ms: self.now_ms(),
            subject: subject.to_owned(),
        }
    }

    fn seal(&self, header: Header, payload: &[u8]) -> Result<bytes::Bytes, BusError> {
        self.seal_with(&self.key(), header, payload)
    }

    fn seal_with(
        &self,
        key: &BusKey,
        header: Header,
        payload: &[u8],
    ) -> Result<bytes::Bytes, BusError> {
        let sealed = Envelope::seal(key, header, payload)
            .map_err(|e| BusError::Nats(format!("cannot seal a message: {e}")))?;
        let max = self.client.server_info().max_payload;
        if max > 0 && sealed.0.len() > max {
            return Err(BusError::TooLarge {
                bytes: sealed.0.len(),
                max,
            });
        }
        Ok(sealed.0.into())
    }

    /// Counts and logs a refused message.
    fn refuse(&self, subject: &str, why: &'static str, detail: &dyn std::fmt::Display) {
        self.platform.metrics().bus_rejected(why);
        tracing::warn!(
            subject,
            reason = why,
            "refused a message from the bus: {detail}"
        );
    }

    /// Counts a message refused for a reason of the receiver's own (not its seal).
    pub fn refuse_quietly(&self, why: &'static str) {
        self.platform.metrics().bus_rejected(why);
    }

    /// Accepts `header` once within the window.
    fn fresh(&self, header: &Header) -> Result<(), &'static str> {
        let accepted = self
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accept(header, self.now_ms());
        accepted.map_err(|e| {
            let why = stale_reason(&e);
            self.refuse(&header.subject, why, &e);
            why
        })
    }

    /// Sends `payload` on `subject` to one of its listeners and returns the opened reply.
    /// `who` names the role that should be listening (for the error when none is).
    pub async fn request(
        &self,
        subject: &str,
        who: &'static str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Opened, BusError> {
        self.request_as(cella_bus::random_id(), subject, who, payload, timeout)
            .await
    }

    /// [`SealedBus::request`] under a message id the caller chose (fresh and random).
    pub async fn request_as(
        &self,
        id: MessageId,
        subject: &str,
        who: &'static str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Opened, BusError> {
        let mut header = self.header(Kind::Request, subject, [0; 16]);
        header.id = id;
        let key = match self.leads_rotations {
            true => self.previous_in_grace().unwrap_or_else(|| self.key()),
            false => self.key(),
        };
        let sealed = self.seal_with(&key, header, payload)?;
        let request = async_nats::Request::new()
            .payload(sealed)
            .timeout(Some(timeout));
        let answer = self
            .client
            .send_request(subject.to_owned(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders {
                    subject: subject.to_owned(),
                    who,
                },
                RequestErrorKind::TimedOut => BusError::TimedOut {
                    subject: subject.to_owned(),
                    after: timeout,
                },
                _ => BusError::Nats(e.to_string()),
            })?;
        let envelope = Envelope(answer.payload.to_vec());
        let opened = self
            .open_either(
                |key| envelope.open_reply(key, subject, &id),
                self.previous_in_grace(),
            )
            .map_err(|e| {
                let why = reason(&e);
                self.refuse(subject, why, &e);
                BusError::Refused(why)
            })?;
        self.fresh(&opened.header).map_err(BusError::Refused)?;
        Ok(opened)
    }

    /// Seals `payload` as an event on `subject` (a message stored for later, such as a job in
    /// a JetStream stream).
    pub fn seal_event(&self, subject: &str, payload: &[u8]) -> Result<bytes::Bytes, BusError> {
        self.seal(self.header(Kind::Event, subject, [0; 16]), payload)
    }

    /// Opens an event stored on `subject`. Unlike requests, events are not refused as
    /// replays: a durable stream delivers one again until it is acknowledged, so whoever
    /// acts on it must do so once in effect (asynchronous jobs finish once).
    pub fn open_event(&self, payload: &[u8], subject: &str) -> Result<Opened, SealError> {
        let envelope = Envelope(payload.to_vec());
        self.open_either(
            |key| envelope.open(key, subject, Kind::Event),
            self.previous(),
        )
        .inspect_err(|e| self.refuse(subject, reason(e), e))
    }

    /// Opens a request that arrived on `subject`; refusals are counted and logged.
    pub fn open_request(&self, message: &Message, subject: &str) -> Option<Opened> {
        let envelope = Envelope(message.payload.to_vec());
        let opened = self
            .open_either(
                |key| envelope.open(key, subject, Kind::Request),
                self.previous_in_grace(),
            )
            .map_err(|e| self.refuse(subject, reason(&e), &e))
            .ok()?;
        self.fresh(&opened.header).ok()?;
        Some(opened)
    }

    /// Answers `request` (received as `message`) with `payload`, sealed as its reply.
    pub async fn reply(
        &self,
        message: &Message,
        request: &Header,
        payload: &[u8],
    ) -> Result<(), BusError> {
        let Some(inbox) = message.reply.clone() else {
            return Err(BusError::Nats(
                "the request names no reply subject; it cannot be answered".into(),
            ));
        };
        let header = self.header(Kind::Reply, &request.subject, request.id);
        let sealed = self.seal(header, payload)?;
        self.client
            .publish(inbox, sealed)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }
}

/// Answers every sealed request on `subject` (queue group `queue`) with what `answer` makes
/// of it, each in a task of its own, until the subscription ends. Requests that do not open
/// are refused and counted, and get no answer.
pub async fn serve_requests<F, Fut>(
    bus: Arc<SealedBus>,
    subject: String,
    queue: &str,
    answer: F,
) -> Result<(), async_nats::Error>
where
    F: Fn(Opened) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    let mut requests = bus
        .client()
        .queue_subscribe(subject.clone(), queue.to_owned())
        .await?;
    while let Some(message) = requests.next().await {
        let (bus, answer, subject) = (bus.clone(), answer.clone(), subject.clone());
        tokio::spawn(async move {
            let Some(opened) = bus.open_request(&message, &subject) else {
                return;
            };
            let header = opened.header.clone();
            let reply = answer(opened).await;
            if let Err(e) = bus.reply(&message, &header, &reply).await {
                tracing::warn!(subject, "could not answer a request: {e}");
            }
        });
    }
    Ok(())
}

/// The first four bytes of an id, in hex.
pub fn short_id(id: &MessageId) -> String {
    hex::encode(&id[..4])
}
