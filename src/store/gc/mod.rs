//! Cleanup, owned by the store: removing entries, collecting leftovers under `tmp/`,
//! `quarantine/` and the private root, removing whole compiledirs, pruning, and the
//! automatic prune after a compile. Every decision is made by the pure functions of
//! [`policy`]; this module only gathers their inputs (names, ages, lock states) and
//! acts on their verdicts.
//!
//! The rules it keeps (the store module's doc states them as protocol):
//!
//! - an entry is removed only under a *try* exclusive lock on its key (busy entries are
//!   skipped and reported), and not within `handout_grace` of its last hand-out unless
//!   forced; it is renamed to `tmp/delete-<key>-…` first (readers see it whole or not at
//!   all), then deleted, then its lock file, still under the lock; its `D` record goes
//!   to the compiledir's index right after the rename ([`super::index`]);
//! - an entry chosen by its last use (prune by age or size, from the index) is kept if
//!   its `last-use` marker, read under the lock, says it was used since;
//! - a leftover goes only when [`policy::leftover_verdict`] says so;
//! - nothing is removed that xcache did not make: names are parsed ([`super::layout`]),
//!   compiledirs must carry `compiledir.json`, a base dir xcache's `CACHEDIR.TAG`; a
//!   directory holding something else stays, with the foreign files;
//! - everything is reached through descriptors without following links.
//!
//! What the operations did comes back as typed data ([`CleanReport`]): the CLI words it.

pub mod policy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::key::Key;
use super::layout::{self, QuarantineName, TmpKind, TmpName};
use super::lock::{self, LockState};
use super::scan::{self, EntryRow};
use super::{entry, index, io_below, private, Store};
use crate::clock::unix_secs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsx::{Kind, Root};
use policy::{
    EntryVerdict, GcEntry, Leftover, LeftoverFacts, LeftoverRules, Policy, RemoveWhy, StaleWhy,
    Standing, Sweep, Verdict,
};

/// What a removed (or skipped) item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    /// An entry.
    Entry,
    /// A whole compiledir.
    Compiledir,
    /// A leftover of this kind.
    #[serde(untagged)]
    Leftover(Leftover),
}

/// Why an item was chosen. Serialised as `{"why": "over-size", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum Reason {
    /// `xcache clear`.
    Clear,
    /// `xcache purge` or `basecompiledir purge`.
    Purge,
    /// Unused for longer than `--older-than`.
    OlderThan {
        /// The limit, seconds.
        limit_secs: u64,
    },
    /// Least recently used while the compiledir was over the size limit.
    OverSize {
        /// The limit, bytes.
        max_size: u64,
    },
    /// A stale compiledir.
    Stale {
        /// Why it is stale.
        stale: StaleWhy,
    },
    /// A leftover whose verdict is to go.
    Leftover {
        /// The verdict's reason.
        leftover: RemoveWhy,
    },
}

/// Why an item was left in place. Serialised as `{"why": "in-use", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum Skip {
    /// `--dry-run`: nothing was removed.
    DryRun,
    /// Another process holds its lock (it is loading or building it).
    InUse,
    /// Its path was handed out recently; it is protected until then (`clear --force`
    /// removes it anyway).
    HandedOut {
        /// Unix seconds until which it is protected.
        until: u64,
    },
    /// Chosen by its last use, but used again since the listing: kept.
    UsedSince {
        /// Unix seconds of that use.
        last_use: u64,
    },
    /// A compiledir with entries in use by other processes.
    EntriesInUse {
        /// How many.
        count: u64,
    },
    /// A compiledir in which a build is in progress (or too recent to tell).
    BuildInProgress,
    /// Not made by xcache (no `compiledir.json`): never removed.
    NotOurs,
    /// Everything of xcache's was removed, but files that are not xcache's remain, and
    /// so does their directory.
    ForeignFiles {
        /// The first directory that could not be removed.
        path: PathBuf,
    },
}

/// One thing removed (or, in a dry run, that would be), or skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// What it is.
    pub kind: ItemKind,
    /// Key, compiledir name or directory name.
    pub name: String,
    /// What the user knows it as (source or template instance), for entries.
    pub source: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes it held.
    pub bytes: u64,
    /// Last use (entries and compiledirs) or mtime (leftovers), Unix seconds.
    pub last_use: Option<u64>,
    /// Why it was chosen.
    pub reason: Reason,
    /// Why it was left in place, if it was.
    pub skipped: Option<Skip>,
}

/// What a cleaning operation did. `--json` prints this.
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
    /// Items left in place for a reason other than the dry run.
    pub skipped: u64,
}

impl CleanReport {
    fn dry(dry_run: bool) -> CleanReport {
        CleanReport {
            dry_run,
            ..CleanReport::default()
        }
    }

    fn push(&mut self, a: Action) {
        match &a.skipped {
            None | Some(Skip::DryRun) => {
                self.freed_bytes += a.bytes;
                if a.kind == ItemKind::Entry {
                    self.removed_entries += 1;
                }
            }
            Some(_) => self.skipped += 1,
        }
        self.actions.push(a);
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed; it held this many bytes.
    Removed(u64),
    /// Another process holds its lock (it is being loaded or built): left alone.
    Busy,
    /// Handed out recently: protected until then.
    HandedOut(SystemTime),
    /// Chosen for its age, but used since (its last use, read under the lock): kept.
    UsedSince(SystemTime),
    /// It was already gone.
    Gone,
}

/// Options of [`Store::prune`].
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Evict least recently used entries while the compiledir exceeds this many bytes.
    /// `None` with `older_than` also `None`: the `max_size` setting. 0, here as there,
    /// is no limit.
    pub max_size: Option<u64>,
    /// Evict entries unused for longer than this.
    pub older_than: Option<Duration>,
    /// Also remove stale compiledirs.
    pub stale: bool,
    /// Also remove entries whose path was handed out within `handout_grace` (never
    /// those in use: a pinned or loading entry stays).
    pub force: bool,
    /// Only report.
    pub dry_run: bool,
}

/// The leftover rules of a configuration.
pub fn rules(config: &Config) -> LeftoverRules {
    LeftoverRules {
        staging_grace: config.staging_grace,
        handout_grace: config.handout_grace,
        keep_for: config.stale_after,
        keep_failed: config.keep_failed as usize,
    }
}

