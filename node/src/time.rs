//! Where the node reads the time for its own decisions: stamping commands,
//! retention by age, clock trust and quiescence.
//!
//! The node holds one `Arc<dyn Clock>` (`Node::time`) and reads it there
//! instead of the system clock, so a test can set the time by hand and drive
//! those decisions without sleeping. Deadlines and timeouts of async work
//! stay on tokio's timer: they bound waiting, they decide nothing.

use std::fmt::Debug;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + Debug {
    /// The wall clock: milliseconds since the Unix epoch, 0 before it.
    fn now_ms(&self) -> i64;

    /// The monotonic clock, for measuring how long something took or has
    /// lasted.
    fn now(&self) -> Instant;
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug, Clone, Copy)]
struct ManualState {
    wall_ms: i64,
    now: Instant,
}

impl ManualClock {
    /// A clock whose wall clock reads `wall_ms`. Its monotonic clock starts
    /// at the moment of the call: `Instant` has no other origin.
    pub fn new(wall_ms: i64) -> ManualClock {
        ManualClock {
            state: Mutex::new(ManualState {
                wall_ms,
                now: Instant::now(),
            }),
        }
    }

    /// Lets `by` pass on both clocks.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock();
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        state.wall_ms = state.wall_ms.saturating_add(by_ms);
        state.now += by;
    }

    /// Sets the wall clock alone, as an NTP step or a restored VM would.
    pub fn set_wall_ms(&self, wall_ms: i64) {
        self.state.lock().wall_ms = wall_ms;
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.state.lock().wall_ms
    }

    fn now(&self) -> Instant {
        self.state.lock().now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let start = clock.now();
        assert_eq!((clock.now_ms(), clock.now()), (1_000, start));

        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_ms(), 91_000);
        assert_eq!(clock.now() - start, Duration::from_secs(90));

        // A wall-clock step leaves the monotonic clock where it was.
        clock.set_wall_ms(5);
        assert_eq!(clock.now_ms(), 5);
        assert_eq!(clock.now() - start, Duration::from_secs(90));
    }

    #[test]
    fn the_system_clock_reads_the_time_since_the_epoch() {
        // 2020-09-13: any real clock is past it.
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
        let before = SystemClock.now();
        assert!(SystemClock.now() >= before);
    }
}
