//! `xcache list`: the entries of the current compiledir, or of all of them.

use std::str::FromStr;

use crate::error::Result;
use crate::store::scan;
use crate::store::Store;

pub use crate::store::scan::EntryRow;

/// The runtime tags of the other compiledirs under the base dir that are this machine's
/// (same OS, kernel, arch, libc and layout): where the artifact groups of producer
/// versions (`numba-0.65.1`) live.
pub fn runtime_tags_here(store: &Store) -> Result<Vec<String>> {
    let here = store.platform();
    let mut tags = Vec::new();
    for cd in store.compiledirs()? {
        let Some(p) = cd.platform else { continue };
        if !cd.current
            && p.os == here.os
            && p.kernel == here.kernel
            && p.arch == here.arch
            && p.libc == here.libc
            && p.layout == here.layout
            && crate::platform::check_runtime_tag(&p.runtime).is_ok()
        {
            tags.push(p.runtime);
        }
    }
    Ok(tags)
}

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

/// Sorts rows in place (ties broken by key, so the order is total).
pub fn sort(rows: &mut Vec<EntryRow>, by: SortBy) {
    use std::cmp::Ordering;
    let cmp: fn(&EntryRow, &EntryRow) -> Ordering = match by {
        SortBy::Age => |a, b| b.created.cmp(&a.created).then(a.key.cmp(&b.key)),
        SortBy::Size => |a, b| b.size.cmp(&a.size).then(a.key.cmp(&b.key)),
        SortBy::Use => |a, b| a.last_touch().cmp(&b.last_touch()).then(a.key.cmp(&b.key)),
        SortBy::Name => |a, b| a.source.cmp(&b.source).then(a.key.cmp(&b.key)),
    };
    // Sort indices (two halves on two CPUs, then merged), then move each row once: a
    // row is a few hundred bytes, and a large cache has a million of them.
    let by = |a: &usize, b: &usize| cmp(&rows[*a], &rows[*b]);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let parallel = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if parallel && order.len() > 10_000 {
        let (left, right) = order.split_at_mut(rows.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| left.sort_unstable_by(by));
            right.sort_unstable_by(by);
        });
        let (left, right) = order.split_at(rows.len() / 2);
        let mut merged = Vec::with_capacity(order.len());
        let (mut i, mut j) = (0, 0);
        while i < left.len() && j < right.len() {
            if by(&left[i], &right[j]) == Ordering::Greater {
                merged.push(right[j]);
                j += 1;
            } else {
                merged.push(left[i]);
                i += 1;
            }
        }
        merged.extend_from_slice(&left[i..]);
        merged.extend_from_slice(&right[j..]);
        order = merged;
    } else {
        order.sort_unstable_by(by);
    }
    let sorted: Vec<EntryRow> = order
        .iter()
        .map(|&i| std::mem::take(&mut rows[i]))
        .collect();
    *rows = sorted;
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
