//! Warm capacity sized by demand: the gateway keeps a decaying count of how often each
//! function was invoked lately and tells the workers, sealed, which functions are in demand;
//! each worker loads those it has not loaded yet (bundle fetched, verified, compiled or its
//! sealed precompiled code taken), so a worker that joins to absorb load answers its first
//! requests from warm code instead of paying the cold load on them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cella_core::{ContentHash, FunctionRecord};
use cella_runtime::Platform;
use futures::StreamExt;

use crate::bus::SealedBus;
use crate::subjects::WARM;

/// How often the gateway names the functions in demand, and how many at most.
const EVERY: Duration = Duration::from_secs(5);
const MOST: usize = 32;
/// Demand halves every minute without invocations.
const HALF_LIFE: Duration = Duration::from_secs(60);

/// The gateway's view of demand: a score per function, decaying with time.
#[derive(Default)]
pub(crate) struct Demand(Mutex<HashMap<ContentHash, (FunctionRecord, f64, Instant)>>);

impl Demand {
    /// One invocation of `record` was asked for.
    pub(crate) fn invoked(&self, record: &FunctionRecord) {
        let mut demand = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = demand
            .entry(record.hash)
            .or_insert_with(|| (record.clone(), 0.0, now));
        entry.1 = decayed(entry.1, entry.2.elapsed()) + 1.0;
        entry.2 = now;
    }

    /// The functions in demand now, most demanded first; forgets those no longer in it.
    fn hottest(&self) -> Vec<FunctionRecord> {
        let mut demand = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        demand.retain(|_, (_, score, at)| decayed(*score, at.elapsed()) >= 0.5);
        let mut ranked: Vec<(f64, FunctionRecord)> = demand
            .values()
            .map(|(record, score, at)| (decayed(*score, at.elapsed()), record.clone()))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.into_iter().take(MOST).map(|(_, r)| r).collect()
    }
}

fn decayed(score: f64, elapsed: Duration) -> f64 {
    score * 0.5f64.powf(elapsed.as_secs_f64() / HALF_LIFE.as_secs_f64())
}

/// The gateway's side: names the functions in demand every few seconds.
pub(crate) async fn announce(bus: Arc<SealedBus>, demand: Arc<Demand>) {
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
        let hottest = demand.hottest();
        if hottest.is_empty() {
            continue;
        }
        let payload = serde_json::to_vec(&hottest).expect("records serialize");
        match bus.seal_event(WARM, &payload) {
            Ok(sealed) => {
                if let Err(e) = bus.client().publish(WARM, sealed).await {
                    tracing::debug!("cannot name the functions in demand: {e}");
                }
            }
            Err(e) => tracing::debug!("cannot seal the functions in demand: {e}"),
        }
    }
}

/// A worker's side: loads the functions in demand it has not loaded yet.
pub(crate) async fn follow(bus: Arc<SealedBus>, platform: Arc<Platform>) {
    let mut named = match bus.client().subscribe(WARM).await {
        Ok(named) => named,
        Err(e) => {
            tracing::warn!("cannot follow the functions in demand: {e}");
            return;
        }
    };
    let mut warm: HashSet<ContentHash> = HashSet::new();
    while let Some(message) = named.next().await {
        let Ok(opened) = bus.open_event(&message.payload, WARM) else {
            continue;
        };
        let Ok(records) = serde_json::from_slice::<Vec<FunctionRecord>>(&opened.payload) else {
            continue;
        };
        let mut loaded = 0;
        for record in records.into_iter().take(MOST) {
            if warm.contains(&record.hash) {
                continue;
            }
            match platform.prepare(&record).await {
                Ok(()) => {
                    warm.insert(record.hash);
                    loaded += 1;
                }
                Err(e) => tracing::debug!("cannot warm a function in demand: {e}"),
            }
        }
        if loaded > 0 {
            // Counts only: the operator's log names no functions.
            tracing::debug!(loaded, "warmed functions in demand");
        }
    }
}
