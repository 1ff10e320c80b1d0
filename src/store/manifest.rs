//! Dependency-tracked results (ccache's direct mode): for each *request key* (source,
//! flags, toolchain, target, explicit inputs, runtime tag), a small manifest lists the
//! results built under it, each with the headers the compiler read and, per header,
//! its blake3 and a stat signature. A request takes the first result whose headers all
//! still match; each result is an ordinary entry under its *result key*, the blake3 of
//! the request key and the headers' paths and hashes ([`super::key::result_key`]).
//!
//! Checking a header costs one `stat` while its signature (size, mtime, ctime, inode,
//! device) is unchanged; a changed signature means hashing it and comparing, once per
//! process: the hash is remembered by path and signature ([`VerifiedHashes`]), so the
//! hundreds of headers that every module of a program shares (Python's, numpy's) are
//! read once however many manifests name them, and recording a build's headers reuses
//! what a check read. A store believes a header it found unchanged for
//! [`RECHECK_AFTER`] without another `stat` ([`RecentChecks`]): an edit is seen at once
//! by other stores and processes, and by that store a second later. Times are
//! compared on the clock the kernel stamps files with ([`file_clock`]), read when the
//! request arrives ([`build_start`]). A header whose mtime or ctime is at
//! or after the build's start (within the second before, on file systems without
//! sub-second times) may have been written while the compiler read it ("file too new",
//! as ccache says): its hash need not be what the compiler saw, so that result is handed
//! to its caller but never recorded (see [`super::Store::get_or_build_tracked`]), and its signature never
//! vouches for it. The file server's clock must agree with this machine's, as for make.
//!
//! The file, `manifests/<fan>/<request key>.manifest`, is one line
//! `xcache-manifest <format> <blake3 of the rest>` and then JSON. It is written whole
//! (a temporary file renamed over it) under the request key's exclusive lock, and read
//! without a lock: a reader sees the old or the new file, never a mix. One whose hash
//! does not match is treated as missing (with a warning) and rewritten by the next
//! build; it is never trusted. It is not fsynced: every result it names was published
//! (and synced) before it was written, so after a crash it is the old file, the new
//! one, or empty or damaged — found by its hash and treated as missing; the cost is a
//! compile, which finds its result already published and records it again.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::key::Key;
use super::layout;
use crate::fsx::{OpenHow, Root};

/// Format of the manifest file.
pub const FORMAT: u32 = 1;

/// At most this many results are kept per request key (the least recently used goes).
pub const MAX_RESULTS: usize = 8;

/// Now, by the coarse clock the kernel stamps most file writes with
/// (`CLOCK_REALTIME_COARSE`, which lags the precise clock by up to one tick).
pub fn file_clock() -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_REALTIME_COARSE exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return SystemTime::now() - Duration::from_millis(20);
    }
    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One header a result was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRecord {
    /// Absolute path, as the compiler reported it.
    pub path: String,
    /// blake3 of its contents, hex.
    pub blake3: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// False when the signature cannot vouch for the contents (the file was too new
    /// when recorded): then the check always hashes.
    pub stat_trusted: bool,
}

fn ns(secs: i64, nsec: i64) -> i128 {
    secs as i128 * 1_000_000_000 + nsec as i128
}

/// A file's stat signature: size, mtime (ns), ctime (ns), inode, device.
type Signature = (u64, i128, i128, u64, u64);

fn signature(md: &std::fs::Metadata) -> Signature {
    (
        md.size(),
        ns(md.mtime(), md.mtime_nsec()),
        ns(md.ctime(), md.ctime_nsec()),
        md.ino(),
        md.dev(),
    )
}

/// The start of a build, as header timestamps are compared with it: now, by the
/// kernel's coarse file clock ([`file_clock`]), without waiting.
///
/// A file written after this moment carries a timestamp at or after it (whether the
/// kernel stamps it from its coarse clock or, with multigrain timestamps, a finer one:
/// both are at or after the coarse clock's reading). So "written while the compiler read
/// it" is told by comparing timestamps. A file written in the same tick just before
/// (1–10 ms) compares as written during the build: that result is served but not
/// recorded, and the next request records it. (An earlier version waited for the next
/// tick to tell those apart: 2–4 ms on every miss, for a case that costs one compile.)
pub fn build_start() -> SystemTime {
    file_clock()
}

