//! Bundles: a cache as one portable file (`xcache export`, `xcache import`), for CI
//! caches (restore the file, import it, build, export it again) and for carrying results
//! between machines without a remote tier. `docs/BUNDLES.md` is the user's page.
//!
//! # Format (version 1)
//!
//! ```text
//! cache.tar.zst = zstd( tar(
//!     xcache-bundle/index.json                 the index: always the first member
//!     xcache-bundle/index.mac                  its MAC, hex (only in a signed bundle)
//!     xcache-bundle/<compiledir>/<key>.xce     one packed entry each (store::pack)
//!     …
//! ))
//! index.json = {"format": 1, "xcache_version", "created",
//!               "entries": [{"compiledir", "key", "request_key", "source", "size", "blake3",
//!                            "last_use"}]}
//! ```
//!
//! An entry is named by its compiledir (the platform identity: OS, kernel, arch, libc,
//! runtime tag, layout) and its result key; `size` and `blake3` are those of its packed
//! value (the `.xce` member, as [`Packed::encode`] wrote it); `last_use` is when it was
//! last used where it was exported, and an imported entry keeps it (so that what no CI
//! run uses ages out of a bundle that each run imports and exports). The MAC is blake3 in keyed
//! mode under the `remote_sign_key` secret (the remote tier's key), over a fixed prefix
//! and the index's bytes: a signed index vouches for every value's hash. Each value is
//! signed on its own as well, as the remote tier signs them.
//!
//! # What an import believes
//!
//! Nothing it is not able to check. The index is read first (at most [`MAX_INDEX`]
//! bytes, every field checked: plain compiledir names, keys, hashes, sizes of at most
//! [`MAX_VALUE`]) and its signature checked as `remote_verify` says; then each member
//! is matched against the index by name (names are compared, never used as paths; no
//! file is created from the bundle: every value is read into memory and handed to the
//! store), read up to the size the index gives, and its blake3 compared with the
//! index's. Entries of another compiledir than the current one are skipped, unread.
//! What passes is decoded (signature again), checked against the index (request key)
//! and this compiledir (runtime tag), and given to [`Store::import_result`], which
//! re-derives the keys, checks the artifact's hash, the file names and every header the
//! result was built from, and publishes it by the normal protocol. A bundle damaged
//! part way imports what comes before the damage and reports the rest.
//!
//! # What an import may cost
//!
//! A bundle is small on disk and may say it is huge (zstd of zeros is a few kilobytes
//! per gigabyte), so every size is checked when it is declared, before it is read or
//! allocated, and the whole stream is bounded:
//!
//! - the archive may expand at most [`MAX_EXPANSION`] times the bytes read from the file
//!   (plus [`EXPANSION_SLACK`]): its members are packed values, already compressed, so a
//!   real bundle expands about twice at most; a stream that expands further (zeros
//!   where no member is listed, a GNU long name of a gigabyte) is damaged from there on;
//! - each tar member's declared size must be the index's size for it (the index's own
//!   member at most [`MAX_INDEX`]), checked before it is read;
//! - an entry of this platform may unpack to at most [`ImportLimits::entry`] (the
//!   `max_entry_size` setting, within `max_size`): a larger packed value is refused
//!   before it is read, a larger value as soon as its frame declares it
//!   ([`Packed::decode`] is given the cap);
//! - the import unpacks at most [`ImportLimits::total`] (`max_size`) in all: what comes
//!   after is refused with the limit named, and the rest of the bundle is still read.
//!
//! One value is held at a time (its packed bytes, then its files), so memory stays
//! within about twice the entry limit whatever the bundle says; what is written is what
//! was unpacked, within the total limit.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::unix_secs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsx::Root;
use crate::platform::COMPILEDIR_PREFIX;
use crate::store::entry::{EntryMeta, VerifyError};
use crate::store::import::{export_result_in, ImportReject, Imported};
use crate::store::key::Key;
use crate::store::pack::{self, Packed, SignKey};
use crate::store::{check_entry_in, layout, scan, Store};

/// The format version this xcache writes and reads.
pub const FORMAT: u32 = 1;

/// The directory every member lies in (extracting a bundle by hand makes one directory).
pub const MEMBER_DIR: &str = "xcache-bundle";

/// The index's member: the first of the archive.
pub const INDEX_MEMBER: &str = "xcache-bundle/index.json";

/// The index's MAC (hex), right after the index, in a signed bundle.
pub const MAC_MEMBER: &str = "xcache-bundle/index.mac";

/// The extension of a packed value's member.
pub const VALUE_EXTENSION: &str = "xce";

/// Largest index read: about 200 bytes an entry, so room for [`MAX_ENTRIES`].
pub const MAX_INDEX: u64 = 256 << 20;

/// Most entries one bundle may list.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Largest packed value read: what [`Packed::decode`] accepts unpacked, plus what zstd
/// may add to data it cannot compress.
pub const MAX_VALUE: u64 = pack::MAX_UNPACKED + pack::MAX_UNPACKED / 128;

/// What the index's MAC is taken over, before the index: never the start of a packed
/// value's body, so neither MAC can stand for the other.
const MAC_CONTEXT: &[u8] = b"xcache bundle index v1\n";

/// Longest source name kept from an index (it is only ever shown).
const MAX_SOURCE: usize = 4096;

/// Unexpected members named in a report (more are counted, not named).
const MAX_UNEXPECTED_NAMED: usize = 100;

/// How many times its size a bundle's archive may expand: its members are packed
/// values, compressed already, and its index and tar headers compress a few times; a
/// real bundle stays near 2. Beyond this it is a decompression bomb.
pub const MAX_EXPANSION: u64 = 32;

/// What a bundle's archive may expand beyond [`MAX_EXPANSION`] times its size: room for
/// the headers and padding of a bundle of a few small entries.
pub const EXPANSION_SLACK: u64 = 1 << 20;

/// What one import may unpack (and so write): from the settings, see
/// [`ImportLimits::from_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportLimits {
    /// Most bytes one entry may unpack to ([`Config::entry_limit`]).
    pub entry: u64,
    /// The setting `entry` comes from, named in a refusal's fix.
    pub entry_setting: &'static str,
    /// Most bytes the import unpacks in all; `None`: no limit (`max_size = 0`).
    pub total: Option<u64>,
}

impl ImportLimits {
    /// `max_entry_size` (within `max_size`) per entry, `max_size` in all.
    pub fn from_config(config: &Config) -> ImportLimits {
        ImportLimits {
            entry: config.entry_limit(),
            entry_setting: config.entry_limit_setting(),
            total: config.import_limit(),
        }
    }
}

/// The index of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// [`FORMAT`].
    pub format: u32,
    /// The xcache that wrote it.
    pub xcache_version: String,
    /// When it was written, Unix seconds.
    pub created: u64,
    /// Its entries, in the order of their members.
    pub entries: Vec<IndexEntry>,
}

