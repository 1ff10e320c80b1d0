//! `xcache verify [--repair]`: see [`crate::store::verify`].

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
