//! Per-caller concurrency limits: one tenant cannot occupy every worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cella_store::Principal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::RuntimeError;

pub(crate) struct ConcurrencyLimits {
    per_caller: usize,
    semaphores: Mutex<HashMap<Principal, Arc<Semaphore>>>,
}

impl ConcurrencyLimits {
    pub(crate) fn new(per_caller: usize) -> Self {
        ConcurrencyLimits {
            per_caller: per_caller.max(1),
            semaphores: Mutex::default(),
        }
    }

    /// A slot for one invocation by `caller`, or `Busy` at once (callers retry; queueing here
    /// would only hide overload behind latency).
    pub(crate) fn acquire(&self, caller: &Principal) -> Result<OwnedSemaphorePermit, RuntimeError> {
        let semaphore = self
            .semaphores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(caller.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
            .clone();
        semaphore
            .try_acquire_owned()
            .map_err(|_| RuntimeError::Busy {
                who: caller.to_string(),
                limit: self.per_caller,
            })
    }
}