/// True when `md`'s mtime or ctime is at or after `since` (a [`file_clock`] reading):
/// the file may have been written (or had its times set) at or after that moment, so
/// neither its contents nor its signature can be vouched for as of then. A file system
/// without sub-second timestamps rounds down: there, anything within the second before
/// counts as well.
fn changed_since(md: &std::fs::Metadata, since: SystemTime) -> bool {
    let (_, mtime, ctime, _, _) = signature(md);
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let coarse = md.mtime_nsec() == 0 && md.ctime_nsec() == 0;
    let limit = if coarse {
        (since / 1_000_000_000 - 1) * 1_000_000_000
    } else {
        since
    };
    mtime >= limit || ctime >= limit
}

/// The hashes of header files this process has read, by path and stat signature.
///
/// An entry is made only for a signature that can vouch for the contents: one whose
/// mtime and ctime are before the file clock's reading when the hash was taken (the
/// "too new" rule, [`changed_since`]). Any later change of the file then gives another
/// signature (its ctime moves on, whatever is done to its mtime), so an entry is never
/// wrong, only unused; a header whose signature changed is hashed again. A file too new
/// to vouch for is hashed every time, as without this.
#[derive(Debug, Default)]
pub struct VerifiedHashes {
    map: Mutex<HashMap<(String, Signature), String>>,
}

/// Most entries [`VerifiedHashes`] keeps (about 300 bytes each); when full it starts
/// again, empty.
pub const MAX_VERIFIED_HASHES: usize = 1 << 16;

impl VerifiedHashes {
    /// An empty set (tests); the store uses [`VerifiedHashes::process`].
    pub fn new() -> VerifiedHashes {
        VerifiedHashes::default()
    }

    /// This process's.
    pub fn process() -> &'static VerifiedHashes {
        static PROCESS: OnceLock<VerifiedHashes> = OnceLock::new();
        PROCESS.get_or_init(VerifiedHashes::new)
    }

    fn get(&self, path: &str, sig: &Signature) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(path.to_string(), *sig)).cloned()
    }

    fn insert(&self, path: &str, sig: Signature, blake3: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_VERIFIED_HASHES {
            map.clear();
        }
        map.insert((path.to_string(), sig), blake3.to_string());
    }

    /// How many hashes are remembered.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a header one store found unchanged is believed unchanged by that store
/// without another `stat`: long enough that the headers every module of a program shares
/// (Python's, numpy's: hundreds per manifest) are stat'ed about once per burst of
/// requests rather than once per request, short enough that an edit is seen by the same
/// store's requests a second later. Other stores (another `Jit`, `Cache`, process) see it
/// at once. The trade is the one a `Jit` already makes for the requests it has loaded,
/// which it serves from memory without looking at headers again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The headers one store found unchanged lately: path → the signature seen and when.
/// Only a signature that vouches for the contents (a record's `stat_trusted` one, equal
/// to what `stat` gave) is remembered, and only for [`RECHECK_AFTER`]; a record whose
/// signature differs from the remembered one is checked on disk as before.
#[derive(Debug, Default)]
pub struct RecentChecks {
    map: Mutex<HashMap<String, (Signature, Instant)>>,
}

impl RecentChecks {
    /// An empty set.
    pub fn new() -> RecentChecks {
        RecentChecks::default()
    }

    /// Whether `path` was found with signature `sig` less than [`RECHECK_AFTER`] before `at`.
    fn vouches(&self, path: &str, sig: &Signature, at: Instant) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(path).is_some_and(|(s, seen)| {
            s == sig
                && at
                    .checked_duration_since(*seen)
                    .is_some_and(|d| d < RECHECK_AFTER)
        })
    }

    fn insert(&self, path: &str, sig: Signature, at: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_VERIFIED_HASHES {
            map.clear();
        }
        map.insert(path.to_string(), (sig, at));
    }
}

