//! Reading what is on disk: the compiledirs under a base dir and the entries of a
//! compiledir. Metadata only (no hashing: [`super::verify`] hashes). Everything is read
//! through descriptors, without following links ([`crate::fsx`]); a name that xcache
//! does not make is skipped, never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::entry::{self, VerifyError};
use super::gc::policy::{self, Standing};
use super::key::Key;
use super::layout;
use crate::clock::unix_secs;
use crate::error::{Error, Result};
use crate::fsx::{Kind, Root};
use crate::platform::{CompiledirFormat, Platform, COMPILEDIR_PREFIX};

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
    /// The runtime tag of another compiledir here on the same OS and arch whose runtime
    /// is the same but newer (`numba-0.65.1` beside this `numba-0.64.0`): what makes an
    /// old producer version stale though it is not the current compiledir's runtime.
    pub newer_runtime: Option<String>,
}

impl CompiledirInfo {
    /// How it stands against `current` now (see [`policy::classify`]).
    pub fn standing(&self, current: &Platform, now: SystemTime, stale_after: Duration) -> Standing {
        let last_use = self
            .last_use
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        policy::classify(
            current,
            self.current,
            self.platform.as_ref(),
            self.newer_runtime.as_deref(),
            last_use,
            now,
            stale_after,
        )
    }
}

