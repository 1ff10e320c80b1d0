//! `xcache list`: the entries of the current compiledir.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::clock::unix_secs;
use crate::error::{IoContext, Result};
use crate::store::entry::{self, VerifyError};
use crate::store::key::Key;
use crate::store::Store;

/// One entry as `list` shows it. The JSON schema of `xcache list --json` is an array
/// of these.
#[derive(Debug, Clone, Serialize)]
pub struct EntryRow {
    /// The key, hex.
    pub key: String,
    /// Source name given at compile time.
    pub source: String,
    /// `c`, `c++`, `cuda`.
    pub language: String,
    /// Bytes of all files in the entry directory.
    pub size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Last use, seconds since the Unix epoch (at `last_use_resolution`).
    pub last_use: Option<u64>,
    /// How long the compile took, ms.
    pub compile_ms: u64,
    /// The entry directory.
    pub path: PathBuf,
    /// `ok`, or why the metadata cannot be read (the artifact hash is not checked
    /// here; `verify` does that).
    pub status: String,
}

/// Reads every entry's metadata (no hashing) and sorts by key.
pub fn list(store: &Store) -> Result<Vec<EntryRow>> {
    let root = store.entries_dir();
    let mut rows = Vec::new();
    let fans = match fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(e) => return Err(crate::Error::io("reading", &root, e)),
    };
    for fan in fans {
        let fan = fan.ctx("reading", &root)?.path();
        let Ok(entries) = fs::read_dir(&fan) else {
            continue;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Some(key) = e.file_name().to_str().and_then(|n| n.parse::<Key>().ok()) else {
                continue; // not ours
            };
            let size = dir_size(&dir);
            let last_use = entry::last_use(&dir).map(unix_secs);
            let row = match entry::read_meta(&dir, &key) {
                Ok(m) => EntryRow {
                    key: m.key,
                    source: m.source_name,
                    language: m.key_material.language,
                    size,
                    created: m.created,
                    last_use,
                    compile_ms: m.compile_ms,
                    path: dir,
                    status: "ok".into(),
                },
                Err(c) => EntryRow {
                    key: key.hex(),
                    source: String::new(),
                    language: String::new(),
                    size,
                    created: 0,
                    last_use,
                    compile_ms: 0,
                    path: dir,
                    status: describe(&c),
                },
            };
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

fn describe(e: &VerifyError) -> String {
    match e {
        VerifyError::Corrupt(c) => format!("corrupt: {c}"),
        VerifyError::Io(p, e) => format!("unreadable: {}: {e}", p.display()),
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
