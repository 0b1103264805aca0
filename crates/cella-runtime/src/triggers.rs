//! Event triggers: a function invoked asynchronously for every event published on a bus
//! subject, by any system that can publish there. Each event becomes an asynchronous
//! invocation on behalf of the function's owner (so it finishes once, and is retried and
//! dead-lettered like any other). Its result is published to the trigger's reply subject,
//! if it has one: sealed under the trigger's result key (shown to the owner once, when the
//! trigger is made), or in clear when the owner declared the function's output public.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cella_store::{AsyncInvocation, Principal, Trigger};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::RuntimeError;
use crate::asynchronous::AsyncRequest;
use crate::platform::{Platform, blocking};

/// Longest subject a trigger may name.
pub const MAX_SUBJECT: usize = 200;
/// Most triggers one function may have.
pub const MAX_TRIGGERS_PER_FUNCTION: usize = 16;

/// Where triggers' results are published (the cluster's bus).
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), RuntimeError>;
}

/// What a trigger asks for.
#[derive(Debug, Clone, Default)]
pub struct NewTrigger {
    pub subject: String,
    pub reply_subject: Option<String>,
    pub public_output: bool,
}

/// A result as published on a trigger's reply subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerResult {
    pub trigger: String,
    pub invocation: String,
    /// `succeeded`, `failed` or `dead_letter`.
    pub status: String,
    /// The output in clear (public output only), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// The output sealed under the trigger's result key: base64 of nonce ‖ ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn context(trigger: &str, invocation: &str) -> Vec<u8> {
    format!("cella trigger result v1\0{trigger}\0{invocation}").into_bytes()
}

fn cipher(key_hex: &str) -> Option<XChaCha20Poly1305> {
    let key: [u8; 32] = hex::decode(key_hex).ok()?.try_into().ok()?;
    Some(XChaCha20Poly1305::new(&key.into()))
}

impl TriggerResult {
    /// The output, opened with the trigger's result key (hex) when sealed.
    pub fn output(&self, result_key: Option<&str>) -> Result<Vec<u8>, String> {
        if let Some(clear) = &self.output_base64 {
            return B64.decode(clear).map_err(|e| e.to_string());
        }
        let Some(sealed) = &self.sealed_output else {
            return Ok(Vec::new());
        };
        let key = result_key.ok_or("this result is sealed: give the trigger's result key")?;
        let cipher = cipher(key).ok_or("the result key must be 64 hex digits")?;
        let sealed = B64.decode(sealed).map_err(|e| e.to_string())?;
        if sealed.len() < 24 {
            return Err("the sealed output is truncated".into());
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &context(&self.trigger, &self.invocation),
                },
            )
            .map_err(|_| {
                "the result does not open with this key: another trigger's, or changed".to_owned()
            })
    }
}

/// The header every published result carries: triggers never take such a message as an
/// event, so no chain of triggers can feed results back into itself.
pub const RESULT_HEADER: &str = "Cella-Trigger-Result";

/// A subject of `tenant`'s: NATS syntax, under `tenant.` (so no tenant listens to another's
/// events or to cella's own subjects), wildcards allowed where `wildcards`.
fn check_subject(
    subject: &str,
    tenant: &str,
    what: &str,
    wildcards: bool,
) -> Result<(), RuntimeError> {
    let bad = |why: &str| RuntimeError::Invalid(format!("{what} `{subject}` {why}"));
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return Err(bad(&format!("must have 1 to {MAX_SUBJECT} characters")));
    }
    match subject.strip_prefix(tenant) {
        Some(rest) if rest.starts_with('.') && rest.len() > 1 => {}
        _ => {
            return Err(bad(&format!(
                "must start with your tenant's name: `{tenant}.orders.>`, say (a tenant's \
                 subjects are its own)"
            )));
        }
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || (*token == ">" && i == tokens.len() - 1);
        if token.is_empty()
            || (!wildcard
                && !token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
        {
            return Err(bad(
                "is not a NATS subject (dot-separated tokens; `*` for one token, `>` for the rest)",
            ));
        }
        if wildcard && !wildcards {
            return Err(bad("must not hold wildcards: results go to one subject"));
        }
    }
    Ok(())
}