fn age(now: SystemTime, t: Option<SystemTime>) -> Option<Duration> {
    t.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
}

/// Removes the entry `key` of the compiledir `cd` under a try-lock (see the module doc).
/// With `force`, a recent hand-out does not protect it.
pub fn remove_entry(
    cd: &Root,
    key: &Key,
    now: SystemTime,
    handout_grace: Duration,
    force: bool,
) -> Result<Removal> {
    Remover::new(cd, now, handout_grace, force, false).remove(key, None, None)
}

/// Removes entries of one compiledir, appending their `D` records to its index through
/// one writer. In a dry run it judges each entry as the real run would
/// ([`policy::entry_verdict`], the lock probed instead of taken) and removes nothing.
struct Remover<'a> {
    cd: &'a Root,
    now: SystemTime,
    handout_grace: Duration,
    force: bool,
    dry_run: bool,
    index: index::Writer<'a>,
    /// `tmp/` was made (or found) by this remover: once is enough.
    tmp_ready: bool,
}

impl<'a> Remover<'a> {
    fn new(
        cd: &'a Root,
        now: SystemTime,
        handout_grace: Duration,
        force: bool,
        dry_run: bool,
    ) -> Self {
        Remover {
            cd,
            now,
            handout_grace,
            force,
            dry_run,
            index: index::Writer::new(cd),
            tmp_ready: false,
        }
    }

    /// Removes `key` under a try-lock. `chosen_at`: the last use (Unix seconds) it was
    /// chosen for, by age or size; if its `last-use` marker, read under the lock, is
    /// newer, it was used since and stays.
    ///
    /// `bytes`: its size as listed, when known (what a sweep reports); else it is
    /// measured.
    ///
    /// In a dry run, `Removed` means it would be removed.
    fn remove(&mut self, key: &Key, chosen_at: Option<u64>, bytes: Option<u64>) -> Result<Removal> {
        let cd = self.cd;
        let lock_rel = layout::lock(key);
        // The real run holds the lock from here on; a dry run only asks whether someone
        // else does (without creating the lock file).
        let (guard, in_use) = if self.dry_run {
            (None, lock::probe(cd, &lock_rel) == LockState::Held)
        } else {
            match lock::try_lock_exclusive(cd, &lock_rel)? {
                Some(g) => (Some(g), false),
                None => (None, true),
            }
        };
        let rel = layout::entry(key);
        let removal = match cd.lstat_fast(&rel) {
            // Gone, or not there yet: its lock's holder may be building it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && in_use => Removal::Busy,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Removal::Gone,
            Err(e) => return Err(io_below("inspecting", cd, &rel, e)),
            Ok(_) => {
                let facts = policy::EntryFacts {
                    in_use,
                    handed_out: entry::mtime(cd, rel.join(layout::HANDED_OUT)),
                    last_use: entry::last_use(cd, &rel),
                    chosen_at,
                };
                match policy::entry_verdict(&facts, self.now, self.handout_grace, self.force) {
                    EntryVerdict::InUse => return Ok(Removal::Busy),
                    EntryVerdict::HandedOut(until) => return Ok(Removal::HandedOut(until)),
                    EntryVerdict::UsedSince(used) => return Ok(Removal::UsedSince(used)),
                    EntryVerdict::Remove => {}
                }
                let bytes = bytes.unwrap_or_else(|| scan::tree_bytes(cd, &rel, &[]).0);
                if self.dry_run {
                    return Ok(Removal::Removed(bytes));
                }
                let trash = TmpName::new(TmpKind::Removal, key);
                let make_tmp = || {
                    cd.mkdir(layout::TMP, super::trust::dir_mode())
                        .map_err(|e| io_below("creating directory", cd, Path::new(layout::TMP), e))
                };
                if !self.tmp_ready {
                    make_tmp()?;
                    self.tmp_ready = true;
                }
                self.index.append(&index::intent_record(key));
                let renamed = match cd.rename(&rel, trash.rel()) {
                    // `tmp/` removed since (a cleanup removes it when empty): again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        make_tmp()?;
                        cd.rename(&rel, trash.rel())
                    }
                    r => r,
                };
                renamed.map_err(|e| io_below("removing", cd, &rel, e))?;
                super::pause_point("renamed-for-removal");
                self.index.append(&index::remove_record(key));
                // The entry is gone from entries/ now; what is left in tmp/ is ours to
                // delete while we hold the key's lock (collectors leave it alone until
                // then).
                if let Err(e) = cd.remove_tree(trash.rel()) {
                    log::warn!("could not remove {}: {e}", cd.join(trash.rel()).display());
                }
                Removal::Removed(bytes)
            }
        };
        // Safe under the lock: a waiter on this file re-checks the inode (see `lock`).
        // Without it (a dry run, or another process holds it), the file stays.
        if guard.is_some() {
            let _ = cd.remove_file(&lock_rel);
        }
        drop(guard);
        Ok(removal)
    }

    /// Removes (or reports) one listed entry, recording what happened.
    fn remove_row(
        &mut self,
        row: &EntryRow,
        reason: Reason,
        report: &mut CleanReport,
    ) -> Result<()> {
        let Some(key) = row.key() else { return Ok(()) };
        // Chosen by its age: a use since the listing saves it.
        let chosen_at = matches!(reason, Reason::OlderThan { .. } | Reason::OverSize { .. })
            .then(|| row.last_touch());
        let skipped = match self.remove(&key, chosen_at, Some(row.size))? {
            Removal::Removed(_) | Removal::Gone if self.dry_run => Some(Skip::DryRun),
            Removal::Removed(_) | Removal::Gone => None,
            Removal::Busy => Some(Skip::InUse),
            Removal::HandedOut(until) => Some(Skip::HandedOut {
                until: unix_secs(until),
            }),
            Removal::UsedSince(t) => Some(Skip::UsedSince {
                last_use: unix_secs(t),
            }),
        };
        report.push(Action {
            kind: ItemKind::Entry,
            name: row.key.clone(),
            source: row.source.clone(),
            path: row.path.clone(),
            bytes: row.size,
            last_use: Some(row.last_touch()),
            reason,
            skipped,
        });
        Ok(())
    }
}

