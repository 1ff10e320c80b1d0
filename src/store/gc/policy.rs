//! Garbage-collection decisions, as pure functions that never touch a disk: entries +
//! now + limits → victims ([`select_victims`]); compiledir fields + now → current, stale
//! or other ([`classify`]); a leftover's kind, age and lock → keep or remove
//! ([`leftover_verdict`]). Acting on them, under try-locks, is [`super`]'s job.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::platform::Platform;
use crate::store::lock::LockState;

/// What the victim selection needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcEntry {
    /// Bytes it occupies.
    pub size: u64,
    /// Last use (its creation when never used since).
    pub last_use: SystemTime,
}

/// Limits for pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Prune by size when the total exceeds this.
    pub max_size: Option<u64>,
    /// ...down to this fraction of `max_size`.
    pub low_water: f64,
    /// Remove every entry unused for longer than this.
    pub older_than: Option<Duration>,
}

/// Indices of the entries to remove: first every entry unused for longer than
/// `older_than`; then, if what is left exceeds `max_size`, the least recently used
/// entries until the total is at most `low_water * max_size`. Ties are broken by index,
/// so the choice is deterministic.
pub fn select_victims(entries: &[GcEntry], now: SystemTime, policy: &Policy) -> Vec<usize> {
    let mut victims = vec![false; entries.len()];
    if let Some(max_age) = policy.older_than {
        for (i, e) in entries.iter().enumerate() {
            if now
                .duration_since(e.last_use)
                .is_ok_and(|age| age > max_age)
            {
                victims[i] = true;
            }
        }
    }
    if let Some(max) = policy.max_size {
        let mut total: u64 = entries
            .iter()
            .zip(&victims)
            .filter(|(_, v)| !**v)
            .map(|(e, _)| e.size)
            .sum();
        if total > max {
            let target = (max as f64 * policy.low_water) as u64;
            let mut order: Vec<usize> = (0..entries.len()).filter(|&i| !victims[i]).collect();
            order.sort_by(
                |&a, &b| match entries[a].last_use.cmp(&entries[b].last_use) {
                    Ordering::Equal => a.cmp(&b),
                    o => o,
                },
            );
            for i in order {
                if total <= target {
                    break;
                }
                victims[i] = true;
                total -= entries[i].size;
            }
        }
    }
    (0..entries.len()).filter(|&i| victims[i]).collect()
}

/// How a compiledir relates to the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The compiledir this process uses.
    Current,
    /// Safe to remove, and why.
    Stale(StaleWhy),
    /// Another platform's, in use recently: left alone.
    Other,
}

/// Why a compiledir is stale. Serialised as `{"why": "unused", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum StaleWhy {
    /// Unused for longer than `stale_after`.
    Unused {
        /// Seconds since its last use.
        unused_secs: u64,
        /// The `stale_after` setting, seconds.
        limit_secs: u64,
    },
    /// The same runtime at a lower version.
    OlderRuntime {
        /// Its runtime tag.
        runtime: String,
        /// The current one.
        current: String,
    },
    /// An older kernel release.
    OlderKernel {
        /// Its kernel release.
        kernel: String,
        /// The current one.
        current: String,
    },
    /// An older layout version.
    OlderLayout {
        /// Its layout version.
        layout: u32,
        /// The current one.
        current: u32,
    },
}

/// `cpython-3.11` → (`cpython`, [3, 11]); `None` when the tag has no trailing version.
pub fn split_runtime_tag(tag: &str) -> Option<(&str, Vec<u64>)> {
    let (name, version) = tag.rsplit_once('-')?;
    let nums: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
    Some((name, nums?))
}

fn kernel_version(k: &str) -> Option<Vec<u64>> {
    k.split('.').map(|p| p.parse().ok()).collect()
}

