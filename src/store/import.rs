//! Results built elsewhere (another machine, through the remote tier or a bundle) enter
//! the store only through [`Store::import_result`], which believes nothing it is told:
//! the entry's key must be what its request key and headers give, the request key what
//! its key material gives, the artifact what its recorded hash says, every header it was
//! built from must have the same contents on this machine, and the files must be plain
//! names. Then it is published by the normal protocol (staging, seal, rename, under the
//! request's and the result's exclusive locks) and recorded in the request's manifest.
//! [`Store::export_result`] packs an entry for the other direction.

use std::io::{Read, Write};
use std::time::Duration;

use super::entry::{EntryMeta, HeaderDigest, VerifyError};
use super::key::{result_key, Key};
use super::manifest::{self, HeaderRecord, Lookup, Manifest, ResultRecord, SearchScope};
use super::pack::Packed;
use super::{check_entry_in, layout, lock, Built, Fetched, Store};
use crate::clock::unix_secs;
use crate::error::{Error, Result};
use crate::fsx::{Kind, OpenHow};
use crate::platform::LAYOUT_VERSION;

/// Why a result from elsewhere was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportReject {
    /// Its metadata is not an entry of this layout, or it contradicts itself (keys that
    /// do not derive, a missing or mismatching artifact, odd file names).
    Invalid(String),
    /// It is another key than the one asked for.
    WrongKey {
        /// What was asked for.
        wanted: String,
        /// What it is.
        got: String,
    },
    /// A header it was built from differs here (or is missing): it is not this
    /// machine's result, though it is no fault of the value.
    HeadersDiffer(String),
    /// It names a header that this request's compiler would not read (outside its
    /// include search), or one that must not be read (not a regular file, too large):
    /// nothing more of it was read.
    OutOfScope(String),
}

impl ImportReject {
    /// True when the value itself is at fault (malformed, lying about its key), so a
    /// remote holding it should drop it; false when it is merely another machine's
    /// result (its headers differ here) or names what this request may not read.
    pub fn is_fault_of_value(&self) -> bool {
        !matches!(
            self,
            ImportReject::HeadersDiffer(_) | ImportReject::OutOfScope(_)
        )
    }
}

impl std::fmt::Display for ImportReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportReject::Invalid(why) => write!(f, "invalid: {why}"),
            ImportReject::WrongKey { wanted, got } => {
                write!(f, "it is entry {got}, not {wanted}")
            }
            ImportReject::HeadersDiffer(h) => write!(f, "{h} differs on this machine"),
            ImportReject::OutOfScope(why) => write!(f, "not read: {why}"),
        }
    }
}

/// What an import did.
#[derive(Debug)]
pub enum Imported {
    /// Published (or found already here): the entry, held under its lock.
    Taken(Box<Fetched>),
    /// Refused, and why.
    Refused(ImportReject),
}

fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.len() <= 255
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// What an imported entry claims, checked for consistency (nothing on disk yet).
fn check_claims(
    packed: &Packed,
    wanted: Option<&Key>,
    compiledir: &str,
) -> std::result::Result<(EntryMeta, Key, Key), ImportReject> {
    let invalid = |why: String| ImportReject::Invalid(why);
    let meta: EntryMeta =
        serde_json::from_slice(&packed.meta).map_err(|e| invalid(format!("entry.json: {e}")))?;
    let key: Key = meta
        .key
        .parse()
        .map_err(|_| invalid("entry.json has no valid key".into()))?;
    if let Some(w) = wanted {
        if *w != key {
            return Err(ImportReject::WrongKey {
                wanted: w.hex(),
                got: key.hex(),
            });
        }
    }
    if meta.format != LAYOUT_VERSION {
        return Err(invalid(format!(
            "layout {} (this xcache writes {LAYOUT_VERSION})",
            meta.format
        )));
    }
    let request: Key = meta
        .request_key
        .as_deref()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| invalid("no request key: not a dependency-tracked result".into()))?;
    match &meta.group {
        // A group's request key is its compiledir's, producer's and material's: one
        // from another compiledir or producer cannot be filed here.
        Some(g) => {
            let here = super::key::group_key(compiledir, meta.producer(), &g.material);
            if here != request {
                return Err(invalid(format!(
                    "its request key is not that of a {} group of {compiledir}",
                    meta.producer()
                )));
            }
            if !meta.headers.is_empty() {
                return Err(invalid("a group built from headers".into()));
            }
        }
        None if meta.key_material.key() != request => {
            return Err(invalid(
                "its key material does not give its request key".into(),
            ));
        }
        None => {}
    }
    let digests: Vec<(&str, &str)> = meta
        .headers
        .iter()
        .map(|h| (h.path.as_str(), h.blake3.as_str()))
        .collect();
    if result_key(&request, &digests) != key {
        return Err(invalid(
            "its request key and headers do not give its key".into(),
        ));
    }
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in &packed.files {
        // A group's files are `files/<plain name>`; every other file a plain name.
        let plain = match name.strip_prefix(&format!("{}/", layout::GROUP_FILES)) {
            Some(member) => meta.group.is_some() && plain_name(member),
            None => plain_name(name) && !entry_reserved(name),
        };
        if !plain || names.contains(&name.as_str()) {
            return Err(invalid(format!("file name {name:?}")));
        }
        names.push(name);
    }
    if let Some(g) = &meta.group {
        // Every member there, with the size and hash recorded; nothing else in files/.
        for m in &g.members {
            let rel = format!("{}/{}", layout::GROUP_FILES, m.file);
            let ok = packed.files.iter().any(|(n, b)| {
                *n == rel
                    && b.len() as u64 == m.size
                    && blake3::hash(b).to_hex().as_str() == m.blake3
            });
            if !ok {
                return Err(invalid(format!(
                    "its file {} does not match its hash",
                    m.file
                )));
            }
        }
        let listed = packed
            .files
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{}/", layout::GROUP_FILES)))
            .count();
        if listed != g.members.len() {
            return Err(invalid("files its metadata does not list".into()));
        }
    }
    let artifact = packed
        .files
        .iter()
        .find(|(n, _)| *n == meta.artifact.file)
        .ok_or_else(|| invalid("no artifact".into()))?;
    if artifact.1.len() as u64 != meta.artifact.size
        || blake3::hash(&artifact.1).to_hex().as_str() != meta.artifact.blake3
    {
        return Err(invalid(
            "the artifact does not match its recorded hash".into(),
        ));
    }
    if meta.group.is_none() && !names.contains(&meta.source_file.as_str()) {
        return Err(invalid("no source".into()));
    }
    Ok((meta, key, request))
}

