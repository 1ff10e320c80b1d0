//! Reading what is on disk: the compiledirs under a base dir and the entries of a
//! compiledir. Metadata only (no hashing): `verify` hashes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::clock::unix_secs;
use crate::error::{Error, IoContext, Result};
use crate::platform::{CompiledirFormat, Platform, COMPILEDIR_PREFIX};
use crate::store::entry::{self, VerifyError};
use crate::store::key::Key;
use crate::store::{gc, read_compiledir_meta, Dirs, COMPILEDIR_FILE};

/// A compiledir found under the base dir.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledirInfo {
    /// Directory name (`compiledir_…`).
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Its fields, parsed back from the name; `None` if the name does not parse.
    pub platform: Option<Platform>,
    /// Whether it is the compiledir this configuration uses.
    pub current: bool,
    /// Whether it holds `compiledir.json` (xcache made it).
    pub is_xcache: bool,
    /// When it was created (Unix seconds), from `compiledir.json`.
    pub created: Option<u64>,
    /// Last use of anything in it (Unix seconds).
    pub last_use: Option<u64>,
}

/// The compiledirs under `base` (names starting with `compiledir_`), sorted by name.
pub fn compiledirs(
    base: &Path,
    format: &CompiledirFormat,
    current: &Path,
) -> Result<Vec<CompiledirInfo>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("reading", base, e)),
    };
    for e in rd {
        let e = e.ctx("reading", base)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with(COMPILEDIR_PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let meta = read_compiledir_meta(&path).ok();
        let last_use = entry::last_use(&path)
            .map(unix_secs)
            .or(meta.as_ref().map(|m| m.created));
        out.push(CompiledirInfo {
            platform: format.parse_name(&name),
            current: path == current,
            is_xcache: path.join(COMPILEDIR_FILE).is_file(),
            created: meta.map(|m| m.created),
            last_use,
            name,
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The compiledirs under the store's base dir, named by the configured format.
pub fn compiledirs_of(
    config: &crate::config::Config,
    store: &crate::store::Store,
) -> Result<Vec<CompiledirInfo>> {
    let format = CompiledirFormat::parse(&config.compiledir_format).map_err(Error::Config)?;
    compiledirs(store.base_dir(), &format, store.compiledir())
}

/// How a compiledir stands against the store's platform now (see [`gc::classify`]).
pub fn standing(
    config: &crate::config::Config,
    store: &crate::store::Store,
    cd: &CompiledirInfo,
) -> gc::Standing {
    let last_use = cd
        .last_use
        .map(|s| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
    gc::classify(
        store.platform(),
        cd.current,
        cd.platform.as_ref(),
        last_use,
        store.clock().now(),
        config.stale_after,
    )
}

/// One entry as `list` shows it. The JSON schema of `xcache list --json` is an array
/// of these.
#[derive(Debug, Clone, Serialize)]
pub struct EntryRow {
    /// The key, hex.
    pub key: String,
    /// Source name given at compile time, or the template instance.
    pub source: String,
    /// `c`, `c++`, `cuda`.
    pub language: String,
    /// What it was built for: the target triple, or the GPU arch (`sm_90`) for CUDA.
    pub target: String,
    /// The template's name, when the entry was rendered from one.
    pub template: Option<String>,
    /// The template's parameters (canonical), when rendered from one.
    pub params: Option<Vec<(String, String)>>,
    /// Apparent bytes of the files in the entry directory.
    pub size: u64,
    /// Bytes allocated on disk for them.
    pub disk_size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Last use, seconds since the Unix epoch (at `last_use_resolution`).
    pub last_use: Option<u64>,
    /// How long the compile took, ms.
    pub compile_ms: u64,
    /// The compiledir's name.
    pub compiledir: String,
    /// The entry directory.
    pub path: PathBuf,
    /// `ok`, or why the metadata cannot be read (the artifact hash is not checked
    /// here; `verify` does that).
    pub status: String,
}

impl EntryRow {
    /// The key, parsed.
    pub fn key(&self) -> Option<Key> {
        self.key.parse().ok()
    }

    /// Last use, or creation when never used since: what age decisions go by.
    pub fn last_touch(&self) -> u64 {
        self.last_use.unwrap_or(self.created)
    }
}

/// The keys of the entries in a compiledir, with their directories.
pub fn entry_dirs(dirs: &Dirs) -> Result<Vec<(Key, PathBuf)>> {
    let root = dirs.entries();
    let mut out = Vec::new();
    let fans = match fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("reading", &root, e)),
    };
    for fan in fans {
        let fan = fan.ctx("reading", &root)?.path();
        let Ok(entries) = fs::read_dir(&fan) else {
            continue;
        };
        for e in entries.flatten() {
            // Anything that is not named like a key is not ours: never touched.
            if let Some(key) = e.file_name().to_str().and_then(|n| n.parse::<Key>().ok()) {
                out.push((key, e.path()));
            }
        }
    }
    Ok(out)
}

/// Every entry of a compiledir, with its metadata (no hashing), sorted by key.
pub fn entries(dirs: &Dirs) -> Result<Vec<EntryRow>> {
    let compiledir = dirs
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let found = entry_dirs(dirs)?;
    let mut rows: Vec<EntryRow> = parallel_map(&found, |(key, dir)| {
        let (key, dir) = (*key, dir.clone());
        let listed = entry::read_listed(&dir, &key);
        // Sizes recorded at publish time spare a stat of every file: one stat of
        // `last-use` is all a listed entry costs beyond reading its metadata.
        let (size, disk_size, last_use) = match &listed {
            Ok(entry::ListedMeta {
                files: Some(f),
                json_len,
                ..
            }) => (
                f.apparent + json_len,
                f.disk + json_len.div_ceil(4096) * 4096,
                entry::last_use(&dir).map(unix_secs),
            ),
            _ => entry_files(&dir),
        };
        match listed {
            Ok(m) => EntryRow {
                key: m.key,
                source: m.source_name,
                language: m.key_material.language,
                target: m.key_material.target.triple,
                template: m.key_material.template.as_ref().map(|t| t.name.clone()),
                params: m.key_material.template.map(|t| t.params),
                size,
                disk_size,
                created: m.created,
                last_use,
                compile_ms: m.compile_ms,
                compiledir: compiledir.clone(),
                path: dir,
                status: "ok".into(),
            },
            Err(e) => EntryRow {
                key: key.hex(),
                source: String::new(),
                language: String::new(),
                target: String::new(),
                template: None,
                params: None,
                size,
                disk_size,
                created: 0,
                last_use,
                compile_ms: 0,
                compiledir: compiledir.clone(),
                path: dir,
                status: match e {
                    VerifyError::Corrupt(c) => format!("corrupt: {c}"),
                    VerifyError::Io(p, e) => format!("unreadable: {}: {e}", p.display()),
                },
            },
        }
    });
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// Apparent bytes, on-disk bytes and last use of an entry, from one directory read.
fn entry_files(dir: &Path) -> (u64, u64, Option<u64>) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut disk, mut last_use) = (0, 0, None);
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            apparent += md.len();
            disk += md.blocks() * 512;
            if e.file_name() == entry::LAST_USE_FILE {
                last_use = md.modified().ok().map(unix_secs);
            }
        }
    }
    (apparent, disk, last_use)
}

/// `f` over `items` on every CPU: scanning a large cache is a stream of small system
/// calls that parallelise well. Order is kept.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers <= 1 || items.len() < 256 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("scan worker"))
            .collect()
    })
}

/// Like [`tree_bytes`] for a compiledir, without its `entries/` (sized entry by entry).
pub fn tree_bytes_except_entries(compiledir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(compiledir)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == "entries"))
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(a, d), m| (a + m.len(), d + m.blocks() * 512))
}

/// Apparent and on-disk bytes of everything under `dir` (entries, staging, locks, ...).
pub fn tree_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(a, d), m| (a + m.len(), d + m.blocks() * 512))
}
