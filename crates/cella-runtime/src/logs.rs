//! Recent invocation logs per function, kept in memory (inside the trusted process) for the
//! function's owner: what each invocation wrote to stderr, its outcome and duration, and what
//! the monitor saw; and per-function totals of the monitor's counts since the node started.
//! They name functions, so they are the owner's, not the operator's metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// The tail of the guest's stderr (invalid UTF-8 replaced) and the host's denials.
    pub log: String,
    /// Calls the guest made into the host.
    pub host_calls: u64,
    /// Of those, how many the monitor refused.
    pub denials: u64,
}

/// A function's totals since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FunctionStats {
    pub invocations: u64,
    pub host_calls: u64,
    /// Refused host calls, by the permission or limit that refused them.
    pub denials: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
struct FunctionEntry {
    recent: VecDeque<InvocationLog>,
    stats: FunctionStats,
}

#[derive(Default)]
pub(crate) struct InvocationLogs {
    by_function: Mutex<HashMap<FunctionName, FunctionEntry>>,
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
        monitor: Option<&cella_sandbox::MonitorReport>,
    ) {
        let default = cella_sandbox::MonitorReport::default();
        let monitor = monitor.unwrap_or(&default);
        let entry = InvocationLog {
            id,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            outcome,
            duration_ms: duration.as_millis() as u64,
            log,
            host_calls: monitor.host_calls,
            denials: monitor.denial_count(),
        };
        let mut map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let function = map.entry(function.clone()).or_default();
        let stats = &mut function.stats;
        stats.invocations += 1;
        stats.host_calls += monitor.host_calls;
        for (by, count) in monitor.denials_by_cause() {
            *stats.denials.entry(by).or_default() += count;
        }
        let ring = &mut function.recent;
        if ring.len() == PER_FUNCTION {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    pub(crate) fn stats(&self, function: &FunctionName) -> FunctionStats {
        let map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(function)
            .map(|entry| entry.stats.clone())
            .unwrap_or_default()
    }

    /// Newest first.
    pub(crate) fn recent(&self, function: &FunctionName) -> Vec<InvocationLog> {
        let map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(function)
            .map(|entry| entry.recent.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn forget(&self, function: &FunctionName) {
        self.by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(function);
    }
}