/// One entry of a bundle's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The compiledir it was exported from: its platform identity.
    pub compiledir: String,
    /// Its key (the result key), hex.
    pub key: String,
    /// The request key it was built under, hex.
    pub request_key: String,
    /// What the user called its source (shown, never used).
    pub source: String,
    /// Bytes of its packed value.
    pub size: u64,
    /// blake3 of its packed value, hex.
    pub blake3: String,
    /// Its last use where it was exported (or its creation), Unix seconds: an import
    /// keeps it, so that `export --since` ages out what no run uses.
    pub last_use: u64,
}

impl IndexEntry {
    /// The name of its member in the archive.
    pub fn member(&self) -> String {
        format!(
            "{MEMBER_DIR}/{}/{}.{VALUE_EXTENSION}",
            self.compiledir, self.key
        )
    }
}

/// True for a name xcache gives compiledirs: `compiledir_` and plain characters, so
/// that it is one path component whatever it came from.
pub fn is_compiledir_name(name: &str) -> bool {
    name.len() > COMPILEDIR_PREFIX.len()
        && name.len() <= 255
        && name.starts_with(COMPILEDIR_PREFIX)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Index {
    /// The index's bytes, as stored in the bundle.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("serialises");
        v.push(b'\n');
        v
    }

    /// Parses an index and checks every field; `Err` says what is wrong. Source names
    /// are only shown: control characters in them become `?`.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Index, String> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| format!("the index is not valid: {e}"))?;
        if probe.format != FORMAT {
            return Err(format!(
                "bundle format {} (this xcache reads format {FORMAT}): import it with the xcache that wrote it",
                probe.format
            ));
        }
        let mut index: Index =
            serde_json::from_slice(bytes).map_err(|e| format!("the index is not valid: {e}"))?;
        if index.entries.len() > MAX_ENTRIES {
            return Err(format!(
                "the index lists {} entries (at most {MAX_ENTRIES})",
                index.entries.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in index.entries.iter_mut().enumerate() {
            let at = |what: &str| format!("index entry {i}: {what}");
            if !is_compiledir_name(&e.compiledir) {
                return Err(at(&format!("{:?} is not a compiledir name", e.compiledir)));
            }
            if e.key.parse::<Key>().is_err() || e.request_key.parse::<Key>().is_err() {
                return Err(at("a key that is not 64 hex digits"));
            }
            if !is_hash(&e.blake3) {
                return Err(at("a blake3 that is not 64 hex digits"));
            }
            if e.size > MAX_VALUE {
                return Err(at(&format!("{} bytes (at most {MAX_VALUE})", e.size)));
            }
            if !seen.insert((e.compiledir.clone(), e.key.clone())) {
                return Err(at("listed twice"));
            }
            e.source = e
                .source
                .chars()
                .take(MAX_SOURCE)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
        }
        Ok(index)
    }
}

/// The MAC of an index under `key`, hex.
pub fn index_mac(key: &SignKey, index: &[u8]) -> String {
    let mut body = MAC_CONTEXT.to_vec();
    body.extend_from_slice(index);
    blake3::Hash::from(key.mac(&body)).to_hex().to_string()
}

/// Whether an import checked the bundle's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signature {
    /// Signed, and the signature verifies under `remote_sign_key`.
    Verified,
    /// Not signed (accepted: `remote_verify` is `if-signed`).
    Unsigned,
    /// Signed, but no `remote_sign_key` is set here to check it with.
    NotChecked,
}

/// How an import treats signatures: the remote tier's settings, `remote_sign_key` and
/// `remote_verify`.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The key to check signatures with.
    pub key: Option<SignKey>,
    /// Refuse what is not signed with it.
    pub required: bool,
}

impl Verification {
    /// From the settings; `remote_verify = required` without a key is a configuration
    /// error, as for the remote tier.
    pub fn from_config(config: &Config) -> Result<Verification> {
        let key = super::sign_key(config)?;
        if config.remote_verify_required() && key.is_none() {
            return Err(Error::Config(
                "remote_verify = required needs remote_sign_key: without the key no signature can be checked. Fix: set remote_sign_key to the file holding the secret the bundles are signed with".into(),
            ));
        }
        Ok(Verification {
            key,
            required: config.remote_verify_required(),
        })
    }

    /// Checks an index against its MAC (`None`: the bundle has none); `Err` says why the
    /// bundle is refused.
    pub fn check_index(
        &self,
        index: &[u8],
        mac: Option<&str>,
    ) -> std::result::Result<Signature, String> {
        match (&self.key, mac) {
            (None, _) if self.required => Err(
                "signatures are required (remote_verify = required) and no remote_sign_key is set to check them".into(),
            ),
            (Some(k), Some(mac)) => {
                let good = blake3::Hash::from_hex(mac.trim())
                    .is_ok_and(|m| m == blake3::Hash::from_hex(index_mac(k, index)).expect("hex"));
                if good {
                    Ok(Signature::Verified)
                } else {
                    Err("its signature does not verify under remote_sign_key (it was signed with another secret, or changed since)".into())
                }
            }
            (_, None) if self.required => {
                Err("it is not signed, and signatures are required (remote_verify = required, the default where remote_sign_key is set)".into())
            }
            (None, Some(_)) => Ok(Signature::NotChecked),
            (_, None) => Ok(Signature::Unsigned),
        }
    }
}

/// Which compiledirs an export takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiledirs {
    /// The current one.
    Current,
    /// The one of this name under the base dir.
    Named(String),
    /// Every compiledir under the base dir.
    All,
}

/// What an export did with an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ExportOutcome {
    /// In the bundle.
    Exported,
    /// Left out, and why (corrupt, not dependency-tracked, removed meanwhile).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One entry of an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedEntry {
    /// Its compiledir's name.
    pub compiledir: String,
    /// Its key, hex.
    pub key: String,
    /// Its request key, when known.
    pub request_key: Option<String>,
    /// Its source name.
    pub source: String,
    /// Bytes of its packed value in the bundle (0 when skipped).
    pub bytes: u64,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: ExportOutcome,
}

/// What `xcache export` did. `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The bundle written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was written, Unix seconds (also in its index).
    pub created: u64,
    /// Whether it is signed (with `remote_sign_key`).
    pub signed: bool,
    /// The `--since` limit, seconds.
    pub since_secs: Option<u64>,
    /// Entries left out because unused for longer than `--since`.
    pub older: u64,
    /// Every entry considered (but those left out by age).
    pub entries: Vec<ExportedEntry>,
}

impl ExportReport {
    /// Entries in the bundle.
    pub fn exported(&self) -> impl Iterator<Item = &ExportedEntry> {
        self.entries
            .iter()
            .filter(|e| e.outcome == ExportOutcome::Exported)
    }
}

/// Why an entry of a bundle was refused: a check failed though its bytes are what the
/// index says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// It contradicts itself, the index, or this compiledir.
    Invalid,
    /// It is another entry than the index says.
    WrongKey,
    /// A header it was built from differs on this machine (or is missing).
    HeadersDiffer,
    /// It is not signed, and signatures are required.
    Unsigned,
    /// Its signature does not verify.
    BadSignature,
    /// It is not a packed entry.
    Malformed,
    /// It unpacks to more than an entry may, or than is left of the import's limit.
    TooLarge,
}