/// The runtime tag of a platform among `others` on the same OS and arch with the same
/// runtime name as `p`'s and the highest version above `p`'s, if any: `numba-0.65.1`
/// for `numba-0.64.0`.
pub fn newer_runtime<'a>(
    p: &Platform,
    others: impl Iterator<Item = &'a Platform>,
) -> Option<String> {
    let (name, version) = split_runtime_tag(&p.runtime)?;
    others
        .filter(|o| o.os == p.os && o.arch == p.arch)
        .filter_map(|o| {
            let (n, v) = split_runtime_tag(&o.runtime)?;
            (n == name && v > version).then(|| (v, o.runtime.clone()))
        })
        .max()
        .map(|(_, tag)| tag)
}

/// Classifies a compiledir. `dir` is its parsed platform (`None` if its name does not
/// parse: then only its last use can make it stale). Stale means: not current, and
/// either unused for longer than `stale_after`, or on the current OS and arch with an
/// older runtime tag (same runtime, lower version, than the current one's or than
/// `newer`, a sibling compiledir's: an old producer version beside a new one), an older
/// kernel release, or an older layout.
pub fn classify(
    current: &Platform,
    is_current: bool,
    dir: Option<&Platform>,
    newer: Option<&str>,
    last_use: Option<SystemTime>,
    now: SystemTime,
    stale_after: Duration,
) -> Standing {
    if is_current {
        return Standing::Current;
    }
    if let Some(age) = last_use.and_then(|t| now.duration_since(t).ok()) {
        if age > stale_after {
            return Standing::Stale(StaleWhy::Unused {
                unused_secs: age.as_secs(),
                limit_secs: stale_after.as_secs(),
            });
        }
    }
    let Some(d) = dir else {
        return Standing::Other;
    };
    if d.os != current.os || d.arch != current.arch {
        return Standing::Other;
    }
    if let (Some((n1, v1)), Some((n2, v2))) = (
        split_runtime_tag(&d.runtime),
        split_runtime_tag(&current.runtime),
    ) {
        if n1 == n2 && v1 < v2 {
            return Standing::Stale(StaleWhy::OlderRuntime {
                runtime: d.runtime.clone(),
                current: current.runtime.clone(),
            });
        }
    }
    if let (Some(k1), Some(k2)) = (kernel_version(&d.kernel), kernel_version(&current.kernel)) {
        if k1 < k2 {
            return Standing::Stale(StaleWhy::OlderKernel {
                kernel: d.kernel.clone(),
                current: current.kernel.clone(),
            });
        }
    }
    if d.layout != 0 && d.layout < current.layout {
        return Standing::Stale(StaleWhy::OlderLayout {
            layout: d.layout,
            current: current.layout,
        });
    }
    // Another runtime than the current one's (a producer's version, such as
    // `numba-0.64.0`), with a newer version of it beside: the current one's own
    // runtime is judged against the current version above, not against siblings.
    let same_name_as_current = match (
        split_runtime_tag(&d.runtime),
        split_runtime_tag(&current.runtime),
    ) {
        (Some((n1, _)), Some((n2, _))) => n1 == n2,
        _ => false,
    };
    if let (Some(newer), false) = (newer, same_name_as_current) {
        return Standing::Stale(StaleWhy::OlderRuntime {
            runtime: d.runtime.clone(),
            current: newer.to_string(),
        });
    }
    Standing::Other
}

/// The kinds of thing xcache leaves beside its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leftover {
    /// `tmp/build-…`: a build's staging directory; its builder holds the key's lock.
    Staging,
    /// `tmp/failed-…`: a failed build kept for inspection.
    Failed,
    /// `tmp/delete-…`: an entry being removed; its remover holds the key's lock.
    Removal,
    /// `quarantine/…`: a corrupt entry moved aside.
    Quarantined,
    /// A private build (outside the cache), locked by its builder while it lives.
    Private,
}

