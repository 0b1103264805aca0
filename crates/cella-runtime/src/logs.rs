//! Recent invocation logs per function, kept in memory (inside the trusted process) for the
//! function's owner: what each invocation wrote to stderr, its outcome and duration.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, SystemTime};

use cella_core::FunctionName;
use serde::Serialize;

/// How many invocations per function are remembered.
const PER_FUNCTION: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct InvocationLog {
    pub id: String,
    pub at: String,
    /// `ok` or the error code.
    pub outcome: &'static str,
    pub duration_ms: u64,
    /// The tail of the guest's stderr (invalid UTF-8 replaced).
    pub log: String,
}

#[derive(Default)]
pub(crate) struct InvocationLogs {
    by_function: Mutex<HashMap<FunctionName, VecDeque<InvocationLog>>>,
}

/// A fresh invocation id: 16 random hex digits.
pub(crate) fn invocation_id() -> String {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random number generator");
    hex::encode(id)
}

impl InvocationLogs {
    pub(crate) fn record(
        &self,
        function: &FunctionName,
        id: String,
        outcome: &'static str,
        duration: Duration,
        log: String,
    ) {
        let entry = InvocationLog {
            id,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            outcome,
            duration_ms: duration.as_millis() as u64,
            log,
        };
        let mut map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ring = map.entry(function.clone()).or_default();
        if ring.len() == PER_FUNCTION {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Newest first.
    pub(crate) fn recent(&self, function: &FunctionName) -> Vec<InvocationLog> {
        let map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(function)
            .map(|ring| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn forget(&self, function: &FunctionName) {
        self.by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(function);
    }
}