/// Names the store writes itself into an entry: never taken from outside.
fn entry_reserved(name: &str) -> bool {
    [
        layout::ENTRY_META,
        layout::LAST_USE,
        layout::HANDED_OUT,
        layout::VERIFIED,
        layout::COMPILER_OUTPUT,
    ]
    .contains(&name)
}

impl Store {
    /// Publishes a result built elsewhere, after checking everything it claims (see the
    /// module doc); `wanted`, when given, is the result key asked for. Takes the
    /// request key's exclusive lock unless `request_locked` says the caller holds it.
    /// Only headers inside `scope` are read (every path is judged before any is read),
    /// each a regular file of bounded size, by `deadline`.
    /// A value that fails a check is [`Imported::Refused`]; an error is this machine's
    /// (I/O, a cache that cannot be written).
    pub fn import_result(
        &self,
        packed: &Packed,
        wanted: Option<&Key>,
        request_locked: bool,
        scope: &SearchScope,
        deadline: Option<std::time::Instant>,
    ) -> Result<Imported> {
        let compiledir = self
            .compiledir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (meta, key, request) = match check_claims(packed, wanted, &compiledir) {
            Ok(x) => x,
            Err(r) => return Ok(Imported::Refused(r)),
        };
        if let Some(h) = meta
            .headers
            .iter()
            .find(|h| !scope.allows(std::path::Path::new(&h.path)))
        {
            return Ok(Imported::Refused(ImportReject::OutOfScope(format!(
                "it names {:?}, outside the include search of its request here",
                h.path
            ))));
        }
        // Every header as it is here: the same contents, or it is not our result. (No
        // compiler read them: whether one changes now matters only to its signature.)
        let build_start = std::time::SystemTime::now();
        let mut headers = Vec::new();
        for h in &meta.headers {
            use crate::fsx::NamedFileError;
            match HeaderRecord::record(std::path::Path::new(&h.path), build_start, deadline) {
                Ok((rec, _)) if rec.blake3 == h.blake3 => headers.push(rec),
                Ok(_) | Err(NamedFileError::Io(..)) => {
                    return Ok(Imported::Refused(ImportReject::HeadersDiffer(
                        h.path.clone(),
                    )))
                }
                Err(e) => return Ok(Imported::Refused(ImportReject::OutOfScope(e.to_string()))),
            }
        }
        let _request_guard = if request_locked {
            None
        } else {
            Some(lock::lock_exclusive(
                &self.root(),
                &layout::lock(&request),
                &mut |_| {},
            )?)
        };
        let guard = lock::lock_exclusive(&self.root(), &layout::lock(&key), &mut |_| {})?;
        let meta = match check_entry_in(&self.root(), &key, false) {
            Ok(Some(here)) => here.meta,
            Err(e @ (VerifyError::Io(..) | VerifyError::UntrustedDir(..))) => {
                return Err(e.into_error())
            }
            Ok(None) | Err(VerifyError::Corrupt(_)) => {
                if check_entry_in(&self.root(), &key, false).is_err() {
                    self.quarantine_entry(&key)?;
                }
                let mut staging = self.new_staging(&request)?;
                if meta.group.is_some() {
                    staging
                        .root
                        .mkdir(layout::GROUP_FILES, super::trust::dir_mode())
                        .map_err(|e| {
                            Error::io("creating", staging.root.join(layout::GROUP_FILES), e)
                        })?;
                }
                for (name, bytes) in &packed.files {
                    let p = staging.root.join(name);
                    staging
                        .root
                        .create_file(name, super::trust::file_mode())
                        .and_then(|mut f| f.write_all(bytes))
                        .map_err(|e| Error::io("writing", p, e))?;
                }
                let built = Built {
                    group: meta.group.as_ref().map(|g| super::GroupBuild {
                        producer: meta.producer().to_string(),
                        material: g.material.clone(),
                        members: g.members.iter().map(|m| m.file.clone()).collect(),
                    }),
                    source_name: meta.source_name.clone(),
                    source_file: meta.source_file.clone(),
                    compile_time: Duration::from_millis(meta.compile_ms),
                    compiler_output: meta.compiler_output.clone(),
                    key_material: meta.key_material.clone(),
                    headers: Vec::new(),
                };
                let digests: Vec<HeaderDigest> = meta.headers.clone();
                let sealed = super::seal(
                    &staging.root,
                    &key,
                    built,
                    self.clock().now(),
                    Some((request, digests)),
                )?;
                self.publish(&mut staging, &key)?;
                sealed
            }
        };
        let now = unix_secs(self.clock().now());
        let mut m = match manifest::read(&self.root(), &request) {
            Ok(Lookup::Found(m)) => m,
            _ => Manifest::new(&request),
        };
        m.insert(ResultRecord {
            key: key.hex(),
            headers,
            created: meta.created,
            last_used: now,
        });
        if let Err(e) = manifest::write(&self.root(), &m, &request) {
            log::warn!("could not record {} in its manifest: {e}", &key.hex()[..16]);
        }
        let c = self.published(&key)?;
        Ok(Imported::Taken(Box::new(self.fetched(
            key,
            c.dir,
            meta,
            Some(c.artifact),
            false,
            Vec::new(),
            Duration::ZERO,
            guard,
        ))))
    }

