//! What a function keeps besides its code: the values of its environment variables (set by
//! its owner) and its key-value state (written by its invocations). Both are registry records,
//! so they are sealed like every other one — encrypted, bound to their place, and covered by
//! the registry's version and digest, so a host cannot read them or swap them between
//! functions, and an older copy put back is refused at the next write or start (reads in
//! between check each record's seal, not the digest). Each record names its owner; deleting the function
//! deletes them in the same transaction, so a name taken again never inherits them.

use std::collections::BTreeMap;

use cella_core::{EnvName, FunctionName, TenantName};
use redb::{TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Sealed, db};

/// blinded `env/{function}` or `kv/{function}` → sealed JSON record
pub(super) const FUNCTION_DATA: Sealed = TableDefinition::new("sealed_function_data");

/// A function's environment variable values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct EnvRecord {
    owner: Option<TenantName>,
    values: BTreeMap<EnvName, String>,
}

/// A function's key-value state: keys and values as hex.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateRecord {
    pub(super) owner: Option<TenantName>,
    pub(super) entries: BTreeMap<String, String>,
}

impl StateRecord {
    /// What the state counts against its limit: the bytes of its keys and values.
    pub(super) fn size(&self) -> u64 {
        self.entries
            .iter()
            .map(|(k, v)| (k.len() / 2 + v.len() / 2) as u64)
            .sum()
    }
}

/// A change to a function's state was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRefusal {
    /// The state would grow past its limit.
    Full { would_be: u64, limit: u64 },
}

fn env_key(function: &FunctionName) -> String {
    format!("env/{function}")
}

pub(super) fn state_key(function: &FunctionName) -> String {
    format!("kv/{function}")
}

impl Registry {
    /// The environment values the owner set for `function`.
    pub fn env_values(
        &self,
        owner: &TenantName,
        function: &FunctionName,
    ) -> Result<BTreeMap<EnvName, String>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(FUNCTION_DATA).map_err(db)?;
        let record: Option<EnvRecord> =
            self.get(&table, FUNCTION_DATA, env_key(function).as_bytes())?;
        Ok(owned_by(record, owner, |r| &r.owner)
            .map(|r| r.values)
            .unwrap_or_default())
    }

    /// Sets (`Some`) and removes (`None`) environment values of `function`; returns them all.
    pub fn update_env_values(
        &self,
        owner: &TenantName,
        function: &FunctionName,
        changes: BTreeMap<EnvName, Option<String>>,
    ) -> Result<BTreeMap<EnvName, String>, RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(FUNCTION_DATA).map_err(db)?;
            let key = env_key(function);
            let record: Option<EnvRecord> = self.get(&table, FUNCTION_DATA, key.as_bytes())?;
            let mut record = owned_by(record, owner, |r| &r.owner).unwrap_or_default();
            record.owner = Some(owner.clone());
            for (name, value) in changes.clone() {
                match value {
                    Some(value) => record.values.insert(name, value),
                    None => record.values.remove(&name),
                };
            }
            self.put(&mut table, FUNCTION_DATA, key.as_bytes(), &record)?;
            Ok(record.values)
        })
    }

    /// The value under `key` in `function`'s state.
    pub fn state_get(
        &self,
        owner: &TenantName,
        function: &FunctionName,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(FUNCTION_DATA).map_err(db)?;
        let record: Option<StateRecord> =
            self.get(&table, FUNCTION_DATA, state_key(function).as_bytes())?;
        let Some(record) = owned_by(record, owner, |r| &r.owner) else {
            return Ok(None);
        };
        record
            .entries
            .get(&hex::encode(key))
            .map(|value| unhex(value))
            .transpose()
    }

    /// Sets (`Some`) or deletes (`None`) `key` in `function`'s state, in one transaction,
    /// unless the state would grow past `limit` bytes. Returns whether the key existed.
    pub fn state_put(
        &self,
        owner: &TenantName,
        function: &FunctionName,
        key: &[u8],
        value: Option<&[u8]>,
        limit: u64,
    ) -> Result<Result<bool, StateRefusal>, RegistryError> {
        self.write_unless_refused(|tx| {
            let mut table = tx.open_table(FUNCTION_DATA).map_err(db)?;
            let record_key = state_key(function);
            let record: Option<StateRecord> =
                self.get(&table, FUNCTION_DATA, record_key.as_bytes())?;
            let mut record = owned_by(record, owner, |r| &r.owner).unwrap_or_default();
            record.owner = Some(owner.clone());
            let key = hex::encode(key);
            let existed = match value {
                Some(value) => record.entries.insert(key, hex::encode(value)).is_some(),
                None => record.entries.remove(&key).is_some(),
            };
            let would_be = record.size();
            if value.is_some() && would_be > limit {
                return Ok(Err(StateRefusal::Full { would_be, limit }));
            }
            self.put(&mut table, FUNCTION_DATA, record_key.as_bytes(), &record)?;
            Ok(Ok(existed))
        })
    }

    /// Bytes of `function`'s state (keys and values).
    pub fn state_size(
        &self,
        owner: &TenantName,
        function: &FunctionName,
    ) -> Result<u64, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(FUNCTION_DATA).map_err(db)?;
        let record: Option<StateRecord> =
            self.get(&table, FUNCTION_DATA, state_key(function).as_bytes())?;
        Ok(owned_by(record, owner, |r| &r.owner).map_or(0, |r| r.size()))
    }

    /// Removes everything `function` kept (inside the transaction that deletes it).
    pub(super) fn delete_function_data(
        &self,
        tx: &WriteTransaction,
        function: &FunctionName,
    ) -> Result<(), RegistryError> {
        let mut table = tx.open_table(FUNCTION_DATA).map_err(db)?;
        for key in [env_key(function), state_key(function)] {
            let blinded = self.sealer.blind(FUNCTION_DATA.name(), key.as_bytes());
            self.remove_row(&mut table, FUNCTION_DATA, &blinded)?;
        }
        Ok(())
    }
}

/// A record counts only for the tenant it names (a stale record of a deleted function's
/// former owner is never shown to a new one).
fn owned_by<R>(
    record: Option<R>,
    owner: &TenantName,
    of: impl Fn(&R) -> &Option<TenantName>,
) -> Option<R> {
    record.filter(|r| of(r).as_ref() == Some(owner))
}

fn unhex(text: &str) -> Result<Vec<u8>, RegistryError> {
    hex::decode(text).map_err(|_| RegistryError::Tampered {
        what: "a function's state".into(),
    })
}
