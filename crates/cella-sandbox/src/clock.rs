//! The clocks guests read come from the host, and the host may lie (an Iago attack): turn the
//! wall clock back, jump it ahead, or run the monotonic clock backwards. Guests see clocks the
//! sandbox guards, shared by every invocation of the process:
//!
//! - the wall clock never goes backwards, and each reading runs ahead of the previous one by at
//!   most the monotonic time elapsed plus [`WALL_SLACK`] — a jump is absorbed over successive
//!   readings, never passed on at once;
//! - the monotonic clock never goes backwards.
//!
//! Every correction is counted (see [`Sandbox::clock_corrections`]) and logged, the first and
//! then every thousandth, so a lying host cannot flood the log.
//!
//! Time inside a TEE is only as good as the host's: these checks make the lies bounded and
//! visible, not impossible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// How far one wall-clock reading may run ahead of the elapsed monotonic time.
pub const WALL_SLACK: Duration = Duration::from_secs(1);

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
    /// The last wall time handed out, and the monotonic time when it was.
    wall: Option<(Duration, u64)>,
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
        let given = match state.wall {
            None => host,
            Some((last, at)) => {
                let elapsed = Duration::from_nanos(now.saturating_sub(at));
                let ceiling = last + elapsed + WALL_SLACK;
                if host < last {
                    self.corrected("wall", host, last);
                    last
                } else if host > ceiling {
                    self.corrected("wall", host, ceiling);
                    ceiling
                } else {
                    host
                }
            }
        };
        state.wall = Some((given, now));
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

        // Back in time: held where it was.
        liar.set(900, 16);
        assert_eq!(secs(clocks.wall_now()), 1_005);
        assert_eq!(clocks.corrections(), 1);

        // A jump of a day: at most the elapsed time plus the slack.
        liar.set(1_005 + 86_400, 18);
        assert_eq!(secs(clocks.wall_now()), 1_005 + 2 + WALL_SLACK.as_secs());
        assert_eq!(clocks.corrections(), 2);

        // The monotonic clock run backwards: held too.
        let before = clocks.monotonic_now_shared();
        liar.set(1_010, 3);
        assert_eq!(clocks.monotonic_now_shared(), before);
        assert_eq!(clocks.corrections(), 3);
    }
}