/// Largest header xcache hashes: far above any real header, and a bound on what a
/// header list from elsewhere can make it read.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;

/// blake3 of a header, hex: the one way xcache hashes a file it was told about (by its
/// compiler, a manifest, a remote, a bundle). Headers live outside the cache and are
/// followed as the compiler did; but only a regular file is read, opened without
/// blocking, up to [`MAX_HEADER_BYTES`], and no later than `deadline`.
pub fn hash_header(
    path: &Path,
    deadline: Option<std::time::Instant>,
) -> Result<String, crate::fsx::NamedFileError> {
    crate::fsx::hash_named_file(
        path,
        crate::fsx::Bounds {
            max_bytes: MAX_HEADER_BYTES,
            deadline,
        },
    )
    .map(|(h, _)| h)
}

/// blake3 of a file, hex (see [`hash_header`]; no deadline).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash(path)
}

fn hash(path: &Path) -> std::io::Result<String> {
    hash_header(path, None).map_err(crate::fsx::NamedFileError::into_io)
}

/// The directories a request's compiler may read headers from: the include
/// directories its flags name and those its compiler searches by itself. A header list
/// that comes from elsewhere (a remote's result records, a bundle's entries) may only
/// make xcache hash files below these, so it cannot be used to read or probe any other
/// file on this machine. Paths are compared after resolving links and `..` on both
/// sides: a link inside a root that leads out of every root is outside.
#[derive(Debug, Clone, Default)]
pub struct SearchScope {
    roots: Vec<std::path::PathBuf>,
}

impl SearchScope {
    /// The scope of these directories (those that do not exist are left out).
    pub fn new(dirs: impl IntoIterator<Item = std::path::PathBuf>) -> SearchScope {
        let mut roots: Vec<_> = dirs
            .into_iter()
            .filter(|d| d.is_absolute())
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        roots.sort();
        roots.dedup();
        SearchScope { roots }
    }

    /// The directories, resolved.
    pub fn roots(&self) -> &[std::path::PathBuf] {
        &self.roots
    }

    /// Whether `path` lies below one of the roots (after resolving it). A path that is
    /// not absolute, or cannot be resolved, is outside.
    pub fn allows(&self, path: &Path) -> bool {
        if !path.is_absolute() {
            return false;
        }
        match path.canonicalize() {
            Ok(real) => self.roots.iter().any(|r| real.starts_with(r)),
            Err(_) => false,
        }
    }
}

impl HeaderRecord {
    /// Records a header read by a build that started at `build_start` (a
    /// [`build_start`] reading). The flag says whether it may have been written after the build
    /// started (while the compiler read it, or since): then the hash taken now need not
    /// be what the compiler saw, and the result must not be recorded under it. Its
    /// signature vouches for its contents only if it was last changed before then.
    /// Hashing is bounded as [`hash_header`] says, by `deadline` when given.
    pub fn record(
        path: &Path,
        build_start: SystemTime,
        deadline: Option<std::time::Instant>,
    ) -> Result<(HeaderRecord, bool), crate::fsx::NamedFileError> {
        HeaderRecord::record_with(path, build_start, deadline, VerifiedHashes::process())
    }

    /// [`HeaderRecord::record`], remembering hashes in `verified`.
    pub fn record_with(
        path: &Path,
        build_start: SystemTime,
        deadline: Option<std::time::Instant>,
        verified: &VerifiedHashes,
    ) -> Result<(HeaderRecord, bool), crate::fsx::NamedFileError> {
        let io = |e| crate::fsx::NamedFileError::Io(path.to_path_buf(), e);
        let name = path.to_string_lossy().into_owned();
        // Stat before and after hashing: a header rewritten meanwhile is not trusted.
        // A hash this process took under the same signature is that of these contents.
        let before = std::fs::metadata(path).map_err(io)?;
        let (blake3, after) = match verified.get(&name, &signature(&before)) {
            Some(h) => (h, before.clone()),
            None => {
                let h = hash_header(path, deadline)?;
                (h, std::fs::metadata(path).map_err(io)?)
            }
        };
        let racy = signature(&before) != signature(&after) || changed_since(&after, build_start);
        if !racy {
            // Settled before the build started, so before now.
            verified.insert(&name, signature(&after), &blake3);
        }
        let (size, mtime_ns, ctime_ns, ino, dev) = signature(&after);
        let rec = HeaderRecord {
            path: name,
            blake3,
            size,
            mtime_ns,
            ctime_ns,
            ino,
            dev,
            stat_trusted: !racy,
        };
        Ok((rec, racy))
    }