/// One leftover found on disk, with the facts its verdict needs.
pub(crate) struct Found {
    pub(crate) rel: PathBuf,
    pub(crate) facts: LeftoverFacts,
    mtime: Option<SystemTime>,
}

/// The leftovers of `cd`: `tmp/` and `quarantine/` names that parse, with their facts.
pub(crate) fn leftovers(cd: &Root, now: SystemTime) -> Vec<Found> {
    let mut out = Vec::new();
    let mut failures: HashMap<Key, Vec<usize>> = HashMap::new();
    for e in cd.read_dir(layout::TMP).unwrap_or_default() {
        let Some(name) = e.name_str().and_then(TmpName::parse) else {
            continue; // not ours
        };
        let rel = name.rel();
        let mtime = entry::mtime(cd, &rel);
        let kind = match name.kind {
            TmpKind::Staging => Leftover::Staging,
            TmpKind::Failed => Leftover::Failed,
            TmpKind::Removal => Leftover::Removal,
        };
        // Staging and removals are guarded by their key's lock; a name without a full
        // key (an older xcache's) has no lock to ask, and is judged by its age.
        let lock = match (kind, name.key) {
            (Leftover::Staging | Leftover::Removal, Some(k)) => {
                Some(lock::probe(cd, &layout::lock(&k)))
            }
            (Leftover::Staging, None) => Some(LockState::Absent),
            _ => None,
        };
        if let (Leftover::Failed, Some(k)) = (kind, name.key) {
            failures.entry(k).or_default().push(out.len());
        }
        out.push(Found {
            rel,
            facts: LeftoverFacts {
                kind,
                age: age(now, mtime),
                lock,
                newer_failures: 0,
            },
            mtime,
        });
    }
    // Rank each key's failures, newest first.
    for idx in failures.values_mut() {
        idx.sort_by_key(|&i| std::cmp::Reverse(out[i].mtime));
        for (rank, &i) in idx.iter().enumerate() {
            out[i].facts.newer_failures = rank;
        }
    }
    for e in cd.read_dir(layout::QUARANTINE).unwrap_or_default() {
        let Some(name) = e.name_str().and_then(QuarantineName::parse) else {
            continue;
        };
        let rel = name.rel();
        let mtime = entry::mtime(cd, &rel);
        out.push(Found {
            rel,
            facts: LeftoverFacts {
                kind: Leftover::Quarantined,
                age: age(now, mtime),
                lock: None,
                newer_failures: 0,
            },
            mtime,
        });
    }
    out
}

/// Collects the leftovers of `cd` that [`policy::leftover_verdict`] lets go. Returns how
/// many were kept because they are in use or too young to tell (a compiledir with such
/// a leftover is not removed whole).
fn collect_leftovers(
    cd: &Root,
    sweep: Sweep,
    rules: &LeftoverRules,
    now: SystemTime,
    report: &mut CleanReport,
) -> Result<usize> {
    let mut live = 0;
    for f in leftovers(cd, now) {
        let why = match policy::leftover_verdict(&f.facts, sweep, rules) {
            Verdict::Keep(policy::KeepWhy::Kept) => continue,
            Verdict::Keep(_) => {
                live += 1;
                continue;
            }
            Verdict::Remove(why) => why,
        };
        let bytes = scan::tree_bytes(cd, &f.rel, &[]).0;
        let skipped = if report.dry_run {
            Some(Skip::DryRun)
        } else {
            cd.remove_tree(&f.rel)
                .map_err(|e| io_below("removing", cd, &f.rel, e))?;
            None
        };
        report.push(Action {
            kind: ItemKind::Leftover(f.facts.kind),
            name: f
                .rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: String::new(),
            path: cd.join(&f.rel),
            bytes,
            last_use: f.mtime.map(unix_secs),
            reason: Reason::Leftover { leftover: why },
            skipped,
        });
    }
    Ok(live)
}

