//! Concurrency limits: one caller cannot occupy every instance slot, and the node never takes
//! on more invocations than its instance pool holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cella_store::Principal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::RuntimeError;

pub(crate) struct ConcurrencyLimits {
    per_caller: usize,
    node: Arc<Semaphore>,
    node_limit: usize,
    semaphores: Mutex<HashMap<Principal, Arc<Semaphore>>>,
}

/// Held for as long as an invocation runs.
pub(crate) struct Slot {
    _caller: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl ConcurrencyLimits {
    pub(crate) fn new(per_caller: usize, node: usize) -> Self {
        ConcurrencyLimits {
            per_caller: per_caller.max(1),
            node: Arc::new(Semaphore::new(node.max(1))),
            node_limit: node.max(1),
            semaphores: Mutex::default(),
        }
    }

    /// A slot for one invocation by `caller`, or an error at once (callers retry; queueing
    /// here would only hide overload behind latency).
    pub(crate) fn acquire(&self, caller: &Principal) -> Result<Slot, RuntimeError> {
        let semaphore = self
            .semaphores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(caller.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
            .clone();
        let caller_permit = semaphore
            .try_acquire_owned()
            .map_err(|_| RuntimeError::Busy {
                who: caller.to_string(),
                limit: self.per_caller,
            })?;
        let node_permit = self.node.clone().try_acquire_owned().map_err(|_| {
            RuntimeError::Overloaded(format!(
                "this node already runs {} invocations, the most its instance pool holds; \
                 retry shortly (the operator sets `instances` under [sandbox] in cella.toml)",
                self.node_limit
            ))
        })?;
        Ok(Slot {
            _caller: caller_permit,
            _node: node_permit,
        })
    }
}