/// What an import did with an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ImportOutcome {
    /// Published here.
    Imported,
    /// This compiledir had it already (it is recorded in its request's manifest).
    AlreadyHere,
    /// Exported from another compiledir (another platform): not read.
    OtherPlatform,
    /// Intact, but a check refused it.
    Refused {
        /// Which check.
        refusal: Refusal,
        /// In words.
        reason: String,
    },
    /// Its bytes are not what the index says (or it is missing from the bundle).
    Corrupt {
        /// In words.
        reason: String,
    },
}

impl ImportOutcome {
    /// True for a refusal or corruption: the import's exit status is 1.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ImportOutcome::Refused { .. } | ImportOutcome::Corrupt { .. }
        )
    }
}

/// One entry of an import.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedEntry {
    /// The compiledir it was exported from.
    pub compiledir: String,
    /// Its key, hex.
    pub key: String,
    /// Its request key, hex.
    pub request_key: String,
    /// Its source name, as the index gives it.
    pub source: String,
    /// Bytes of its packed value.
    pub bytes: u64,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: ImportOutcome,
}

/// What `xcache import` did. `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The bundle read.
    pub path: PathBuf,
    /// The compiledir imported into (the current one).
    pub compiledir: String,
    /// When the bundle was written, Unix seconds.
    pub created: u64,
    /// The xcache that wrote it.
    pub xcache_version: String,
    /// Whether its signature was checked.
    pub signature: Signature,
    /// Every entry of its index, in order.
    pub entries: Vec<ImportedEntry>,
    /// Members the index does not list (ignored), by name; at most 100 named.
    pub unexpected: Vec<String>,
    /// How many members the index does not list.
    pub unexpected_count: u64,
    /// Where the bundle could not be read on: the entries not read by then are
    /// reported corrupt.
    pub damaged: Option<String>,
    /// The limits it was read under.
    pub limits: ImportLimits,
    /// Bytes unpacked from its values (what was written, and what was found here
    /// already).
    pub unpacked: u64,
}

impl ImportReport {
    /// True when nothing was refused or corrupt: exit status 0.
    pub fn clean(&self) -> bool {
        self.damaged.is_none() && !self.entries.iter().any(|e| e.outcome.is_failure())
    }

    /// Entries whose outcome `f` accepts.
    pub fn count(&self, f: impl Fn(&ImportOutcome) -> bool) -> usize {
        self.entries.iter().filter(|e| f(&e.outcome)).count()
    }
}

fn compiledir_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The compiledirs an export reads, by name.
fn select(store: &Store, which: &Compiledirs) -> Result<Vec<(String, Arc<Root>)>> {
    let current = compiledir_name(store.compiledir());
    let open =
        |name: &str| -> Result<Arc<Root>> {
            store.base_root().open_dir(name).map(Arc::new).map_err(|e| {
                crate::store::io_below("opening", &store.base_root(), Path::new(name), e)
            })
        };
    match which {
        Compiledirs::Current => Ok(vec![(current, store.root().clone())]),
        Compiledirs::Named(name) if *name == current => Ok(vec![(current, store.root().clone())]),
        Compiledirs::Named(name) => {
            let known = is_compiledir_name(name)
                && store
                    .compiledirs()?
                    .iter()
                    .any(|c| c.name == *name && c.is_xcache);
            if !known {
                return Err(Error::InvalidRequest(format!(
                    "no compiledir {name:?} in {}. Fix: give one that `xcache basecompiledir list` shows",
                    store.base_dir().display()
                )));
            }
            Ok(vec![(name.clone(), open(name)?)])
        }
        Compiledirs::All => {
            let mut out = Vec::new();
            for c in store.compiledirs()? {
                if !c.is_xcache || !is_compiledir_name(&c.name) {
                    continue;
                }
                let root = if c.current {
                    store.root().clone()
                } else {
                    open(&c.name)?
                };
                out.push((c.name, root));
            }
            Ok(out)
        }
    }
}

/// The runtime tags of the compiledirs a bundle holds entries of (as `report`, an
/// import into `store`'s compiledir, found them: skipped as another platform's) that
/// are this machine's but for the runtime tag: same OS, kernel, arch, libc and layout.
/// What `xcache import --all` imports next, each into its own compiledir.
pub fn runtime_tags_for_here(store: &Store, report: &ImportReport) -> Result<Vec<String>> {
    let format = crate::platform::CompiledirFormat::parse(&store.config().compiledir_format)
        .map_err(Error::Config)?;
    let here = store.platform();
    let mut tags: Vec<String> = Vec::new();
    for e in &report.entries {
        if e.outcome != ImportOutcome::OtherPlatform {
            continue;
        }
        let Some(p) = format.parse_name(&e.compiledir) else {
            continue;
        };
        let same_machine = p.os == here.os
            && p.kernel == here.kernel
            && p.arch == here.arch
            && p.libc == here.libc
            && p.layout == here.layout;
        if same_machine
            && p.runtime != here.runtime
            && crate::platform::check_runtime_tag(&p.runtime).is_ok()
            && !tags.contains(&p.runtime)
        {
            tags.push(p.runtime);
        }
    }
    Ok(tags)
}

/// Why an entry that was listed could not be packed (a second look, for the report).
fn why_not_exported(cd: &Root, key: &Key) -> String {
    match check_entry_in(cd, key, false) {
        Ok(None) => "removed while exporting".into(),
        Err(VerifyError::Corrupt(c)) => {
            format!("corrupt: {c} (`xcache verify --repair` quarantines it)")
        }
        Err(VerifyError::Io(p, e)) => format!("unreadable: {}: {e}", p.display()),
        Err(VerifyError::UntrustedDir(p, why)) => format!("untrusted: {}: {why}", p.display()),
        Ok(Some(c)) if c.meta.request_key.is_none() => {
            "not dependency-tracked: another machine could not check its headers".into()
        }
        Ok(Some(_)) => "changed while exporting".into(),
    }
}

