//! `xcache clear`, `purge`, `prune`, `basecompiledir list` and `basecompiledir purge`:
//! thin verbs over the store's cleanup ([`crate::store::gc`]), returning typed data.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::store::gc::policy::{StaleWhy, Standing};
use crate::store::Store;

pub use crate::store::gc::{
    is_xcache_base, not_an_xcache_base, Action, CleanReport, ItemKind, PruneOptions, Reason, Skip,
};

/// `xcache clear [--force] [--dry-run]`.
pub fn clear(store: &Store, force: bool, dry_run: bool) -> Result<CleanReport> {
    store.clear(force, dry_run)
}

/// `xcache prune`.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<CleanReport> {
    store.prune(opts)
}

/// [`prune`], calling `progress(done, total)` after each entry chosen for eviction.
pub fn prune_with_progress(
    store: &Store,
    opts: &PruneOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<CleanReport> {
    store.prune_with_progress(opts, progress)
}

/// `xcache purge [--force] [--dry-run]`: the current compiledir.
pub fn purge(store: &Store, force: bool, dry_run: bool) -> Result<CleanReport> {
    store.purge(force, dry_run)
}

/// `xcache basecompiledir purge [--force] [--dry-run]`.
pub fn purge_base(store: &Store, force: bool, dry_run: bool) -> Result<CleanReport> {
    store.purge_base(force, dry_run)
}

/// How a compiledir stands, as `basecompiledir list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mark {
    /// The one this configuration uses.
    Current,
    /// Safe to remove (`prune --stale`).
    Stale,
    /// Another platform's, left alone.
    Other,
}

/// A compiledir as `basecompiledir list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledirRow {
    /// Name.
    pub name: String,
    /// Current, stale or other.
    pub mark: Mark,
    /// Why stale, when it is.
    pub reason: Option<StaleWhy>,
    /// Entries in it.
    pub entries: u64,
    /// Apparent bytes of everything in it.
    pub bytes: u64,
    /// Last use, Unix seconds.
    pub last_use: Option<u64>,
    /// Its path.
    pub path: PathBuf,
}

/// `xcache basecompiledir list`.
pub fn list_compiledirs(store: &Store) -> Result<Vec<CompiledirRow>> {
    let mut out = Vec::new();
    for cd in store.compiledirs()? {
        let (mark, reason) = match store.standing(&cd) {
            Standing::Current => (Mark::Current, None),
            Standing::Stale(r) => (Mark::Stale, Some(r)),
            Standing::Other => (Mark::Other, None),
        };
        let (entries, bytes) = match store.base_root().open_dir(&cd.name) {
            Ok(root) => {
                let snap = crate::store::index::snapshot(&root)?;
                let listed = snap.items();
                let rest =
                    crate::store::scan::tree_bytes(&root, "", &[crate::store::layout::ENTRIES]).0;
                (
                    listed.len() as u64,
                    listed.iter().map(|r| r.size).sum::<u64>() + rest,
                )
            }
            Err(_) => (0, 0),
        };
        out.push(CompiledirRow {
            entries,
            bytes,
            name: cd.name,
            mark,
            reason,
            last_use: cd.last_use,
            path: cd.path,
        });
    }
    Ok(out)
}
