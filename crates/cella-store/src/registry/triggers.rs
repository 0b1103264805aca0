//! Event triggers: a function invoked asynchronously for every event on a bus subject. The
//! record names its owner and function; deleting the function deletes its triggers in the
//! same transaction. A trigger whose results are sealed keeps the key that seals them, sealed
//! like every registry record.

use cella_core::{FunctionName, TenantName};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Sealed, db};

/// blinded trigger id → sealed JSON [`Trigger`]
pub(super) const TRIGGERS: Sealed = TableDefinition::new("sealed_triggers");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub id: String,
    pub owner: TenantName,
    pub function: FunctionName,
    /// The subject events arrive on (NATS wildcards allowed).
    pub subject: String,
    /// Where each result is published, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_subject: Option<String>,
    /// Results are published in clear (the function's output is public); otherwise sealed
    /// under `result_key`.
    pub public_output: bool,
    /// Hex of the key results are sealed with (never shown again after creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    pub created_at: String,
}

impl Registry {
    pub fn add_trigger(&self, trigger: &Trigger) -> Result<(), RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(TRIGGERS).map_err(db)?;
            self.put(&mut table, TRIGGERS, trigger.id.as_bytes(), trigger)
        })
    }

    /// Every trigger, by id.
    pub fn triggers(&self) -> Result<Vec<Trigger>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(TRIGGERS).map_err(db)?;
        let mut all: Vec<Trigger> = self.all(&table, TRIGGERS)?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    pub fn trigger(&self, id: &str) -> Result<Option<Trigger>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(TRIGGERS).map_err(db)?;
        self.get(&table, TRIGGERS, id.as_bytes())
    }

    /// Removes trigger `id` of `function`; returns it, or `None` if it has no such trigger.
    pub fn remove_trigger(
        &self,
        function: &FunctionName,
        id: &str,
    ) -> Result<Option<Trigger>, RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(TRIGGERS).map_err(db)?;
            let found: Option<Trigger> = self.get(&table, TRIGGERS, id.as_bytes())?;
            match found {
                Some(trigger) if &trigger.function == function => {
                    self.remove::<Trigger>(&mut table, TRIGGERS, id.as_bytes())
                }
                _ => Ok(None),
            }
        })
    }

    /// Removes every trigger of `function` (inside the transaction that deletes it).
    pub(super) fn delete_triggers_of(
        &self,
        tx: &WriteTransaction,
        function: &FunctionName,
    ) -> Result<(), RegistryError> {
        let mut table = tx.open_table(TRIGGERS).map_err(db)?;
        let mut doomed = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            let trigger: Trigger = self.decode(TRIGGERS, key.value(), value.value())?;
            if &trigger.function == function {
                doomed.push(key.value().to_vec());
            }
        }
        for key in doomed {
            self.remove_row(&mut table, TRIGGERS, &key)?;
        }
        Ok(())
    }
}