/// What a collection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// `prune`, `clear`, `verify --repair`, the automatic prune: collect what is
    /// abandoned and what has been kept long enough.
    Routine,
    /// `purge`: the whole compiledir goes, so whatever nobody is using goes with it.
    Purge,
}

/// What is known of one leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftoverFacts {
    /// Its kind.
    pub kind: Leftover,
    /// Time since its mtime; `None` when unknown (then it is young).
    pub age: Option<Duration>,
    /// Whether the lock that guards it is held: the key's lock for staging and
    /// removals (`None` when its name carries no full key), the directory's own lock for
    /// private builds; not consulted for the other kinds.
    pub lock: Option<LockState>,
    /// For failed builds: how many newer failures of the same key there are.
    pub newer_failures: usize,
}

/// The settings the verdict depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftoverRules {
    /// `staging_grace`: a staging directory younger than this may be a build in
    /// progress on a file system without working locks.
    pub staging_grace: Duration,
    /// `handout_grace`: a private build's path may be in a caller's hands this long.
    pub handout_grace: Duration,
    /// `stale_after`: how long failed builds and quarantined entries are kept.
    pub keep_for: Duration,
    /// `keep_failed`: failed builds kept per key.
    pub keep_failed: usize,
}

/// Why a leftover stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepWhy {
    /// Its lock is held: a build or removal in progress, or a private build alive.
    InUse,
    /// Younger than its grace period.
    Young,
    /// Kept for inspection (failed builds, quarantine), not old enough to go.
    Kept,
}

/// Why a leftover goes. Serialised as `{"why": "crashed-build", ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum RemoveWhy {
    /// Staging whose builder is gone.
    CrashedBuild,
    /// A removal whose remover is gone.
    InterruptedRemoval,
    /// A failed build beyond `keep_failed` newer ones of its key.
    TooManyFailures {
        /// The `keep_failed` setting.
        keep: usize,
    },
    /// Kept for inspection longer than `stale_after`.
    KeptLongEnough,
    /// A private build nobody uses any more.
    AbandonedPrivate,
    /// Its compiledir is being purged.
    Purged,
}

/// The verdict on a leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep(KeepWhy),
    /// It may go.
    Remove(RemoveWhy),
}

/// Decides whether a leftover may go. The one rule prune, purge, clear, verify and the
/// private-build collector all follow:
///
/// - a lock held means in use: always kept;
/// - staging goes once its lock is free *and* it is older than `staging_grace`;
/// - a removal goes once its key's lock is free (a name without a full key: once older
///   than `staging_grace`);
/// - a failed build goes when `keep_failed` newer ones of its key exist or it is older
///   than `stale_after`; quarantine when older than `stale_after`; in a purge, both go;
/// - a private build goes once its lock is free and it is older than `handout_grace`.
pub fn leftover_verdict(f: &LeftoverFacts, sweep: Sweep, rules: &LeftoverRules) -> Verdict {
    let held = f.lock == Some(LockState::Held);
    let older_than = |limit: Duration| f.age.is_some_and(|a| a > limit);
    match f.kind {
        Leftover::Staging => {
            if held {
                Verdict::Keep(KeepWhy::InUse)
            } else if older_than(rules.staging_grace) {
                Verdict::Remove(RemoveWhy::CrashedBuild)
            } else {
                Verdict::Keep(KeepWhy::Young)
            }
        }
        Leftover::Removal => match f.lock {
            Some(LockState::Held) => Verdict::Keep(KeepWhy::InUse),
            Some(_) => Verdict::Remove(RemoveWhy::InterruptedRemoval),
            None if older_than(rules.staging_grace) => {
                Verdict::Remove(RemoveWhy::InterruptedRemoval)
            }
            None => Verdict::Keep(KeepWhy::Young),
        },
        Leftover::Failed | Leftover::Quarantined if sweep == Sweep::Purge => {
            Verdict::Remove(RemoveWhy::Purged)
        }
        Leftover::Failed if f.newer_failures >= rules.keep_failed => {
            Verdict::Remove(RemoveWhy::TooManyFailures {
                keep: rules.keep_failed,
            })
        }
        Leftover::Failed | Leftover::Quarantined => {
            if older_than(rules.keep_for) {
                Verdict::Remove(RemoveWhy::KeptLongEnough)
            } else {
                Verdict::Keep(KeepWhy::Kept)
            }
        }
        Leftover::Private => {
            if held {
                Verdict::Keep(KeepWhy::InUse)
            } else if older_than(rules.handout_grace) {
                Verdict::Remove(RemoveWhy::AbandonedPrivate)
            } else {
                Verdict::Keep(KeepWhy::Young)
            }
        }
    }
}

