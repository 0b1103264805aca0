//! Freshness: a receiver accepts a message only within a time window around its own clock,
//! and only once. Ids seen are remembered for as long as a message carrying them could still
//! be accepted, so memory stays bounded by the message rate times the window.

use std::collections::{BTreeMap, HashSet};

use crate::envelope::{Header, MessageId};

/// Why a message was refused as not fresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("the message was issued {age_ms} ms ago, outside the {window_ms} ms window")]
    TooOld { age_ms: u64, window_ms: u64 },
    #[error("the message claims to be issued {ahead_ms} ms in the future")]
    FromTheFuture { ahead_ms: u64 },
    #[error("the message was already received: a replay")]
    Replayed,
}

/// Remembers the messages accepted within the window.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    seen: HashSet<MessageId>,
    /// Ids by issue time, to forget them once they fall out of the window.
    by_time: BTreeMap<u64, Vec<MessageId>>,
}

impl ReplayGuard {
    /// Accepts messages issued at most `window_ms` before or after the receiver's clock.
    pub fn new(window_ms: u64) -> Self {
        ReplayGuard {
            window_ms,
            seen: HashSet::new(),
            by_time: BTreeMap::new(),
        }
    }

    /// Accepts `header` at `now_ms` (the receiver's clock) once; refuses it if stale or seen.
    pub fn accept(&mut self, header: &Header, now_ms: u64) -> Result<(), Stale> {
        self.forget_before(now_ms.saturating_sub(self.window_ms));
        let issued = header.issued_at_ms;
        if issued.saturating_add(self.window_ms) < now_ms {
            return Err(Stale::TooOld {
                age_ms: now_ms - issued,
                window_ms: self.window_ms,
            });
        }
        if issued > now_ms.saturating_add(self.window_ms) {
            return Err(Stale::FromTheFuture {
                ahead_ms: issued - now_ms,
            });
        }
        if !self.seen.insert(header.id) {
            return Err(Stale::Replayed);
        }
        self.by_time.entry(issued).or_default().push(header.id);
        Ok(())
    }

    /// How many ids are remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn forget_before(&mut self, oldest_ms: u64) {
        let keep = self.by_time.split_off(&oldest_ms);
        for ids in std::mem::replace(&mut self.by_time, keep).into_values() {
            for id in ids {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Kind, random_id};

    fn at(issued_at_ms: u64) -> Header {
        Header {
            kind: Kind::Request,
            epoch: 0,
            sender: [1; 16],
            id: random_id(),
            in_reply_to: [0; 16],
            issued_at_ms,
            subject: "cella.invoke".into(),
        }
    }

    #[test]
    fn a_message_is_accepted_once_within_its_window() {
        let mut guard = ReplayGuard::new(30_000);
        let message = at(100_000);
        assert_eq!(guard.accept(&message, 100_500), Ok(()));
        assert_eq!(guard.accept(&message, 101_000), Err(Stale::Replayed));
        assert!(matches!(
            guard.accept(&at(50_000), 100_500),
            Err(Stale::TooOld { .. })
        ));
        assert!(matches!(
            guard.accept(&at(200_000), 100_500),
            Err(Stale::FromTheFuture { .. })
        ));
        assert!(matches!(guard.accept(&at(u64::MAX), u64::MAX - 1), Ok(())));
        assert!(matches!(
            guard.accept(&at(0), u64::MAX),
            Err(Stale::TooOld { .. })
        ));
    }

    #[test]
    fn ids_are_forgotten_once_no_copy_could_be_accepted() {
        let mut guard = ReplayGuard::new(1_000);
        for i in 0..100 {
            guard.accept(&at(10_000 + i), 10_000 + i).unwrap();
        }
        assert_eq!(guard.remembered(), 100);
        // Much later: the old ids are gone, and a replay of them is refused as too old.
        let old = at(10_000);
        guard.accept(&at(50_000), 50_000).unwrap();
        assert_eq!(guard.remembered(), 1);
        assert!(matches!(
            guard.accept(&old, 50_000),
            Err(Stale::TooOld { .. })
        ));
    }
}
