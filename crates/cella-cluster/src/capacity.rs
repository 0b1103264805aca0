//! Spare capacity: every worker announces, sealed, how many invocations it can take at once
//! and how many slots are free right now; gateways add the announcements up into metrics
//! (`cella_cluster_workers`, `cella_cluster_slots{state}`) that an autoscaler reads beside
//! the queue depth. NATS's queue groups spread the work itself, so adding a worker raises
//! throughput at once, with no restart and no scheduler of cella's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cella_runtime::Platform;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::bus::{SealedBus, short_id};
use crate::subjects::CAPACITY;

/// How often a worker announces itself; a worker not heard of for [`FORGET_AFTER`] counts no
/// more.
const EVERY: Duration = Duration::from_secs(2);
const FORGET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Capacity {
    slots: u32,
    free: u32,
}

/// A worker's side: announces `slots` (all `total` of them) until the task is dropped.
pub(crate) async fn announce(bus: Arc<SealedBus>, slots: Arc<Semaphore>, total: u32) {
    loop {
        let capacity = Capacity {
            slots: total,
            free: slots.available_permits().min(total as usize) as u32,
        };
        let payload = serde_json::to_vec(&capacity).expect("serializes");
        match bus.seal_event(CAPACITY, &payload) {
            Ok(sealed) => {
                if let Err(e) = bus.client().publish(CAPACITY, sealed).await {
                    tracing::debug!("cannot announce capacity: {e}");
                }
            }
            Err(e) => tracing::debug!("cannot seal the capacity announcement: {e}"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The gateway's side: keeps the cluster's capacity metrics current.
pub(crate) async fn follow(bus: Arc<SealedBus>, platform: Arc<Platform>) {
    let mut announcements = match bus.client().subscribe(CAPACITY).await {
        Ok(announcements) => announcements,
        Err(e) => {
            tracing::error!("cannot follow workers' capacity: {e}");
            return;
        }
    };
    let mut known: HashMap<String, (Instant, Capacity)> = HashMap::new();
    let mut sweep = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            announcement = announcements.next() => {
                let Some(message) = announcement else { return };
                let Ok(opened) = bus.open_event(&message.payload, CAPACITY) else { continue };
                // An announcement replayed later says nothing about now.
                let now_ms = platform
                    .wall_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if now_ms.abs_diff(opened.header.issued_at_ms) > FORGET_AFTER.as_millis() as u64 {
                    continue;
                }
                let Ok(capacity) = serde_json::from_slice::<Capacity>(&opened.payload) else {
                    continue;
                };
                known.insert(short_id(&opened.header.sender), (Instant::now(), capacity));
            }
            _ = sweep.tick() => {}
        }
        known.retain(|_, (heard, _)| heard.elapsed() < FORGET_AFTER);
        let total: u64 = known.values().map(|(_, c)| u64::from(c.slots)).sum();
        let free: u64 = known.values().map(|(_, c)| u64::from(c.free)).sum();
        platform
            .metrics()
            .cluster_capacity(known.len() as u64, total, free);
    }
}
