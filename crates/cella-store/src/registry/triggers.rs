//! Event triggers: a function invoked asynchronously for every event on a bus subject. The
//! record names its owner and function; deleting the function deletes its triggers in the
//! same transaction. A trigger whose results are sealed keeps the key that seals them, sealed
//! like every registry record.

use cella_core::{FunctionName, TenantName};
use redb::{TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Sealed, db};

/// blinded (function, trigger id), grouped by function → sealed JSON [`Trigger`]
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
    /// Where trigger `id` of `function` is stored: grouped by function, so a function's
    /// triggers are read (and deleted with it) without reading the node's.
    fn trigger_place(&self, function: &FunctionName, id: &str) -> [u8; 32] {
        self.grouped_key(TRIGGERS, function.as_str().as_bytes(), id.as_bytes())
    }

    pub fn add_trigger(&self, trigger: &Trigger) -> Result<(), RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(TRIGGERS).map_err(db)?;
            let place = self.trigger_place(&trigger.function, &trigger.id);
            self.put_at(&mut table, TRIGGERS, &place, trigger)
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

    /// `function`'s triggers, by id.
    pub fn triggers_of(&self, function: &FunctionName) -> Result<Vec<Trigger>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(TRIGGERS).map_err(db)?;
        let mut found: Vec<Trigger> =
            self.group_all(&table, TRIGGERS, function.as_str().as_bytes())?;
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Trigger `id` of `function`.
    pub fn trigger(
        &self,
        function: &FunctionName,
        id: &str,
    ) -> Result<Option<Trigger>, RegistryError> {
        let tx = self.read()?;
        let table = tx.open_table(TRIGGERS).map_err(db)?;
        self.get_at(&table, TRIGGERS, &self.trigger_place(function, id))
    }

    /// Removes trigger `id` of `function`; returns it, or `None` if it has no such trigger.
    pub fn remove_trigger(
        &self,
        function: &FunctionName,
        id: &str,
    ) -> Result<Option<Trigger>, RegistryError> {
        self.write(|tx| {
            let mut table = tx.open_table(TRIGGERS).map_err(db)?;
            let place = self.trigger_place(function, id);
            let removed = self.remove_row(&mut table, TRIGGERS, &place)?;
            removed
                .map(|sealed| self.decode(TRIGGERS, &place, &sealed))
                .transpose()
        })
    }

    /// Removes every trigger of `function` (inside the transaction that deletes it).
    pub(super) fn delete_triggers_of(
        &self,
        tx: &WriteTransaction,
        function: &FunctionName,
    ) -> Result<(), RegistryError> {
        let mut table = tx.open_table(TRIGGERS).map_err(db)?;
        let doomed: Vec<Trigger> =
            self.group_all(&table, TRIGGERS, function.as_str().as_bytes())?;
        for trigger in doomed {
            let place = self.trigger_place(function, &trigger.id);
            self.remove_row(&mut table, TRIGGERS, &place)?;
        }
        Ok(())
    }
}
