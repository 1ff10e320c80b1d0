//! A circuit breaker, per process: after [`TRIP_AFTER`] failures in a row the remote is
//! not asked for [`COOL_DOWN`]; then one request tries again (half open), and its
//! success closes the breaker, its failure opens it for another cool-down. A dead
//! remote then costs the requests of a process one timeout each for the first few, and
//! nothing after. Time comes from the injected clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker stops asking.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Asking.
    Closed,
    /// Not asking until then.
    Open(SystemTime),
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<(State, u32)>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new((State::Closed, 0)),
        }
    }
}

impl Breaker {
    /// Whether a request may ask the remote at `now`.
    pub fn allows(&self, now: SystemTime) -> bool {
        match self.inner.lock().unwrap().0 {
            State::Closed => true,
            State::Open(until) => now >= until,
        }
    }

    /// A success: closed.
    pub fn success(&self) {
        *self.inner.lock().unwrap() = (State::Closed, 0);
    }

    /// A failure at `now`; true when it opened the breaker.
    pub fn failure(&self, now: SystemTime) -> bool {
        let mut g = self.inner.lock().unwrap();
        let half_open = matches!(g.0, State::Open(until) if now >= until);
        g.1 += 1;
        if half_open || g.1 >= TRIP_AFTER {
            *g = (State::Open(now + COOL_DOWN), 0);
            return true;
        }
        false
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.inner.lock().unwrap().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_success() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let b = Breaker::default();
        assert!(b.allows(t0));
        assert!(!b.failure(t0));
        b.success(); // a success resets the count
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "the third in a row opens it");
        assert!(!b.allows(t0 + COOL_DOWN - Duration::from_secs(1)));
        // Half open: one try; a failure opens it again at once.
        let later = t0 + COOL_DOWN;
        assert!(b.allows(later));
        assert!(b.failure(later));
        assert!(!b.allows(later + Duration::from_secs(1)));
        // The next try succeeds: closed.
        let again = later + COOL_DOWN;
        assert!(b.allows(again));
        b.success();
        assert_eq!(b.state(), State::Closed);
    }
}