/// What is known of an entry chosen for removal (by `clear`, `purge`, or its age or
/// size), when it is judged. A real run asks under the key's try-lock, a dry run
/// probes the lock and asks the same; both then follow [`entry_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    /// Another process holds the key's lock: it is loading, pinning or building it.
    pub in_use: bool,
    /// When its path was last handed out (`xcache compile` printing it, `Jit::build`).
    pub handed_out: Option<SystemTime>,
    /// Its last use, as its `last-use` marker says now.
    pub last_use: Option<SystemTime>,
    /// The last use it was chosen for, Unix seconds, when it was chosen by its age or
    /// by size (a use since then saves it); `None` for `clear` and `purge`.
    pub chosen_at: Option<u64>,
}

/// The verdict on an entry chosen for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryVerdict {
    /// It goes.
    Remove,
    /// Another process holds its lock: kept, whatever `force` says (a pinned entry is
    /// never removed).
    InUse,
    /// Its path was handed out within `handout_grace`: kept until then, unless forced.
    HandedOut(SystemTime),
    /// Chosen by its last use, but used since: kept.
    UsedSince(SystemTime),
}

/// Decides whether an entry chosen for removal goes: the one rule `clear`, `purge`,
/// `prune`, `basecompiledir purge` and the automatic prune follow, in real runs and
/// dry runs alike.
///
/// - in use (its lock held by another process: loading, pinned, building): kept,
///   forced or not;
/// - handed out within `handout_grace`: kept, unless `force`;
/// - chosen by its last use and used since: kept;
/// - else it goes.
pub fn entry_verdict(
    f: &EntryFacts,
    now: SystemTime,
    handout_grace: Duration,
    force: bool,
) -> EntryVerdict {
    if f.in_use {
        return EntryVerdict::InUse;
    }
    if let Some(until) = f.handed_out.map(|t| t + handout_grace) {
        if !force && until > now {
            return EntryVerdict::HandedOut(until);
        }
    }
    if let (Some(chosen), Some(used)) = (f.chosen_at, f.last_use) {
        if crate::clock::unix_secs(used) > chosen {
            return EntryVerdict::UsedSince(used);
        }
    }
    EntryVerdict::Remove
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_900_000_000;

    fn at(secs_ago: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 - secs_ago)
    }

    fn now() -> SystemTime {
        at(0)
    }

    fn e(size: u64, secs_ago: u64) -> GcEntry {
        GcEntry {
            size,
            last_use: at(secs_ago),
        }
    }

    const DAY: u64 = 86_400;

    #[test]
    fn nothing_to_do_under_the_limits() {
        let entries = [e(10, 0), e(10, DAY)];
        let p = Policy {
            max_size: Some(100),
            low_water: 0.8,
            older_than: Some(Duration::from_secs(2 * DAY)),
        };
        assert!(select_victims(&entries, now(), &p).is_empty());
        assert!(select_victims(&[], now(), &p).is_empty());
    }

    #[test]
    fn age_first_then_least_recently_used_down_to_low_water() {
        // total 100, max 60 -> prune down to 48; entry 3 is too old anyway.
        let entries = [e(20, 5), e(20, 50), e(20, 10), e(20, 100 * DAY), e(20, 30)];
        let p = Policy {
            max_size: Some(60),
            low_water: 0.8,
            older_than: Some(Duration::from_secs(30 * DAY)),
        };
        // After age: 80 left (0,1,2,4). LRU order: 1 (50s), 4 (30s), 2, 0.
        // 80 -> remove 1 -> 60 -> remove 4 -> 40 <= 48.
        assert_eq!(select_victims(&entries, now(), &p), vec![1, 3, 4]);
    }

    #[test]
    fn ties_are_broken_by_index() {
        let entries = [e(10, 7), e(10, 7), e(10, 7)];
        let p = Policy {
            max_size: Some(25),
            low_water: 1.0,
            older_than: None,
        };
        assert_eq!(select_victims(&entries, now(), &p), vec![0]);
    }

    #[test]
    fn future_last_use_is_not_old() {
        let entries = [GcEntry {
            size: 1,
            last_use: now() + Duration::from_secs(DAY),
        }];
        let p = Policy {
            max_size: None,
            low_water: 0.8,
            older_than: Some(Duration::ZERO),
        };
        assert!(select_victims(&entries, now(), &p).is_empty());
    }

    fn plat(kernel: &str, runtime: &str, layout: u32) -> Platform {
        Platform {
            os: "Linux".into(),
            kernel: kernel.into(),
            arch: "x86_64".into(),
            libc: "glibc2.36".into(),
            runtime: runtime.into(),
            layout,
        }
    }

    #[test]
    fn staleness_table() {
        let cur = plat("6.1", "cpython-3.11", 1);
        let month = Duration::from_secs(30 * DAY);
        let recent = Some(at(DAY));
        let stale = |s: &Standing| matches!(s, Standing::Stale(_));
        let table: Vec<(Platform, Option<SystemTime>, bool)> = vec![
            (plat("6.1", "cpython-3.10", 1), recent, true),
            (plat("6.1", "cpython-3.9", 1), recent, true),
            (plat("6.1", "cpython-3.12", 1), recent, false),
            (plat("6.1", "pypy-3.10", 1), recent, false),
            (plat("5.15", "cpython-3.11", 1), recent, true),
            (plat("6.10", "cpython-3.11", 1), recent, false),
            (plat("6.1", "", 1), recent, false),
            (plat("6.1", "cpython-3.11", 0), recent, false),
            (plat("6.1", "cpython-3.12", 1), Some(at(40 * DAY)), true),
            (plat("6.1", "cpython-3.12", 1), None, false),
            (
                Platform {
                    arch: "aarch64".into(),
                    ..plat("5.4", "cpython-3.8", 1)
                },
                recent,
                false,
            ),
        ];
        for (p, last_use, want) in table {
            let s = classify(&cur, false, Some(&p), None, last_use, now(), month);
            assert_eq!(stale(&s), want, "{p:?} {last_use:?}: {s:?}");
        }
        assert_eq!(
            classify(
                &cur,
                true,
                Some(&cur),
                None,
                Some(at(400 * DAY)),
                now(),
                month
            ),
            Standing::Current
        );
        assert_eq!(
            classify(&cur, false, None, None, recent, now(), month),
            Standing::Other
        );
        assert!(stale(&classify(
            &cur,
            false,
            None,
            None,
            Some(at(31 * DAY)),
            now(),
            month
        )));
        // Layout: an older xcache's directory.
        let mut old = cur.clone();
        old.layout = 1;
        let mut newer = cur.clone();
        newer.layout = 2;
        assert!(stale(&classify(
            &newer,
            false,
            Some(&old),
            None,
            recent,
            now(),
            month
        )));
        // A producer's older version beside its newer one, whatever the current
        // compiledir's runtime is (xcache's own, here none).
        let mut numba64 = cur.clone();
        numba64.runtime = "numba-0.64.0".into();
        let mut numba65 = cur.clone();
        numba65.runtime = "numba-0.65.1".into();
        let mut triton = cur.clone();
        triton.runtime = "triton-3.9.0".into();
        let all = [numba64.clone(), numba65.clone(), triton.clone()];
        assert_eq!(
            newer_runtime(&numba64, all.iter()),
            Some("numba-0.65.1".into())
        );
        assert_eq!(newer_runtime(&numba65, all.iter()), None);
        assert_eq!(newer_runtime(&triton, all.iter()), None);
        let n = newer_runtime(&numba64, all.iter());
        assert!(stale(&classify(
            &cur,
            false,
            Some(&numba64),
            n.as_deref(),
            recent,
            now(),
            month
        )));
        assert_eq!(
            classify(&cur, false, Some(&numba65), None, recent, now(), month),
            Standing::Other
        );
    }

    /// The four rules that existed before (prune's, purge's, clear's and verify's) are
    /// this one table now.
    #[test]
    fn leftover_verdicts() {
        use Leftover::*;
        use LockState::*;
        let rules = LeftoverRules {
            staging_grace: Duration::from_secs(3600),
            handout_grace: Duration::from_secs(60),
            keep_for: Duration::from_secs(30 * DAY),
            keep_failed: 3,
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        let f = |kind, age, lock, newer_failures| LeftoverFacts {
            kind,
            age,
            lock,
            newer_failures,
        };
        let keep = Verdict::Keep;
        let rm = Verdict::Remove;
        let table = [
            // Staging: held is a build in progress, whatever its age.
            (
                f(Staging, secs(10 * DAY), Some(Held), 0),
                Sweep::Routine,
                keep(KeepWhy::InUse),
            ),
            (
                f(Staging, secs(10 * DAY), Some(Held), 0),
                Sweep::Purge,
                keep(KeepWhy::InUse),
            ),
            (
                f(Staging, secs(60), Some(Free), 0),
                Sweep::Routine,
                keep(KeepWhy::Young),
            ),
            (
                f(Staging, None, Some(Absent), 0),
                Sweep::Purge,
                keep(KeepWhy::Young),
            ),
            (
                f(Staging, secs(7200), Some(Free), 0),
                Sweep::Routine,
                rm(RemoveWhy::CrashedBuild),
            ),
            (
                f(Staging, secs(7200), Some(Absent), 0),
                Sweep::Purge,
                rm(RemoveWhy::CrashedBuild),
            ),
            // Removals: a live remover holds the key's lock (verify --repair used to
            // delete these at any age).
            (
                f(Removal, secs(10 * DAY), Some(Held), 0),
                Sweep::Routine,
                keep(KeepWhy::InUse),
            ),
            (
                f(Removal, secs(1), Some(Free), 0),
                Sweep::Routine,
                rm(RemoveWhy::InterruptedRemoval),
            ),
            (
                f(Removal, secs(1), Some(Absent), 0),
                Sweep::Purge,
                rm(RemoveWhy::InterruptedRemoval),
            ),
            (
                f(Removal, secs(60), None, 0),
                Sweep::Routine,
                keep(KeepWhy::Young),
            ),
            (
                f(Removal, secs(7200), None, 0),
                Sweep::Routine,
                rm(RemoveWhy::InterruptedRemoval),
            ),
            // Failures: the newest keep_failed, for stale_after.
            (
                f(Failed, secs(60), None, 2),
                Sweep::Routine,
                keep(KeepWhy::Kept),
            ),
            (
                f(Failed, secs(60), None, 3),
                Sweep::Routine,
                rm(RemoveWhy::TooManyFailures { keep: 3 }),
            ),
            (
                f(Failed, secs(31 * DAY), None, 0),
                Sweep::Routine,
                rm(RemoveWhy::KeptLongEnough),
            ),
            (
                f(Failed, secs(60), None, 0),
                Sweep::Purge,
                rm(RemoveWhy::Purged),
            ),
            (
                f(Quarantined, secs(DAY), None, 0),
                Sweep::Routine,
                keep(KeepWhy::Kept),
            ),
            (
                f(Quarantined, secs(31 * DAY), None, 0),
                Sweep::Routine,
                rm(RemoveWhy::KeptLongEnough),
            ),
            (
                f(Quarantined, secs(1), None, 0),
                Sweep::Purge,
                rm(RemoveWhy::Purged),
            ),
            // Private builds: alive while locked, then handed out for handout_grace.
            (
                f(Private, secs(DAY), Some(Held), 0),
                Sweep::Routine,
                keep(KeepWhy::InUse),
            ),
            (
                f(Private, secs(30), Some(Free), 0),
                Sweep::Routine,
                keep(KeepWhy::Young),
            ),
            (
                f(Private, secs(61), Some(Free), 0),
                Sweep::Routine,
                rm(RemoveWhy::AbandonedPrivate),
            ),
        ];
        for (facts, sweep, want) in table {
            assert_eq!(
                leftover_verdict(&facts, sweep, &rules),
                want,
                "{facts:?} {sweep:?}"
            );
        }
        let none_kept = LeftoverRules {
            keep_failed: 0,
            ..rules
        };
        assert_eq!(
            leftover_verdict(&f(Failed, secs(1), None, 0), Sweep::Routine, &none_kept),
            rm(RemoveWhy::TooManyFailures { keep: 0 })
        );
    }

    #[test]
    fn runtime_tags_split_into_name_and_version() {
        assert_eq!(
            split_runtime_tag("cpython-3.11"),
            Some(("cpython", vec![3, 11]))
        );
        assert_eq!(
            split_runtime_tag("node-20.1.0"),
            Some(("node", vec![20, 1, 0]))
        );
        assert_eq!(
            split_runtime_tag("py-abi3-3.12"),
            Some(("py-abi3", vec![3, 12]))
        );
        assert_eq!(split_runtime_tag("cpython"), None);
        assert_eq!(split_runtime_tag("x-3.11rc1"), None);
    }

    #[test]
    fn an_entry_in_use_stays_forced_or_not_a_handed_out_one_unless_forced() {
        let grace = Duration::from_secs(60);
        let facts = |in_use, handed_secs_ago: Option<u64>| EntryFacts {
            in_use,
            handed_out: handed_secs_ago.map(at),
            last_use: Some(at(DAY)),
            chosen_at: None,
        };
        for force in [false, true] {
            assert_eq!(
                entry_verdict(&facts(true, None), now(), grace, force),
                EntryVerdict::InUse
            );
            assert_eq!(
                entry_verdict(&facts(false, None), now(), grace, force),
                EntryVerdict::Remove
            );
            // Handed out longer ago than the grace: nothing protects it.
            assert_eq!(
                entry_verdict(&facts(false, Some(61)), now(), grace, force),
                EntryVerdict::Remove
            );
        }
        assert_eq!(
            entry_verdict(&facts(false, Some(10)), now(), grace, false),
            EntryVerdict::HandedOut(at(10) + grace)
        );
        assert_eq!(
            entry_verdict(&facts(false, Some(10)), now(), grace, true),
            EntryVerdict::Remove
        );
    }

    #[test]
    fn an_entry_chosen_by_its_age_and_used_since_stays() {
        let f = EntryFacts {
            in_use: false,
            handed_out: None,
            last_use: Some(at(5)),
            chosen_at: Some(T0 - DAY),
        };
        assert_eq!(
            entry_verdict(&f, now(), Duration::ZERO, true),
            EntryVerdict::UsedSince(at(5))
        );
        let unused = EntryFacts {
            last_use: Some(at(DAY)),
            ..f
        };
        assert_eq!(
            entry_verdict(&unused, now(), Duration::ZERO, false),
            EntryVerdict::Remove
        );
    }
}