/// The request keys that have a manifest in `cd`.
pub(crate) fn manifest_keys(cd: &Root) -> Vec<Key> {
    let mut out = Vec::new();
    for (fan, kind) in names(cd, layout::MANIFESTS) {
        if kind != Kind::Dir || !layout::is_fan(&fan) {
            continue;
        }
        for (name, kind) in names(cd, Path::new(layout::MANIFESTS).join(&fan)) {
            if kind != Kind::File {
                continue;
            }
            if let Some(k) = layout::parse_manifest_file_name(&name) {
                if k.fan() == fan {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// Drops from the manifests of `cd` the results whose entries are gone, and removes a
/// manifest left with none (or that is not to be trusted), each under a try-lock on its
/// request key (a build in progress holds it: that manifest is left for next time).
/// With `Sweep::Purge`, every manifest goes. Returns how many were busy.
fn collect_manifests(cd: &Root, sweep: Sweep) -> usize {
    let mut busy = 0;
    for key in manifest_keys(cd) {
        let rel = layout::manifest(&key);
        let Ok(Some(_guard)) = lock::try_lock_exclusive(cd, &layout::lock(&key)) else {
            busy += 1;
            continue;
        };
        let keep = match super::manifest::read(cd, &key) {
            Ok(super::manifest::Lookup::Found(mut m)) if sweep == Sweep::Routine => {
                let before = m.results.len();
                m.results.retain(|r| {
                    r.key
                        .parse::<Key>()
                        .is_ok_and(|k| cd.lstat_fast(layout::entry(&k)).is_ok())
                });
                if !m.results.is_empty() && m.results.len() != before {
                    let _ = super::manifest::write(cd, &m, &key);
                }
                !m.results.is_empty()
            }
            _ => false,
        };
        if !keep {
            let _ = cd.remove_file(&rel);
            // The request key's lock file keyed nothing else: safe to remove under it.
            let _ = cd.remove_file(layout::lock(&key));
        }
    }
    busy
}

/// How long a rendered template request's memo is kept from when it was written: it is
/// then rendered again once (the memo is a shortcut, never the only copy of anything).
pub const RENDERED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Removes the rendered-request memos of `cd` written more than [`RENDERED_TTL`] ago,
/// and any that is not a regular file. Returns how many it removed.
pub(crate) fn collect_rendered(cd: &Root, now: SystemTime) -> usize {
    let mut removed = 0;
    for (name, kind) in names(cd, layout::TOOLCHAINS) {
        if layout::parse_rendered_record_name(&name).is_none() {
            continue;
        }
        let rel = layout::toolchain_record(&name);
        // Written after `now` (another clock, an injected one): not old.
        let old = entry::mtime(cd, &rel)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > RENDERED_TTL);
        if (kind != Kind::File || old) && cd.remove_file(&rel).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Collects private builds (in `$TMPDIR/xcache-private-<uid>/`) that nobody uses any
/// more. Never fails: the private root is a convenience of this user's.
pub fn collect_private(now: SystemTime, rules: &LeftoverRules, report: &mut CleanReport) {
    let Ok(root) = private::open_root() else {
        return;
    };
    for e in root.read_dir("").unwrap_or_default() {
        let Some(name) = e.name_str().and_then(TmpName::parse) else {
            continue;
        };
        if name.kind != TmpKind::Staging || e.kind != Kind::Dir {
            continue;
        }
        let rel = PathBuf::from(name.format());
        let mtime = entry::mtime(&root, &rel);
        let facts = LeftoverFacts {
            kind: Leftover::Private,
            age: age(now, mtime),
            lock: Some(private::probe(&root, &rel)),
            newer_failures: 0,
        };
        let Verdict::Remove(why) = policy::leftover_verdict(&facts, Sweep::Routine, rules) else {
            continue;
        };
        let bytes = scan::tree_bytes(&root, &rel, &[]).0;
        let skipped = if report.dry_run {
            Some(Skip::DryRun)
        } else if let Err(e) = root.remove_tree(&rel) {
            log::debug!("could not remove {}: {e}", root.join(&rel).display());
            continue;
        } else {
            None
        };
        report.push(Action {
            kind: ItemKind::Leftover(Leftover::Private),
            name: name.format(),
            source: String::new(),
            path: root.join(&rel),
            bytes,
            last_use: mtime.map(unix_secs),
            reason: Reason::Leftover { leftover: why },
            skipped,
        });
    }
}

/// Removes the failures of `key` beyond `keep_failed` (the newest are kept). Runs under
/// the key's exclusive lock, right after a failure was kept.
pub(crate) fn trim_failures(store: &Store, key: &Key) {
    let cd = &store.root();
    let now = store.clock().now();
    let rules = rules(store.config());
    for f in leftovers(cd, now) {
        let ours = f.facts.kind == Leftover::Failed
            && f.rel
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(TmpName::parse)
                .is_some_and(|n| n.key == Some(*key));
        if !ours {
            continue;
        }
        if let Verdict::Remove(_) = policy::leftover_verdict(&f.facts, Sweep::Routine, &rules) {
            let _ = cd.remove_tree(&f.rel);
        }
    }
}

/// Names in a directory below `root` (`""`: the root), with their kinds.
fn names(root: &Root, rel: impl AsRef<Path>) -> Vec<(String, Kind)> {
    root.read_dir(rel)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name_str()?.to_string(), e.kind)))
        .collect()
}

/// After the entries and leftovers of a compiledir being removed whole: what xcache made
/// around them, by name, one by one — empty fan directories, lock files (under a
/// try-lock), toolchain records, stats files, the top-level files — and never a name
/// it does not make. Returns the first directory that could not be removed because
/// something else is in it.
fn remove_compiledir_rest(cd: &Root) -> Option<PathBuf> {
    let mut foreign = None;
    let mut rmdir = |rel: &Path| {
        if let Err(e) = cd.remove_dir(rel) {
            if e.kind() != std::io::ErrorKind::NotFound && foreign.is_none() {
                foreign = Some(cd.join(rel));
            }
        }
    };
    for (fan, kind) in names(cd, layout::ENTRIES) {
        if layout::is_fan(&fan) && kind == Kind::Dir {
            rmdir(&Path::new(layout::ENTRIES).join(fan));
        }
    }
    rmdir(Path::new(layout::ENTRIES));
    for (fan, kind) in names(cd, layout::MANIFESTS) {
        if layout::is_fan(&fan) && kind == Kind::Dir {
            rmdir(&Path::new(layout::MANIFESTS).join(fan));
        }
    }
    rmdir(Path::new(layout::MANIFESTS));
    for (fan, kind) in names(cd, layout::LOCKS) {
        if !layout::is_fan(&fan) || kind != Kind::Dir {
            continue;
        }
        let fan_rel = Path::new(layout::LOCKS).join(&fan);
        for (name, kind) in names(cd, &fan_rel) {
            if kind != Kind::File || layout::parse_lock_file_name(&name).is_none() {
                continue;
            }
            let rel = fan_rel.join(&name);
            if let Ok(Some(_guard)) = lock::try_lock_exclusive(cd, &rel) {
                let _ = cd.remove_file(&rel);
            }
        }
        rmdir(&fan_rel);
    }
    rmdir(Path::new(layout::LOCKS));
    rmdir(Path::new(layout::TMP));
    rmdir(Path::new(layout::QUARANTINE));
    for (name, kind) in names(cd, layout::TOOLCHAINS) {
        if kind == Kind::File && name.ends_with(".json") {
            let _ = cd.remove_file(layout::toolchain_record(&name));
        }
    }
    rmdir(Path::new(layout::TOOLCHAINS));
    for (name, kind) in names(cd, layout::STATS) {
        if kind == Kind::File && super::stats::is_stats_file(&name) {
            let _ = cd.remove_file(Path::new(layout::STATS).join(name));
        }
    }
    rmdir(Path::new(layout::STATS));
    for f in layout::COMPILEDIR_FILES {
        let _ = cd.remove_file(f);
    }
    foreign
}

/// Removes the compiledir `name` of `base` whole: its entries one by one under
/// try-locks (each respecting its hand-out, unless `force`), its leftovers as a purge,
/// then, if nothing was in use, what else xcache put there and the directory itself.
fn remove_compiledir(
    base: &Root,
    name: &str,
    reason: Reason,
    now: SystemTime,
    config: &Config,
    force: bool,
    report: &mut CleanReport,
) -> Result<()> {
    let path = base.join(name);
    let cd = match base.open_dir(name) {
        Ok(cd) => cd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_below("opening", base, Path::new(name), e)),
    };
    let last_use = entry::last_use(&cd, "").map(unix_secs);
    let mut action = Action {
        kind: ItemKind::Compiledir,
        name: name.to_string(),
        source: String::new(),
        path: path.clone(),
        bytes: scan::tree_bytes(&cd, "", &[]).0,
        last_use,
        reason,
        skipped: None,
    };
    if cd
        .lstat_fast(layout::COMPILEDIR_META)
        .map_or(true, |st| Kind::of_stat(&st) != Kind::File)
    {
        action.skipped = Some(Skip::NotOurs);
        report.push(action);
        return Ok(());
    }
    // A dry run lists the same entries and leftovers as the real run would, judged
    // the same way.
    let first = report.actions.len();
    let mut busy = 0;
    let mut remover = Remover::new(&cd, now, config.handout_grace, force, report.dry_run);
    for row in scan::entries(&cd)? {
        let before = report.actions.len();
        remover.remove_row(&row, Reason::Purge, report)?;
        if report.actions[before]
            .skipped
            .as_ref()
            .is_some_and(|s| *s != Skip::DryRun)
        {
            busy += 1;
        }
    }
    drop(remover);
    let mut live = collect_leftovers(&cd, Sweep::Purge, &rules(config), now, report)?;
    if !report.dry_run {
        live += collect_manifests(&cd, Sweep::Purge);
    }
    // What is left besides the entries and leftovers, counted one by one above.
    action.bytes = scan::tree_bytes(&cd, "", &[]).0;
    if busy == 0 && live == 0 && report.dry_run {
        let listed: u64 = report.actions[first..].iter().map(|a| a.bytes).sum();
        action.bytes = action.bytes.saturating_sub(listed);
        action.skipped = Some(Skip::DryRun);
        report.push(action);
        return Ok(());
    }
    if busy > 0 || live > 0 {
        action.skipped = Some(if busy > 0 {
            Skip::EntriesInUse { count: busy }
        } else {
            Skip::BuildInProgress
        });
        action.bytes = 0;
        report.push(action);
        return Ok(());
    }
    let foreign = remove_compiledir_rest(&cd).or_else(|| {
        base.remove_dir(name)
            .err()
            .filter(|e| e.kind() != std::io::ErrorKind::NotFound)
            .map(|_| path.clone())
    });
    if let Some(p) = foreign {
        action.skipped = Some(Skip::ForeignFiles { path: p });
    }
    report.push(action);
    Ok(())
}

/// True when the base dir holds a `CACHEDIR.TAG` that xcache wrote (without following
/// a link).
pub fn is_xcache_base(base: &Path) -> bool {
    use std::io::Read;
    let Ok(root) = Root::open(base) else {
        return false;
    };
    let mut text = String::new();
    root.open_file(layout::CACHEDIR_TAG, crate::fsx::OpenHow::read())
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_ok_and(|_| text == layout::CACHEDIR_TAG_TEXT)
}

/// The error for purging a directory that xcache did not tag.
pub fn not_an_xcache_base(base: &Path) -> Error {
    Error::InvalidRequest(format!(
        "refusing to purge {}: it has no CACHEDIR.TAG written by xcache, so it may not be an xcache base dir. Fix: check XCACHE_DIR or --dir; if it is one, remove its compiledir_* directories by hand",
        base.display()
    ))
}

impl Store {
    /// The compiledirs under the base dir, named by the configured format.
    pub fn compiledirs(&self) -> Result<Vec<scan::CompiledirInfo>> {
        let format = crate::platform::CompiledirFormat::parse(&self.config().compiledir_format)
            .map_err(Error::Config)?;
        let current = self
            .compiledir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        scan::compiledirs(&self.base_root(), &format, &current)
    }

    /// How a compiledir stands against this store's platform now.
    pub fn standing(&self, cd: &scan::CompiledirInfo) -> Standing {
        cd.standing(
            self.platform(),
            self.clock().now(),
            self.config().stale_after,
        )
    }

    /// Every entry of the current compiledir, with its metadata, sorted by key.
    pub fn entries(&self) -> Result<Vec<EntryRow>> {
        scan::entries(&self.root())
    }

    /// Removes one entry of the current compiledir (see [`remove_entry`]).
    pub fn remove_entry(&self, key: &Key, force: bool) -> Result<Removal> {
        remove_entry(
            &self.root(),
            key,
            self.clock().now(),
            self.config().handout_grace,
            force,
        )
    }

    /// `xcache clear`: every entry of the current compiledir (but those in use, and,
    /// unless `force`, those handed out within `handout_grace`), and the leftovers that
    /// may go.
    pub fn clear(&self, force: bool, dry_run: bool) -> Result<CleanReport> {
        let now = self.clock().now();
        let mut report = CleanReport::dry(dry_run);
        let cd = self.root();
        let mut remover = Remover::new(&cd, now, self.config().handout_grace, force, dry_run);
        for row in self.entries()? {
            remover.remove_row(&row, Reason::Clear, &mut report)?;
        }
        drop(remover);
        collect_leftovers(
            &self.root(),
            Sweep::Routine,
            &rules(self.config()),
            now,
            &mut report,
        )?;
        if !dry_run {
            collect_manifests(&self.root(), Sweep::Routine);
        }
        Ok(report)
    }

    /// `xcache prune`: entries by age and then by size down to the low-water mark
    /// ([`policy::select_victims`]), the leftovers that may go, private builds nobody
    /// uses, and with `stale`, stale compiledirs.
    pub fn prune(&self, opts: &PruneOptions) -> Result<CleanReport> {
        self.prune_with_progress(opts, &|_, _| {})
    }

    /// [`Store::prune`], calling `progress(done, total)` after each entry chosen for
    /// eviction is handled.
    pub fn prune_with_progress(
        &self,
        opts: &PruneOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<CleanReport> {
        let config = self.config();
        let now = self.clock().now();
        let mut report = CleanReport::dry(opts.dry_run);
        // 0 is "no limit", as for the max_size setting (and ccache's `-M 0`).
        let max_size = match (opts.max_size, opts.older_than) {
            (None, None) => Some(config.max_size),
            (m, _) => m,
        }
        .filter(|&m| m > 0);
        let policy = Policy {
            max_size,
            low_water: config.low_water,
            older_than: opts.older_than,
        };
        self.prune_entries(&policy, now, opts.force, &mut report, progress)?;
        if !opts.dry_run {
            collect_rendered(&self.root(), now);
        }
        let rules = rules(config);
        collect_leftovers(&self.root(), Sweep::Routine, &rules, now, &mut report)?;
        collect_private(now, &rules, &mut report);
        if opts.stale {
            for cd in self.compiledirs()? {
                if let Standing::Stale(stale) = self.standing(&cd) {
                    remove_compiledir(
                        &self.base_root(),
                        &cd.name,
                        Reason::Stale { stale },
                        now,
                        config,
                        opts.force,
                        &mut report,
                    )?;
                }
            }
        }
        Ok(report)
    }

    fn prune_entries(
        &self,
        policy: &Policy,
        now: SystemTime,
        force: bool,
        report: &mut CleanReport,
        progress: &dyn Fn(u64, u64),
    ) -> Result<()> {
        // Numbers from the index; names only for what goes.
        let snap = index::snapshot(&self.root())?;
        let gc_entries: Vec<GcEntry> = snap
            .items()
            .iter()
            .map(|r| GcEntry {
                size: r.size,
                last_use: SystemTime::UNIX_EPOCH + Duration::from_secs(r.last_touch()),
            })
            .collect();
        let victims = policy::select_victims(&gc_entries, now, policy);
        let cd = self.root();
        let mut remover =
            Remover::new(&cd, now, self.config().handout_grace, force, report.dry_run);
        for (done, i) in victims.iter().copied().enumerate() {
            let reason = match policy.older_than {
                Some(max)
                    if now
                        .duration_since(gc_entries[i].last_use)
                        .is_ok_and(|a| a > max) =>
                {
                    Reason::OlderThan {
                        limit_secs: max.as_secs(),
                    }
                }
                _ => Reason::OverSize {
                    max_size: policy.max_size.unwrap_or(0),
                },
            };
            remover.remove_row(&snap.row(i), reason, report)?;
            progress(done as u64 + 1, victims.len() as u64);
        }
        Ok(())
    }

    /// `xcache purge`: the current compiledir, whole (unless something in it is in use;
    /// entries handed out within `handout_grace` stay too, unless `force`).
    pub fn purge(&self, force: bool, dry_run: bool) -> Result<CleanReport> {
        let mut report = CleanReport::dry(dry_run);
        let name = self
            .compiledir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        remove_compiledir(
            &self.base_root(),
            &name,
            Reason::Purge,
            self.clock().now(),
            self.config(),
            force,
            &mut report,
        )?;
        Ok(report)
    }

    /// `xcache basecompiledir purge`: every compiledir, then the tag and the base dir
    /// itself if nothing else is left. Refuses a directory without xcache's
    /// `CACHEDIR.TAG`. `force`: as for [`Store::purge`].
    pub fn purge_base(&self, force: bool, dry_run: bool) -> Result<CleanReport> {
        let base = self.base_dir();
        if !is_xcache_base(base) {
            return Err(not_an_xcache_base(base));
        }
        let now = self.clock().now();
        let mut report = CleanReport::dry(dry_run);
        for cd in self.compiledirs()? {
            remove_compiledir(
                &self.base_root(),
                &cd.name,
                Reason::Purge,
                now,
                self.config(),
                force,
                &mut report,
            )?;
        }
        if report.skipped == 0 && !dry_run {
            let _ = self.base_root().remove_file(layout::CACHEDIR_TAG);
            let _ = std::fs::remove_dir(base);
        }
        Ok(report)
    }

    /// After a compile published: if `max_size` is set and `auto_prune_interval` has
    /// passed since the last automatic prune of this compiledir, and no other process
    /// is pruning it, prune it down to the low-water mark (and collect leftovers and
    /// private builds). Never fails the caller: returns what it did, or `None` when it
    /// did nothing.
    pub fn auto_prune(&self) -> Option<CleanReport> {
        let config = self.config();
        if config.max_size == 0 {
            return None;
        }
        let now = self.clock().now();
        let cd = &self.root();
        let due = || {
            entry::mtime(cd, layout::AUTO_PRUNE_MARK)
                .and_then(|t| now.duration_since(t).ok())
                .is_none_or(|a| a >= config.auto_prune_interval)
        };
        if !due() {
            return None;
        }
        let guard = lock::try_lock_exclusive(cd, Path::new(layout::GC_LOCK)).ok()??;
        // Again under the lock: another process may just have done it.
        if !due() {
            return None;
        }
        entry::touch(cd, layout::AUTO_PRUNE_MARK, now);
        let mut report = CleanReport::default();
        let rules = rules(config);
        let r = (|| {
            let total: u64 = index::snapshot(&self.root())?
                .items()
                .iter()
                .map(|r| r.size)
                .sum();
            if total > config.max_size {
                let policy = Policy {
                    max_size: Some(config.max_size),
                    low_water: config.low_water,
                    older_than: None,
                };
                self.prune_entries(&policy, now, false, &mut report, &|_, _| {})?;
            }
            collect_manifests(cd, Sweep::Routine);
            collect_rendered(cd, now);
            collect_leftovers(cd, Sweep::Routine, &rules, now, &mut report)
        })();
        collect_private(now, &rules, &mut report);
        drop(guard);
        match r {
            Ok(_) => {
                log::info!(
                    "auto-prune: removed {} entries ({} bytes) from {}",
                    report.removed_entries,
                    report.freed_bytes,
                    self.compiledir().display()
                );
                Some(report)
            }
            Err(e) => {
                log::warn!(
                    "automatic pruning of {} failed: {e}",
                    self.compiledir().display()
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The store's cleanup operations on a real directory with fake artifacts (no
    //! compiler: the build step writes the bytes), a manual clock and real locks.

    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::key::{KeyMaterial, Target, Toolchain};
    use crate::store::Built;

    const T0: u64 = 1_900_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        store: Store,
    }

    fn fixture(settings: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.set_base_dir(dir.path().join("cache"));
        for (k, v) in settings {
            config.set(k, v).unwrap();
        }
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
        ));
        let store = Store::open_with_clock(&config, clock.clone()).unwrap();
        Fixture {
            _dir: dir,
            clock,
            store,
        }
    }

    fn material(n: u32) -> KeyMaterial {
        KeyMaterial {
            encoding: 0,
            layout: 1,
            language: "c".into(),
            source_blake3: format!("{n:064x}"),
            toolchain: Toolchain {
                path: "/bin/cc".into(),
                version: "test".into(),
                binary: "test".into(),
            },
            flags: vec![],
            target: Target {
                triple: "test".into(),
                cpu: None,
            },
            extra_inputs: vec![],
            runtime_tag: String::new(),
            template: None,
        }
    }

    /// Publishes an entry of `size` bytes for `n`; fails the build when `fail`.
    fn build(store: &Store, n: u32, size: usize, fail: bool) -> Result<crate::store::Fetched> {
        let m = material(n);
        store.get_or_build(&m.key(), &mut |staging| {
            let write = |name: &str, bytes: &[u8]| {
                staging
                    .create_file(name, 0o644)
                    .and_then(|mut f| f.write_all(bytes))
                    .unwrap()
            };
            write("source.c", b"int x;");
            if fail {
                return Err(Error::Compile(
                    crate::error::CompileError {
                        command: "cc".into(),
                        status: Some(1),
                        output: "x.c:1: error".into(),
                        kept_source: staging.join("source.c"),
                        workdir: staging.path().to_path_buf(),
                    }
                    .into(),
                ));
            }
            write(crate::store::entry::ARTIFACT_FILE, &vec![n as u8; size]);
            Ok(Built {
                group: None,
                source_name: format!("k{n}.c"),
                source_file: "source.c".into(),
                compile_time: Duration::from_millis(1),
                compiler_output: String::new(),
                key_material: m.clone(),
                headers: Vec::new(),
            })
        })
    }

    fn publish(f: &Fixture, n: u32, size: usize) -> Key {
        build(&f.store, n, size, false).unwrap().key
    }

    fn count(f: &Fixture) -> usize {
        f.store.entries().unwrap().len()
    }

    /// A remover makes `tmp/` once; a cleanup that removes the empty `tmp/` between two
    /// of its removals does not fail the second.
    #[test]
    fn one_remover_survives_tmp_being_removed_between_removals() {
        let f = fixture(&[]);
        let (a, b) = (publish(&f, 1, 10), publish(&f, 2, 10));
        let cd = &f.store.root();
        let mut remover = Remover::new(cd, f.clock.now(), Duration::ZERO, false, false);
        assert!(matches!(
            remover.remove(&a, None, None).unwrap(),
            Removal::Removed(_)
        ));
        cd.remove_dir(layout::TMP).unwrap();
        assert!(matches!(
            remover.remove(&b, None, None).unwrap(),
            Removal::Removed(_)
        ));
        assert_eq!(count(&f), 0);
    }

    #[test]
    fn removal_skips_busy_and_handed_out_entries_unless_forced() {
        let f = fixture(&[("handout_grace", "1m")]);
        let busy = publish(&f, 1, 100);
        let handed = publish(&f, 2, 100);
        let plain = publish(&f, 3, 100);
        let guard = lock::lock_shared(&f.store.root(), &layout::lock(&busy)).unwrap();
        let mut h = build(&f.store, 2, 100, false).unwrap();
        assert!(h.hit);
        let until = h.hand_out().unwrap();
        drop(h);
        assert_eq!(until, f.clock.now() + Duration::from_secs(60));

        assert_eq!(f.store.remove_entry(&busy, true).unwrap(), Removal::Busy);
        assert_eq!(
            f.store.remove_entry(&handed, false).unwrap(),
            Removal::HandedOut(until)
        );
        assert!(
            matches!(f.store.remove_entry(&plain, false).unwrap(), Removal::Removed(b) if b >= 100)
        );
        assert_eq!(f.store.remove_entry(&plain, false).unwrap(), Removal::Gone);

        // The report of clear says why each was kept.
        let r = f.store.clear(false, false).unwrap();
        let skips: Vec<_> = r.actions.iter().map(|a| a.skipped.clone()).collect();
        assert!(skips.contains(&Some(Skip::InUse)), "{r:?}");
        assert!(skips.contains(&Some(Skip::HandedOut {
            until: unix_secs(until)
        })));
        assert_eq!((r.removed_entries, r.skipped), (0, 2));

        // After the grace, or forced, the hand-out no longer protects it.
        f.clock.advance(Duration::from_secs(61));
        let r = f.store.clear(false, false).unwrap();
        assert_eq!((r.removed_entries, r.skipped), (1, 1));
        drop(guard);
        assert_eq!(f.store.clear(true, false).unwrap().removed_entries, 1);
        assert_eq!(count(&f), 0);
        // Removed entries leave no lock file and nothing in tmp/.
        assert!(f.store.root().read_dir(layout::TMP).unwrap().is_empty());
        assert!(scan::entry_keys(&f.store.root()).unwrap().is_empty());
    }

    /// Prune chooses by the last use the index records; a use since, seen on the
    /// marker under the lock, keeps the entry.
    #[test]
    fn an_entry_used_since_it_was_chosen_stays() {
        let f = fixture(&[]);
        let k = publish(&f, 1, 10);
        let chosen = unix_secs(f.clock.now());
        f.clock.advance(Duration::from_secs(3600));
        let mut h = build(&f.store, 1, 10, false).unwrap();
        assert!(h.hit);
        assert!(h.hand_out().is_some());
        drop(h);
        let used = f.clock.now();
        let now = used + Duration::from_secs(1);
        let cd = f.store.root();
        let mut r = Remover::new(&cd, now, Duration::ZERO, false, false);
        assert_eq!(
            r.remove(&k, Some(chosen), None).unwrap(),
            Removal::UsedSince(used)
        );
        assert!(matches!(
            r.remove(&k, Some(unix_secs(used)), None).unwrap(),
            Removal::Removed(_)
        ));
        drop(r);
        assert_eq!(count(&f), 0);
        assert_eq!(index::check(&f.store.root()).unwrap(), None);
    }

    #[test]
    fn dry_runs_remove_nothing() {
        let f = fixture(&[]);
        publish(&f, 1, 10);
        let r = f.store.clear(false, true).unwrap();
        assert_eq!(
            (r.removed_entries, r.actions[0].skipped.clone()),
            (1, Some(Skip::DryRun))
        );
        let r = f.store.purge(false, true).unwrap();
        assert_eq!(r.actions[0].skipped, Some(Skip::DryRun));
        assert_eq!(count(&f), 1);
        assert!(f.store.compiledir().exists());
    }

    #[test]
    fn prune_by_age_then_size_through_the_clock() {
        let f = fixture(&[("low_water", "0.5")]);
        for n in 0..4 {
            publish(&f, n, 1000);
            f.clock.advance(HOUR * 2); // each entry used two hours after the last
        }
        // Ages now: 8h, 6h, 4h, 2h. Older than 5h: entries 0 and 1.
        let r = f
            .store
            .prune(&PruneOptions {
                older_than: Some(HOUR * 5),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.removed_entries, 2);
        assert!(r.actions.iter().all(|a| a.reason
            == Reason::OlderThan {
                limit_secs: 5 * 3600
            }));
        // Over 1500 bytes (2 entries of 1000+): down to 750, least recently used first.
        let r = f
            .store
            .prune(&PruneOptions {
                max_size: Some(1500),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.removed_entries, 2, "{r:?}");
        assert_eq!(count(&f), 0);
    }

    #[test]
    fn failures_are_kept_up_to_keep_failed_per_key() {
        let f = fixture(&[("keep_failed", "3")]);
        for _ in 0..7 {
            f.clock.advance(Duration::from_secs(1));
            assert!(matches!(
                build(&f.store, 9, 1, true),
                Err(Error::Compile(_))
            ));
        }
        let failed = |f: &Fixture| {
            f.store
                .root()
                .read_dir(layout::TMP)
                .unwrap()
                .iter()
                .filter(|e| e.name_str().is_some_and(|n| n.starts_with("failed-")))
                .count()
        };
        assert_eq!(failed(&f), 3);
        // Another key's failures are its own.
        assert!(build(&f.store, 10, 1, true).is_err());
        assert_eq!(failed(&f), 4);
        // Prune collects them once kept longer than stale_after.
        f.clock.advance(Duration::from_secs(31 * 86_400));
        f.store.prune(&PruneOptions::default()).unwrap();
        assert_eq!(failed(&f), 0);
    }

    #[test]
    fn purge_removes_only_what_xcache_made() {
        let f = fixture(&[]);
        publish(&f, 1, 10);
        let cd = f.store.compiledir().to_path_buf();
        std::fs::write(cd.join("tmp/notes.txt"), "mine").unwrap();
        let r = f.store.purge(false, false).unwrap();
        let last = r.actions.last().unwrap();
        assert_eq!(last.kind, ItemKind::Compiledir);
        assert_eq!(
            last.skipped,
            Some(Skip::ForeignFiles {
                path: cd.join("tmp")
            })
        );
        assert_eq!(
            std::fs::read_to_string(cd.join("tmp/notes.txt")).unwrap(),
            "mine"
        );
        assert!(!cd.join("entries").exists() && !cd.join("locks").exists());
        std::fs::remove_file(cd.join("tmp/notes.txt")).unwrap();
        // Reopen (purge removed the directories) and purge again: now it goes whole.
        let store = Store::open_with_clock(f.store.config(), f.clock.clone()).unwrap();
        let r = store.purge(false, false).unwrap();
        assert_eq!(r.actions.last().unwrap().skipped, None, "{r:?}");
        assert!(!cd.exists());
    }

    #[test]
    fn a_live_staging_or_removal_is_never_collected() {
        let f = fixture(&[("staging_grace", "0s")]);
        // A key being built (or whose entry is being removed): no published entry.
        let key = material(1).key();
        let cd = &f.store.root();
        let staging = TmpName::new(TmpKind::Staging, &key).rel();
        let removal = TmpName::new(TmpKind::Removal, &key).rel();
        cd.mkdir_all(&staging, 0o755).unwrap();
        cd.mkdir_all(&removal, 0o755).unwrap();
        f.clock.advance(HOUR * 48);
        // Their builder and remover hold the key's lock.
        let guard = lock::lock_exclusive(cd, &layout::lock(&key), &mut |_| {}).unwrap();
        f.store.prune(&PruneOptions::default()).unwrap();
        f.store.verify(true).unwrap();
        assert!(cd.lstat_fast(&staging).is_ok() && cd.lstat_fast(&removal).is_ok());
        drop(guard);
        let r = f.store.verify(true).unwrap();
        let kinds: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
        use crate::store::verify::ProblemKind;
        assert_eq!(
            kinds,
            [
                ProblemKind::OrphanLock,
                ProblemKind::Leftover,
                ProblemKind::Leftover
            ],
            "{r:?}"
        );
        assert!(cd.lstat_fast(&staging).is_err() && cd.lstat_fast(&removal).is_err());
    }

    #[test]
    fn auto_prune_runs_when_due_and_over_the_limit() {
        let f = fixture(&[
            ("max_size", "10000B"),
            ("low_water", "0.5"),
            ("auto_prune_interval", "1h"),
        ]);
        for n in 0..2 {
            publish(&f, n, 3000);
            f.clock.advance(Duration::from_secs(1));
        }
        // Under the limit: runs (and records that it ran), removes nothing.
        assert_eq!(f.store.auto_prune().unwrap().removed_entries, 0);
        for n in 2..5 {
            publish(&f, n, 3000);
            f.clock.advance(Duration::from_secs(1));
        }
        assert!(f.store.auto_prune().is_none(), "not due yet");
        f.clock.advance(HOUR);
        let r = f.store.auto_prune().unwrap();
        assert!(r.removed_entries >= 3, "{r:?}");
        let total: u64 = f.store.entries().unwrap().iter().map(|e| e.size).sum();
        assert!(total <= 5000, "{total}");
    }
}
