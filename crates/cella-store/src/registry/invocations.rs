//! Asynchronous invocations: each one's record (who asked, what, its status and result) and
//! the idempotency keys callers chose. Finishing an invocation and applying the state
//! changes it made are one transaction, and an invocation finishes once: a retried or
//! duplicated delivery of the same job changes nothing, so a job runs exactly once in
//! effect however often the bus delivers it.

use cella_core::{FunctionName, TenantName};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::function_data::{StateRecord, state_key};
use super::{Registry, RegistryError, Sealed, db};
use crate::registry::function_data::FUNCTION_DATA;

/// blinded `inv/{id}` → sealed JSON [`AsyncInvocation`]; blinded `idem/{tenant}/{key}` →
/// sealed JSON id
pub(super) const INVOCATIONS: Sealed = TableDefinition::new("sealed_invocations");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsyncStatus {
    /// Accepted, waiting for (or between) attempts.
    Queued,
    Succeeded,
    /// The function failed in a way retrying cannot fix, or the caller may no longer run it.
    Failed,
    /// Every attempt failed; it will not be tried again.
    DeadLetter,
}

impl AsyncStatus {
    pub fn is_final(self) -> bool {
        self != AsyncStatus::Queued
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AsyncStatus::Queued => "queued",
            AsyncStatus::Succeeded => "succeeded",
            AsyncStatus::Failed => "failed",
            AsyncStatus::DeadLetter => "dead_letter",
        }
    }
}

/// Why an attempt or the invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncError {
    pub code: String,
    pub message: String,
}

/// One asynchronous invocation, as its caller reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncInvocation {
    pub id: String,
    /// The tenant that asked for it: the only one who may read it.
    pub caller: TenantName,
    pub function: FunctionName,
    pub version: String,
    pub status: AsyncStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub submitted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The function's output (stdout), hex, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_hex: Option<String>,
    /// The last attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AsyncError>,
    /// The last attempt's log (stderr tail and the monitor's denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The trigger whose event made it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Who owned the function when it was asked for: its state is theirs, and if the name
    /// has passed to another tenant since, the invocation fails rather than touch theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_owner: Option<TenantName>,
    /// SHA-256 (hex) of what was asked (target, arguments, input): a repeated idempotency
    /// key must name the same request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,
}

/// A state key as an invocation read it: the SHA-256 of its value then, or `None` if absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRead {
    pub key: Vec<u8>,
    pub value_sha256: Option<[u8; 32]>,
}

/// A state change an invocation made: a value set, or the key deleted (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// How an attempt ends, as a worker reports it.
#[derive(Debug, Clone)]
pub struct Finish {
    pub attempt: u32,
    pub status: AsyncStatus,
    pub output: Option<Vec<u8>>,
    pub error: Option<AsyncError>,
    pub log: Option<String>,
    /// What the attempt read from and wrote to its function's state (applied only with a
    /// final success, and only if every read still holds).
    pub reads: Vec<StateRead>,
    pub writes: Vec<StateWrite>,
    pub state_limit: u64,
    pub finished_at: String,
}

/// What finishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Recorded (and its state changes applied).
    Recorded(AsyncInvocation),
    /// It had already finished; nothing changed.
    AlreadyFinal(AsyncInvocation),
    /// A value it read has changed since: nothing changed; run it again.
    Conflict,
    /// Its writes would grow the state past its limit: nothing changed.
    Full { would_be: u64, limit: u64 },
}

fn invocation_key(id: &str) -> String {
    format!("inv/{id}")
}

fn idempotency_key(caller: &TenantName, key: &str) -> String {
    format!("idem/{caller}/{key}")
}