/// Writes a bundle of the entries of `which` (only those used, or created, within
/// `since`) to `out`, atomically: a temporary file beside it, renamed over it. Signed
/// when `remote_sign_key` is set. Corrupt entries and entries that are not
/// dependency-tracked are reported and left out.
pub fn export_bundle(
    store: &Store,
    out: &Path,
    since: Option<Duration>,
    which: &Compiledirs,
) -> Result<ExportReport> {
    let sign = super::sign_key(store.config())?;
    let created = unix_secs(store.clock().now());
    let dir = parent_dir(out);
    let file_name = out.file_name().ok_or_else(|| {
        Error::InvalidRequest(format!(
            "--out {}: give a file name to write the bundle to",
            out.display()
        ))
    })?;
    // Values are packed once, into a spool beside the bundle, while the index grows:
    // the index goes first in the archive, and a large cache need not fit in memory.
    let mut spool = tempfile::tempfile_in(&dir)
        .map_err(|e| Error::io("creating a temporary file in", &dir, e))?;
    let mut index = Index {
        format: FORMAT,
        xcache_version: env!("CARGO_PKG_VERSION").to_string(),
        created,
        entries: Vec::new(),
    };
    let mut report = ExportReport {
        path: out.to_path_buf(),
        bytes: 0,
        created,
        signed: sign.is_some(),
        since_secs: since.map(|d| d.as_secs()),
        older: 0,
        entries: Vec::new(),
    };
    for (name, cd) in select(store, which)? {
        for row in scan::entries(&cd)? {
            if since.is_some_and(|limit| created.saturating_sub(row.last_touch()) > limit.as_secs())
            {
                report.older += 1;
                continue;
            }
            let Some(key) = row.key() else { continue };
            let mut entry = ExportedEntry {
                compiledir: name.clone(),
                key: key.hex(),
                request_key: None,
                source: row.source.clone(),
                bytes: 0,
                outcome: ExportOutcome::Exported,
            };
            match export_result_in(&cd, &key)? {
                Some((meta, packed)) => {
                    let request_key = meta.request_key.clone().expect("exported entries have one");
                    let value = packed.encode(sign.as_ref());
                    spool
                        .write_all(&value)
                        .map_err(|e| Error::io("writing a temporary file in", &dir, e))?;
                    index.entries.push(IndexEntry {
                        compiledir: name.clone(),
                        key: key.hex(),
                        request_key: request_key.clone(),
                        source: meta.source_name.clone(),
                        size: value.len() as u64,
                        blake3: blake3::hash(&value).to_hex().to_string(),
                        last_use: row.last_touch(),
                    });
                    entry.request_key = Some(request_key);
                    entry.source = meta.source_name;
                    entry.bytes = value.len() as u64;
                }
                None => {
                    let reason = why_not_exported(&cd, &key);
                    log::warn!(
                        "not exporting {}… ({}): {reason}",
                        &entry.key[..16],
                        entry.source
                    );
                    entry.outcome = ExportOutcome::Skipped { reason };
                }
            }
            report.entries.push(entry);
        }
    }
    spool
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("reading a temporary file in", &dir, e))?;
    let tmp = dir.join(format!(
        ".{}.xcache-{}",
        file_name.to_string_lossy(),
        layout::unique()
    ));
    report.bytes = write_atomically(&tmp, out, |f| {
        write_bundle(f, &index, &mut spool, sign.as_ref())
    })?;
    Ok(report)
}

/// The directory a file is written in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `dest` through the fresh file `tmp` beside it: written, synced, renamed over
/// `dest`, the directory synced. `tmp` is removed if anything fails. Returns the size.
fn write_atomically(
    tmp: &Path,
    dest: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    struct Remove<'a>(Option<&'a Path>);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666) // as any file the user writes: the umask decides
        .open(tmp)
        .map_err(|e| Error::io("creating", tmp, e))?;
    let mut guard = Remove(Some(tmp));
    write(&mut f)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("writing", tmp, e))?;
    let size = f
        .metadata()
        .map_err(|e| Error::io("inspecting", tmp, e))?
        .len();
    std::fs::rename(tmp, dest).map_err(|e| Error::io("renaming the bundle to", dest, e))?;
    guard.0 = None;
    if let Ok(d) = File::open(parent_dir(dest)) {
        let _ = d.sync_all();
    }
    Ok(size)
}

fn tar_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h
}

/// Writes a bundle: the index, its MAC when `sign` is given, then each entry's packed
/// value, read in index order from `values`.
pub fn write_bundle(
    out: impl Write,
    index: &Index,
    values: &mut impl Read,
    sign: Option<&SignKey>,
) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(out, 3)?);
    let bytes = index.encode();
    let t = index.created;
    tar.append_data(
        &mut tar_header(bytes.len() as u64, t),
        INDEX_MEMBER,
        &bytes[..],
    )?;
    if let Some(k) = sign {
        let mac = format!("{}\n", index_mac(k, &bytes));
        tar.append_data(
            &mut tar_header(mac.len() as u64, t),
            MAC_MEMBER,
            mac.as_bytes(),
        )?;
    }
    for e in &index.entries {
        let mut value = values.by_ref().take(e.size);
        tar.append_data(&mut tar_header(e.size, t), e.member(), &mut value)?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

/// Reads a member whole, refusing one larger than `cap`.
fn read_capped(r: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    r.take(cap + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

/// A member's name as raw bytes made text (only ever compared, or shown).
fn member_name<R: Read>(e: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&e.path_bytes()).into_owned()
}

/// Counts the bytes read from the bundle's file, for [`Expansion`].
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// The decompressed archive, refused from the point where it has expanded more than
/// [`MAX_EXPANSION`] times what was read from the file (plus [`EXPANSION_SLACK`]).
/// Whatever the tar reader does with a member (skip it, read a long name into memory),
/// it reads through here.
struct Expansion<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    expanded: u64,
}

impl<R: Read> Read for Expansion<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.expanded += n as u64;
        let compressed = self.compressed.get();
        if self.expanded > EXPANSION_SLACK + MAX_EXPANSION.saturating_mul(compressed) {
            return Err(std::io::Error::other(format!(
                "it expands to more than {} bytes from {compressed}, beyond what a bundle of packed values can ({MAX_EXPANSION} times, plus {} KiB): a decompression bomb, or not a bundle",
                self.expanded,
                EXPANSION_SLACK >> 10
            )));
        }
        Ok(n)
    }
}

/// What reading a bundle found besides its values.
struct ReadEnd {
    /// Which index entries had a member.
    seen: Vec<bool>,
    unexpected: Vec<String>,
    unexpected_count: u64,
    damaged: Option<String>,
}

/// What [`read_bundle`] hands on: the index (and its signature state) first, then each
/// value the index lists and `wanted` accepts, by its index position, read and compared
/// with the index's size and hash (`Err`: why it does not match).
trait Visit {
    fn index(&mut self, index: &Index, signature: Signature) -> Result<()>;
    /// Whether to read the value of index entry `i` (its member is next); a visitor
    /// that refuses it without reading it (too large) records why itself.
    fn wanted(&mut self, i: usize, entry: &IndexEntry) -> bool;
    fn value(&mut self, i: usize, value: std::result::Result<Vec<u8>, String>) -> Result<()>;
}

