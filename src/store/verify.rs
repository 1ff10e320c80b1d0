//! `xcache verify [--repair]`: every entry of the current compiledir is checked as a hit
//! would check it (metadata, owner and mode, artifact size and blake3); the compiledir
//! is walked for things xcache never makes (symbolic links, FIFOs, files someone else
//! could write), orphan lock files and leftovers that may go. `--repair` quarantines
//! corrupt entries (under the key's exclusive lock, after looking again), removes
//! planted links (the link, never its target) and foreign files, orphan locks (under a
//! try-lock) and the leftovers that [`super::gc::policy::leftover_verdict`] lets go —
//! the same rule prune follows, so a removal or build in progress is never touched.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::entry::VerifyError;
use super::gc::policy::{self, Sweep, Verdict};
use super::key::Key;
use super::layout;
use super::{check_entry_in, gc, lock, quarantine_entry_in, scan, trust, Store};
use crate::config::Config;
use crate::error::Result;
use crate::fsx::{Kind, Root};

/// What kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// `compiledir.json` is missing or unreadable.
    BadCompiledirMetadata,
    /// An entry fails the hit check (metadata, trust, size or hash).
    CorruptEntry,
    /// An entry could not be read for a reason of this process (EIO, EMFILE).
    UnreadableEntry,
    /// A name under `entries/` that xcache does not make: left alone.
    UnknownFile,
    /// A symbolic link: xcache never makes one and never follows one.
    PlantedLink,
    /// A FIFO, socket or device where xcache keeps files.
    PlantedFile,
    /// A file or directory owned by someone else, or writable by others.
    UntrustedFile,
    /// A lock file of a key with no entry, held by nobody.
    OrphanLock,
    /// Something under `tmp/` or `quarantine/` that may go.
    Leftover,
    /// A manifest that fails its hash or names another key: never trusted; the next
    /// build of its request rewrites it.
    CorruptManifest,
    /// The compiledir's index is missing, unreadable or says other than the entries:
    /// listings read those entries from their own files until it is rebuilt (any
    /// listing mends it; `--repair` rebuilds it whole).
    StaleIndex,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Where.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
    /// What `--repair` did about it (`None`: nothing, or not asked to).
    pub repaired: Option<String>,
}

/// The report. `xcache verify --json` prints this.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Entries that passed.
    pub ok: u64,
    /// Everything else.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong, or everything wrong was repaired. Names that xcache
    /// does not make are left alone and do not count.
    pub fn clean(&self) -> bool {
        self.problems
            .iter()
            .all(|p| p.repaired.is_some() || p.kind == ProblemKind::UnknownFile)
    }

    fn push(&mut self, kind: ProblemKind, path: PathBuf, detail: String, repaired: Option<String>) {
        self.problems.push(Problem {
            kind,
            path,
            detail,
            repaired,
        });
    }
}

impl Store {
    /// Opens the store for `verify --repair`. What would stop [`Store::open`] below the
    /// base dir — a symbolic link, a FIFO, a socket or a device where the compiledir or
    /// one of its directories should be — is removed first (a link as a link: what it
    /// points to is never touched), and the open makes the directory again. Each is
    /// returned as a repaired problem. A regular file there, or a directory someone else
    /// could write, is left for the open to refuse with what to do by hand.
    pub fn open_for_repair(config: &Config) -> Result<(Store, Vec<Problem>)> {
        let (base, _, name) = super::locate(config)?;
        let mut fixed = Vec::new();
        clear_in_the_way(&base, Path::new(&name), &mut fixed)?;
        if let Ok(cd) = base.open_dir(&name) {
            for sub in layout::COMPILEDIR_SUBDIRS {
                clear_in_the_way(&cd, Path::new(sub), &mut fixed)?;
            }
        }
        Ok((Store::open(config)?, fixed))
    }

