//! `xcache stats [--zero]`: the counters of every compiledir that has some (see
//! [`crate::store::stats`] for how they are kept without contention).

use serde::Serialize;

use crate::error::Result;
use crate::store::stats::{collect, Counters};
use crate::store::{layout, Store};

/// One compiledir's counters. `xcache stats --json` prints an array of these.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    /// Compiledir name.
    pub compiledir: String,
    /// Whether it is the current one.
    pub current: bool,
    /// The counters.
    #[serde(flatten)]
    pub counters: Counters,
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
        rows.push(StatsRow {
            compiledir: cd.name,
            current: cd.current,
            counters: collect(&root, zero)?,
        });
    }
    Ok(rows)
}