pub fn value_sha256(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl Registry {
    /// Records `invocation` as queued. If its caller already submitted one under the same
    /// idempotency key, that one is returned instead (`Err`) and nothing is written.
    pub fn submit_invocation(
        &self,
        invocation: AsyncInvocation,
    ) -> Result<Result<AsyncInvocation, AsyncInvocation>, RegistryError> {
        self.write_unless_refused(|tx| {
            let mut table = tx.open_table(INVOCATIONS).map_err(db)?;
            if let Some(key) = &invocation.idempotency_key {
                let index = idempotency_key(&invocation.caller, key);
                let earlier: Option<String> = self.get(&table, INVOCATIONS, index.as_bytes())?;
                if let Some(earlier) = earlier {
                    let found: Option<AsyncInvocation> =
                        self.get(&table, INVOCATIONS, invocation_key(&earlier).as_bytes())?;
                    if let Some(found) = found {
                        return Ok(Err(found));
                    }
                }
                self.put(&mut table, INVOCATIONS, index.as_bytes(), &invocation.id)?;
            }
            let key = invocation_key(&invocation.id);
            self.put(&mut table, INVOCATIONS, key.as_bytes(), &invocation)?;
            Ok(Ok(invocation.clone()))
        })
    }

    /// Removes a queued invocation whose job could not be stored (and its idempotency key), so
    /// that the caller's retry starts afresh.
    pub fn forget_invocation(&self, id: &str) -> Result<(), RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(INVOCATIONS).map_err(db)?;
            let removed: Option<AsyncInvocation> =
                self.remove(&mut table, INVOCATIONS, invocation_key(id).as_bytes())?;
            if let Some(key) = removed.as_ref().and_then(|i| {
                i.idempotency_key
                    .as_ref()
                    .map(|k| idempotency_key(&i.caller, k))
            }) {
                self.remove::<String>(&mut table, INVOCATIONS, key.as_bytes())?;
            }
            Ok(())
        })
    }

    /// Removes finished invocations (and their idempotency keys) that finished before
    /// `before` (RFC 3339, as records are dated); returns how many.
    pub fn prune_invocations(&self, before: &str) -> Result<usize, RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(INVOCATIONS).map_err(db)?;
            let mut doomed = Vec::new();
            for entry in table.iter().map_err(db)? {
                let (key, value) = entry.map_err(db)?;
                // Index entries hold ids (strings), records hold invocations.
                let Ok(invocation) =
                    self.decode::<AsyncInvocation>(INVOCATIONS, key.value(), value.value())
                else {
                    continue;
                };
                if invocation
                    .finished_at
                    .as_deref()
                    .is_some_and(|at| at < before)
                {
                    doomed.push(invocation);
                }
            }
            for invocation in &doomed {
                self.remove::<AsyncInvocation>(
                    &mut table,
                    INVOCATIONS,
                    invocation_key(&invocation.id).as_bytes(),
                )?;
                if let Some(key) = &invocation.idempotency_key {
                    let index = idempotency_key(&invocation.caller, key);
                    self.remove::<String>(&mut table, INVOCATIONS, index.as_bytes())?;
                }
            }
            Ok(doomed.len())
        })
    }

    /// Invocation `id` as the latest state has it: in a cluster, whichever gateway recorded
    /// or finished it (a worker deciding whether to run it, a client asking for its result).
    pub fn invocation(&self, id: &str) -> Result<Option<AsyncInvocation>, RegistryError> {
        self.catch_up()?;
        let tx = self.read()?;
        let table = tx.open_table(INVOCATIONS).map_err(db)?;
        self.get(&table, INVOCATIONS, invocation_key(id).as_bytes())
    }

    /// Ends an attempt of invocation `id`: a final status is recorded (with the state changes
    /// of a success, in the same transaction) once; a failed attempt that will be retried
    /// records its error and count. See [`Finished`].
    pub fn finish_invocation(&self, id: &str, finish: Finish) -> Result<Finished, RegistryError> {
        let outcome = self.write_unless_refused(|tx| {
            let mut table = tx.open_table(INVOCATIONS).map_err(db)?;
            let key = invocation_key(id);
            let Some(mut invocation) =
                self.get::<AsyncInvocation>(&table, INVOCATIONS, key.as_bytes())?
            else {
                return Err(RegistryError::Tampered {
                    what: format!("invocation {id} (missing)"),
                });
            };
            if invocation.status.is_final() {
                return Ok(Err(Finished::AlreadyFinal(invocation)));
            }
            let mut finish = finish.clone();
            let owner_now = invocation_owner(self, tx, &invocation).ok();
            if invocation.function_owner.is_some() && owner_now != invocation.function_owner {
                // Deleted (and perhaps taken by another tenant) since it was asked for.
                finish = Finish {
                    status: AsyncStatus::Failed,
                    output: None,
                    error: Some(AsyncError {
                        code: "not_found".into(),
                        message: format!(
                            "function `{}` was deleted before this invocation finished",
                            invocation.function
                        ),
                    }),
                    reads: Vec::new(),
                    writes: Vec::new(),
                    ..finish
                };
            }
            if finish.status == AsyncStatus::Succeeded
                && (!finish.reads.is_empty() || !finish.writes.is_empty())
            {
                let owner = invocation_owner(self, tx, &invocation)?;
                let mut data = tx.open_table(FUNCTION_DATA).map_err(db)?;
                let record_key = state_key(&invocation.function);
                let record: Option<StateRecord> =
                    self.get(&data, FUNCTION_DATA, record_key.as_bytes())?;
                let mut record = record
                    .filter(|r| r.owner.as_ref() == Some(&owner))
                    .unwrap_or_default();
                for read in &finish.reads {
                    let now = record.entries.get(&hex::encode(&read.key));
                    let now = now.map(|v| hex::decode(v).map(|v| value_sha256(&v)));
                    let now = now.transpose().map_err(|_| RegistryError::Tampered {
                        what: "a function's state".into(),
                    })?;
                    if now != read.value_sha256 {
                        return Ok(Err(Finished::Conflict));
                    }
                }
                record.owner = Some(owner);
                for write in &finish.writes {
                    let key = hex::encode(&write.key);
                    match &write.value {
                        Some(value) => record.entries.insert(key, hex::encode(value)),
                        None => record.entries.remove(&key),
                    };
                }
                let would_be = record.size();
                if would_be > finish.state_limit && finish.writes.iter().any(|w| w.value.is_some())
                {
                    return Ok(Err(Finished::Full {
                        would_be,
                        limit: finish.state_limit,
                    }));
                }
                self.put(&mut data, FUNCTION_DATA, record_key.as_bytes(), &record)?;
            }
            invocation.attempts = invocation.attempts.max(finish.attempt);
            invocation.status = finish.status;
            invocation.error = finish.error;
            invocation.log = finish.log;
            if finish.status.is_final() {
                invocation.output_hex = finish.output.map(hex::encode);
                invocation.finished_at = Some(finish.finished_at);
            }
            self.put(&mut table, INVOCATIONS, key.as_bytes(), &invocation)?;
            Ok(Ok(invocation))
        })?;
        Ok(match outcome {
            Ok(invocation) => Finished::Recorded(invocation),
            Err(refused) => refused,
        })
    }
}

/// The owner of the function an invocation ran: its state belongs to them.
fn invocation_owner(
    registry: &Registry,
    tx: &redb::WriteTransaction,
    invocation: &AsyncInvocation,
) -> Result<TenantName, RegistryError> {
    let functions = tx.open_table(super::FUNCTIONS).map_err(db)?;
    let record: Option<cella_core::FunctionRecord> = registry.get(
        &functions,
        super::FUNCTIONS,
        invocation.function.as_str().as_bytes(),
    )?;
    record
        .map(|r| r.owner)
        .ok_or_else(|| RegistryError::NoSuchFunction(invocation.function.clone()))
}