/// The compiledirs under `base` (directories named `compiledir_…`; links and files are
/// not compiledirs), sorted by name. `current` is the name of the current one.
pub fn compiledirs(
    base: &Root,
    format: &CompiledirFormat,
    current: &str,
) -> Result<Vec<CompiledirInfo>> {
    let mut out = Vec::new();
    let names = base
        .read_dir("")
        .map_err(|e| Error::io("reading", base.path(), e))?;
    for e in names {
        let Some(name) = e.name_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with(COMPILEDIR_PREFIX) || e.kind != Kind::Dir {
            continue;
        }
        let Ok(cd) = base.open_dir(&name) else {
            continue;
        };
        let meta = super::read_compiledir_meta(&cd).ok();
        let last_use = entry::last_use(&cd, "")
            .map(unix_secs)
            .or(meta.as_ref().map(|m| m.created));
        out.push(CompiledirInfo {
            platform: format.parse_name(&name),
            current: name == current,
            is_xcache: cd
                .lstat_fast(layout::COMPILEDIR_META)
                .is_ok_and(|st| Kind::of_stat(&st) == Kind::File),
            created: meta.map(|m| m.created),
            last_use,
            path: cd.path().to_path_buf(),
            name,
            newer_runtime: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let platforms: Vec<Option<Platform>> = out.iter().map(|c| c.platform.clone()).collect();
    for (c, p) in out.iter_mut().zip(&platforms) {
        c.newer_runtime = p
            .as_ref()
            .and_then(|p| policy::newer_runtime(p, platforms.iter().flatten()));
    }
    Ok(out)
}

/// One entry as `list` shows it. The JSON schema of `xcache list --json` is an array
/// of these.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EntryRow {
    /// The key, hex.
    pub key: String,
    /// Source name given at compile time, or the template instance.
    pub source: String,
    /// `c`, `c++`, `cuda`; for an artifact group, its producer.
    pub language: String,
    /// Who made it: `xcache`, or the producer of an artifact group (`numba`, `triton`,
    /// `cupy`, `pytensor`).
    pub producer: String,
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
    /// Last time its path was handed to a caller that does not hold its lock, seconds
    /// since the Unix epoch.
    pub handed_out: Option<u64>,
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

/// The keys of the entries of the compiledir `cd`: directories named like keys in
/// fan directories named like fans. Anything else is not ours.
pub fn entry_keys(cd: &Root) -> Result<Vec<Key>> {
    let fans = match cd.read_dir(layout::ENTRIES) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading", cd.join(layout::ENTRIES), e)),
    };
    let mut out = Vec::new();
    for fan in fans {
        let Some(fan_name) = fan.name_str().filter(|n| layout::is_fan(n)) else {
            continue;
        };
        if fan.kind != Kind::Dir {
            continue;
        }
        let rel = Path::new(layout::ENTRIES).join(fan_name);
        for e in cd.read_dir(&rel).unwrap_or_default() {
            if e.kind != Kind::Dir {
                continue;
            }
            if let Some(key) = e.name_str().and_then(|n| n.parse::<Key>().ok()) {
                if key.fan() == fan_name {
                    out.push(key);
                }
            }
        }
    }
    Ok(out)
}

/// Every entry of the compiledir `cd`, with its metadata (no hashing), sorted by key:
/// from the compiledir's index ([`super::index::load`]), which is rebuilt from the
/// entries when it is missing or damaged.
pub fn entries(cd: &Root) -> Result<Vec<EntryRow>> {
    Ok(super::index::load(cd)?.rows)
}

/// One entry's row, read from its own files.
pub fn entry_row(cd: &Root, key: &Key, compiledir: &str) -> EntryRow {
    let rel = layout::entry(key);
    let path = cd.join(&rel);
    let listed = entry::read_listed(cd, key);
    let handed_out = entry::mtime(cd, rel.join(layout::HANDED_OUT))
        .map(unix_secs)
        .filter(|&t| t > 0);
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
            entry::last_use(cd, &rel).map(unix_secs),
        ),
        _ => {
            let (a, d) = super::dir_bytes(cd, &rel);
            (a, d, entry::last_use(cd, &rel).map(unix_secs))
        }
    };
    match listed {
        Ok(m) => EntryRow {
            key: m.key,
            source: m.source_name,
            producer: super::group::producer_of_language(&m.key_material.language).to_string(),
            language: m.key_material.language,
            target: m.key_material.target.triple,
            template: m.key_material.template.as_ref().map(|t| t.name.clone()),
            params: m.key_material.template.map(|t| t.params),
            size,
            disk_size,
            created: m.created,
            last_use,
            handed_out,
            compile_ms: m.compile_ms,
            compiledir: compiledir.to_string(),
            path,
            status: "ok".into(),
        },
        Err(e) => EntryRow {
            key: key.hex(),
            source: String::new(),
            language: String::new(),
            producer: String::new(),
            target: String::new(),
            template: None,
            params: None,
            size,
            disk_size,
            created: 0,
            last_use,
            handed_out,
            compile_ms: 0,
            compiledir: compiledir.to_string(),
            path,
            status: match e {
                VerifyError::Corrupt(c) => format!("corrupt: {c}"),
                VerifyError::Io(p, e) => format!("unreadable: {}: {e}", p.display()),
                VerifyError::UntrustedDir(p, why) => {
                    format!("untrusted: {}: {why}", p.display())
                }
            },
        },
    }
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

/// Apparent and on-disk bytes of the regular files under `root/rel` (a file or a
/// directory), never following a link. `skip` names top-level children of `rel` to
/// leave out.
pub fn tree_bytes(root: &Root, rel: impl AsRef<Path>, skip: &[&str]) -> (u64, u64) {
    fn walk(dir: &Root, skip: &[&str], acc: &mut (u64, u64)) {
        for e in dir.read_dir("").unwrap_or_default() {
            if e.name_str().is_some_and(|n| skip.contains(&n)) {
                continue;
            }
            match e.kind {
                Kind::File => {
                    if let Ok(st) = dir.lstat_fast(&e.name) {
                        acc.0 += st.st_size as u64;
                        acc.1 += st.st_blocks as u64 * 512;
                    }
                }
                Kind::Dir => {
                    if let Ok(sub) = dir.open_dir(&e.name) {
                        walk(&sub, &[], acc);
                    }
                }
                _ => {}
            }
        }
    }
    let rel = rel.as_ref();
    let mut acc = (0, 0);
    if rel.as_os_str().is_empty() {
        walk(root, skip, &mut acc);
        return acc;
    }
    match root.lstat_fast(rel) {
        Ok(st) if Kind::of_stat(&st) == Kind::File => {
            return (st.st_size as u64, st.st_blocks as u64 * 512)
        }
        Ok(st) if Kind::of_stat(&st) == Kind::Dir => {}
        _ => return acc,
    }
    if let Ok(dir) = root.open_dir(rel) {
        walk(&dir, skip, &mut acc);
    }
    acc
}
