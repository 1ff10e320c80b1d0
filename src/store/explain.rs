//! Misses that explain themselves, and entries that show what they are made of.
//!
//! [`Store::explain`] says, before a request is served, whether it will hit and, if
//! not, why: which header changed since the result built under the same request key
//! (its path, old and new hash), or, for a request never built, the ingredients that
//! differ from the closest earlier build of a source of the same name (flags, compiler,
//! source, target, runtime tag…). [`Store::show`] gives an entry's key material, its
//! headers and how they stand now, and a request key's manifest.

use std::path::PathBuf;

use serde::Serialize;

use super::entry::{self, EntryMeta};
use super::key::{Difference, Key, KeyMaterial};
use super::manifest::{self, HeaderCheck, HeaderRecord, Lookup, Manifest, ResultCheck};
use super::{layout, scan, Store};
use crate::error::{Error, Result};
use crate::fsx::Kind;

/// Why a request will hit or miss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "kebab-case")]
pub enum Explanation {
    /// A result of this request matches the headers now: a hit.
    Hit {
        /// The result's key.
        result: String,
    },
    /// This request was built before, but a header differs from every result: the
    /// first difference from the most recent result.
    HeaderChanged {
        /// That result's key.
        result: String,
        /// The header.
        header: String,
        /// Its hash then.
        was: String,
        /// Its hash now; `None` when it is gone.
        now: Option<String>,
    },
    /// A result matches, but its entry was removed (pruned, cleared, quarantined).
    ResultRemoved {
        /// The result's key.
        result: String,
    },
    /// The request's manifest is not to be trusted (it is rebuilt).
    ManifestCorrupt {
        /// Why.
        reason: String,
    },
    /// This request was never built here; the closest earlier build of a source of the
    /// same name, if any, and what differs from it.
    NewRequest {
        /// The closest earlier build.
        closest: Option<Closest>,
    },
}

/// The closest earlier build of a source of the same name, and what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closest {
    /// Its entry's key.
    pub key: String,
    /// When it was built, Unix seconds.
    pub created: u64,
    /// What differs, ingredient by ingredient.
    pub differences: Vec<Difference>,
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Explanation::Hit { result } => write!(f, "hit: result {}", short(result)),
            Explanation::HeaderChanged {
                result,
                header,
                was,
                now,
            } => write!(
                f,
                "miss: {header} changed since result {} was built (was {}, now {})",
                short(result),
                short(was),
                now.as_deref().map_or("missing", short)
            ),
            Explanation::ResultRemoved { result } => write!(
                f,
                "miss: result {} matches, but it was removed from the cache",
                short(result)
            ),
            Explanation::ManifestCorrupt { reason } => {
                write!(f, "miss: this request's manifest is not trusted ({reason})")
            }
            Explanation::NewRequest { closest: None } => write!(
                f,
                "miss: nothing of this name was built in this compiledir before"
            ),
            Explanation::NewRequest { closest: Some(c) } => {
                write!(
                    f,
                    "miss: first build of this request; the closest earlier build ({}) differs in",
                    short(&c.key)
                )?;
                for (i, d) in c.differences.iter().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    let show = |s: &str| {
                        if s.is_empty() {
                            "-".to_string()
                        } else {
                            s.to_string()
                        }
                    };
                    write!(f, "{sep}{}: {} -> {}", d.field, show(&d.was), show(&d.now))?;
                }
                if c.differences.is_empty() {
                    write!(
                        f,
                        " nothing that the key shows (another layout or encoding)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// How a header of an entry stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderNow {
    /// Same contents.
    Same,
    /// Other contents.
    Changed,
    /// Gone or unreadable.
    Missing,
}

/// A header of an entry, with its state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownHeader {
    /// Path.
    pub path: String,
    /// Its hash when the entry was built.
    pub blake3: String,
    /// How it stands now.
    pub now: HeaderNow,
}

/// An entry, as `xcache show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ShownEntry {
    /// Its directory.
    pub path: PathBuf,
    /// Its metadata (key, source, artifact, key material, request key, headers).
    pub meta: EntryMeta,
    /// Its headers and how they stand now.
    pub headers: Vec<ShownHeader>,
}

