//! What the store asks of a remote tier (a shared cache beyond this machine; Redis is in
//! [`crate::remote`]). The store stays the only writer of its directory: a remote only
//! lists results and hands over packed values ([`super::pack`]), which the store checks
//! and publishes through [`super::Store::import_result`], and it receives what this
//! machine compiled. Every method is best effort: a remote that fails, stalls or lies
//! costs at most the request's [`Budget`], and never fails a request.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::key::Key;
use super::pack::Packed;

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// This machine's cache (or this request's own compile).
    Local,
    /// Fetched from the remote tier on a local miss.
    Remote,
}

/// One result a remote knows for a request: its key, and the (path, blake3) of the
/// headers it was built from. Authenticated by the tier (its MAC checked) when a
/// signing key is configured, before the store looks at any path it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteResult {
    /// The result key.
    pub key: Key,
    /// The headers, as (absolute path, blake3 hex).
    pub headers: Vec<(String, String)>,
}

/// The time one request may spend on the remote tier, in all (`remote_timeout`):
/// read-through and write-back draw on the same budget, and each call gets a deadline
/// of what is left ([`Budget::spend`]). Time spent compiling between the two is not
/// counted; time spent hashing the headers a remote names is.
#[derive(Debug)]
pub struct Budget {
    left: Cell<Duration>,
}

impl Budget {
    /// A budget of `total`.
    pub fn new(total: Duration) -> Budget {
        Budget {
            left: Cell::new(total),
        }
    }

    /// What is left.
    pub fn left(&self) -> Duration {
        self.left.get()
    }

    /// Runs `f` with the deadline of what is left, and takes what it spent from the
    /// budget. With nothing left, `f` still runs, with a deadline already passed (so
    /// that it can count a skip rather than wait).
    pub fn spend<T>(&self, f: impl FnOnce(Instant) -> T) -> T {
        let start = Instant::now();
        let r = f(start + self.left.get());
        self.left
            .set(self.left.get().saturating_sub(start.elapsed()));
        r
    }
}

/// A remote tier, as the store uses it. Every call takes a deadline, which every socket
/// operation it makes respects.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// What one request may spend on this remote, in all (`remote_timeout`).
    fn budget(&self) -> Duration;

    /// The results the remote knows for `request`, most recent first. Empty on any
    /// failure. With a signing key configured, a result whose record is not signed
    /// (when signatures are required) or is signed wrongly is left out here.
    fn results(&self, request: &Key, deadline: Instant) -> Vec<RemoteResult>;

    /// The value of the result `key`, decoded (and its signature checked); `None` on a
    /// miss or any failure.
    fn fetch(&self, key: &Key, deadline: Instant) -> Option<Packed>;

    /// A fetched value or a result record failed the store's checks (`why`): count it
    /// and say it once; with `remove` (the value itself is at fault, not merely built
    /// for another machine), delete it from the remote where this machine may write.
    fn refused(&self, request: &Key, key: &Key, why: &str, remove: bool, deadline: Instant);

    /// Nothing the remote holds for `request` could be used: counted as a remote miss,
    /// unless asking failed (a failure counted since this request's
    /// [`Remote::results`]), which is counted as that failure only. Returns whether a
    /// miss was counted.
    fn missed(&self, request: &Key) -> bool;

    /// Uploads a result compiled here, with the headers it was built from. Failures are
    /// counted, never returned.
    fn upload(
        &self,
        request: &Key,
        key: &Key,
        headers: &[(String, String)],
        value: &Packed,
        deadline: Instant,
    );

    /// How many rounds of results this remote has: the tiers of a chain, each asked
    /// ([`Remote::results_at`]) only when no result of the rounds before served. One
    /// for a single tier.
    fn levels(&self) -> usize {
        1
    }

    /// The results of round `level` (round 0 is [`Remote::results`]).
    fn results_at(&self, level: usize, request: &Key, deadline: Instant) -> Vec<RemoteResult> {
        if level == 0 {
            self.results(request, deadline)
        } else {
            Vec::new()
        }
    }

    /// A fetched value passed every check and was published here: a chain writes it
    /// back to the tiers in front of the one that served it. Nothing for one tier.
    fn taken(
        &self,
        _request: &Key,
        _key: &Key,
        _headers: &[(String, String)],
        _value: &Packed,
        _deadline: Instant,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_budget_covers_every_call_of_a_request() {
        let b = Budget::new(Duration::from_secs(3600));
        let d1 = b.spend(|d| d);
        assert!(d1 > Instant::now() + Duration::from_secs(3000));
        let left = b.left();
        assert!(left <= Duration::from_secs(3600));
        // The next call gets what is left, not a fresh hour.
        let d2 = b.spend(|d| d);
        assert!(d2 <= Instant::now() + left);
        // Nothing left: the deadline has passed already.
        let empty = Budget::new(Duration::ZERO);
        empty.spend(|d| assert!(d <= Instant::now()));
        assert!(empty.left().is_zero());
    }
}
