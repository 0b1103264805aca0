//! Fair shares of the CPU between tenants. A guest runs WebAssembly only while it holds a
//! [`Turn`]; there are as many turns as cores. A guest gives its turn back at the end of each
//! time slice (an epoch tick) and queues for the next. Host calls keep the turn (most take
//! microseconds, and queueing again after each would cost a slice each), but a guest that has
//! been in one host call for a whole tick (waiting on I/O) loses it to whoever waits: the
//! epoch ticker reclaims it ([`CpuScheduler::reclaim`]), and the guest queues again when the
//! call returns. Waiting guests are queued per [`CpuShare`] (a tenant), and freed turns
//! go to the shares round-robin: a tenant running 64 busy guests gets no more of the CPU than
//! one running a single guest, as long as both want it. A share with no guest waiting goes to
//! the front of the line, so a quiet tenant's invocation waits at most about one time slice
//! for a core.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Whose CPU share an invocation runs on (the runtime names the tenant). Invocations of one
/// share take turns among themselves; shares take turns with each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuShare(Arc<str>);

impl CpuShare {
    pub fn new(name: &str) -> Self {
        CpuShare(Arc::from(name))
    }
}

pub(crate) struct CpuScheduler {
    state: Mutex<Waiting>,
    /// The invocations that may hold turns, to reclaim from those stuck in a host call.
    holders: Mutex<Vec<std::sync::Weak<Holder>>>,
    /// Epoch ticks seen (see [`CpuScheduler::reclaim`]).
    ticks: std::sync::atomic::AtomicU64,
}

/// One invocation's side: the turn it holds, and since which tick it is in a host call.
#[derive(Default)]
struct Holder {
    held: Mutex<Option<Turn>>,
    /// The tick its current host call began at, plus one; 0 outside host calls.
    in_host_since: std::sync::atomic::AtomicU64,
}

struct Waiting {
    /// Turns nobody holds.
    free: usize,
    /// Guests waiting for a turn, per share, in arrival order.
    queues: HashMap<CpuShare, VecDeque<oneshot::Sender<Turn>>>,
    /// Shares with waiting guests, in the order they get the next free turns.
    order: VecDeque<CpuShare>,
}

/// The right to run WebAssembly on one core; dropping it hands it to the next waiting share.
pub(crate) struct Turn {
    scheduler: Option<Arc<CpuScheduler>>,
}

