//! What a function's permissions give each invocation — the environment variables its manifest
//! names (with the values its owner set) and its key-value state — and how the owner sets
//! those values. Values live in the sealed registry; the guest sees only what is granted.

use std::collections::BTreeMap;
use std::sync::Arc;

use cella_core::{EnvName, FunctionName, FunctionRecord, MAX_ENV_VALUE_BYTES, TenantName};
use cella_sandbox::{Grants, StateError, StateStore};
use cella_store::{Principal, Registry, StateRefusal};
use serde::Serialize;

use crate::RuntimeError;
use crate::platform::{Platform, blocking};

/// One environment variable as its owner sees it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvSetting {
    pub name: EnvName,
    /// Whether a value is set.
    pub set: bool,
    /// Whether the current version's manifest names it (only then does a guest see it).
    pub granted: bool,
}

impl Platform {
    /// What an invocation of `record` is given.
    pub(crate) fn grants(&self, record: &FunctionRecord) -> Result<Grants, RuntimeError> {
        let granted = &record.permissions;
        Ok(Grants {
            env: self.granted_env(record)?,
            state: granted.kv.then(|| self.state_store(record)),
            http: granted.http.clone(),
            scratch_bytes: granted.scratch_bytes(),
            cpu_share: cella_sandbox::CpuShare::new(record.owner.as_str()),
        })
    }

    /// The environment variables `record`'s manifest grants that have a value, with it.
    pub(crate) fn granted_env(
        &self,
        record: &FunctionRecord,
    ) -> Result<Vec<(String, String)>, RuntimeError> {
        let granted = &record.permissions.env;
        if granted.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.registry().env_values(&record.owner, &record.name)?;
        Ok(granted
            .iter()
            .filter_map(|name| Some((name.to_string(), values.get(name)?.clone())))
            .collect())
    }

    /// `record`'s key-value state, kept in this node's registry.
    pub(crate) fn state_store(&self, record: &FunctionRecord) -> Arc<dyn StateStore> {
        Arc::new(FunctionState {
            registry: self.registry().clone(),
            owner: record.owner.clone(),
            function: record.name.clone(),
            limit: self.config().max_state_bytes,
        })
    }

    /// Sets (`Some`) or removes (`None`) values of `name`'s environment variables (owner
    /// only). Each must be named by the current version's manifest.
    pub async fn set_env(
        &self,
        caller: &Principal,
        name: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Vec<EnvSetting>, RuntimeError> {
        let record = self.owned(caller, name)?;
        let mut checked = BTreeMap::new();
        for (variable, value) in changes {
            let variable =
                EnvName::new(&variable).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
            if !record.permissions.env.contains(&variable) {
                return Err(RuntimeError::Invalid(format!(
                    "function `{}` does not name `{variable}`; add `env = [\"{variable}\"]` \
                     under [permissions] in its manifest and deploy a new version first",
                    record.name
                )));
            }
            if let Some(value) = &value
                && (value.len() > MAX_ENV_VALUE_BYTES || value.contains('\0'))
            {
                return Err(RuntimeError::Invalid(format!(
                    "the value of `{variable}` must be at most {MAX_ENV_VALUE_BYTES} bytes \
                     without NUL characters"
                )));
            }
            checked.insert(variable, value);
        }
        let registry = self.registry().clone();
        let (owner, function) = (record.owner.clone(), record.name.clone());
        blocking(move || Ok(registry.update_env_values(&owner, &function, checked)?)).await?;
        self.env(caller, name)
    }

    /// `name`'s environment variables: which are set and which are granted (owner only; values
    /// are never shown again).
    pub fn env(&self, caller: &Principal, name: &str) -> Result<Vec<EnvSetting>, RuntimeError> {
        let record = self.owned(caller, name)?;
        let values = self.registry().env_values(&record.owner, &record.name)?;
        let mut names: Vec<&EnvName> = values.keys().chain(&record.permissions.env).collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|name| EnvSetting {
                name: name.clone(),
                set: values.contains_key(name),
                granted: record.permissions.env.contains(name),
            })
            .collect())
    }
}

/// One function's state in the registry, as the sandbox's [`StateStore`].
struct FunctionState {
    registry: Arc<Registry>,
    owner: TenantName,
    function: FunctionName,
    limit: u64,
}

impl FunctionState {
    fn unavailable(&self, e: cella_store::RegistryError) -> StateError {
        // The operator's log gets the cause; the guest only learns that it failed.
        tracing::error!(function = %self.function, "state of a function unavailable: {e}");
        StateError::Unavailable("the node could not read or write it".into())
    }
}

impl StateStore for FunctionState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.registry
            .state_get(&self.owner, &self.function, key)
            .map_err(|e| self.unavailable(e))
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.put(key, Some(value)).map(|_| ())
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StateError> {
        self.put(key, None)
    }
}

impl FunctionState {
    fn put(&self, key: &[u8], value: Option<&[u8]>) -> Result<bool, StateError> {
        match self
            .registry
            .state_put(&self.owner, &self.function, key, value, self.limit)
        {
            Ok(Ok(existed)) => Ok(existed),
            Ok(Err(StateRefusal::Full { would_be, limit })) => {
                Err(StateError::Full { would_be, limit })
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }
}
