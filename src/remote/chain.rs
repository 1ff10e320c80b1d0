//! Tiers in a chain: `remote = redis://…;s3://…`, fastest first. The chain is what the
//! store sees ([`Remote`]); each tier keeps its own circuit breaker, counters and
//! failures.
//!
//! - **Read-through in order.** Round `i` ([`Remote::results_at`]) asks tier `i` for the
//!   request's results, only when nothing of the rounds before served. Values are
//!   content-addressed and the same bytes in every tier, so a result listed by tier `i`
//!   whose value tier `i` no longer has (an LRU evicted it) is fetched from the tiers
//!   after it.
//! - **Refill.** A value served by tier `j` that passed the store's checks is written
//!   back to the tiers before `j` ([`Remote::taken`]): the next machine finds it in the
//!   faster tier.
//! - **Write-back.** What this machine compiled is uploaded to every writable tier.
//! - **Deadline shares.** The request's one deadline is shared: a call to tier `i` of
//!   `n` may spend `1/(n-i)` of what is left, so a stopped first tier leaves the others
//!   time to answer; uploads share what is left equally.
//!
//! The totals count requests (a hit: some tier served; a miss: none did); each tier
//! counts its own (a hit in S3 after a miss in Redis is one of each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::key::Key;
use crate::store::pack::Packed;
use crate::store::remote::{Remote, RemoteResult};
use crate::store::stats::{Recorder, RemoteEvent};

/// Requests remembered at once (those whose lookup ended without a word: an import
/// that failed on this machine's disk); past it, the memory starts again.
const MAX_PENDING: usize = 4096;

/// What the chain remembers of one request between its calls.
#[derive(Debug, Default, Clone)]
struct Pending {
    /// Rounds asked so far.
    asked: usize,
    /// The round that listed each result.
    listed: HashMap<Key, usize>,
    /// The tier that served the last value fetched, by result.
    served: HashMap<Key, usize>,
}

/// Tiers in a chain.
#[derive(Debug)]
pub struct Chain {
    tiers: Vec<Arc<dyn Remote>>,
    budget: Duration,
    stats: Arc<Recorder>,
    pending: Mutex<HashMap<Key, Pending>>,
}

/// The deadline of one call to tier `i` of `n`: its share of what is left.
fn share(deadline: Instant, i: usize, n: usize) -> Instant {
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now);
    let parts = n.saturating_sub(i).max(1) as u32;
    now + left / parts
}

impl Chain {
    /// A chain of `tiers`, fastest first; `budget` is what one request may spend on
    /// all of them (`remote_timeout`).
    pub fn new(tiers: Vec<Arc<dyn Remote>>, budget: Duration, stats: Arc<Recorder>) -> Chain {
        Chain {
            tiers,
            budget,
            stats,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The tiers, fastest first.
    pub fn tiers(&self) -> &[Arc<dyn Remote>] {
        &self.tiers
    }

    fn with_pending<T>(&self, request: &Key, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut all = self.pending.lock().unwrap();
        if all.len() >= MAX_PENDING && !all.contains_key(request) {
            all.clear();
        }
        f(all.entry(*request).or_default())
    }

    fn forget(&self, request: &Key) -> Pending {
        self.pending
            .lock()
            .unwrap()
            .remove(request)
            .unwrap_or_default()
    }
}

impl Remote for Chain {
    fn budget(&self) -> Duration {
        self.budget
    }

    fn results(&self, request: &Key, deadline: Instant) -> Vec<RemoteResult> {
        self.results_at(0, request, deadline)
    }

    fn levels(&self) -> usize {
        self.tiers.len()
    }

    fn results_at(&self, level: usize, request: &Key, deadline: Instant) -> Vec<RemoteResult> {
        let Some(tier) = self.tiers.get(level) else {
            return Vec::new();
        };
        if level == 0 {
            self.forget(request);
        }
        let found = tier.results(request, share(deadline, level, self.tiers.len()));
        self.with_pending(request, |p| {
            p.asked = p.asked.max(level + 1);
            // A result a faster tier listed is tried there (and after) already.
            let fresh: Vec<RemoteResult> = found
                .into_iter()
                .filter(|r| !p.listed.contains_key(&r.key))
                .collect();
            for r in &fresh {
                p.listed.insert(r.key, level);
            }
            fresh
        })
    }

    fn fetch(&self, key: &Key, deadline: Instant) -> Option<Packed> {
        // Which request listed it: the latest pending one that did.
        let from = {
            let all = self.pending.lock().unwrap();
            all.values()
                .find_map(|p| p.listed.get(key).copied())
                .unwrap_or(0)
        };
        let n = self.tiers.len();
        for (i, tier) in self.tiers.iter().enumerate().skip(from) {
            if let Some(p) = tier.fetch(key, share(deadline, i, n)) {
                self.stats.remote(RemoteEvent::Hit, 0, Duration::ZERO);
                let mut all = self.pending.lock().unwrap();
                for p in all.values_mut().filter(|p| p.listed.contains_key(key)) {
                    p.served.insert(*key, i);
                }
                return Some(p);
            }
        }
        None
    }

    fn refused(&self, request: &Key, key: &Key, why: &str, remove: bool, deadline: Instant) {
        let p = self.with_pending(request, |p| p.clone());
        // The tier that served the value, else the one that listed the record.
        let at = p
            .served
            .get(key)
            .or_else(|| p.listed.get(key))
            .copied()
            .unwrap_or(0);
        if let Some(t) = self.tiers.get(at) {
            t.refused(request, key, why, remove, deadline);
        }
        self.with_pending(request, |p| {
            p.served.remove(key);
        });
    }

    fn missed(&self, request: &Key) -> bool {
        let p = self.forget(request);
        // A miss in all when some tier answered that it has nothing; where every tier
        // asked failed, those failures are what is counted.
        let mut answered = false;
        for t in self.tiers.iter().take(p.asked.max(1)) {
            answered |= t.missed(request);
        }
        if answered {
            self.stats.remote(RemoteEvent::Miss, 0, Duration::ZERO);
        }
        answered
    }

    fn upload(
        &self,
        request: &Key,
        key: &Key,
        headers: &[(String, String)],
        value: &Packed,
        deadline: Instant,
    ) {
        let n = self.tiers.len();
        for (i, t) in self.tiers.iter().enumerate() {
            t.upload(request, key, headers, value, share(deadline, i, n));
        }
    }

    fn taken(
        &self,
        request: &Key,
        key: &Key,
        headers: &[(String, String)],
        value: &Packed,
        deadline: Instant,
    ) {
        let p = self.forget(request);
        let served = p.served.get(key).copied().unwrap_or(0);
        // The tiers asked before the one that served had nothing usable: a miss each.
        for t in self.tiers.iter().take(served.min(p.asked)) {
            t.missed(request);
        }
        for (i, t) in self.tiers.iter().enumerate().take(served) {
            t.upload(request, key, headers, value, share(deadline, i, served));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_gets_a_share_of_what_is_left() {
        let d = Instant::now() + Duration::from_secs(90);
        let first = share(d, 0, 3);
        assert!(first <= Instant::now() + Duration::from_secs(31));
        assert!(first >= Instant::now() + Duration::from_secs(29));
        // The last tier gets all that is left.
        assert!(share(d, 2, 3) >= Instant::now() + Duration::from_secs(89));
        // Past the deadline: passed for everyone.
        let past = Instant::now() - Duration::from_secs(1);
        assert!(share(past, 0, 2) <= Instant::now());
    }
}