    /// Checks (and with `repair`, mends) the current compiledir.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        self.verify_with_progress(repair, &|_, _| {})
    }

    /// [`Store::verify`], calling `progress(done, total)` after each entry checked.
    pub fn verify_with_progress(
        &self,
        repair: bool,
        progress: &dyn Fn(u64, u64),
    ) -> Result<VerifyReport> {
        let cd = &self.root();
        let now = self.clock().now();
        let mut report = VerifyReport::default();

        if let Err(e) = self.compiledir_meta() {
            let mut repaired = None;
            if repair {
                self.rewrite_compiledir_meta(" (verify --repair)")?;
                repaired = Some("rewritten from the current platform".into());
            }
            report.push(
                ProblemKind::BadCompiledirMetadata,
                cd.join(layout::COMPILEDIR_META),
                e.to_string(),
                repaired,
            );
        }

        // Links, FIFOs and foreign files first: a repair removes them before anything
        // below reads through their directories.
        walk_for_planted(cd, Path::new(""), 0, repair, &mut report);

        let keys = scan::entry_keys(cd)?;
        // A lock file guards an entry, or the manifest of a request key.
        let live: HashSet<Key> = keys.iter().copied().chain(gc::manifest_keys(cd)).collect();
        for (i, key) in keys.iter().enumerate() {
            self.verify_entry(key, repair, &mut report)?;
            progress(i as u64 + 1, keys.len() as u64);
        }
        self.verify_locks(&live, repair, &mut report)?;

        for key in gc::manifest_keys(cd) {
            let rel = layout::manifest(&key);
            let why = match super::manifest::read(cd, &key) {
                Ok(super::manifest::Lookup::Corrupt(why)) => why,
                Ok(_) => continue,
                Err(e) => e.to_string(),
            };
            let mut repaired = None;
            if repair {
                if let Some(_g) = lock::try_lock_exclusive(cd, &layout::lock(&key))? {
                    cd.remove_file(&rel)
                        .map_err(|e| super::io_below("removing", cd, &rel, e))?;
                    repaired = Some("removed (rebuilt by the next request)".into());
                }
            }
            report.push(ProblemKind::CorruptManifest, cd.join(&rel), why, repaired);
        }

        let rules = gc::rules(self.config());
        for f in gc::leftovers(cd, now) {
            let Verdict::Remove(why) = policy::leftover_verdict(&f.facts, Sweep::Routine, &rules)
            else {
                continue;
            };
            let mut repaired = None;
            if repair {
                cd.remove_tree(&f.rel)
                    .map_err(|e| super::io_below("removing", cd, &f.rel, e))?;
                repaired = Some("removed".into());
            }
            report.push(
                ProblemKind::Leftover,
                cd.join(&f.rel),
                describe_leftover(why).into(),
                repaired,
            );
        }

        // Last, after any repair above has appended its records.
        if let Some(why) = super::index::check(cd)? {
            let mut repaired = None;
            if repair {
                let n = super::index::rebuild(cd)?;
                repaired = Some(format!("rebuilt from the entries ({n} listed)"));
            }
            report.push(
                ProblemKind::StaleIndex,
                super::index::path(cd),
                format!("the index does not match the entries: {why}"),
                repaired,
            );
        }
        Ok(report)
    }

    fn verify_entry(&self, key: &Key, repair: bool, report: &mut VerifyReport) -> Result<()> {
        let cd = &self.root();
        let path = cd.join(layout::entry(key));
        // Shared, as a reader: a build in progress never holds a published entry.
        let guard = lock::lock_shared(cd, &layout::lock(key))?;
        let corruption = match check_entry_in(cd, key, true) {
            Ok(None) => return Ok(()), // pruned meanwhile
            Ok(Some(_)) => {
                report.entries += 1;
                report.ok += 1;
                return Ok(());
            }
            Err(VerifyError::Io(p, e)) => {
                report.entries += 1;
                report.push(ProblemKind::UnreadableEntry, p, e.to_string(), None);
                return Ok(());
            }
            // Its fan directory is reported (and removed by --repair) by the walk for
            // what is planted or untrusted.
            Err(VerifyError::UntrustedDir(..)) => {
                report.entries += 1;
                return Ok(());
            }
            Err(VerifyError::Corrupt(c)) => c,
        };
        report.entries += 1;
        drop(guard);
        let mut repaired = None;
        if repair {
            if let Some(_g) = lock::try_lock_exclusive(cd, &layout::lock(key))? {
                // Look again under the exclusive lock: another process may have
                // rebuilt it since.
                if !matches!(check_entry_in(cd, key, true), Err(VerifyError::Corrupt(_))) {
                    repaired = Some("rebuilt by another process meanwhile".into());
                } else {
                    repaired = Some(match quarantine_entry_in(cd, key, self.clock().now())? {
                        Some(q) => format!("moved to {}", q.display()),
                        None => "removed".into(),
                    });
                    // Its lock file would be an orphan now; safe to remove under it.
                    let _ = cd.remove_file(layout::lock(key));
                }
            }
        }
        report.push(
            ProblemKind::CorruptEntry,
            path,
            corruption.to_string(),
            repaired,
        );
        Ok(())
    }

    /// Lock files without an entry: left by removals that crashed, or by builds that
    /// failed.
    fn verify_locks(
        &self,
        live: &HashSet<Key>,
        repair: bool,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let cd = &self.root();
        for fan in cd.read_dir(layout::LOCKS).unwrap_or_default() {
            let Some(fan_name) = fan.name_str().filter(|n| layout::is_fan(n)) else {
                continue;
            };
            if fan.kind != Kind::Dir {
                continue;
            }
            let fan_rel = Path::new(layout::LOCKS).join(fan_name);
            for l in cd.read_dir(&fan_rel).unwrap_or_default() {
                let Some(key) = l.name_str().and_then(layout::parse_lock_file_name) else {
                    continue;
                };
                if live.contains(&key) || l.kind != Kind::File {
                    continue;
                }
                let rel = fan_rel.join(&l.name);
                // Held: a build in progress, not an orphan.
                let Some(guard) = lock::try_lock_exclusive(cd, &rel)? else {
                    continue;
                };
                if cd.lstat_fast(layout::entry(&key)).is_ok()
                    || cd.lstat_fast(layout::manifest(&key)).is_ok()
                {
                    continue; // published since the scan
                }
                let mut repaired = None;
                if repair {
                    cd.remove_file(&rel)
                        .map_err(|e| super::io_below("removing", cd, &rel, e))?;
                    repaired = Some("removed".into());
                }
                drop(guard);
                report.push(
                    ProblemKind::OrphanLock,
                    cd.join(&rel),
                    "lock file of a key with no entry".into(),
                    repaired,
                );
            }
        }
        Ok(())
    }
}

