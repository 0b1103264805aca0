//! Event triggers on the bus: the gateway subscribes to every trigger's subject (in a queue
//! group, so each event is taken by one gateway) and turns each event into an asynchronous
//! invocation; results go out on the trigger's reply subject. Subscriptions follow the
//! triggers as they are added and removed.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Client;
use bytes::Bytes;
use cella_runtime::{EventSink, Platform, RuntimeError};
use cella_store::Trigger;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// The queue group gateways take a trigger's events in: one per trigger, so triggers whose
/// subjects overlap each get every event, and gateways share each trigger's.
fn queue_group(trigger: &Trigger) -> String {
    format!("cella-trigger-{}", trigger.id)
}

/// Publishes triggers' results on the bus (plain NATS: the result is sealed to the tenant
/// unless its owner declared it public).
pub(crate) struct NatsEvents {
    pub(crate) client: Client,
}

#[async_trait::async_trait]
impl EventSink for NatsEvents {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), RuntimeError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(cella_runtime::RESULT_HEADER, "1");
        self.client
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| RuntimeError::Internal(format!("cannot publish on `{subject}`: {e}")))
    }
}

/// Keeps one subscription per trigger until the platform goes away.
pub(crate) async fn follow(platform: Arc<Platform>, client: Client) {
    let mut changes = platform.watch_triggers();
    let mut running: HashMap<String, (Trigger, JoinHandle<()>)> = HashMap::new();
    loop {
        match platform.all_triggers() {
            Ok(triggers) => {
                let wanted: HashMap<String, Trigger> =
                    triggers.into_iter().map(|t| (t.id.clone(), t)).collect();
                running.retain(|id, (trigger, task)| {
                    let keep = wanted.get(id) == Some(trigger);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (id, trigger) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    let task =
                        tokio::spawn(listen(platform.clone(), client.clone(), trigger.clone()));
                    running.insert(id, (trigger, task));
                }
            }
            Err(e) => tracing::error!("cannot read the triggers: {e}"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn listen(platform: Arc<Platform>, client: Client, trigger: Trigger) {
    let mut events = match client
        .queue_subscribe(trigger.subject.clone(), queue_group(&trigger))
        .await
    {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(trigger = %trigger.id, "cannot subscribe to a trigger's subject: {e}");
            return;
        }
    };
    while let Some(event) = events.next().await {
        let headers = event.headers.as_ref();
        if headers.is_some_and(|h| h.get(cella_runtime::RESULT_HEADER).is_some()) {
            continue;
        }
        let event_id = event
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|id| id.as_str().to_owned());
        if let Err(e) = platform
            .fire(&trigger, event.payload, event_id.as_deref())
            .await
        {
            // The event's publisher is not ours to answer, and no invocation exists to record
            // it in: the operator's log says why (a deleted function, a full queue).
            tracing::warn!(trigger = %trigger.id, "an event was not accepted: {e}");
        }
    }
}