/// Reads a bundle's archive: the index, checked and its signature verified, then the
/// values, matched to the index by member name. Every size is checked as it is
/// declared, and the stream's expansion is bounded (see the module doc).
fn read_bundle(
    path: &Path,
    reader: impl Read,
    verification: &Verification,
    visit: &mut dyn Visit,
) -> Result<ReadEnd> {
    let invalid = |why: String| {
        Error::InvalidRequest(format!("{} is not an xcache bundle: {why}", path.display()))
    };
    let compressed = Rc::new(Cell::new(0));
    let counted = Counted {
        inner: reader,
        read: compressed.clone(),
    };
    let decoder =
        zstd::stream::read::Decoder::new(counted).map_err(|e| Error::io("reading", path, e))?;
    let mut archive = tar::Archive::new(Expansion {
        inner: decoder,
        compressed,
        expanded: 0,
    });
    let mut members = archive
        .entries()
        .map_err(|e| invalid(format!("not a zstd-compressed tar ({e})")))?;

    // The index, first.
    let first = match members.next() {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(invalid(format!("not a zstd-compressed tar ({e})"))),
        None => return Err(invalid("the archive is empty".into())),
    };
    if member_name(&first) != INDEX_MEMBER || first.header().entry_type() != tar::EntryType::Regular
    {
        return Err(invalid(format!(
            "its first member is {:?}, not {INDEX_MEMBER}",
            member_name(&first)
        )));
    }
    if first.size() > MAX_INDEX {
        return Err(invalid(format!(
            "its index declares {} bytes (at most {MAX_INDEX})",
            first.size()
        )));
    }
    let index_bytes = read_capped(first, MAX_INDEX)
        .map_err(|e| invalid(format!("its index cannot be read ({e})")))?
        .ok_or_else(|| invalid(format!("its index is larger than {MAX_INDEX} bytes")))?;
    let index = Index::decode(&index_bytes).map_err(invalid)?;

    // Its MAC, if the next member is one; the signature is checked before any value.
    let mut next = members.next();
    let mut mac = None;
    if let Some(Ok(m)) = &mut next {
        if member_name(m) == MAC_MEMBER {
            let text = read_capped(m, 200)
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            mac = Some(text);
            next = members.next();
        }
    }
    let signature = verification
        .check_index(&index_bytes, mac.as_deref())
        .map_err(|reason| Error::Untrusted {
            path: path.to_path_buf(),
            reason,
            fix: "import only bundles exported where remote_sign_key holds the same secret (or set remote_verify = if-signed to accept unsigned ones)".into(),
        })?;
    visit.index(&index, signature)?;

    let by_member: HashMap<String, usize> = index
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.member(), i))
        .collect();
    let mut end = ReadEnd {
        seen: vec![false; index.entries.len()],
        unexpected: Vec::new(),
        unexpected_count: 0,
        damaged: None,
    };
    let mut item = next;
    while let Some(m) = item {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                end.damaged = Some(e.to_string());
                break;
            }
        };
        let name = member_name(&m);
        let slot = by_member.get(&name).copied().filter(|&i| !end.seen[i]);
        let Some(i) = slot else {
            end.unexpected_count += 1;
            if end.unexpected.len() < MAX_UNEXPECTED_NAMED {
                end.unexpected.push(name);
            }
            item = members.next();
            continue;
        };
        end.seen[i] = true;
        let e = &index.entries[i];
        if !visit.wanted(i, e) {
            item = members.next();
            continue;
        }
        let value = if m.header().entry_type() != tar::EntryType::Regular {
            Err("its member is not a regular file".to_string())
        } else if m.size() != e.size {
            // Declared, so known before a byte of it is read.
            Err(format!(
                "its member declares {} bytes, the index gives {}",
                m.size(),
                e.size
            ))
        } else {
            match read_capped(m, e.size) {
                Err(err) => {
                    // The archive itself is damaged here: nothing after it is trusted.
                    end.seen[i] = false;
                    end.damaged = Some(err.to_string());
                    break;
                }
                Ok(None) => Err(format!(
                    "its member is larger than the {} bytes the index gives",
                    e.size
                )),
                Ok(Some(bytes)) if bytes.len() as u64 != e.size => Err(format!(
                    "its member holds {} bytes, the index gives {}",
                    bytes.len(),
                    e.size
                )),
                Ok(Some(bytes)) => {
                    let h = blake3::hash(&bytes).to_hex();
                    if h.as_str() == e.blake3 {
                        Ok(bytes)
                    } else {
                        Err(format!(
                            "its contents do not match the index (blake3 {}…, the index gives {}…)",
                            &h.as_str()[..16],
                            &e.blake3[..16]
                        ))
                    }
                }
            }
        };
        visit.value(i, value)?;
        item = members.next();
    }
    Ok(end)
}

/// Imports a bundle into the current compiledir: every entry of this platform is
/// checked (see the module doc) and published by the normal protocol; entries of other
/// compiledirs are skipped; refused and corrupt entries are reported (and warned
/// about), and everything else still imported. An error is the bundle's as a whole (not
/// a bundle, a signature that does not verify or is required) or this machine's (I/O).
/// The file must be a regular file (a FIFO or a device is refused, never waited on).
pub fn import_bundle(store: &Store, path: &Path) -> Result<ImportReport> {
    let (file, _) = crate::fsx::open_named_file(path, u64::MAX).map_err(|e| match e {
        crate::fsx::NamedFileError::Io(p, e) => Error::io("opening", p, e),
        other => Error::InvalidRequest(format!(
            "{other}: a bundle is read from a regular file. Fix: save it to a file first (e.g. `cat … > cache.tar.zst`)"
        )),
    })?;
    import_bundle_from(store, path, std::io::BufReader::new(file))
}

/// [`import_bundle`] of a bundle read from `reader`; `path` names it in the report and
/// in messages.
pub fn import_bundle_from(store: &Store, path: &Path, reader: impl Read) -> Result<ImportReport> {
    let verification = Verification::from_config(store.config())?;
    let limits = ImportLimits::from_config(store.config());
    let report = ImportReport {
        path: path.to_path_buf(),
        compiledir: compiledir_name(store.compiledir()),
        created: 0,
        xcache_version: String::new(),
        signature: Signature::Unsigned,
        entries: Vec::new(),
        unexpected: Vec::new(),
        unexpected_count: 0,
        damaged: None,
        limits,
        unpacked: 0,
    };
    let mut visit = ImportVisit {
        store,
        verification: &verification,
        report,
        outcomes: Vec::new(),
        last_uses: Vec::new(),
    };
    let end = read_bundle(path, reader, &verification, &mut visit)?;
    let ImportVisit {
        mut report,
        outcomes,
        ..
    } = visit;
    report.unexpected = end.unexpected;
    report.unexpected_count = end.unexpected_count;
    report.damaged = end.damaged;
    for (i, (entry, outcome)) in report.entries.iter_mut().zip(outcomes).enumerate() {
        entry.outcome = outcome.unwrap_or_else(|| ImportOutcome::Corrupt {
            reason: match (&report.damaged, end.seen[i]) {
                (Some(d), false) => format!("not read: the bundle is damaged before it ({d})"),
                _ => "missing from the bundle".into(),
            },
        });
        match &entry.outcome {
            ImportOutcome::Corrupt { reason } | ImportOutcome::Refused { reason, .. } => {
                log::warn!(
                    "{}: entry {}… ({}) not imported: {reason}",
                    path.display(),
                    &entry.key[..16],
                    entry.source
                )
            }
            _ => {}
        }
    }
    Ok(report)
}

/// The import's side of [`read_bundle`].
struct ImportVisit<'a> {
    store: &'a Store,
    verification: &'a Verification,
    report: ImportReport,
    outcomes: Vec<Option<ImportOutcome>>,
    /// Each entry's last use where it was exported.
    last_uses: Vec<u64>,
}

