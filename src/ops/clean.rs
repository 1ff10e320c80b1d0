//! `xcache clear`, `purge`, `prune` and `basecompiledir purge`, and the automatic prune
//! after a compile. Victims are chosen by the pure functions of [`crate::store::gc`];
//! every entry is removed only under a *try* lock on its key, so an entry that another
//! process is loading or building is skipped and reported, never pulled from under it.
//! Nothing is removed that is not xcache's: entries are directories named like keys
//! under `entries/`, compiledirs carry `compiledir.json`, a base dir carries xcache's
//! `CACHEDIR.TAG`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::ops::scan;
use crate::store::gc::{self, GcEntry, Policy, Standing};
use crate::store::{lock, remove_entry, Dirs, Removal, Store, CACHEDIR_TAG, COMPILEDIR_FILE};

/// One thing removed (or, in a dry run, that would be), or skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// `entry`, `compiledir`, `staging`, `quarantine`.
    pub kind: &'static str,
    /// Key, compiledir name or directory name.
    pub name: String,
    /// What the user knows it as (source or template instance), for entries.
    pub source: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes it held.
    pub bytes: u64,
    /// Why it was chosen.
    pub reason: String,
    /// Why it was left in place, if it was (in use, dry run, unknown files).
    pub skipped: Option<String>,
}

/// What a cleaning verb did. `--json` prints this.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CleanReport {
    /// True for `--dry-run`: nothing was removed.
    pub dry_run: bool,
    /// Everything chosen, removed or skipped.
    pub actions: Vec<Action>,
    /// Bytes freed (or that would be freed in a dry run).
    pub freed_bytes: u64,
    /// Entries removed (or that would be).
    pub removed_entries: u64,
    /// Items left in place because another process holds them, or for another reason.
    pub skipped: u64,
}

impl CleanReport {
    fn push(&mut self, a: Action) {
        match a.skipped.as_deref() {
            None | Some(DRY_RUN) => {
                self.freed_bytes += a.bytes;
                if a.kind == "entry" {
                    self.removed_entries += 1;
                }
            }
            Some(_) => self.skipped += 1,
        }
        self.actions.push(a);
    }
}

const IN_USE: &str = "in use by another process (its lock is held)";
const DRY_RUN: &str = "dry run";

fn remove_or_report(
    report: &mut CleanReport,
    dirs: &Dirs,
    row: &scan::EntryRow,
    reason: String,
) -> Result<()> {
    let Some(key) = row.key() else { return Ok(()) };
    let skipped = if report.dry_run {
        Some(DRY_RUN.to_string())
    } else {
        match remove_entry(dirs, &key)? {
            Removal::Removed(_) | Removal::Gone => None,
            Removal::Busy => Some(IN_USE.to_string()),
        }
    };
    report.push(Action {
        kind: "entry",
        name: row.key.clone(),
        source: row.source.clone(),
        path: row.path.clone(),
        bytes: row.size,
        reason,
        skipped,
    });
    Ok(())
}

/// `xcache clear`: every entry of the current compiledir, skipping those in use.
pub fn clear(store: &Store) -> Result<CleanReport> {
    let dirs = store.dirs();
    let mut report = CleanReport::default();
    for row in scan::entries(&dirs)? {
        remove_or_report(&mut report, &dirs, &row, "clear".into())?;
    }
    Ok(report)
}

/// Options of `xcache prune`.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Evict least recently used entries while the compiledir exceeds this (default:
    /// the `max_size` setting, when neither this nor `older_than` is given).
    pub max_size: Option<u64>,
    /// Evict entries unused for longer than this.
    pub older_than: Option<Duration>,
    /// Also remove stale compiledirs.
    pub stale: bool,
    /// Only report.
    pub dry_run: bool,
}

/// `xcache prune`.
pub fn prune(config: &Config, store: &Store, opts: &PruneOptions) -> Result<CleanReport> {
    let now = store.clock().now();
    let mut report = CleanReport {
        dry_run: opts.dry_run,
        ..CleanReport::default()
    };
    let max_size = match (opts.max_size, opts.older_than) {
        (None, None) => (config.max_size > 0).then_some(config.max_size),
        (m, _) => m,
    };
    let policy = Policy {
        max_size,
        low_water: config.low_water,
        older_than: opts.older_than,
    };
    prune_entries(store, &policy, now, &mut report)?;
    collect_tmp(&store.dirs(), config, now, &mut report)?;
    if opts.stale {
        for cd in scan::compiledirs_of(config, store)? {
            if let Standing::Stale(reason) = scan::standing(config, store, &cd) {
                remove_compiledir(&cd.path, config, now, reason, &mut report)?;
            }
        }
    }
    Ok(report)
}