/// One result of a manifest, as `xcache show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ShownResult {
    /// The result's key.
    pub key: String,
    /// When it was built, and last taken, Unix seconds.
    pub created: u64,
    /// When a request last took it, Unix seconds.
    pub last_used: u64,
    /// How many headers it was built from.
    pub headers: usize,
    /// Whether its entry exists.
    pub entry_exists: bool,
    /// Whether its headers match the files now.
    pub matches_now: bool,
}

/// A request key's manifest, as `xcache show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ShownManifest {
    /// The request key.
    pub request_key: String,
    /// The manifest file.
    pub path: PathBuf,
    /// Its results, most recently used first.
    pub results: Vec<ShownResult>,
}

/// What `xcache show KEY` found: entries and manifests whose key starts with KEY.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ShowReport {
    /// Entries.
    pub entries: Vec<ShownEntry>,
    /// Manifests.
    pub manifests: Vec<ShownManifest>,
}

fn header_now(h: &entry::HeaderDigest) -> HeaderNow {
    let rec = HeaderRecord {
        path: h.path.clone(),
        blake3: h.blake3.clone(),
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        dev: 0,
        stat_trusted: false,
    };
    match rec.check(std::time::SystemTime::now()) {
        HeaderCheck::Same | HeaderCheck::SameContent { .. } => HeaderNow::Same,
        HeaderCheck::Changed { now: Some(_) } => HeaderNow::Changed,
        HeaderCheck::Changed { now: None } => HeaderNow::Missing,
    }
}

/// What is wrong with `prefix` as the start of a key (64 lowercase hex digits, the
/// first 2 naming its directory), if anything: each mistake in its own words.
pub fn key_prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some("no key given".into());
    }
    if let Some(c) = prefix.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Some(format!(
            "{prefix:?} is not the start of a key: keys are hex digits (0-9, a-f), and {c:?} is not one"
        ));
    }
    if prefix.len() < 2 {
        return Some(format!(
            "{prefix:?} is too short: give at least 2 digits of the key (its first 2 name the directory it is in)"
        ));
    }
    if prefix.len() > 64 {
        return Some(format!(
            "{prefix:?} is longer than a key ({} digits; a key has 64)",
            prefix.len()
        ));
    }
    None
}

impl Store {
    /// Why the request `request` (derived from `material`, named `source_name`) would
    /// hit or miss now. Reads the manifest and headers; for a request never built,
    /// reads the metadata of the entries of the same source name (a scan: for
    /// `--explain` and debug logs, not the hit path).
    pub fn explain(
        &self,
        request: &Key,
        material: &KeyMaterial,
        source_name: &str,
    ) -> Result<Explanation> {
        let cd = &self.root();
        match manifest::read(cd, request) {
            Ok(Lookup::Found(m)) => {
                let mut first_change = None;
                for r in &m.results {
                    match r.check(std::time::SystemTime::now()) {
                        ResultCheck::Match { .. } => {
                            let exists = r
                                .key
                                .parse::<Key>()
                                .is_ok_and(|k| cd.lstat_fast(layout::entry(&k)).is_ok());
                            return Ok(if exists {
                                Explanation::Hit {
                                    result: r.key.clone(),
                                }
                            } else {
                                Explanation::ResultRemoved {
                                    result: r.key.clone(),
                                }
                            });
                        }
                        ResultCheck::Differs { path, was, now } => {
                            first_change.get_or_insert(Explanation::HeaderChanged {
                                result: r.key.clone(),
                                header: path,
                                was,
                                now,
                            });
                        }
                    }
                }
                if let Some(e) = first_change {
                    return Ok(e);
                }
            }
            Ok(Lookup::Corrupt(reason)) => return Ok(Explanation::ManifestCorrupt { reason }),
            Ok(Lookup::Missing) => {}
            Err(e) => return Err(Error::io("reading", cd.join(layout::manifest(request)), e)),
        }
        // Never built: the closest earlier build of the same name.
        let request_hex = request.hex();
        let mut best: Option<Closest> = None;
        for key in scan::entry_keys(cd)? {
            let Ok(listed) = entry::read_listed(cd, &key) else {
                continue;
            };
            if listed.source_name != source_name {
                continue;
            }
            let Ok(dir) = cd.open_dir(layout::entry(&key)) else {
                continue;
            };
            let Ok(meta) = entry::read_meta(&dir, &key) else {
                continue;
            };
            if meta.request_key.as_deref() == Some(request_hex.as_str()) {
                continue;
            }
            let c = Closest {
                key: meta.key.clone(),
                created: meta.created,
                differences: material.differences(&meta.key_material),
            };
            let better = best.as_ref().is_none_or(|b| {
                (c.differences.len(), std::cmp::Reverse(c.created))
                    < (b.differences.len(), std::cmp::Reverse(b.created))
            });
            if better {
                best = Some(c);
            }
        }
        Ok(Explanation::NewRequest { closest: best })
    }

