//! The clocks guests read come from the host, and the host may lie (an Iago attack): turn the
//! wall clock back, jump it ahead, or run the monotonic clock backwards. Guests see clocks the
//! sandbox guards, shared by every invocation of the process:
//!
//! - the wall clock never goes backwards and never runs ahead of the last credible reading by
//!   more than the monotonic time elapsed since (plus [`CATCH_UP`] of it, and [`WALL_SLACK`]):
//!   a jump ahead is let through only as fast as time passes, however often guests read; while
//!   the host's clock is behind, guests see time advance at the monotonic rate from the last
//!   credible reading;
//! - the monotonic clock never goes backwards.
//!
//! Every correction is counted (see [`Sandbox::clock_corrections`]) and logged, the first and
//! then every thousandth, so a lying host cannot flood the log.
//!
//! Time inside a TEE is only as good as the host's: these checks make the lies bounded and
//! visible, not impossible. The first reading after start is taken as it is, and only guests'
//! clocks are guarded (the node's own timestamps, in receipts and records, are not).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// How far the wall clock may run ahead of the elapsed monotonic time, at once.
pub const WALL_SLACK: Duration = Duration::from_secs(1);

/// How much faster than monotonic time the wall clock may catch up with a host clock that is
/// ahead (1 %: a legitimate step forward, say after a suspend, is absorbed over time; a day's
/// lie takes a hundred days to get through).
pub const CATCH_UP: f64 = 0.01;

/// Where the host's time comes from (the system's clocks, or a scripted liar in tests).
pub trait TimeSource: Send + Sync {
    /// Time since the Unix epoch.
    fn wall(&self) -> Duration;
    /// Nanoseconds since an arbitrary, fixed start.
    fn monotonic(&self) -> u64;
}

/// The operating system's clocks.
pub struct SystemTimeSource {
    start: Instant,
}

impl Default for SystemTimeSource {
    fn default() -> Self {
        SystemTimeSource {
            start: Instant::now(),
        }
    }
}

impl TimeSource for SystemTimeSource {
    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }

    fn monotonic(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The guarded clocks of one sandbox.
pub(crate) struct GuardedClocks {
    source: Box<dyn TimeSource>,
    state: Mutex<Readings>,
    corrections: AtomicU64,
}

#[derive(Default)]
struct Readings {
    /// The last credible wall reading and the monotonic time when it was taken.
    anchor: Option<(Duration, u64)>,
    /// The last wall time handed out.
    last: Duration,
    monotonic: u64,
}

impl GuardedClocks {
    pub(crate) fn new(source: Box<dyn TimeSource>) -> Arc<Self> {
        Arc::new(GuardedClocks {
            source,
            state: Mutex::default(),
            corrections: AtomicU64::new(0),
        })
    }

    pub(crate) fn corrections(&self) -> u64 {
        self.corrections.load(Ordering::Relaxed)
    }

    fn corrected(&self, what: &str, host: impl std::fmt::Debug, given: impl std::fmt::Debug) {
        let n = self.corrections.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(
                corrections = n + 1,
                "the host's {what} clock is not credible (it said {host:?}); guests see {given:?}"
            );
        }
    }

    fn monotonic_now(&self, state: &mut Readings) -> u64 {
        let host = self.source.monotonic();
        if host < state.monotonic {
            self.corrected("monotonic", host, state.monotonic);
        } else {
            state.monotonic = host;
        }
        state.monotonic
    }

    pub(crate) fn wall_now(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let host = self.source.wall();
        let now = self.monotonic_now(&mut state);
        let Some((anchor, at)) = state.anchor else {
            state.anchor = Some((host, now));
            state.last = host;
            return host;
        };
        // Where the clock should be by monotonic time, and how far ahead of that it may be.
        let elapsed = Duration::from_nanos(now.saturating_sub(at));
        let expected = anchor.saturating_add(elapsed);
        let ceiling = expected
            .saturating_add(elapsed.mul_f64(CATCH_UP))
            .saturating_add(WALL_SLACK);
        let given = if host < state.last {
            let given = expected.clamp(state.last, ceiling.max(state.last));
            self.corrected("wall", host, given);
            given
        } else if host > ceiling {
            self.corrected("wall", host, ceiling);
            ceiling
        } else {
            // Credible: it becomes the reference for what follows.
            state.anchor = Some((host, now));
            host
        };
        state.last = given;
        given
    }

    pub(crate) fn monotonic_now_shared(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.monotonic_now(&mut state)
    }
}

