//! `xcache verify [--repair]`: see [`crate::store::verify`].

use crate::error::Result;
use crate::store::Store;

pub use crate::store::verify::{Problem, ProblemKind, VerifyReport};

/// Checks (and with `repair`, mends) the current compiledir.
pub fn verify(store: &Store, repair: bool) -> Result<VerifyReport> {
    store.verify(repair)
}