impl ImportVisit<'_> {
    /// What is left of the import's total limit.
    fn total_left(&self) -> u64 {
        self.report
            .limits
            .total
            .map_or(u64::MAX, |t| t.saturating_sub(self.report.unpacked))
    }

    /// Why an entry that unpacks to at least `at_least` (`packed`: whose packed value
    /// is that large) is refused: the limit it met, named with its setting and how to
    /// raise it.
    fn too_large(&self, at_least: u64, packed: bool) -> ImportOutcome {
        let limits = &self.report.limits;
        let what = if packed {
            format!("its packed value is {at_least} bytes")
        } else {
            format!("it unpacks to at least {at_least} bytes")
        };
        let ceil = |bytes: u64, unit: u32| (bytes >> unit) + 1;
        let reason = if self.total_left() < limits.entry {
            let total = limits.total.unwrap_or(u64::MAX);
            let needed = self.report.unpacked.saturating_add(at_least);
            format!(
                "{what}, and this import has unpacked {} of the {total} it may in all (max_size). Fix: if the bundle is trusted, raise max_size (e.g. XCACHE_FLAGS=max_size={}GiB), or export fewer entries (`xcache export --since`)",
                self.report.unpacked,
                ceil(needed, 30)
            )
        } else if at_least > pack::MAX_UNPACKED {
            format!(
                "{what}, more than any entry may unpack to ({} bytes, whatever the settings): it is no entry xcache wrote",
                pack::MAX_UNPACKED
            )
        } else {
            let setting = limits.entry_setting;
            format!(
                "{what}, more than the {} an entry from elsewhere may unpack to ({setting}). Fix: if the bundle is trusted and its entries are that large, raise {setting} (e.g. XCACHE_FLAGS={setting}={}MiB)",
                limits.entry,
                ceil(at_least, 20)
            )
        };
        ImportOutcome::Refused {
            refusal: Refusal::TooLarge,
            reason,
        }
    }
}

impl Visit for ImportVisit<'_> {
    fn index(&mut self, index: &Index, signature: Signature) -> Result<()> {
        let r = &mut self.report;
        r.created = index.created;
        r.xcache_version = index.xcache_version.clone();
        r.signature = signature;
        r.entries = index
            .entries
            .iter()
            .map(|e| ImportedEntry {
                compiledir: e.compiledir.clone(),
                key: e.key.clone(),
                request_key: e.request_key.clone(),
                source: e.source.clone(),
                bytes: e.size,
                outcome: ImportOutcome::OtherPlatform,
            })
            .collect();
        self.last_uses = index.entries.iter().map(|e| e.last_use).collect();
        self.outcomes = index
            .entries
            .iter()
            .map(|e| (e.compiledir != r.compiledir).then_some(ImportOutcome::OtherPlatform))
            .collect();
        Ok(())
    }

    fn wanted(&mut self, i: usize, entry: &IndexEntry) -> bool {
        if entry.compiledir != self.report.compiledir {
            return false;
        }
        // A packed value is about the size of what it unpacks to, or smaller: one
        // larger than the limit allows is refused unread.
        let cap = self.report.limits.entry.min(self.total_left());
        if entry.size > pack::packed_bound(cap) {
            self.outcomes[i] = Some(self.too_large(entry.size, true));
            return false;
        }
        true
    }

    fn value(&mut self, i: usize, value: std::result::Result<Vec<u8>, String>) -> Result<()> {
        let bytes = match value {
            Ok(bytes) => bytes,
            Err(reason) => {
                self.outcomes[i] = Some(ImportOutcome::Corrupt { reason });
                return Ok(());
            }
        };
        let cap = self.report.limits.entry.min(self.total_left());
        let packed = match Packed::decode(
            &bytes,
            self.verification.key.as_ref(),
            self.verification.required,
            cap,
        ) {
            Ok(p) => p,
            Err(pack::Reject::TooLarge { at_least, .. }) => {
                self.outcomes[i] = Some(self.too_large(at_least, false));
                return Ok(());
            }
            Err(r) => {
                let refusal = match r {
                    pack::Reject::Unsigned => Refusal::Unsigned,
                    pack::Reject::BadSignature => Refusal::BadSignature,
                    pack::Reject::Malformed(_) | pack::Reject::TooLarge { .. } => {
                        Refusal::Malformed
                    }
                };
                self.outcomes[i] = Some(ImportOutcome::Refused {
                    refusal,
                    reason: r.to_string(),
                });
                return Ok(());
            }
        };
        drop(bytes); // one value held at a time: its files from here on
        self.report.unpacked += packed.unpacked_size();
        self.outcomes[i] = Some(import_value(
            self.store,
            &self.report.entries[i],
            self.last_uses[i],
            &packed,
        )?);
        Ok(())
    }
}