/// The wall clock handed to one guest.
pub(crate) struct GuestWallClock(pub(crate) Arc<GuardedClocks>);

impl HostWallClock for GuestWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.wall_now()
    }
}

/// The monotonic clock handed to one guest.
pub(crate) struct GuestMonotonicClock(pub(crate) Arc<GuardedClocks>);

impl HostMonotonicClock for GuestMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.monotonic_now_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that says what the test tells it to.
    #[derive(Default)]
    struct Liar {
        wall: Mutex<Duration>,
        monotonic: AtomicU64,
    }

    impl TimeSource for Arc<Liar> {
        fn wall(&self) -> Duration {
            *self.wall.lock().unwrap()
        }
        fn monotonic(&self) -> u64 {
            self.monotonic.load(Ordering::SeqCst)
        }
    }

    impl Liar {
        fn set(&self, wall_secs: u64, monotonic_secs: u64) {
            *self.wall.lock().unwrap() = Duration::from_secs(wall_secs);
            self.monotonic
                .store(monotonic_secs * 1_000_000_000, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_host_clock_that_goes_back_or_jumps_is_clamped_and_counted() {
        let liar = Arc::new(Liar::default());
        let clocks = GuardedClocks::new(Box::new(liar.clone()));
        let secs = |d: Duration| d.as_secs();

        liar.set(1_000, 10);
        assert_eq!(secs(clocks.wall_now()), 1_000);
        // Honest progress passes through.
        liar.set(1_005, 15);
        assert_eq!(secs(clocks.wall_now()), 1_005);
        assert_eq!(clocks.corrections(), 0);

        // Back in time: guests see time go on at the monotonic rate instead.
        liar.set(900, 16);
        assert_eq!(secs(clocks.wall_now()), 1_006);
        liar.set(900, 20);
        assert_eq!(secs(clocks.wall_now()), 1_010);
        assert_eq!(clocks.corrections(), 2);

        // A jump of a day gets through only as fast as time passes, however often it is read.
        liar.set(1_010 + 86_400, 22);
        for _ in 0..10_000 {
            let seen = secs(clocks.wall_now());
            assert!(seen <= 1_005 + 7 + WALL_SLACK.as_secs(), "{seen}");
        }
        // A hundred seconds after the last credible reading (1,005 at 15): that much time, one
        // second of catch-up and the slack.
        liar.set(1_010 + 86_400, 115);
        assert_eq!(secs(clocks.wall_now()), 1_005 + 100 + 1 + 1);

        // Honest again: it passes through and becomes the reference.
        liar.set(1_110, 118);
        assert_eq!(secs(clocks.wall_now()), 1_110);

        // The monotonic clock run backwards: held.
        let before = clocks.monotonic_now_shared();
        liar.set(1_200, 3);
        assert_eq!(clocks.monotonic_now_shared(), before);
    }

    #[test]
    fn absurd_host_times_do_not_overflow() {
        let liar = Arc::new(Liar::default());
        let clocks = GuardedClocks::new(Box::new(liar.clone()));
        liar.set(1_000, 1);
        clocks.wall_now();
        *liar.wall.lock().unwrap() = Duration::MAX;
        liar.monotonic.store(u64::MAX, Ordering::SeqCst);
        let seen = clocks.wall_now();
        assert!(seen >= Duration::from_secs(1_000));
    }
}