impl CpuScheduler {
    /// A scheduler with `turns` turns (at least one).
    pub(crate) fn new(turns: usize) -> Arc<Self> {
        Arc::new(CpuScheduler {
            state: Mutex::new(Waiting {
                free: turns.max(1),
                queues: HashMap::new(),
                order: VecDeque::new(),
            }),
            holders: Mutex::default(),
            ticks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Called at every epoch tick: while guests wait, takes the turns of guests that have
    /// been in one host call since before the last tick and passes them on.
    pub(crate) fn reclaim(&self) {
        use std::sync::atomic::Ordering;
        let now = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        // Invocations that ended: at most one tick's worth accumulate.
        holders.retain(|holder| holder.strong_count() > 0);
        if self.lock().order.is_empty() {
            return;
        }
        for holder in holders.iter().filter_map(std::sync::Weak::upgrade) {
            let since = holder.in_host_since.load(Ordering::Relaxed);
            if since != 0 && since < now {
                let turn = holder
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                drop(turn);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A turn at once, if one is free and nobody is waiting for it.
    pub(crate) fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let mut waiting = self.lock();
        if waiting.free > 0 && waiting.order.is_empty() {
            waiting.free -= 1;
            return Some(Turn {
                scheduler: Some(self.clone()),
            });
        }
        None
    }

    /// A turn for `share`: at once if one is free and nobody waits, else when the shares
    /// queued before it have had theirs.
    pub(crate) async fn turn(self: Arc<Self>, share: CpuShare) -> Turn {
        let handed = {
            let mut waiting = self.lock();
            if waiting.free > 0 && waiting.order.is_empty() {
                waiting.free -= 1;
                drop(waiting);
                return Turn {
                    scheduler: Some(self),
                };
            }
            let (sender, handed) = oneshot::channel();
            let Waiting { queues, order, .. } = &mut *waiting;
            let queue = queues.entry(share.clone()).or_default();
            if queue.is_empty() {
                // A share with nothing waiting goes first: it has not been using the CPU
                // (a share that keeps guests waiting is put back behind the others at each
                // turn it gets), so a quiet tenant waits for one slice to end, not one per
                // busy tenant.
                order.push_front(share);
            }
            queue.push_back(sender);
            handed
        };
        // A turn handed to a guest that stopped waiting is dropped with the channel, and so
        // passed on again: no turn is ever lost.
        match handed.await {
            Ok(turn) => turn,
            // Only if the scheduler itself is gone: run rather than wait forever.
            Err(_) => Turn { scheduler: None },
        }
    }

    /// Passes a turn that was given back to the next share in line, or frees it.
    fn pass_on(self: &Arc<Self>) {
        loop {
            let sender = {
                let mut waiting = self.lock();
                let Some(share) = waiting.order.pop_front() else {
                    waiting.free += 1;
                    return;
                };
                let Waiting { queues, order, .. } = &mut *waiting;
                let queue = queues.get_mut(&share).expect("a share in line has a queue");
                let sender = queue.pop_front().expect("a share in line has a waiter");
                if queue.is_empty() {
                    queues.remove(&share);
                } else {
                    // The share's next guest waits behind every other share.
                    order.push_back(share);
                }
                sender
            };
            let turn = Turn {
                scheduler: Some(self.clone()),
            };
            match sender.send(turn) {
                Ok(()) => return,
                // That guest stopped waiting (its invocation ended): try the next.
                Err(mut turn) => turn.scheduler = None,
            }
        }
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.pass_on();
        }
    }
}

/// One invocation's place with the scheduler: the turn it holds, if any.
#[derive(Clone)]
pub(crate) struct Turns {
    scheduler: Arc<CpuScheduler>,
    share: CpuShare,
    holder: Arc<Holder>,
}

impl Turns {
    pub(crate) fn new(scheduler: Arc<CpuScheduler>, share: CpuShare) -> Self {
        let holder = Arc::new(Holder::default());
        scheduler
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&holder));
        Turns {
            scheduler,
            share,
            holder,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Turn>> {
        self.holder
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the turn back (the guest's slice is over, or it finished).
    pub(crate) fn give_back(&self) {
        let turn = self.held().take();
        drop(turn);
    }

    /// The guest calls the host: it keeps its turn unless the call outlasts a tick while
    /// others wait.
    pub(crate) fn entering_host(&self) {
        use std::sync::atomic::Ordering;
        let now = self.scheduler.ticks.load(Ordering::Relaxed);
        self.holder.in_host_since.store(now + 1, Ordering::Relaxed);
    }

    /// The host call returned: `false` if the guest lost its turn meanwhile and none is free
    /// (it must wait in line at its next epoch check).
    pub(crate) fn leaving_host(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.holder.in_host_since.store(0, Ordering::Relaxed);
        self.try_take()
    }

    /// Takes a turn at once if one is free; `false` if the guest must wait for one.
    pub(crate) fn try_take(&self) -> bool {
        let mut held = self.held();
        if held.is_some() {
            return true;
        }
        *held = self.scheduler.try_turn();
        held.is_some()
    }

    /// Waits for a turn and holds it.
    pub(crate) async fn take(self) {
        if self.held().is_some() {
            return;
        }
        let turn = self.scheduler.clone().turn(self.share.clone()).await;
        *self.held() = Some(turn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freed_turns_go_to_shares_round_robin_a_quiet_share_first() {
        let scheduler = CpuScheduler::new(1);
        let first = scheduler.clone().turn(CpuShare::new("busy")).await;
        let (order, mut done) = tokio::sync::mpsc::unbounded_channel();
        // Three busy guests queue first, then one quiet one, then another busy share's.
        for share in ["busy", "busy", "busy", "quiet", "other"] {
            let scheduler = scheduler.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let turn = scheduler.turn(CpuShare::new(share)).await;
                order.send(share).unwrap();
                // Held briefly, then passed on.
                tokio::task::yield_now().await;
                drop(turn);
            });
            tokio::task::yield_now().await;
        }
        drop(first);
        let mut served = Vec::new();
        for _ in 0..5 {
            served.push(done.recv().await.unwrap());
        }
        // The share that arrived last with nothing waiting goes first; then the shares take
        // turns: "busy" does not get three turns in a row.
        assert_eq!(served, ["other", "quiet", "busy", "busy", "busy"]);
    }

    #[tokio::test]
    async fn a_turn_handed_to_a_guest_that_stopped_waiting_is_not_lost() {
        let scheduler = CpuScheduler::new(1);
        let held = scheduler.clone().turn(CpuShare::new("a")).await;
        let gone = tokio::spawn(scheduler.clone().turn(CpuShare::new("b")));
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(scheduler.free(), 1);
        assert!(scheduler.try_turn().is_some());
    }

    #[tokio::test]
    async fn a_turn_held_through_a_long_host_call_goes_to_a_waiting_guest() {
        let scheduler = CpuScheduler::new(1);
        let waiting_on_io = Turns::new(scheduler.clone(), CpuShare::new("io"));
        assert!(waiting_on_io.try_take());
        waiting_on_io.entering_host();
        // The store's hooks keep an invocation's `Turns` alive; so does this test.
        let busy_turns = Turns::new(scheduler.clone(), CpuShare::new("cpu"));
        let busy = tokio::spawn(busy_turns.clone().take());
        tokio::task::yield_now().await;
        // Within the tick the call began in, the turn stays.
        scheduler.reclaim();
        tokio::task::yield_now().await;
        assert!(!busy.is_finished());
        // A whole tick later it goes to the waiting guest.
        scheduler.reclaim();
        busy.await.unwrap();
        // Back from the host, the first guest waits for a turn again.
        assert!(!waiting_on_io.leaving_host());
        drop(busy_turns);
        assert!(
            waiting_on_io.try_take(),
            "the turn came back when the other finished"
        );
    }
}
