//! `xcache verify [--repair]`: see [`crate::store::verify`].

use crate::config::Config;
use crate::error::Result;
use crate::store::Store;

pub use crate::store::verify::{Problem, ProblemKind, VerifyReport};

/// Checks (and with `repair`, mends) the current compiledir.
pub fn verify(store: &Store, repair: bool) -> Result<VerifyReport> {
    store.verify(repair)
}

/// [`verify`], calling `progress(done, total)` after each entry.
pub fn verify_with_progress(
    store: &Store,
    repair: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<VerifyReport> {
    store.verify_with_progress(repair, progress)
}

/// Opens the store and verifies it; with `repair`, first clears what would stop the
/// store from opening (a link planted where the compiledir or one of its directories
/// should be, see [`Store::open_for_repair`]), reported with the rest.
pub fn open_and_verify(
    config: &Config,
    repair: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<VerifyReport> {
    let (store, cleared) = if repair {
        Store::open_for_repair(config)?
    } else {
        (Store::open(config)?, Vec::new())
    };
    let mut report = store.verify_with_progress(repair, progress)?;
    report.problems.splice(0..0, cleared);
    Ok(report)
}
