//! The per-invocation monitor: the one choke point every host call of a guest passes.
//!
//! Which host functions a guest may call at all is decided once, at deploy: its imports are
//! checked against its permissions ([`Compiled::needed_permissions`](crate::Compiled)) and a
//! function that imports what it was not granted never runs. What remains for call time is
//! what depends on arguments — a key-value write over the function's quota, an outgoing
//! request — and counting: wasmtime's call hook sees every transition from the guest into
//! the host, so every host call is counted here, and every refusal is recorded as an entry of
//! the invocation's log. A denial is an error the guest sees, never a crash of the host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Most denials one invocation records in its log (later ones are only counted).
const MAX_DENIALS_LOGGED: usize = 16;

/// What the monitor saw during one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorReport {
    /// Calls from the guest into the host (WASI, key-value state, HTTP).
    pub host_calls: u64,
    /// Host calls refused, by the permission or limit that refused them.
    pub denials: Vec<Denial>,
    /// Denials beyond those recorded in `denials`.
    pub denials_not_logged: u64,
}

impl MonitorReport {
    /// How many calls were refused.
    pub fn denial_count(&self) -> u64 {
        self.denials.len() as u64 + self.denials_not_logged
    }

    /// Denials counted by what refused them; those beyond the log's count as `unlogged`.
    pub fn denials_by_cause(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let unlogged =
            (self.denials_not_logged > 0).then_some(("unlogged", self.denials_not_logged));
        self.denials.iter().map(|d| (d.by, 1)).chain(unlogged)
    }
}

/// One refused host call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What refused it: a permission (`kv`, `http`) or a limit (`kv-quota`).
    pub by: &'static str,
    /// What the guest tried and how to allow it.
    pub detail: String,
}

/// Shared between a store's call hook, its host functions and the caller, which reads the
/// report once the guest has stopped (the store may be gone by then).
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    host_calls: AtomicU64,
    denials: Mutex<(Vec<Denial>, u64)>,
}

impl Monitor {
    /// Records a refused call; the guest gets an error.
    pub(crate) fn deny(&self, by: &'static str, detail: String) {
        tracing::debug!(by, %detail, "host call denied");
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if denials.0.len() < MAX_DENIALS_LOGGED {
            denials.0.push(Denial { by, detail });
        } else {
            denials.1 += 1;
        }
    }

    pub(crate) fn report(&self) -> MonitorReport {
        let denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        MonitorReport {
            host_calls: self.host_calls.load(Ordering::Relaxed),
            denials: denials.0.clone(),
            denials_not_logged: denials.1,
        }
    }
}

impl Monitor {
    /// Counts one call from the guest into the host (the store's call hook calls it; see
    /// `limits::arm`).
    pub(crate) fn count_host_call(&self) {
        self.host_calls.fetch_add(1, Ordering::Relaxed);
    }
}
