//! `xcache verify [--repair]`: every entry of the current compiledir is checked as a hit
//! would check it (metadata, owner and mode, artifact size and blake3), and the
//! compiledir for orphan lock files and stale staging. `--repair` quarantines corrupt
//! entries and removes orphan locks and stale staging, each under a try-lock.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::ops::scan;
use crate::store::entry::VerifyError;
use crate::store::key::Key;
use crate::store::{check_entry, lock, quarantine_entry, read_compiledir_meta, Store};

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `corrupt-entry`, `unreadable-entry`, `orphan-lock`, `stale-staging`,
    /// `unknown-file`, `bad-compiledir-metadata`.
    pub kind: &'static str,
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
    /// True when nothing is wrong, or everything wrong was repaired.
    pub fn clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired.is_some())
    }
}

/// Checks (and with `repair`, mends) the current compiledir.
pub fn verify(config: &Config, store: &Store, repair: bool) -> Result<VerifyReport> {
    let dirs = store.dirs();
    let now = store.clock().now();
    let mut report = VerifyReport::default();

    if let Err(e) = read_compiledir_meta(store.compiledir()) {
        let path = store.compiledir().join(crate::store::COMPILEDIR_FILE);
        let mut repaired = None;
        if repair {
            let meta = crate::store::CompiledirMeta {
                layout: crate::platform::LAYOUT_VERSION,
                platform: store.platform().clone(),
                created: crate::clock::unix_secs(now),
                created_by: format!("xcache {} (verify --repair)", env!("CARGO_PKG_VERSION")),
            };
            let json = serde_json::to_vec_pretty(&meta).expect("serialises");
            crate::store::write_atomic(&path, &json)?;
            repaired = Some("rewritten from the current platform".into());
        }
        report.problems.push(Problem {
            kind: "bad-compiledir-metadata",
            path,
            detail: e.to_string(),
            repaired,
        });
    }

    let entries = scan::entry_dirs(&dirs)?;
    let live: std::collections::HashSet<Key> = entries.iter().map(|(k, _)| *k).collect();
    for (key, dir) in &entries {
        // Shared, as a reader: a build in progress never holds a published entry.
        let guard = lock::lock_shared(&dirs.lock(key))?;
        let md = match fs::symlink_metadata(dir) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // pruned meanwhile
            Err(e) => return Err(Error::io("inspecting", dir, e)),
        };
        report.entries += 1;
        match check_entry(dir, &md, key) {
            Ok(_) => report.ok += 1,
            Err(VerifyError::Io(p, e)) => report.problems.push(Problem {
                kind: "unreadable-entry",
                path: p,
                detail: e.to_string(),
                repaired: None,
            }),
            Err(VerifyError::Corrupt(c)) => {
                drop(guard);
                let mut repaired = None;
                if repair {
                    if let Some(_g) = lock::try_lock_exclusive(&dirs.lock(key))? {
                        // Look again under the exclusive lock: another process may have
                        // rebuilt it since.
                        let still_bad = fs::symlink_metadata(dir)
                            .map(|md| {
                                matches!(check_entry(dir, &md, key), Err(VerifyError::Corrupt(_)))
                            })
                            .unwrap_or(false);
                        if !still_bad {
                            report.problems.push(Problem {
                                kind: "corrupt-entry",
                                path: dir.clone(),
                                detail: c.to_string(),
                                repaired: Some("rebuilt by another process meanwhile".into()),
                            });
                            continue;
                        }
                        repaired = Some(match quarantine_entry(&dirs, key, dir, now)? {
                            Some(q) => format!("moved to {}", q.display()),
                            None => "removed".into(),
                        });
                        // Its lock file would be an orphan now; safe to remove under it.
                        let _ = fs::remove_file(dirs.lock(key));
                    }
                }
                report.problems.push(Problem {
                    kind: "corrupt-entry",
                    path: dir.clone(),
                    detail: c.to_string(),
                    repaired,
                });
            }
        }
    }

    // Directories under entries/ that are not named like keys are not ours.
    if let Ok(fans) = fs::read_dir(dirs.entries()) {
        for fan in fans.flatten() {
            let is_fan = fan.file_name().to_str().is_some_and(|n| {
                n.len() == 2
                    && n.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            });
            let children: Vec<_> = if is_fan && fan.path().is_dir() {
                fs::read_dir(fan.path())
                    .map(|d| d.flatten().collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let mut strays: Vec<PathBuf> = children
                .iter()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.parse::<Key>().ok())
                        .is_none()
                })
                .map(|e| e.path())
                .collect();
            if !is_fan {
                strays.push(fan.path());
            }
            for p in strays {
                report.problems.push(Problem {
                    kind: "unknown-file",
                    path: p,
                    detail: "not made by xcache: left alone".into(),
                    repaired: Some("left alone".into()),
                });
            }
        }
    }

    // Lock files without an entry: left by removals that crashed, or by builds that failed.
    for fan in fs::read_dir(dirs.locks()).into_iter().flatten().flatten() {
        for l in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
            let name = l.file_name().to_string_lossy().into_owned();
            let Some(key) = name
                .strip_suffix(".lock")
                .and_then(|k| k.parse::<Key>().ok())
            else {
                continue;
            };
            if live.contains(&key) {
                continue;
            }
            // Held: a build in progress, not an orphan.
            let Some(guard) = lock::try_lock_exclusive(&l.path())? else {
                continue;
            };
            if dirs.entry(&key).exists() {
                continue; // published since the scan
            }
            let mut repaired = None;
            if repair {
                fs::remove_file(l.path()).ctx("removing", &l.path())?;
                repaired = Some("removed".into());
            }
            drop(guard);
            report.problems.push(Problem {
                kind: "orphan-lock",
                path: l.path(),
                detail: "lock file of a key with no entry".into(),
                repaired,
            });
        }
    }

    // Staging older than the grace period: a build that crashed.
    for e in fs::read_dir(dirs.tmp()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("build-") || name.starts_with("delete-")) {
            continue;
        }
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        if name.starts_with("build-")
            && (age <= config.staging_grace || crate::store::staging_in_use(&dirs, &name))
        {
            continue; // a build in progress
        }
        let mut repaired = None;
        if repair {
            fs::remove_dir_all(e.path())
                .or_else(|err| {
                    if err.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(err)
                    }
                })
                .map_err(|err| Error::io("removing", e.path(), err))?;
            repaired = Some("removed".into());
        }
        report.problems.push(Problem {
            kind: "stale-staging",
            path: e.path(),
            detail: format!(
                "left by a build that stopped {} min ago",
                age.as_secs() / 60
            ),
            repaired,
        });
    }
    Ok(report)
}
