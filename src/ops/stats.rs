//! `xcache stats [--zero]`: the counters of every compiledir that has some (see
//! [`crate::stats`] for how they are kept without contention).

use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::ops::scan;
use crate::stats::{collect, Counters};
use crate::store::Store;

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
pub fn stats(config: &Config, store: &Store, zero: bool) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    for cd in scan::compiledirs_of(config, store)? {
        let dir = cd.path.join("stats");
        if !cd.current && !dir.exists() {
            continue;
        }
        rows.push(StatsRow {
            compiledir: cd.name,
            current: cd.current,
            counters: collect(&dir, zero)?,
        });
    }
    Ok(rows)
}