    /// Packs the entry `key` of the current compiledir: its `entry.json` and its files
    /// (not the markers). `None` when it is missing, corrupt, or not dependency-tracked.
    /// Read under its shared lock, after the full hit check.
    pub fn export_result(&self, key: &Key) -> Result<Option<(EntryMeta, Packed)>> {
        export_result_in(&self.root(), key)
    }
}

impl Store {
    /// Moves the last use of the entry `key` back to `t`, if that is earlier than the
    /// one recorded: an entry taken from a bundle keeps the age it had where it was
    /// exported, so that what nobody uses still ages out across CI runs that import and
    /// export one bundle. Best effort (a read-only cache keeps its record); returns
    /// whether it was written.
    pub fn backdate_last_use(&self, key: &Key, t: std::time::SystemTime) -> bool {
        let dir = layout::entry(key);
        match super::entry::last_use(&self.root(), &dir) {
            Some(recorded) if t < recorded => {
                let done = self.root().set_mtime(dir.join(layout::LAST_USE), t).is_ok();
                if done {
                    super::index::Writer::new(&self.root())
                        .append(&super::index::use_record(key, crate::clock::unix_secs(t)));
                }
                done
            }
            _ => false,
        }
    }
}

/// [`Store::export_result`] in any compiledir `cd` (bundles export other platforms'
/// compiledirs too).
pub fn export_result_in(cd: &crate::fsx::Root, key: &Key) -> Result<Option<(EntryMeta, Packed)>> {
    if cd.lstat_fast(layout::entry(key)).is_err() {
        return Ok(None);
    }
    let _guard = lock::lock_shared(cd, &layout::lock(key))?;
    let (dir, meta) = match check_entry_in(cd, key, false) {
        Ok(Some(c)) => (c.dir, c.meta),
        Ok(None) | Err(VerifyError::Corrupt(_)) => return Ok(None),
        Err(e) => return Err(e.into_error()),
    };
    if meta.request_key.is_none() {
        return Ok(None);
    }
    let packed = pack_dir(&dir)?;
    Ok(Some((meta, packed)))
}

/// Packs the entry directory `dir` (its caller holds the entry's lock): `entry.json`
/// and every file but the markers.
pub(crate) fn pack_dir(dir: &crate::fsx::Root) -> Result<Packed> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        dir.open_file(name, OpenHow::read())
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| Error::io("reading", dir.join(name), e))?;
        Ok(bytes)
    };
    let meta = read(layout::ENTRY_META)?;
    let mut files = Vec::new();
    for e in dir
        .read_dir("")
        .map_err(|e| Error::io("reading", dir.path(), e))?
    {
        let Some(name) = e.name_str() else { continue };
        if e.kind == Kind::Dir && name == layout::GROUP_FILES {
            // A group's files.
            for m in dir
                .read_dir(name)
                .map_err(|e| Error::io("reading", dir.join(name), e))?
            {
                let Some(member) = m.name_str() else { continue };
                if m.kind == Kind::File {
                    let rel = format!("{name}/{member}");
                    let bytes = read(&rel)?;
                    files.push((rel, bytes));
                }
            }
            continue;
        }
        if e.kind != Kind::File || entry_reserved(name) {
            continue;
        }
        files.push((name.to_string(), read(name)?));
    }
    files.sort();
    Ok(Packed { meta, files })
}