    /// The entries and manifests of the current compiledir whose key starts with
    /// `prefix` (at least 2 hex digits).
    pub fn show(&self, prefix: &str) -> Result<ShowReport> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if let Some(why) = key_prefix_problem(&prefix) {
            return Err(Error::InvalidRequest(format!(
                "{why}. Fix: give a key or its first digits, as `xcache list` shows them (KEY) or `xcache compile --json` prints them (\"key\")"
            )));
        }
        let cd = &self.root();
        let fan = &prefix[..2];
        let mut report = ShowReport::default();
        let matching = |dir: &str, strip: &str| -> Vec<Key> {
            cd.read_dir(std::path::Path::new(dir).join(fan))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| {
                    let n = e.name_str()?;
                    let k: Key = n.strip_suffix(strip).unwrap_or(n).parse().ok()?;
                    (k.hex().starts_with(&prefix) && (strip.is_empty() == (e.kind == Kind::Dir)))
                        .then_some(k)
                })
                .collect()
        };
        for key in matching(layout::ENTRIES, "") {
            let rel = layout::entry(&key);
            let dir = cd
                .open_dir(&rel)
                .map_err(|e| super::io_below("opening", cd, &rel, e))?;
            let meta = entry::read_meta(&dir, &key).map_err(|e| match e {
                entry::VerifyError::Corrupt(c) => Error::InvalidRequest(format!(
                    "{} is corrupt ({c}): `xcache verify --repair` quarantines it",
                    cd.join(&rel).display()
                )),
                e => e.into_error(),
            })?;
            let headers = meta
                .headers
                .iter()
                .map(|h| ShownHeader {
                    path: h.path.clone(),
                    blake3: h.blake3.clone(),
                    now: header_now(h),
                })
                .collect();
            report.entries.push(ShownEntry {
                path: cd.join(&rel),
                meta,
                headers,
            });
        }
        for key in matching(layout::MANIFESTS, ".manifest") {
            let rel = layout::manifest(&key);
            let m: Manifest = match manifest::read(cd, &key) {
                Ok(Lookup::Found(m)) => m,
                Ok(Lookup::Corrupt(why)) => {
                    return Err(Error::InvalidRequest(format!(
                        "{} is not trusted ({why}): the next build of its request rewrites it",
                        cd.join(&rel).display()
                    )))
                }
                Ok(Lookup::Missing) => continue,
                Err(e) => return Err(Error::io("reading", cd.join(&rel), e)),
            };
            let now = std::time::SystemTime::now();
            let results = m
                .results
                .iter()
                .map(|r| ShownResult {
                    key: r.key.clone(),
                    created: r.created,
                    last_used: r.last_used,
                    headers: r.headers.len(),
                    entry_exists: r
                        .key
                        .parse::<Key>()
                        .is_ok_and(|k| cd.lstat_fast(layout::entry(&k)).is_ok()),
                    matches_now: matches!(r.check(now), ResultCheck::Match { .. }),
                })
                .collect();
            report.manifests.push(ShownManifest {
                request_key: m.request_key,
                path: cd.join(&rel),
                results,
            });
        }
        if report.entries.is_empty() && report.manifests.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "no entry or manifest in {} has a key starting with {prefix}. Fix: `xcache list` shows the entries' keys",
                self.compiledir().display()
            )));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::key_prefix_problem;

    #[test]
    fn each_bad_key_prefix_is_told_what_is_wrong() {
        assert_eq!(key_prefix_problem("72a7"), None);
        assert_eq!(key_prefix_problem(&"a".repeat(64)), None);
        let why = key_prefix_problem("zz").unwrap();
        assert!(why.contains("hex digits") && why.contains("'z'"), "{why}");
        let why = key_prefix_problem("7").unwrap();
        assert!(
            why.contains("too short") && why.contains("at least 2"),
            "{why}"
        );
        let why = key_prefix_problem(&"a".repeat(65)).unwrap();
        assert!(why.contains("longer than a key"), "{why}");
        assert_eq!(key_prefix_problem("").unwrap(), "no key given");
    }
}
