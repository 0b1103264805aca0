//! Fair shares of the CPU between tenants. A guest runs WebAssembly only while it holds a
//! [`Turn`]; there are as many turns as cores. A guest gives its turn back at the end of each
//! time slice (an epoch tick) and whenever it calls the host (which may wait on I/O), and
//! queues for the next. Waiting guests are queued per [`CpuShare`] (a tenant), and freed turns
//! go to the shares round-robin: a tenant running 64 busy guests gets no more of the CPU than
//! one running a single guest, as long as both want it, and a quiet tenant's invocation waits
//! at most about one time slice for a core.

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
        })
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
                order.push_back(share);
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
    held: Arc<Mutex<Option<Turn>>>,
}

impl Turns {
    pub(crate) fn new(scheduler: Arc<CpuScheduler>, share: CpuShare) -> Self {
        Turns {
            scheduler,
            share,
            held: Arc::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Turn>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the turn back (the guest calls the host, or its slice is over).
    pub(crate) fn give_back(&self) {
        let turn = self.held().take();
        drop(turn);
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
    async fn freed_turns_go_to_shares_round_robin() {
        let scheduler = CpuScheduler::new(1);
        let first = scheduler.clone().turn(CpuShare::new("busy")).await;
        let (order, mut done) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        // Three busy guests queue first, then one quiet one.
        for (i, share) in ["busy", "busy", "busy", "quiet"].into_iter().enumerate() {
            let scheduler = scheduler.clone();
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let turn = scheduler.turn(CpuShare::new(share)).await;
                order.send((i, share)).unwrap();
                turn
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        let (_, after_first) = done.recv().await.unwrap();
        assert_eq!(after_first, "busy");
        // The busy share had its turn: the quiet one is next, ahead of two older busy guests.
        let mut turns = Vec::new();
        for waiter in &mut waiters {
            if waiter.is_finished() {
                turns.push(waiter.await.unwrap());
            }
        }
        drop(turns);
        let (_, next) = done.recv().await.unwrap();
        assert_eq!(next, "quiet");
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
}