/// Removes a link, FIFO, socket or device at `root/rel`, where xcache keeps a directory
/// (see [`Store::open_for_repair`]), and records it in `fixed`.
fn clear_in_the_way(root: &Root, rel: &Path, fixed: &mut Vec<Problem>) -> Result<()> {
    let st = match root.lstat(rel) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::io_below("inspecting", root, rel, e)),
    };
    let path = root.join(rel);
    let (kind, detail, repaired) = match Kind::of_stat(&st) {
        Kind::Link => {
            let target = std::fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            (
                ProblemKind::PlantedLink,
                format!("a symbolic link to {target} where xcache keeps a directory: xcache never makes or follows one"),
                "removed the link (what it points to is untouched) and made the directory again",
            )
        }
        Kind::Other => (
            ProblemKind::PlantedFile,
            "not a directory (a FIFO, socket or device) where xcache keeps one".into(),
            "removed it and made the directory again",
        ),
        Kind::Dir | Kind::File => return Ok(()),
    };
    root.remove_file(rel)
        .map_err(|e| super::io_below("removing", root, rel, e))?;
    fixed.push(Problem {
        kind,
        path,
        detail,
        repaired: Some(repaired.into()),
    });
    Ok(())
}

fn describe_leftover(why: policy::RemoveWhy) -> &'static str {
    use policy::RemoveWhy::*;
    match why {
        CrashedBuild => "staging left by a build that stopped",
        InterruptedRemoval => "left by an interrupted removal",
        TooManyFailures { .. } => "a failed build beyond the keep_failed newest of its key",
        KeptLongEnough => "kept for inspection longer than stale_after",
        AbandonedPrivate => "a private build nobody uses",
        Purged => "its compiledir is being purged",
    }
}