/// Whether `subject` (no wildcards) is one that `pattern` (NATS wildcards) subscribes to.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Platform {
    /// Publishes triggers' results through `sink` and lets triggers be made (a cluster's
    /// gateway). Set once.
    pub fn publish_events_to(&self, sink: Arc<dyn EventSink>) -> Result<(), RuntimeError> {
        self.event_sink
            .set(sink)
            .map_err(|_| RuntimeError::Internal("this node already publishes events".into()))
    }

    /// A channel that changes whenever a trigger is added or removed (the gateway then
    /// subscribes to what is new).
    pub fn watch_triggers(&self) -> tokio::sync::watch::Receiver<u64> {
        self.triggers_changed.subscribe()
    }

    /// Every trigger on the platform (for the gateway's subscriptions).
    pub fn all_triggers(&self) -> Result<Vec<Trigger>, RuntimeError> {
        Ok(self.registry().triggers()?)
    }

    /// Makes a trigger for `name` (owner only); returns it with its result key (hex, shown
    /// this once) when results are sealed.
    pub async fn add_trigger(
        &self,
        caller: &Principal,
        name: &str,
        new: NewTrigger,
    ) -> Result<(Trigger, Option<String>), RuntimeError> {
        if self.event_sink.get().is_none() {
            return Err(RuntimeError::Invalid(
                "event triggers need a cluster: run `cella gateway --nats URL` with workers".into(),
            ));
        }
        let record = self.owned(caller, name)?;
        if record.kind == cella_core::FunctionKind::WasiHttp {
            return Err(RuntimeError::WrongKind {
                name: record.name.clone(),
                kind: record.kind,
                hint: "only command and JavaScript functions take events",
            });
        }
        let tenant = record.owner.as_str();
        check_subject(&new.subject, tenant, "the subject", true)?;
        if let Some(reply) = &new.reply_subject {
            check_subject(reply, tenant, "the reply subject", false)?;
            if matches(&new.subject, reply) {
                return Err(RuntimeError::Invalid(format!(
                    "the reply subject `{reply}` is one of the subjects `{}` listens to: each \
                     result would invoke the function again, without end; publish results \
                     elsewhere (e.g. `results.{reply}`)",
                    new.subject
                )));
            }
        }
        let all = self.all_triggers()?;
        // Results of one trigger feeding another's events (and so on) are stopped by the
        // result header; a direct pair is refused here, where the owner can fix it.
        for other in all.iter().filter(|t| t.owner == record.owner) {
            let feeds = |from: &Option<String>, into: &str| {
                from.as_deref().is_some_and(|reply| matches(into, reply))
            };
            if feeds(&new.reply_subject, &other.subject)
                || feeds(&other.reply_subject, &new.subject)
            {
                return Err(RuntimeError::Invalid(format!(
                    "trigger {} of `{}` would feed this one's results back to it (or the other \
                     way round); use reply subjects no trigger listens to",
                    other.id, other.function
                )));
            }
        }
        let existing = all.iter().filter(|t| t.function == record.name).count();
        if existing >= MAX_TRIGGERS_PER_FUNCTION {
            return Err(RuntimeError::Invalid(format!(
                "function `{}` has {existing} triggers, the most allowed; remove one first",
                record.name
            )));
        }
        let result_key = (!new.public_output && new.reply_subject.is_some()).then(|| {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).expect("the operating system's random number generator");
            hex::encode(key)
        });
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the operating system's random number generator");
        let trigger = Trigger {
            id: hex::encode(id),
            owner: record.owner.clone(),
            function: record.name.clone(),
            subject: new.subject,
            reply_subject: new.reply_subject,
            public_output: new.public_output,
            result_key: result_key.clone(),
            created_at: self.now_rfc3339(),
        };
        let registry = self.registry().clone();
        let stored = trigger.clone();
        blocking(move || Ok(registry.add_trigger(&stored)?)).await?;
        self.triggers_changed.send_modify(|v| *v += 1);
        Ok((shown(trigger), result_key))
    }

    /// A page of [`Platform::triggers`], by id.
    pub fn triggers_page(
        &self,
        caller: &Principal,
        name: &str,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<Trigger>, RuntimeError> {
        crate::paging::page_of(self.triggers(caller, name)?, |t| t.id.clone(), request)
    }

    /// `name`'s triggers (owner only), without their keys.
    pub fn triggers(&self, caller: &Principal, name: &str) -> Result<Vec<Trigger>, RuntimeError> {
        let record = self.owned(caller, name)?;
        Ok(self
            .registry()
            .triggers_of(&record.name)?
            .into_iter()
            .map(shown)
            .collect())
    }

    /// Removes trigger `id` of `name` (owner only).
    pub async fn remove_trigger(
        &self,
        caller: &Principal,
        name: &str,
        id: &str,
    ) -> Result<Trigger, RuntimeError> {
        let record = self.owned(caller, name)?;
        let registry = self.registry().clone();
        let (function, trigger_id) = (record.name.clone(), id.to_owned());
        let removed =
            blocking(move || Ok(registry.remove_trigger(&function, &trigger_id)?)).await?;
        let removed = removed.ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "function `{}` has no trigger `{}`; list them with `cella trigger list {}`",
                record.name,
                id.chars().take(32).collect::<String>(),
                record.name
            ))
        })?;
        self.triggers_changed.send_modify(|v| *v += 1);
        Ok(shown(removed))
    }

    /// An event arrived for trigger `id`: it is invoked asynchronously as its owner. An
    /// event with an id (`Nats-Msg-Id`) runs once however often it is delivered.
    pub async fn fire(
        &self,
        trigger: &Trigger,
        payload: Bytes,
        event_id: Option<&str>,
    ) -> Result<AsyncInvocation, RuntimeError> {
        let owner = Principal::Tenant(trigger.owner.clone());
        let request = AsyncRequest {
            stdin: payload,
            args: Vec::new(),
            // Any bytes a publisher chose, made a valid key of fixed length.
            idempotency_key: event_id.map(|e| {
                let digest = cella_receipt::sha256(e.as_bytes());
                format!("trigger-{}-{}", trigger.id, &digest[..32])
            }),
            expect: None,
        };
        let (invocation, _) = self
            .submit_as(
                &owner,
                trigger.function.as_str(),
                request,
                Some(&trigger.id),
            )
            .await?;
        Ok(invocation)
    }

    /// Publishes the result of a finished invocation a trigger made, if it has somewhere to go.
    pub(crate) async fn publish_result(&self, invocation: &AsyncInvocation) {
        let (Some(trigger_id), Some(sink)) = (&invocation.trigger, self.event_sink.get()) else {
            return;
        };
        let trigger = match self.registry().trigger(&invocation.function, trigger_id) {
            Ok(Some(trigger)) => trigger,
            _ => return,
        };
        let Some(reply) = &trigger.reply_subject else {
            return;
        };
        let output = invocation
            .output_hex
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        let mut result = TriggerResult {
            trigger: trigger.id.clone(),
            invocation: invocation.id.clone(),
            status: invocation.status.as_str().to_owned(),
            output_base64: None,
            sealed_output: None,
            error: invocation.error.as_ref().map(|e| e.message.clone()),
        };
        if trigger.public_output {
            result.output_base64 = Some(B64.encode(&output));
        } else if let Some(cipher) = trigger.result_key.as_deref().and_then(cipher) {
            let mut nonce = [0u8; 24];
            getrandom::fill(&mut nonce).expect("the operating system's random number generator");
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &output,
                        aad: &context(&trigger.id, &invocation.id),
                    },
                )
                .expect("sealing cannot fail");
            result.sealed_output = Some(B64.encode([nonce.as_slice(), &sealed].concat()));
            // An error message may quote the input: it is sealed with the output, not sent.
            result.error = result.error.map(|_| "see the invocation".to_owned());
        }
        let payload = Bytes::from(serde_json::to_vec(&result).expect("serializes"));
        if let Err(e) = sink.publish(reply, payload).await {
            tracing::warn!(trigger = %trigger.id, "could not publish a result: {e}");
        }
    }
}