    /// Checks the header on disk against the record: by signature when it vouches, else
    /// by hash (one per process and signature: [`VerifiedHashes::process`]). `now` is a
    /// [`file_clock`] reading: a header changed at or after it cannot be vouched for by
    /// a refreshed signature, nor its hash remembered.
    pub fn check(&self, now: SystemTime) -> HeaderCheck {
        self.check_with(now, VerifiedHashes::process())
    }

    /// [`HeaderRecord::check`], with the hashes remembered in `verified`.
    pub fn check_with(&self, now: SystemTime, verified: &VerifiedHashes) -> HeaderCheck {
        let md = match std::fs::metadata(&self.path) {
            Ok(md) => md,
            Err(_) => return HeaderCheck::Changed { now: None },
        };
        let sig = signature(&md);
        if self.stat_trusted && sig == (self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)
        {
            return HeaderCheck::Same;
        }
        let settled = !changed_since(&md, now);
        let h = match verified.get(&self.path, &sig) {
            Some(h) => h,
            None => match hash(Path::new(&self.path)) {
                Ok(h) => {
                    if settled {
                        verified.insert(&self.path, sig, &h);
                    }
                    h
                }
                Err(_) => return HeaderCheck::Changed { now: None },
            },
        };
        if h != self.blake3 {
            return HeaderCheck::Changed { now: Some(h) };
        }
        let (size, mtime_ns, ctime_ns, ino, dev) = sig;
        HeaderCheck::SameContent {
            refreshed: HeaderRecord {
                size,
                mtime_ns,
                ctime_ns,
                ino,
                dev,
                stat_trusted: settled,
                ..self.clone()
            },
        }
    }
}

/// What a header check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Its stat signature is unchanged.
    Same,
    /// Its signature changed but its contents did not: the record should become this.
    SameContent {
        /// The record with the current signature.
        refreshed: HeaderRecord,
    },
    /// Its contents changed: its hash now (`None`: it is gone or unreadable).
    Changed {
        /// The current hash.
        now: Option<String>,
    },
}

/// One result built under a request key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The entry's key (the result key), hex.
    pub key: String,
    /// The headers the compiler read, in the order it reported them.
    pub headers: Vec<HeaderRecord>,
    /// When it was built, Unix seconds.
    pub created: u64,
    /// When a request last took it, Unix seconds (recorded at `last_use_resolution`).
    pub last_used: u64,
}

/// How a result compares with the headers on disk now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultCheck {
    /// Every header matches; `refreshed` holds the records whose signatures changed
    /// though their contents did not (by index).
    Match {
        /// Updated records, to write back when convenient.
        refreshed: Vec<(usize, HeaderRecord)>,
    },
    /// The first header that differs: its path, its recorded hash, and its hash now.
    Differs {
        /// The header.
        path: String,
        /// Its hash when the result was built.
        was: String,
        /// Its hash now (`None`: gone or unreadable).
        now: Option<String>,
    },
}

impl ResultRecord {
    /// Checks every header, stopping at the first that changed. `now` is a
    /// [`file_clock`] reading.
    pub fn check(&self, now: SystemTime) -> ResultCheck {
        self.check_recent(now, None)
    }