/// How deep [`walk_for_planted`] looks under each top-level directory: entries down to
/// their files, locks down to the lock files, `tmp/` and `quarantine/` one level (what
/// a build in progress holds is its own business until it publishes).
fn depth_limit(top: &str) -> usize {
    match top {
        layout::ENTRIES => 3,
        layout::LOCKS => 2,
        layout::TMP | layout::QUARANTINE => 1,
        _ => 2,
    }
}

/// True for a name xcache makes directly under `entries/` (depth 1: a fan directory),
/// in a fan (depth 2: an entry directory named like a key), or in an entry.
fn ours_in_entries(name: &std::ffi::OsStr, depth: usize, kind: Kind) -> bool {
    let Some(n) = name.to_str() else { return false };
    depth > 2
        || kind == Kind::Dir
            && match depth {
                1 => layout::is_fan(n),
                2 => n.parse::<Key>().is_ok(),
                _ => true,
            }
}

/// Reports (and with `repair`, removes) links, FIFOs and foreign files below `rel`.
fn walk_for_planted(cd: &Root, rel: &Path, depth: usize, repair: bool, report: &mut VerifyReport) {
    let top = rel
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or("");
    for e in cd.read_dir(rel).unwrap_or_default() {
        let child = rel.join(&e.name);
        let path = cd.join(&child);
        let (kind, detail) = match e.kind {
            Kind::Link => {
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                (
                    ProblemKind::PlantedLink,
                    format!("a symbolic link to {target}: xcache never makes or follows one"),
                )
            }
            Kind::Other => (
                ProblemKind::PlantedFile,
                "not a regular file or directory: xcache never makes one".into(),
            ),
            Kind::File | Kind::Dir
                if top == layout::ENTRIES
                    && depth <= 1
                    && !ours_in_entries(&e.name, depth, e.kind) =>
            {
                report.push(
                    ProblemKind::UnknownFile,
                    path,
                    "not made by xcache: left alone".into(),
                    None,
                );
                continue;
            }
            Kind::File | Kind::Dir => {
                let untrusted = cd
                    .lstat_fast(&child)
                    .ok()
                    .and_then(|st| trust::untrusted_stat("it", &st));
                // Entry directories and artifacts are checked by the hit check.
                let in_entry = top == layout::ENTRIES && depth >= 2;
                match untrusted {
                    Some(why) if !in_entry && top != layout::TMP => (
                        ProblemKind::UntrustedFile,
                        format!("{why}: xcache would not have made it"),
                    ),
                    _ => {
                        let here = if depth == 0 {
                            e.name_str().unwrap_or("")
                        } else {
                            top
                        };
                        if e.kind == Kind::Dir && depth < depth_limit(here) {
                            walk_for_planted(cd, &child, depth + 1, repair, report);
                        }
                        continue;
                    }
                }
            }
        };
        // Removed only when repairing: `verify` alone reports.
        let removed = repair.then(|| cd.remove_tree(&child));
        let (detail, repaired) = match (repair, removed.unwrap_or(Ok(()))) {
            (false, _) => (detail, None),
            (true, Ok(())) if kind == ProblemKind::PlantedLink => (
                detail,
                Some("removed the link (what it points to is untouched)".into()),
            ),
            (true, Ok(())) => (detail, Some("removed".into())),
            (true, Err(e)) => (format!("{detail}; could not remove it: {e}"), None),
        };
        report.push(kind, path, detail, repaired);
    }
}
