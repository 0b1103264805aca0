//! Functions' key-value state in a cluster. The gateway's sealed registry keeps it, as on a
//! single node (sealed, versioned, bounded); a worker reaches it with sealed calls on
//! `cella.state`, so the guest's view is the same wherever it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cella_bus::MessageId;
use cella_runtime::Platform;
use cella_sandbox::{StateError, StateStore};

use crate::bus::SealedBus;
use crate::subjects::{GATEWAYS, STATE, state_of};
use crate::wire::{self, StateAnswer, StateCall, StateOp};

/// How long a worker waits for the gateway to answer one state call.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A function's state as a worker reaches it: each call is a sealed request to a gateway.
pub(crate) struct RemoteState {
    pub(crate) bus: Arc<SealedBus>,
    /// Where the calls go: the sending gateway's own subject for a synchronous invocation,
    /// any gateway's for an asynchronous job (whose writes are held back).
    pub(crate) subject: String,
    pub(crate) function: String,
    pub(crate) owner: String,
    /// The synchronous request this run answers (hex), or empty for an asynchronous job.
    pub(crate) job: String,
}

/// Synchronous invocations a gateway has out, by request id, with the worker that first made
/// a state call for each. A request replayed on the bus may reach a second worker, whose
/// guard has not seen it; its writes are refused here, so it changes nothing.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<MessageId, Option<MessageId>>>);

impl InFlight {
    pub(crate) fn open(&self, id: MessageId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, None);
    }

    pub(crate) fn close(&self, id: &MessageId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Whether `worker` may write for request `id`: it is in flight and `worker` is the first
    /// (and so the only) worker to write for it.
    fn claim(&self, id: &MessageId, worker: &MessageId) -> bool {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get_mut(id) {
            Some(owner @ None) => {
                *owner = Some(*worker);
                true
            }
            Some(Some(owner)) => owner == worker,
            None => false,
        }
    }
}

impl RemoteState {
    /// One call, made from the sandbox's blocking thread.
    fn call(&self, op: StateOp, key: &[u8], value: &[u8]) -> Result<(bool, Bytes), StateError> {
        let call = StateCall {
            function: self.function.clone(),
            owner: self.owner.clone(),
            job: self.job.clone(),
            op,
            key: wire::encode_key(key),
        };
        let payload = wire::frame(&call, value);
        let answer = tokio::runtime::Handle::current().block_on(self.bus.request(
            &self.subject,
            "gateway",
            &payload,
            STATE_TIMEOUT,
        ));
        let unavailable = |why: String| {
            tracing::error!(function = %self.function, "state unavailable: {why}");
            StateError::Unavailable("the cluster could not read or write it".into())
        };
        let opened = answer.map_err(|e| unavailable(e.to_string()))?;
        let (answer, body): (StateAnswer, Bytes) =
            wire::unframe(&opened.payload).map_err(|e| unavailable(e.to_string()))?;
        match answer {
            StateAnswer::Done { found } => Ok((found, body)),
            StateAnswer::Full { would_be, limit } => Err(StateError::Full { would_be, limit }),
            StateAnswer::Unavailable { reason } => Err(unavailable(reason)),
        }
    }
}

impl StateStore for RemoteState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let (found, value) = self.call(StateOp::Get, key, b"")?;
        Ok(found.then(|| value.to_vec()))
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.call(StateOp::Set, key, value).map(|_| ())
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StateError> {
        self.call(StateOp::Delete, key, b"")
            .map(|(existed, _)| existed)
    }
}

/// The gateway's side: answers workers' state calls from its registry, on the subject all
/// gateways share and on its own.
pub(crate) async fn serve(
    bus: Arc<SealedBus>,
    platform: Arc<Platform>,
    in_flight: Arc<InFlight>,
) -> Result<(), async_nats::Error> {
    let own = state_of(&bus.node());
    let counting = bus.clone();
    let handler = move |opened: cella_bus::Opened| {
        let (bus, platform, in_flight) = (counting.clone(), platform.clone(), in_flight.clone());
        async move {
            let (answer, value) = answer(&bus, &platform, &in_flight, &opened).await;
            wire::frame(&answer, &value)
        }
    };
    tokio::try_join!(
        crate::bus::serve_requests(bus.clone(), STATE.to_owned(), GATEWAYS, handler.clone()),
        crate::bus::serve_requests(bus, own, GATEWAYS, handler),
    )?;
    Ok(())
}

async fn answer(
    bus: &SealedBus,
    platform: &Arc<Platform>,
    in_flight: &InFlight,
    opened: &cella_bus::Opened,
) -> (StateAnswer, Bytes) {
    match wire::unframe::<StateCall>(&opened.payload) {
        Ok((call, _)) if call.op != StateOp::Get && !writable(in_flight, &call, opened) => {
            bus.refuse_quietly("replayed_job");
            (
                StateAnswer::Unavailable {
                    reason: "this run's request is not in flight from this worker (a replay?)"
                        .into(),
                },
                Bytes::new(),
            )
        }
        Ok((call, value)) => apply(platform, call, value).await,
        Err(e) => (
            StateAnswer::Unavailable {
                reason: e.to_string(),
            },
            Bytes::new(),
        ),
    }
}

/// A write is taken only for a synchronous request in flight, from the worker running it.
fn writable(in_flight: &InFlight, call: &StateCall, opened: &cella_bus::Opened) -> bool {
    let Some(id) = hex::decode(&call.job)
        .ok()
        .and_then(|id| <MessageId>::try_from(id).ok())
    else {
        return false;
    };
    in_flight.claim(&id, &opened.header.sender)
}

async fn apply(platform: &Arc<Platform>, call: StateCall, value: Bytes) -> (StateAnswer, Bytes) {
    let unavailable = |reason: String| StateAnswer::Unavailable { reason };
    let store = match platform.state_for_worker(&call.function, &call.owner) {
        Ok(store) => store,
        Err(e) => return (unavailable(e.to_string()), Bytes::new()),
    };
    let key = match wire::decode_key(&call.key) {
        Ok(key) => key,
        Err(e) => return (unavailable(e.to_string()), Bytes::new()),
    };
    let result = tokio::task::spawn_blocking(move || match call.op {
        StateOp::Get => store
            .get(&key)
            .map(|found| (found.is_some(), Bytes::from(found.unwrap_or_default()))),
        StateOp::Set => store.set(&key, &value).map(|()| (true, Bytes::new())),
        StateOp::Delete => store.delete(&key).map(|existed| (existed, Bytes::new())),
    })
    .await;
    match result {
        Ok(Ok((found, value))) => (StateAnswer::Done { found }, value),
        Ok(Err(StateError::Full { would_be, limit })) => {
            (StateAnswer::Full { would_be, limit }, Bytes::new())
        }
        Ok(Err(e)) => (unavailable(e.to_string()), Bytes::new()),
        Err(e) => (
            unavailable(format!("the state task failed: {e}")),
            Bytes::new(),
        ),
    }
}