fn prune_entries(
    store: &Store,
    policy: &Policy,
    now: SystemTime,
    report: &mut CleanReport,
) -> Result<()> {
    let dirs = store.dirs();
    let rows = scan::entries(&dirs)?;
    let gc_entries: Vec<GcEntry> = rows
        .iter()
        .map(|r| GcEntry {
            size: r.size,
            last_use: SystemTime::UNIX_EPOCH + Duration::from_secs(r.last_touch()),
        })
        .collect();
    for i in gc::select_victims(&gc_entries, now, policy) {
        let r = &rows[i];
        let last = crate::ops::human::age(r.last_touch(), crate::clock::unix_secs(now));
        let reason = match policy.older_than {
            Some(max)
                if now
                    .duration_since(gc_entries[i].last_use)
                    .is_ok_and(|a| a > max) =>
            {
                format!("unused since {last}, older than the limit")
            }
            _ => format!("least recently used ({last}), over the size limit"),
        };
        remove_or_report(report, &dirs, r, reason)?;
    }
    Ok(())
}

fn age_of(path: &Path, now: SystemTime) -> Option<Duration> {
    let m = fs::symlink_metadata(path).ok()?.modified().ok()?;
    now.duration_since(m).ok()
}

/// Removes crashed builds, interrupted deletes, old failed builds and old quarantine.
/// Staging younger than `staging_grace` may be a build in progress: left alone.
fn collect_tmp(
    dirs: &Dirs,
    config: &Config,
    now: SystemTime,
    report: &mut CleanReport,
) -> Result<()> {
    let mut candidates = Vec::new();
    if let Ok(rd) = fs::read_dir(dirs.tmp()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (limit, reason) = if name.starts_with("build-") {
                (
                    config.staging_grace,
                    "staging left by a crashed or killed build",
                )
            } else if name.starts_with("delete-") {
                // A minute: another process may be in the middle of this removal.
                (Duration::from_secs(60), "left by an interrupted removal")
            } else if name.starts_with("failed-") {
                (config.stale_after, "failed build kept for inspection")
            } else {
                continue; // not ours
            };
            candidates.push(("staging", e.path(), name, limit, reason));
        }
    }
    if let Ok(rd) = fs::read_dir(dirs.quarantine()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            candidates.push((
                "quarantine",
                e.path(),
                name,
                config.stale_after,
                "corrupt entry kept for inspection",
            ));
        }
    }
    for (kind, path, name, limit, reason) in candidates {
        let Some(age) = age_of(&path, now) else {
            continue;
        };
        if age <= limit && limit > Duration::ZERO {
            continue;
        }
        // Whatever its age, a staging directory whose builder still holds the key's
        // lock is a build in progress (a slow compile, or a clock moved on).
        if name.starts_with("build-") && crate::store::staging_in_use(dirs, &name) {
            continue;
        }
        let bytes = scan::tree_bytes(&path).0;
        let skipped = if report.dry_run {
            Some(DRY_RUN.to_string())
        } else {
            fs::remove_dir_all(&path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .ctx("removing", &path)?;
            None
        };
        report.push(Action {
            kind,
            name,
            source: String::new(),
            path,
            bytes,
            reason: format!("{reason}, {} h old", age.as_secs() / 3600),
            skipped,
        });
    }
    Ok(())
}

/// Files xcache puts at the top of a compiledir. Anything that is not xcache's stays,
/// and then the compiledir stays too.
const COMPILEDIR_FILES: &[&str] = &[COMPILEDIR_FILE, "last-use", "auto-prune", "gc.lock"];

