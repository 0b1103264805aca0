//! Token guessing: tokens are 256-bit random, so guessing cannot succeed, but a flood of
//! wrong tokens still costs the node work and fills its logs. Each client address gets a
//! budget of failed authentications per window; past it, until the window ends, its requests
//! with unknown tokens are refused with 429 after a look-up in this copy of the registry
//! only (never a catch-up with a shared one). Valid tokens from the address still work: many
//! clients may share one address (a NAT, a proxy), and one of them guessing must not lock out
//! the others' authenticated work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications one address may make per window.
pub(crate) const FAILURES_PER_WINDOW: u32 = 20;
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (oldest windows are dropped first when full).
const MAX_TRACKED: usize = 100_000;

/// The address a connection came from, put on each request by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) IpAddr);

#[derive(Default)]
pub(crate) struct GuessingLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl GuessingLimiter {
    /// How long `peer` must wait, if it has used up its failures in this window.
    pub(crate) fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (since, count) = failures.get(&group(peer))?;
        let elapsed = since.elapsed();
        (*count >= FAILURES_PER_WINDOW && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    pub(crate) fn failed(&self, peer: IpAddr) {
        let peer = group(peer);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&peer) {
            failures.retain(|_, (since, _)| since.elapsed() < WINDOW);
            if failures.len() >= MAX_TRACKED {
                // Full of live entries: stop tracking newcomers rather than grow.
                return;
            }
        }
        let entry = failures.entry(peer).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// IPv6 clients usually hold a whole /64: count them by it, so fresh addresses from one
/// network do not each get a new budget.
fn group(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}
