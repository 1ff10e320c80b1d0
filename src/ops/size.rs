//! `xcache size`: bytes and entry counts per compiledir, and the total.

use serde::Serialize;

use crate::error::Result;
use crate::store::{layout, scan, Store};

/// One compiledir's size. `xcache size --json` prints `{compiledirs: [..], total}`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SizeRow {
    /// Compiledir name (`total` for the sum).
    pub compiledir: String,
    /// Whether it is the current one.
    pub current: bool,
    /// Entries in it.
    pub entries: u64,
    /// Apparent bytes of the entries.
    pub entries_bytes: u64,
    /// Apparent bytes of everything in it (staging, locks, quarantine included).
    pub apparent_bytes: u64,
    /// Bytes allocated on disk for everything in it.
    pub disk_bytes: u64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    /// Per compiledir.
    pub compiledirs: Vec<SizeRow>,
    /// Sum over them.
    pub total: SizeRow,
    /// The `max_size` setting, bytes (0: no limit): the current compiledir's entries
    /// (`entries_bytes`) are pruned down when they exceed it.
    pub max_size: u64,
}

/// Sizes of the current compiledir, or (`all`) of every compiledir.
pub fn size(store: &Store, all: bool) -> Result<SizeReport> {
    let mut rows = Vec::new();
    for cd in store.compiledirs()? {
        if !all && !cd.current {
            continue;
        }
        let Ok(root) = store.base_root().open_dir(&cd.name) else {
            continue;
        };
        let mut row = SizeRow {
            compiledir: cd.name,
            current: cd.current,
            ..SizeRow::default()
        };
        // From the index (sizes recorded at publish), reconciled with the fans.
        let snap = crate::store::index::snapshot(&root)?;
        let listed = snap.items();
        row.entries = listed.len() as u64;
        row.entries_bytes = listed.iter().map(|r| r.size).sum();
        let entries_disk: u64 = listed.iter().map(|r| r.disk_size).sum();
        // Everything else (staging, locks, quarantine, ...): small, walked once.
        let (other_apparent, other_disk) = scan::tree_bytes(&root, "", &[layout::ENTRIES]);
        row.apparent_bytes = row.entries_bytes + other_apparent;
        row.disk_bytes = entries_disk + other_disk;
        rows.push(row);
    }
    let mut total = SizeRow {
        compiledir: "total".into(),
        ..SizeRow::default()
    };
    for r in &rows {
        total.entries += r.entries;
        total.entries_bytes += r.entries_bytes;
        total.apparent_bytes += r.apparent_bytes;
        total.disk_bytes += r.disk_bytes;
    }
    Ok(SizeReport {
        compiledirs: rows,
        total,
        max_size: store.config().max_size,
    })
}