    /// [`ResultRecord::check`], believing a header that `recent` found with the same
    /// signature less than [`RECHECK_AFTER`] before `at` (no `stat`), and remembering
    /// those it finds unchanged now.
    pub fn check_recent(
        &self,
        now: SystemTime,
        recent: Option<(&RecentChecks, Instant)>,
    ) -> ResultCheck {
        let mut refreshed = Vec::new();
        for (i, h) in self.headers.iter().enumerate() {
            let sig = (h.size, h.mtime_ns, h.ctime_ns, h.ino, h.dev);
            if let Some((r, at)) = recent {
                if h.stat_trusted && r.vouches(&h.path, &sig, at) {
                    continue;
                }
            }
            match h.check(now) {
                HeaderCheck::Same => {
                    if let Some((r, at)) = recent {
                        r.insert(&h.path, sig, at);
                    }
                }
                HeaderCheck::SameContent { refreshed: r } => refreshed.push((i, r)),
                HeaderCheck::Changed { now } => {
                    return ResultCheck::Differs {
                        path: h.path.clone(),
                        was: h.blake3.clone(),
                        now,
                    }
                }
            }
        }
        ResultCheck::Match { refreshed }
    }

    /// The (path, hash) pairs the result key is derived from.
    pub fn digests(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|h| (h.path.as_str(), h.blake3.as_str()))
            .collect()
    }
}

/// The manifest of one request key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The request key, hex; equals the file name.
    pub request_key: String,
    /// Results, most recently used first; at most [`MAX_RESULTS`].
    pub results: Vec<ResultRecord>,
}

impl Manifest {
    /// An empty manifest for `key`.
    pub fn new(key: &Key) -> Manifest {
        Manifest {
            format: FORMAT,
            request_key: key.hex(),
            results: Vec::new(),
        }
    }

    /// Puts `r` first (replacing a result with the same key) and drops the least
    /// recently used beyond [`MAX_RESULTS`].
    pub fn insert(&mut self, r: ResultRecord) {
        self.results.retain(|x| x.key != r.key);
        self.results.insert(0, r);
        self.results.truncate(MAX_RESULTS);
    }

    /// Moves result `i` first, marking it used at `now` (Unix seconds).
    pub fn touch(&mut self, i: usize, now: u64) {
        let mut r = self.results.remove(i);
        r.last_used = now;
        self.results.insert(0, r);
    }

    /// The file's bytes: the header line with the hash of the JSON, then the JSON.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("serialises");
        let mut out = format!(
            "xcache-manifest {FORMAT} {}\n",
            blake3::hash(&body).to_hex()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Parses a manifest file of `key`, checking its hash; `Err` says why it is not
    /// trusted.
    pub fn decode(bytes: &[u8], key: &Key) -> Result<Manifest, String> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no header line")?;
        let head =
            std::str::from_utf8(&bytes[..nl]).map_err(|_| "a header line that is not text")?;
        let body = &bytes[nl + 1..];
        let mut parts = head.split(' ');
        if parts.next() != Some("xcache-manifest") {
            return Err("not an xcache manifest".into());
        }
        if parts.next() != Some(&FORMAT.to_string()) {
            return Err(format!("not format {FORMAT}"));
        }
        if parts.next() != Some(blake3::hash(body).to_hex().as_str()) {
            return Err("its contents do not match its hash".into());
        }
        let m: Manifest = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        if m.request_key != key.hex() {
            return Err(format!("it belongs to key {}", m.request_key));
        }
        Ok(m)
    }
}

/// What reading a manifest found.
#[derive(Debug)]
pub enum Lookup {
    /// There is none.
    Missing,
    /// A valid manifest.
    Found(Manifest),
    /// One that must not be trusted, and why.
    Corrupt(String),
}

