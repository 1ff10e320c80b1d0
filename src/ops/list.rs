//! `xcache list`: the entries of the current compiledir, or of all of them.

use std::str::FromStr;

use crate::error::Result;
use crate::store::scan;
use crate::store::Store;

pub use crate::store::scan::EntryRow;

/// Orders for `list --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Newest first.
    Age,
    /// Largest first.
    Size,
    /// Least recently used first: the order size-based pruning evicts in.
    Use,
    /// By source name, then key.
    Name,
}

impl FromStr for SortBy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<SortBy, String> {
        Ok(match s {
            "age" => SortBy::Age,
            "size" => SortBy::Size,
            "use" => SortBy::Use,
            "name" => SortBy::Name,
            _ => return Err(format!("unknown sort {s:?}: use age, size, use or name")),
        })
    }
}

/// Sorts rows in place.
pub fn sort(rows: &mut [EntryRow], by: SortBy) {
    match by {
        SortBy::Age => rows.sort_by(|a, b| b.created.cmp(&a.created).then(a.key.cmp(&b.key))),
        SortBy::Size => rows.sort_by(|a, b| b.size.cmp(&a.size).then(a.key.cmp(&b.key))),
        SortBy::Use => {
            rows.sort_by(|a, b| a.last_touch().cmp(&b.last_touch()).then(a.key.cmp(&b.key)))
        }
        SortBy::Name => rows.sort_by(|a, b| a.source.cmp(&b.source).then(a.key.cmp(&b.key))),
    }
}

/// The entries of the current compiledir, or (`all`) of every compiledir under the
/// base dir, sorted.
pub fn list(store: &Store, all: bool, by: SortBy) -> Result<Vec<EntryRow>> {
    let mut rows = if all {
        let mut rows = Vec::new();
        for cd in store.compiledirs()? {
            if let Ok(root) = store.base_root().open_dir(&cd.name) {
                rows.extend(scan::entries(&root)?);
            }
        }
        rows
    } else {
        store.entries()?
    };
    sort(&mut rows, by);
    Ok(rows)
}