/// A trigger as shown after creation: never its key.
fn shown(mut trigger: Trigger) -> Trigger {
    trigger.result_key = None;
    trigger
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_matches_them() {
        assert!(matches("orders.>", "orders.results"));
        assert!(matches("orders.>", "orders.eu.1"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("orders.*.new", "orders.eu.new"));
        assert!(!matches("orders.*", "orders.eu.new"));
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "results.orders"));
    }

    #[test]
    fn subjects_outside_the_tenants_own_or_malformed_are_refused() {
        for bad in [
            "",
            ">",
            "*.>",
            "acme",
            "acme.",
            "cella.invoke",
            "$JS.API.x",
            "_INBOX.x",
            "other.x",
            "acmex.y",
            "acme..b",
            "acme.a b",
            "acme.>.b",
            "acme.b*",
        ] {
            assert!(check_subject(bad, "acme", "s", true).is_err(), "{bad}");
        }
        assert!(check_subject("acme.orders.>", "acme", "s", true).is_ok());
        assert!(check_subject("acme.*", "acme", "s", true).is_ok());
        assert!(check_subject("acme.orders.>", "acme", "s", false).is_err());
    }

    #[test]
    fn sealed_results_open_with_their_key_only() {
        let key = hex::encode([7u8; 32]);
        let cipher = cipher(&key).unwrap();
        let nonce = [1u8; 24];
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: b"out",
                    aad: &context("t", "i"),
                },
            )
            .unwrap();
        let result = TriggerResult {
            trigger: "t".into(),
            invocation: "i".into(),
            status: "succeeded".into(),
            output_base64: None,
            sealed_output: Some(B64.encode([nonce.as_slice(), &sealed].concat())),
            error: None,
        };
        assert_eq!(result.output(Some(&key)).unwrap(), b"out");
        assert!(result.output(Some(&hex::encode([8u8; 32]))).is_err());
        let moved = TriggerResult {
            invocation: "other".into(),
            ..result.clone()
        };
        assert!(moved.output(Some(&key)).is_err(), "bound to its invocation");
    }
}