/// Reads the manifest of `key` in the compiledir `cd` (no lock needed: it is replaced
/// whole).
pub fn read(cd: &Root, key: &Key) -> std::io::Result<Lookup> {
    let rel = layout::manifest(key);
    let mut f = match cd.open_file(&rel, OpenHow::read()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
        Err(e) if crate::fsx::is_link_refusal(&e) => {
            return Ok(Lookup::Corrupt(
                "it is a symbolic link, which xcache never makes or follows".into(),
            ))
        }
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(Lookup::Corrupt("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(match Manifest::decode(&bytes, key) {
        Ok(m) => Lookup::Found(m),
        Err(why) => Lookup::Corrupt(why),
    })
}

/// Writes the manifest whole (temporary file, rename). Call it under the request key's
/// exclusive lock.
pub fn write(cd: &Root, m: &Manifest, key: &Key) -> std::io::Result<()> {
    let rel = layout::manifest(key);
    if let Some(parent) = rel.parent() {
        cd.mkdir_all(parent, super::trust::dir_mode())?;
    }
    cd.write_replace(&rel, &m.encode(), super::trust::file_mode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        "cd".repeat(32).parse().unwrap()
    }

    #[test]
    fn signatures_vouch_unless_too_new_and_content_decides() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("h.h");
        std::fs::write(&h, "#define V 1\n").unwrap();
        // A build that started a tick after the write: the header is settled.
        let later = SystemTime::now() + Duration::from_secs(1);
        let (r, racy) = HeaderRecord::record(&h, later, None).unwrap();
        assert!(!racy && r.stat_trusted);
        assert_eq!(r.check(later), HeaderCheck::Same);
        // A build that started before the write: racy, and not vouched for.
        let before = SystemTime::now() - Duration::from_secs(1);
        let (fresh, racy) = HeaderRecord::record(&h, before, None).unwrap();
        assert!(racy && !fresh.stat_trusted);
        assert!(
            matches!(fresh.check(later), HeaderCheck::SameContent { refreshed } if refreshed.stat_trusted)
        );
        // Even a backdated mtime is seen: its ctime moves.
        let f = std::fs::File::options().write(true).open(&h).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        let (_, racy) = HeaderRecord::record(&h, before, None).unwrap();
        assert!(racy, "a backdated write during a build is still a change");
        // Touched, same contents: a hash, and a refreshed record.
        assert!(matches!(r.check(later), HeaderCheck::SameContent { .. }));
        // Changed contents (same size): changed, whatever the stat says.
        std::fs::write(&h, "#define V 2\n").unwrap();
        let HeaderCheck::Changed { now: Some(now) } = r.check(later) else {
            panic!()
        };
        assert_ne!(now, r.blake3);
        std::fs::remove_file(&h).unwrap();
        assert_eq!(r.check(later), HeaderCheck::Changed { now: None });
    }

    #[test]
    fn a_header_is_hashed_once_per_signature_and_again_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("h.h");
        std::fs::write(&h, "#define V 1\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(1);
        let (r, _) = HeaderRecord::record_with(&h, later, None, &VerifiedHashes::new()).unwrap();
        // Touched, same contents: its signature no longer vouches; hashed, remembered.
        let f = std::fs::File::options().write(true).open(&h).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        let verified = VerifiedHashes::new();
        assert!(matches!(
            r.check_with(later, &verified),
            HeaderCheck::SameContent { refreshed } if refreshed.stat_trusted
        ));
        assert_eq!(verified.len(), 1);
        // The next check under this signature reads nothing: what it remembered decides
        // (shown by a remembered hash that is not the file's).
        let sig = signature(&std::fs::metadata(&h).unwrap());
        verified.insert(&r.path, sig, "remembered");
        assert_eq!(
            r.check_with(later, &verified),
            HeaderCheck::Changed {
                now: Some("remembered".into())
            }
        );
        // So does recording it for a build.
        let (rec, racy) = HeaderRecord::record_with(&h, later, None, &verified).unwrap();
        assert!(!racy);
        assert_eq!(rec.blake3, "remembered");
        // Changed contents, same size: another signature, hashed again.
        std::fs::write(&h, "#define V 2\n").unwrap();
        let HeaderCheck::Changed { now: Some(now) } = r.check_with(later, &verified) else {
            panic!()
        };
        assert_eq!(now, hash(&h).unwrap());
        assert_ne!(now, r.blake3);
    }

    #[test]
    fn a_header_found_unchanged_is_believed_for_a_second_by_that_store_only() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("h.h");
        std::fs::write(&h, "#define V 1\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(1);
        let (rec, _) = HeaderRecord::record_with(&h, later, None, &VerifiedHashes::new()).unwrap();
        let r = ResultRecord {
            key: "ab".repeat(32),
            headers: vec![rec],
            created: 0,
            last_used: 0,
        };
        let recent = RecentChecks::new();
        let t0 = Instant::now();
        let same = |at: Instant| {
            matches!(
                r.check_recent(later, Some((&recent, at))),
                ResultCheck::Match { .. }
            )
        };
        assert!(same(t0), "checked on disk, and remembered");
        // Edited (here: removed) since: this store believes its check for RECHECK_AFTER...
        std::fs::remove_file(&h).unwrap();
        assert!(same(t0 + RECHECK_AFTER - Duration::from_millis(1)));
        // ...and looks again after it.
        assert!(!same(t0 + RECHECK_AFTER));
        // Another store (or none) sees the edit at once.
        assert!(!matches!(
            r.check_recent(later, Some((&RecentChecks::new(), t0))),
            ResultCheck::Match { .. }
        ));
        assert!(!matches!(r.check(later), ResultCheck::Match { .. }));
        // A record whose signature is not the one remembered is checked on disk.
        std::fs::write(&h, "#define V 1\n").unwrap();
        let (moved, _) =
            HeaderRecord::record_with(&h, later, None, &VerifiedHashes::new()).unwrap();
        let recent = RecentChecks::new();
        let at = Instant::now();
        let r2 = ResultRecord {
            headers: vec![moved],
            ..r.clone()
        };
        assert!(matches!(
            r2.check_recent(later, Some((&recent, at))),
            ResultCheck::Match { .. }
        ));
        std::fs::remove_file(&h).unwrap();
        assert!(!matches!(
            r.check_recent(later, Some((&recent, at))),
            ResultCheck::Match { .. }
        ));
    }

    #[test]
    fn a_header_too_new_is_hashed_every_time() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("h.h");
        std::fs::write(&h, "#define V 1\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(1);
        let (r, _) = HeaderRecord::record_with(&h, later, None, &VerifiedHashes::new()).unwrap();
        let f = std::fs::File::options().write(true).open(&h).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        // Its ctime is at or after this check's clock reading: another write in the same
        // tick could leave the same signature, so it vouches for nothing.
        let verified = VerifiedHashes::new();
        let before = SystemTime::now() - Duration::from_secs(1);
        assert!(matches!(
            r.check_with(before, &verified),
            HeaderCheck::SameContent { refreshed } if !refreshed.stat_trusted
        ));
        assert!(verified.is_empty());
        // Nor does a build that started before it was written remember it.
        let (_, racy) = HeaderRecord::record_with(&h, before, None, &verified).unwrap();
        assert!(racy);
        assert!(verified.is_empty());
    }

    #[test]
    fn flipped_bytes_are_never_trusted() {
        let mut m = Manifest::new(&key());
        m.insert(ResultRecord {
            key: "ab".repeat(32),
            headers: vec![],
            created: 1,
            last_used: 1,
        });
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes, &key()).unwrap(), m);
        for i in [0, 20, bytes.len() / 2, bytes.len() - 2] {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Manifest::decode(&b, &key()).is_err(), "flip at {i}");
        }
        let other: Key = "ef".repeat(32).parse().unwrap();
        assert!(Manifest::decode(&bytes, &other)
            .unwrap_err()
            .contains("belongs"));
    }

    #[test]
    fn bounded_most_recent_first() {
        let mut m = Manifest::new(&key());
        let r = |n: u8| ResultRecord {
            key: format!("{n:02x}").repeat(32),
            headers: vec![],
            created: n as u64,
            last_used: n as u64,
        };
        for n in 0..20 {
            m.insert(r(n));
        }
        assert_eq!(m.results.len(), MAX_RESULTS);
        assert_eq!(m.results[0].created, 19);
        m.insert(r(15));
        assert_eq!(m.results.len(), MAX_RESULTS);
        assert_eq!(m.results[0].created, 15);
        m.touch(3, 99);
        assert_eq!(m.results[0].last_used, 99);
    }
}