fn names(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_hex2(n: &str) -> bool {
    n.len() == 2
        && n.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// After the entries: removes what xcache made around them, by name, one by one —
/// empty fan directories, lock files (under a try-lock), staging of ours, quarantined
/// entries, toolchain records, stats — and never a file it does not recognise. A
/// directory that still holds something else is left in place.
fn remove_xcache_leftovers(dirs: &Dirs, now: SystemTime) -> Result<()> {
    let is_key = |n: &str| n.parse::<crate::store::key::Key>().is_ok();
    for (fan_name, fan) in names(&dirs.entries()) {
        if is_hex2(&fan_name) {
            let _ = fs::remove_dir(&fan); // fails if something not ours is inside
        }
    }
    let _ = fs::remove_dir(dirs.entries());
    for (fan_name, fan) in names(&dirs.locks()) {
        if !is_hex2(&fan_name) {
            continue;
        }
        for (name, lock_file) in names(&fan) {
            if name.strip_suffix(".lock").is_some_and(is_key) {
                if let Some(_guard) = lock::try_lock_exclusive(&lock_file)? {
                    let _ = fs::remove_file(&lock_file);
                }
            }
        }
        let _ = fs::remove_dir(&fan);
    }
    let _ = fs::remove_dir(dirs.locks());
    for (name, p) in names(&dirs.tmp()) {
        let ours = ["build-", "failed-", "delete-"]
            .iter()
            .any(|pre| name.starts_with(pre));
        // A build that started after the in-progress check is alive: leave it.
        let young = name.starts_with("build-")
            && (crate::store::staging_in_use(dirs, &name)
                || age_of(&p, now).is_none_or(|a| a < Duration::from_secs(60)));
        if ours && !young && p.is_dir() {
            let _ = fs::remove_dir_all(&p);
        }
    }
    let _ = fs::remove_dir(dirs.tmp());
    for (name, p) in names(&dirs.quarantine()) {
        if name.get(..64).is_some_and(is_key) && p.is_dir() {
            let _ = fs::remove_dir_all(&p);
        }
    }
    let _ = fs::remove_dir(dirs.quarantine());
    for (name, p) in names(&dirs.toolchains()) {
        if name.ends_with(".json") && p.is_file() {
            let _ = fs::remove_file(&p);
        }
    }
    let _ = fs::remove_dir(dirs.toolchains());
    let stats = dirs.root().join("stats");
    for (name, p) in names(&stats) {
        if (name.ends_with(".json") || name == "stats.lock") && p.is_file() {
            let _ = fs::remove_file(&p);
        }
    }
    let _ = fs::remove_dir(&stats);
    Ok(())
}

/// Removes a whole compiledir: its entries one by one under try-locks, then, if none was
/// busy and no build is in progress, what else xcache put there, then the directory.
fn remove_compiledir(
    path: &Path,
    config: &Config,
    now: SystemTime,
    reason: String,
    report: &mut CleanReport,
) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = scan::tree_bytes(path).0;
    let mut action = Action {
        kind: "compiledir",
        name: name.clone(),
        source: String::new(),
        path: path.to_path_buf(),
        bytes,
        reason,
        skipped: None,
    };
    if !path.join(COMPILEDIR_FILE).is_file() {
        action.skipped = Some(format!(
            "no {COMPILEDIR_FILE}: not made by xcache, left alone"
        ));
        report.push(action);
        return Ok(());
    }
    if report.dry_run {
        action.skipped = Some(DRY_RUN.into());
        report.push(action);
        return Ok(());
    }
    let dirs = Dirs::new(path);
    let mut busy = 0;
    for row in scan::entries(&dirs)? {
        let before = report.actions.len();
        remove_or_report(report, &dirs, &row, format!("in {name}"))?;
        if report.actions[before].skipped.is_some() {
            busy += 1;
        }
    }
    let building = fs::read_dir(dirs.tmp())
        .map(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("build-")
                    && (crate::store::staging_in_use(&dirs, &name)
                        || age_of(&e.path(), now).is_some_and(|a| a <= config.staging_grace))
            })
        })
        .unwrap_or(false);
    // What is left besides the entries (staging, locks, quarantine): the entries
    // removed above were counted one by one.
    action.bytes = scan::tree_bytes(path).0;
    if busy > 0 || building {
        action.skipped = Some(if busy > 0 {
            format!("{busy} entries in use by other processes")
        } else {
            "a build is in progress in it".into()
        });
        action.bytes = 0;
        report.push(action);
        return Ok(());
    }
    remove_xcache_leftovers(&dirs, now)?;
    for f in COMPILEDIR_FILES {
        let _ = fs::remove_file(path.join(f));
    }
    if let Err(e) = fs::remove_dir(path) {
        action.skipped = Some(format!("files that are not xcache's are left in it ({e})"));
    }
    report.push(action);
    Ok(())
}

/// `xcache purge`: the current compiledir.
pub fn purge(config: &Config, store: &Store) -> Result<CleanReport> {
    let mut report = CleanReport::default();
    remove_compiledir(
        store.compiledir(),
        config,
        store.clock().now(),
        "purge".into(),
        &mut report,
    )?;
    Ok(report)
}

