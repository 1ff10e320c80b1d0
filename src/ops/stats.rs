//! `xcache stats [--zero]`: the counters of every compiledir that has some (see
//! [`crate::store::stats`] for how they are kept without contention).

use serde::Serialize;

use crate::error::Result;
use crate::store::stats::{collect_record, Counters, TierCounters};
use crate::store::{layout, Store};

/// One compiledir's counters. `xcache stats --json` prints an array of these.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    /// Compiledir name.
    pub compiledir: String,
    /// Whether it is the current one.
    pub current: bool,
    /// Entries in it, from its index.
    pub entries: u64,
    /// Apparent bytes of its entries: what pruning by size counts against `max_size`.
    pub entries_bytes: u64,
    /// The `max_size` setting, bytes (0: no limit).
    pub max_size: u64,
    /// The counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Each remote tier's counters (`remote = redis://…;s3://…` has two), in the order
    /// they were first counted; the `remote_*` fields above are their totals.
    pub remote_tiers: Vec<TierCounters>,
}

/// Counters per compiledir (the current one always listed); `zero` resets them all.
pub fn stats(store: &Store, zero: bool) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    for cd in store.compiledirs()? {
        let Ok(root) = store.base_root().open_dir(&cd.name) else {
            continue;
        };
        if !cd.current && root.lstat_fast(layout::STATS).is_err() {
            continue;
        }
        let snap = crate::store::index::snapshot(&root)?;
        let listed = snap.items();
        let record = collect_record(&root, zero)?;
        rows.push(StatsRow {
            compiledir: cd.name,
            current: cd.current,
            entries: listed.len() as u64,
            entries_bytes: listed.iter().map(|r| r.size).sum(),
            max_size: store.config().max_size,
            counters: record.totals,
            remote_tiers: record.remote_tiers,
        });
    }
    Ok(rows)
}
