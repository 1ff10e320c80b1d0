//! Garbage-collection decisions, as pure functions: entries + now + limits → victims;
//! compiledir fields + now → current, stale or other. Acting on them (under try-locks)
//! is `ops::prune`'s job.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use crate::platform::Platform;

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
    Stale(String),
    /// Another platform's, in use recently: left alone.
    Other,
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

/// Classifies a compiledir. `dir` is its parsed platform (`None` if its name does not
/// parse: then only its last use can make it stale). Stale means: not current, and
/// either unused for longer than `stale_after`, or on the current OS and arch with an
/// older runtime tag (same runtime, lower version), an older kernel release, or an
/// older layout.
pub fn classify(
    current: &Platform,
    is_current: bool,
    dir: Option<&Platform>,
    last_use: Option<SystemTime>,
    now: SystemTime,
    stale_after: Duration,
) -> Standing {
    if is_current {
        return Standing::Current;
    }
    if let Some(age) = last_use.and_then(|t| now.duration_since(t).ok()) {
        if age > stale_after {
            return Standing::Stale(format!(
                "unused for {} days (stale_after is {} days)",
                age.as_secs() / 86_400,
                stale_after.as_secs() / 86_400
            ));
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
            return Standing::Stale(format!(
                "older runtime {} (current {})",
                d.runtime, current.runtime
            ));
        }
    }
    if let (Some(k1), Some(k2)) = (kernel_version(&d.kernel), kernel_version(&current.kernel)) {
        if k1 < k2 {
            return Standing::Stale(format!(
                "older kernel {} (current {})",
                d.kernel, current.kernel
            ));
        }
    }
    if d.layout != 0 && d.layout < current.layout {
        return Standing::Stale(format!(
            "older layout xc{} (current xc{})",
            d.layout, current.layout
        ));
    }
    Standing::Other
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
            let s = classify(&cur, false, Some(&p), last_use, now(), month);
            assert_eq!(stale(&s), want, "{p:?} {last_use:?}: {s:?}");
        }
        assert_eq!(
            classify(&cur, true, Some(&cur), Some(at(400 * DAY)), now(), month),
            Standing::Current
        );
        assert_eq!(
            classify(&cur, false, None, recent, now(), month),
            Standing::Other
        );
        assert!(stale(&classify(
            &cur,
            false,
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
            recent,
            now(),
            month
        )));
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
}
