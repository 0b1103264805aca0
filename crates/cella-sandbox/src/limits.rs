//! Enforcing one invocation's limits on its store: the memory limiter, the epoch deadline, and
//! the tripwires that record which limit stopped a guest so the error can say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cella_core::Limits;
use wasmtime::{CallHook, ResourceLimiter, Store, UpdateDeadline};

/// Set by the enforcement points when a limit is crossed. Shared between the store's data and
/// the caller, which reads them after the guest stops (the store may be gone by then).
#[derive(Debug, Default)]
pub(crate) struct Tripwires {
    deadline: AtomicBool,
    memory: AtomicBool,
    output: AtomicBool,
}

impl Tripwires {
    pub(crate) fn trip_output(&self) {
        self.output.store(true, Ordering::Relaxed);
    }
    pub(crate) fn deadline(&self) -> bool {
        self.deadline.load(Ordering::Relaxed)
    }
    pub(crate) fn memory(&self) -> bool {
        self.memory.load(Ordering::Relaxed)
    }
    pub(crate) fn output(&self) -> bool {
        self.output.load(Ordering::Relaxed)
    }
}

/// Caps the total linear memory of one store. Growth beyond the cap fails (the guest sees
/// `memory.grow` return -1, as on a real out-of-memory) and the tripwire records it.
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    trip: Arc<Tripwires>,
}

impl MemoryLimiter {
    pub(crate) fn new(limits: &Limits, trip: Arc<Tripwires>) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            used: 0,
            trip,
        }
    }
}

/// Tables are bounded too, so a guest cannot exhaust host memory through `table.grow`.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.trip.memory.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.trip.memory.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }
}

/// Arms a store for one invocation: the wall-clock deadline, the CPU turns, and the
/// monitor's count of host calls.
///
/// - At every epoch tick (a time slice) the guest gives its CPU turn back and queues for the
///   next ([`crate::cpu`]), after Tokio's own yield (which puts it behind every ready task, I/O
///   included; a plain wake-up would let a busy guest take the worker's next turn again), and
///   is stopped once its deadline has passed.
/// - Host calls keep the turn; one that lasts a whole tick while others wait loses it (the
///   epoch ticker reclaims it), and on return the guest takes one again — at once if one is
///   free, else at its next epoch check, which then waits in line.
pub(crate) fn arm<T: Send + 'static>(
    store: &mut Store<T>,
    limits: &Limits,
    trip: Arc<Tripwires>,
    monitor: Option<Arc<crate::monitor::Monitor>>,
    turns: crate::cpu::Turns,
) {
    let deadline = Instant::now() + limits.timeout();
    store.set_epoch_deadline(1);
    let slices = turns.clone();
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            trip.deadline.store(true, Ordering::Relaxed);
            wasmtime::bail!("deadline exceeded");
        }
        slices.give_back();
        let next = slices.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                next.take().await;
            }),
        ))
    });
    store.call_hook(move |mut store, hook| {
        match hook {
            CallHook::CallingHost => {
                if let Some(monitor) = &monitor {
                    monitor.count_host_call();
                }
                turns.entering_host();
            }
            CallHook::ReturningFromWasm => turns.give_back(),
            CallHook::ReturningFromHost => {
                if !turns.leaving_host() {
                    // The turn was reclaimed during a long call: wait in line at the next
                    // epoch check.
                    store.set_epoch_deadline(0);
                }
            }
            CallHook::CallingWasm => {
                if !turns.try_take() {
                    store.set_epoch_deadline(0);
                }
            }
        }
        Ok(())
    });
}

/// Slack given to the host-side timer beyond the guest's deadline: the epoch callback stops a
/// running guest on time; the timer only catches a guest blocked in a host call.
pub(crate) const GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The limit a guest crossed, if any, as its error; otherwise the log is handed back. A
/// crossed limit wins over the symptom it caused (an allocation failure looks like a trap to
/// the guest, but the cause is the limit).
pub(crate) fn crossed_limit(
    trip: &Tripwires,
    limits: &Limits,
    log: crate::LogTail,
) -> Result<crate::LogTail, crate::RunError> {
    use crate::RunError;
    if trip.deadline() {
        Err(RunError::Timeout {
            limit_ms: limits.timeout_ms,
            log,
        })
    } else if trip.output() {
        Err(RunError::OutputLimit {
            limit_bytes: limits.output_bytes,
            log,
        })
    } else if trip.memory() {
        Err(RunError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
            log,
        })
    } else {
        Ok(log)
    }
}

/// A trap, or the pool running out of slots at instantiation (not the guest's fault).
pub(crate) fn guest_failure(e: wasmtime::Error, log: crate::LogTail) -> crate::RunError {
    if e.is::<wasmtime::PoolConcurrencyLimitError>() {
        return crate::RunError::PoolExhausted { log };
    }
    if let Some(unavailable) = e.downcast_ref::<crate::HostUnavailable>() {
        return crate::RunError::Unavailable(unavailable.clone(), log);
    }
    crate::RunError::Trap {
        message: trap_message(&e),
        log,
    }
}

/// One line saying why the guest stopped (the wasm backtrace stays in the server's debug log).
pub(crate) fn trap_message(e: &wasmtime::Error) -> String {
    tracing::debug!("guest failed: {e:?}");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.to_string(),
    }
}