/// True when `base` holds a CACHEDIR.TAG that xcache wrote.
pub fn is_xcache_base(base: &Path) -> bool {
    fs::read_to_string(base.join("CACHEDIR.TAG")).is_ok_and(|t| t == CACHEDIR_TAG)
}

/// The error for purging a directory that xcache did not tag.
pub fn not_an_xcache_base(base: &Path) -> Error {
    Error::InvalidRequest(format!(
        "refusing to purge {}: it has no CACHEDIR.TAG written by xcache, so it may not be an xcache base dir. Fix: check XCACHE_DIR or --dir; if it is one, remove its compiledir_* directories by hand",
        base.display()
    ))
}

/// `xcache basecompiledir purge`: every compiledir under the base dir, then the tag and
/// the base dir itself if nothing else is left. Refuses a directory without xcache's
/// CACHEDIR.TAG.
pub fn purge_base(config: &Config, store: &Store) -> Result<CleanReport> {
    let base = store.base_dir();
    if !is_xcache_base(base) {
        return Err(not_an_xcache_base(base));
    }
    let mut report = CleanReport::default();
    let now = store.clock().now();
    for cd in scan::compiledirs_of(config, store)? {
        remove_compiledir(
            &cd.path,
            config,
            now,
            "basecompiledir purge".into(),
            &mut report,
        )?;
    }
    if report.skipped == 0 {
        let _ = fs::remove_file(base.join("CACHEDIR.TAG"));
        let _ = fs::remove_dir(base);
    }
    Ok(report)
}

/// A compiledir as `basecompiledir list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledirRow {
    /// Name.
    pub name: String,
    /// `current`, `stale` or `other`.
    pub mark: &'static str,
    /// Why stale, when it is.
    pub reason: Option<String>,
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
pub fn list_compiledirs(config: &Config, store: &Store) -> Result<Vec<CompiledirRow>> {
    let mut out = Vec::new();
    for cd in scan::compiledirs_of(config, store)? {
        let (mark, reason) = match scan::standing(config, store, &cd) {
            Standing::Current => ("current", None),
            Standing::Stale(r) => ("stale", Some(r)),
            Standing::Other => ("other", None),
        };
        out.push(CompiledirRow {
            entries: scan::entry_dirs(&Dirs::new(&cd.path))?.len() as u64,
            bytes: scan::tree_bytes(&cd.path).0,
            name: cd.name,
            mark,
            reason,
            last_use: cd.last_use,
            path: cd.path,
        });
    }
    Ok(out)
}

/// After a compile published: if `max_size` is set and `auto_prune_interval` has passed
/// since the last automatic prune of this compiledir, and no other process is pruning
/// it, prune it down to the low-water mark. Never fails the caller: returns what it
/// did, or `None` when it did nothing.
pub fn auto_prune(config: &Config, store: &Store) -> Option<CleanReport> {
    if config.max_size == 0 {
        return None;
    }
    let now = store.clock().now();
    let marker = store.compiledir().join("auto-prune");
    if age_of(&marker, now).is_some_and(|a| a < config.auto_prune_interval) {
        return None;
    }
    let guard = lock::try_lock_exclusive(&store.compiledir().join("gc.lock")).ok()??;
    // Re-check under the lock: another process may just have done it.
    if age_of(&marker, now).is_some_and(|a| a < config.auto_prune_interval) {
        return None;
    }
    let _ = crate::store::entry::create_file(&marker).and_then(|f| f.set_modified(now));
    let dirs = store.dirs();
    let total: u64 = scan::entry_dirs(&dirs)
        .ok()?
        .iter()
        .map(|(_, d)| crate::store::dir_bytes(d).0)
        .sum();
    if total <= config.max_size {
        return None;
    }
    let mut report = CleanReport::default();
    let policy = Policy {
        max_size: Some(config.max_size),
        low_water: config.low_water,
        older_than: None,
    };
    let r = prune_entries(store, &policy, now, &mut report);
    drop(guard);
    match r {
        Ok(()) => {
            log::info!(
                "auto-prune: removed {} entries ({} bytes) from {}",
                report.removed_entries,
                report.freed_bytes,
                store.compiledir().display()
            );
            Some(report)
        }
        Err(e) => {
            log::warn!(
                "automatic pruning of {} failed: {e}",
                store.compiledir().display()
            );
            None
        }
    }
}