/// Checks one decoded value against the index and this compiledir, and hands it to the
/// store.
fn import_value(
    store: &Store,
    entry: &ImportedEntry,
    last_use: u64,
    packed: &Packed,
) -> Result<ImportOutcome> {
    let refused = |refusal, reason: String| Ok(ImportOutcome::Refused { refusal, reason });
    let meta: EntryMeta = match serde_json::from_slice(&packed.meta) {
        Ok(m) => m,
        Err(e) => return refused(Refusal::Invalid, format!("invalid: entry.json: {e}")),
    };
    if meta.request_key.as_deref() != Some(entry.request_key.as_str()) {
        return refused(
            Refusal::Invalid,
            "invalid: its request key is not the one the index gives".into(),
        );
    }
    // The compiledir's name is the index's claim; the runtime tag is in the key
    // material, where it can be checked.
    let here = &store.config().runtime_tag;
    if meta.key_material.runtime_tag != *here {
        return refused(
            Refusal::Invalid,
            format!(
                "invalid: built for runtime tag {:?}, this compiledir is for {here:?}",
                meta.key_material.runtime_tag
            ),
        );
    }
    let key: Key = entry.key.parse().expect("checked with the index");
    let existed = matches!(store.check_entry(&key), Ok(Some(_)));
    // Only headers where its own request's compiler would look are read.
    let scope = crate::compile::search_scope(&meta.key_material, store.config(), store);
    Ok(
        match store.import_result(packed, Some(&key), false, &scope, None)? {
            Imported::Taken(fetched) => {
                let outcome = if existed {
                    ImportOutcome::AlreadyHere
                } else {
                    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(last_use);
                    store.backdate_last_use(&key, t);
                    ImportOutcome::Imported
                };
                drop(fetched); // releases the entry's lock
                outcome
            }
            Imported::Refused(r) => ImportOutcome::Refused {
                refusal: match r {
                    ImportReject::Invalid(_) => Refusal::Invalid,
                    ImportReject::WrongKey { .. } => Refusal::WrongKey,
                    ImportReject::HeadersDiffer(_) => Refusal::HeadersDiffer,
                    ImportReject::OutOfScope(_) => Refusal::Invalid,
                },
                reason: r.to_string(),
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cd: &str, n: u8, value: &[u8]) -> IndexEntry {
        IndexEntry {
            compiledir: cd.into(),
            key: format!("{n:02x}").repeat(32),
            request_key: format!("{:02x}", n + 1).repeat(32),
            source: format!("k{n}.c"),
            size: value.len() as u64,
            blake3: blake3::hash(value).to_hex().to_string(),
            last_use: 1_600_000_000,
        }
    }

    const CD: &str = "compiledir_Linux-6.1-x86_64-glibc2.36-xc3";
    const OTHER: &str = "compiledir_Linux-6.1-x86_64-glibc2.36-cpython-3.10-xc3";

    fn sample(values: &[&[u8]]) -> Index {
        Index {
            format: FORMAT,
            xcache_version: "0.1.0".into(),
            created: 1_700_000_000,
            entries: values
                .iter()
                .enumerate()
                .map(|(i, v)| entry(if i == 1 { OTHER } else { CD }, i as u8 * 2, v))
                .collect(),
        }
    }

    fn bundle(index: &Index, values: &[&[u8]], sign: Option<&SignKey>) -> Vec<u8> {
        let mut out = Vec::new();
        write_bundle(&mut out, index, &mut values.concat().as_slice(), sign).unwrap();
        out
    }

    type Values = Vec<(usize, std::result::Result<Vec<u8>, String>)>;

    #[derive(Default)]
    struct Collect {
        index: Option<(Index, Signature)>,
        values: Values,
    }

    impl Visit for Collect {
        fn index(&mut self, index: &Index, signature: Signature) -> Result<()> {
            self.index = Some((index.clone(), signature));
            Ok(())
        }
        fn wanted(&mut self, _: usize, _: &IndexEntry) -> bool {
            true
        }
        fn value(&mut self, i: usize, value: std::result::Result<Vec<u8>, String>) -> Result<()> {
            self.values.push((i, value));
            Ok(())
        }
    }

    fn read(bytes: &[u8], v: &Verification) -> Result<((Index, Signature, Values), ReadEnd)> {
        let mut c = Collect::default();
        let end = read_bundle(Path::new("b.tar.zst"), bytes, v, &mut c)?;
        let (index, sig) = c.index.unwrap();
        Ok(((index, sig, c.values), end))
    }

    fn unsigned() -> Verification {
        Verification {
            key: None,
            required: false,
        }
    }

    #[test]
    fn index_round_trips_and_names_members_plainly() {
        let index = sample(&[b"one", b"two"]);
        assert_eq!(Index::decode(&index.encode()).unwrap(), index);
        assert_eq!(
            index.entries[0].member(),
            format!("xcache-bundle/{CD}/{}.xce", "00".repeat(32))
        );
    }

    #[test]
    fn index_fields_are_checked() {
        let good = sample(&[b"one"]);
        let bad = |f: &dyn Fn(&mut Index)| {
            let mut i = good.clone();
            f(&mut i);
            Index::decode(&i.encode()).unwrap_err()
        };
        assert!(bad(&|i| i.format = 2).contains("format 2"));
        assert!(bad(&|i| i.entries[0].compiledir = "../../etc".into()).contains("compiledir"));
        assert!(bad(&|i| i.entries[0].compiledir = "compiledir_a/b".into()).contains("compiledir"));
        assert!(bad(&|i| i.entries[0].key = "zz".into()).contains("key"));
        assert!(bad(&|i| i.entries[0].blake3 = "AB".repeat(32)).contains("blake3"));
        assert!(bad(&|i| i.entries[0].size = MAX_VALUE + 1).contains("bytes"));
        assert!(bad(&|i| {
            let e = i.entries[0].clone();
            i.entries.push(e)
        })
        .contains("twice"));
        assert!(Index::decode(b"{\"format\": 1}").is_err());
        assert!(Index::decode(b"not json").is_err());
        // Shown, never used: a terminal escape becomes harmless.
        let mut i = good.clone();
        i.entries[0].source = "k\x1b[2J.c".into();
        assert_eq!(
            Index::decode(&i.encode()).unwrap().entries[0].source,
            "k?[2J.c"
        );
    }

    #[test]
    fn compiledir_names_are_one_plain_component() {
        assert!(is_compiledir_name(CD));
        assert!(is_compiledir_name(OTHER));
        for bad in [
            "compiledir_",
            "compiledir_a/b",
            "..",
            "x_Linux",
            "compiledir_a b",
            "compiledir_\u{e9}",
        ] {
            assert!(!is_compiledir_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_bundle_reads_back_value_by_value() {
        let values: [&[u8]; 3] = [b"first value", b"second", b"third value!"];
        let index = sample(&values);
        let b = bundle(&index, &values, None);
        let ((i, sig, got), end) = read(&b, &unsigned()).unwrap();
        assert_eq!(i, index);
        assert_eq!(sig, Signature::Unsigned);
        assert_eq!(
            got,
            values
                .iter()
                .enumerate()
                .map(|(n, v)| (n, Ok(v.to_vec())))
                .collect::<Vec<_>>()
        );
        assert!(end.damaged.is_none() && end.unexpected.is_empty());
        assert_eq!(end.seen, vec![true; 3]);
    }

    #[test]
    fn a_value_that_does_not_match_its_hash_is_reported_alone() {
        let values: [&[u8]; 3] = [b"first value", b"second", b"third value!"];
        let mut index = sample(&values);
        index.entries[0].blake3 = blake3::hash(b"something else").to_hex().to_string();
        let b = bundle(&index, &values, None);
        let ((_, _, got), _) = read(&b, &unsigned()).unwrap();
        assert!(got[0].1.as_ref().unwrap_err().contains("do not match"));
        assert_eq!(got[1].1.as_deref(), Ok(&b"second"[..]));
        assert_eq!(got[2].1.as_deref(), Ok(&b"third value!"[..]));
    }

    #[test]
    fn signatures_cover_the_index_and_are_required_when_asked() {
        let k = SignKey::from_secret(b"a long enough secret");
        let other = SignKey::from_secret(b"another long secret");
        let values: [&[u8]; 2] = [b"one", b"two"];
        let index = sample(&values);
        let signed = bundle(&index, &values, Some(&k));
        let plain = bundle(&index, &values, None);
        let with = |key: &SignKey, required| Verification {
            key: Some(key.clone()),
            required,
        };
        assert_eq!(
            read(&signed, &with(&k, true)).unwrap().0 .1,
            Signature::Verified
        );
        assert_eq!(
            read(&signed, &unsigned()).unwrap().0 .1,
            Signature::NotChecked
        );
        assert_eq!(
            read(&plain, &with(&k, false)).unwrap().0 .1,
            Signature::Unsigned
        );
        let e = read(&plain, &with(&k, true)).err().unwrap().to_string();
        assert!(e.contains("not signed"), "{e}");
        // A wrong key is refused whether or not signatures are required.
        for required in [true, false] {
            let e = read(&signed, &with(&other, required))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("does not verify"), "{e}");
        }
        // The MAC is over the index: an index changed after signing fails.
        let m = index_mac(&k, &index.encode());
        let mut changed = index.clone();
        changed.entries[0].source = "evil.c".into();
        assert_ne!(index_mac(&k, &changed.encode()), m);
        assert!(with(&k, true)
            .check_index(&changed.encode(), Some(&m))
            .is_err());
        assert!(with(&k, true)
            .check_index(&index.encode(), Some("not hex"))
            .is_err());
        // Required, and nothing to check with: nothing passes.
        let blind = Verification {
            key: None,
            required: true,
        };
        assert!(blind.check_index(&index.encode(), Some(&m)).is_err());
        assert!(blind.check_index(&index.encode(), None).is_err());
    }

    #[test]
    fn not_a_bundle_is_an_error_that_says_so() {
        for bytes in [
            &b""[..],
            b"hello",
            &zstd::bulk::compress(b"plain text, not tar", 1).unwrap(),
        ] {
            let e = read(bytes, &unsigned()).err().unwrap().to_string();
            assert!(
                e.contains("not an xcache bundle") || e.contains("reading"),
                "{e}"
            );
        }
        // A tar whose first member is not the index.
        let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap());
        tar.append_data(&mut tar_header(2, 0), "xcache-bundle/other", &b"{}"[..])
            .unwrap();
        let b = tar.into_inner().unwrap().finish().unwrap();
        let e = read(&b, &unsigned()).err().unwrap().to_string();
        assert!(e.contains("first member"), "{e}");
    }

    #[test]
    fn unexpected_members_are_ignored_and_missing_ones_unseen() {
        let values: [&[u8]; 2] = [b"one", b"two"];
        let index = sample(&values);
        let bytes = index.encode();
        let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap());
        tar.append_data(
            &mut tar_header(bytes.len() as u64, 0),
            INDEX_MEMBER,
            &bytes[..],
        )
        .unwrap();
        let e0 = &index.entries[0];
        tar.append_data(&mut tar_header(3, 0), e0.member(), &b"one"[..])
            .unwrap();
        // The same member twice, and one the index does not list.
        tar.append_data(&mut tar_header(3, 0), e0.member(), &b"one"[..])
            .unwrap();
        // (The tar crate refuses to write `..`: the name goes into the header by hand.)
        let mut h = tar_header(4, 0);
        h.as_old_mut().name[..16].copy_from_slice(b"../../etc/passwd");
        h.set_cksum();
        tar.append(&h, &b"evil"[..]).unwrap();
        let b = tar.into_inner().unwrap().finish().unwrap();
        let ((_, _, got), end) = read(&b, &unsigned()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(end.seen, vec![true, false]);
        assert_eq!(end.unexpected_count, 2);
        assert!(end.unexpected.contains(&"../../etc/passwd".to_string()));
    }

    #[test]
    fn a_truncated_bundle_keeps_what_came_before() {
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
            .collect();
        let values: [&[u8]; 3] = [b"small", &big, b"after"];
        let index = sample(&values);
        let b = bundle(&index, &values, None);
        let cut = &b[..b.len() * 2 / 3];
        let ((_, _, got), end) = read(cut, &unsigned()).unwrap();
        assert_eq!(got.first().map(|g| g.0), Some(0));
        assert!(got[0].1.is_ok());
        assert!(end.damaged.is_some(), "the damage is reported");
        assert!(!end.seen[2]);
    }

    /// A tar stream, compressed: the index of `index`, then what `rest` writes.
    fn archive_with(index: &Index, rest: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let bytes = index.encode();
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_data(
            &mut tar_header(bytes.len() as u64, 0),
            INDEX_MEMBER,
            &bytes[..],
        )
        .unwrap();
        rest(&mut tar);
        let tar = tar.into_inner().unwrap();
        zstd::bulk::compress(&tar, 3).unwrap()
    }

    #[test]
    fn an_archive_that_expands_like_a_bomb_is_cut_off() {
        let values: [&[u8]; 1] = [b"one"];
        let index = sample(&values);
        // A GNU long name of 32 MiB of zeros after the index: the tar reader reads a long
        // name into memory whole, so the stream's expansion is what bounds it.
        let b = archive_with(&index, |tar| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::GNULongName);
            h.set_size(32 << 20);
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_cksum();
            tar.append(&h, std::io::repeat(0).take(32 << 20)).unwrap();
        });
        assert!(b.len() < 64 << 10, "{} bytes", b.len());
        let ((_, _, got), end) = read(&b, &unsigned()).unwrap();
        assert!(got.is_empty());
        let d = end.damaged.expect("cut off");
        assert!(d.contains("expands") && d.contains("bomb"), "{d}");
        // Zeros where no member is listed, and the same as the index itself.
        let mut index_bomb = tar_header(MAX_INDEX - 1, 0);
        index_bomb.set_path(INDEX_MEMBER).unwrap();
        index_bomb.set_cksum();
        let mut tar = index_bomb.as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(0u8, 8 << 20));
        let b = zstd::bulk::compress(&tar, 3).unwrap();
        let e = read(&b, &unsigned()).err().unwrap().to_string();
        assert!(e.contains("expands"), "{e}");
        // An index that declares more than an index may is refused before it is read.
        let mut h = tar_header(MAX_INDEX + 1, 0);
        h.set_path(INDEX_MEMBER).unwrap();
        h.set_cksum();
        let b = zstd::bulk::compress(h.as_bytes(), 3).unwrap();
        let e = read(&b, &unsigned()).err().unwrap().to_string();
        assert!(e.contains("declares"), "{e}");
        // A real bundle expands far less than the bound.
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
            .collect();
        let values: [&[u8]; 2] = [b"small", &big];
        let index = sample(&values);
        let ok = bundle(&index, &values, None);
        assert!(read(&ok, &unsigned()).unwrap().1.damaged.is_none());
    }

    #[test]
    fn a_member_must_declare_the_size_its_index_gives() {
        let values: [&[u8]; 2] = [b"one", b"two"];
        let index = sample(&values);
        let b = archive_with(&index, |tar| {
            let (e0, e1) = (&index.entries[0], &index.entries[1]);
            // Declares more than the index gives (and holds it).
            tar.append_data(&mut tar_header(4, 0), e0.member(), &b"one!"[..])
                .unwrap();
            tar.append_data(&mut tar_header(3, 0), e1.member(), &b"two"[..])
                .unwrap();
        });
        let ((_, _, got), end) = read(&b, &unsigned()).unwrap();
        assert!(end.damaged.is_none());
        let e = got[0].1.as_ref().unwrap_err();
        assert!(e.contains("declares 4 bytes, the index gives 3"), "{e}");
        assert_eq!(got[1].1.as_deref(), Ok(&b"two"[..]));
    }

    #[test]
    fn reading_is_capped() {
        assert_eq!(read_capped(&b"12345"[..], 5).unwrap().unwrap(), b"12345");
        assert!(read_capped(&b"123456"[..], 5).unwrap().is_none());
    }
}
