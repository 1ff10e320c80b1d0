//! The on-disk store: compiledirs, entries, locks, and the protocol that keeps them
//! consistent between any number of processes.
//!
//! # Layout (layout version 1)
//!
//! ```text
//! <base>/
//!   CACHEDIR.TAG                      marks the tree as a cache for backup tools
//!   compiledir_<platform string>/
//!     compiledir.json                 platform fields, created, xcache version
//!     last-use                        mtime = last use of anything in this compiledir
//!     entries/<fan>/<key>/            one directory per key, published whole by rename
//!         lib.so  source.c|.cpp|.cu  entry.json  last-use  [headers]
//!     locks/<fan>/<key>.lock          per-key lock files
//!     toolchains/<hash>.json          resolved compiler command lines and versions
//!     tmp/build-<key16>-<pid>-<n>/    staging of builds in progress (or crashed)
//!     tmp/failed-<key16>-<pid>-<n>/   failed builds, kept for inspection
//!     quarantine/<key>-<secs>-<pid>/  corrupt entries moved aside
//! ```
//!
//! `<key>` is 64 hex digits of blake3 (see [`key`]); `<fan>` its first two.
//!
//! # Protocol
//!
//! **Hit.**
//! 1. `stat` `entries/<fan>/<key>`. Absent: go to Miss.
//! 2. Take a *shared* lock on `locks/<fan>/<key>.lock`.
//! 3. Read `entry.json`; check it names the key; hash the artifact with blake3 and
//!    compare size and hash with the metadata. Any failure: release, go to Miss (which
//!    quarantines).
//! 4. The caller dlopens the artifact while the lock is held ([`Fetched`] owns the
//!    guard), so no collector can remove the file between the check and the load.
//! 5. Record the use in `last-use` if the recorded one is older than
//!    `last_use_resolution`; a failure to record (read-only cache) is ignored.
//! 6. Release. A loaded library survives the unlink of its file.
//!
//! **Miss.**
//! 1. Take the key's *exclusive* lock. Only if it is busy, log who holds it (the holder
//!    writes `pid=N host=H` into the lock file) and block.
//! 2. Look again: another process may have published while we waited (then it is a hit).
//!    A corrupt entry found here is renamed into `quarantine/` and reported as a warning.
//! 3. Create a fresh staging directory under `tmp/`; compile into it.
//! 4. Compute the artifact's blake3; write `last-use`, then `entry.json` last; fsync every
//!    file and the staging directory.
//! 5. `rename` the staging directory to `entries/<fan>/<key>`; fsync `entries/<fan>`. A
//!    destination that already exists is success: content addressing makes the two
//!    equivalent, and the staging copy is removed.
//! 6. The caller loads under the exclusive lock, then releases it.
//!
//! A failed compile publishes nothing: its staging directory is renamed to
//! `tmp/failed-…` with the source and the compiler's output, and the error names it.
//!
//! # Invariants
//!
//! - Every directory under `entries/` is complete: it appears by one atomic rename after
//!   its `entry.json` (written last) was synced. A crash leaves at most a staging
//!   directory under `tmp/`, which no reader ever looks at.
//! - An artifact whose blake3 differs from its metadata is never handed out: it is
//!   quarantined, a warning is reported, and it is rebuilt.
//! - Distinct keys never wait for each other: there is no compiledir-wide lock.
//! - N processes (or threads, since each lock opens its own file description) asking for
//!   one key cost one compile.
//! - A dead process holds no lock: flock locks die with their last descriptor.
//! - Removing an entry (garbage collection) happens only under its exclusive lock, taken
//!   with a *try*; busy entries are skipped. Lock files may be deleted under their lock:
//!   [`lock`] re-checks the inode after acquiring.
//!
//! # What the file system must provide
//!
//! Atomic `rename(2)` of a directory within one file system, and `flock(2)`. Local file
//! systems (ext4, xfs, btrfs, tmpfs, APFS) do. NFS gives flock only through lockd (NFSv3)
//! or v4 leases, and some FUSE and SMB mounts silently give none: there, concurrent
//! builders of one key may both compile, but the rename keeps the published entry whole.
//!
//! # Trust
//!
//! dlopen runs code. The base dir and the compiledir must be owned by the current user
//! and not writable by group or others; otherwise [`Store::open`] refuses them with an
//! error naming the directory and the fix.

pub mod entry;
pub mod key;
pub mod lock;

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{unix_secs, Clock, SystemClock};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::platform::{CompiledirFormat, Platform, LAYOUT_VERSION};
use entry::{Artifact, EntryMeta, ARTIFACT_FILE, LAST_USE_FILE};
use key::{Key, KeyMaterial};
use lock::LockGuard;

/// The CACHEDIR.TAG contents (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by xcache.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// Metadata file of a compiledir.
pub const COMPILEDIR_FILE: &str = "compiledir.json";

/// Contents of `compiledir.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompiledirMeta {
    /// Layout version.
    pub layout: u32,
    /// The platform fields the directory was made for.
    pub platform: Platform,
    /// When it was created, seconds since the Unix epoch.
    pub created: u64,
    /// The xcache version that created it.
    pub created_by: String,
}

/// What a build step hands back to the store for publishing.
#[derive(Debug, Clone)]
pub struct Built {
    /// What the user calls the source (file name or template name).
    pub source_name: String,
    /// The source file's name inside the staging directory.
    pub source_file: String,
    /// How long the compiler ran.
    pub compile_time: Duration,
    /// What the compiler printed although it succeeded.
    pub compiler_output: String,
    /// The key material (stored in `entry.json`).
    pub key_material: KeyMaterial,
}

/// An entry that is ready: found or freshly built. Holds the key's lock (shared for a
/// hit, exclusive for a build) until dropped, so load the artifact before dropping it.
#[derive(Debug)]
pub struct Fetched {
    /// The key.
    pub key: Key,
    /// The entry directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
    /// True if it was in the cache; false if this call compiled it.
    pub hit: bool,
    /// Cache faults that were repaired along the way (e.g. a quarantined entry).
    pub warnings: Vec<String>,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    _guard: LockGuard,
}

impl Fetched {
    /// The shared object.
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(&self.meta.artifact.file)
    }
}

/// An opened compiledir.
#[derive(Debug, Clone)]
pub struct Store {
    base: PathBuf,
    compiledir: PathBuf,
    platform: Platform,
    clock: Arc<dyn Clock>,
    last_use_resolution: Duration,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the current compiledir under the configured base dir.
    pub fn open(config: &Config) -> Result<Store> {
        Store::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`Store::open`] with an injected clock.
    pub fn open_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Store> {
        let base = config.base_dir()?;
        let platform = Platform::detect(&config.runtime_tag);
        let format = CompiledirFormat::parse(&config.compiledir_format)
            .map_err(|m| Error::Config(format!("compiledir_format: {m}")))?;
        let compiledir = base.join(format.render(&platform));
        let store = Store {
            base,
            compiledir,
            platform,
            clock,
            last_use_resolution: config.last_use_resolution,
        };
        store.ensure_base()?;
        store.ensure_compiledir()?;
        Ok(store)
    }

    /// The base dir.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The current compiledir.
    pub fn compiledir(&self) -> &Path {
        &self.compiledir
    }

    /// The platform of the current compiledir.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Directory of the entries.
    pub fn entries_dir(&self) -> PathBuf {
        self.compiledir.join("entries")
    }

    /// Directory of an entry (whether or not it exists).
    pub fn entry_dir(&self, key: &Key) -> PathBuf {
        self.entries_dir().join(key.fan()).join(key.hex())
    }

    /// The lock file of a key.
    pub fn lock_path(&self, key: &Key) -> PathBuf {
        self.compiledir
            .join("locks")
            .join(key.fan())
            .join(format!("{}.lock", key.hex()))
    }

    /// Directory of cached toolchain resolutions.
    pub fn toolchains_dir(&self) -> PathBuf {
        self.compiledir.join("toolchains")
    }

    fn ensure_base(&self) -> Result<()> {
        let base = &self.base;
        let fresh = !base.exists();
        if fresh {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(base)
                .ctx("creating cache directory", base)?;
        }
        check_trusted(base)?;
        let tag = base.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Tag only a directory that is ours: a user who points XCACHE_DIR at a
            // directory full of their own files must not have backups skip it.
            let empty = fs::read_dir(base)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if fresh || empty {
                write_atomic(&tag, CACHEDIR_TAG.as_bytes())?;
            }
        }
        Ok(())
    }

    fn ensure_compiledir(&self) -> Result<()> {
        let dir = &self.compiledir;
        if dir.join(COMPILEDIR_FILE).exists() {
            return check_trusted(dir);
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .ctx("creating compiledir", dir)?;
        check_trusted(dir)?;
        for sub in ["entries", "locks", "tmp", "quarantine", "toolchains"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).ctx("creating directory", &p)?;
        }
        let meta = CompiledirMeta {
            layout: LAYOUT_VERSION,
            platform: self.platform.clone(),
            created: unix_secs(self.clock.now()),
            created_by: format!("xcache {}", env!("CARGO_PKG_VERSION")),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("serialises");
        write_atomic(&dir.join(COMPILEDIR_FILE), &json)?;
        entry::touch_last_use(dir, self.clock.now(), Duration::ZERO);
        Ok(())
    }

    /// Returns the entry for `key`, building it with `build` if it is missing or corrupt.
    ///
    /// `build` gets an empty staging directory; it must leave the source and
    /// [`ARTIFACT_FILE`] there. It runs at most once, under the key's exclusive lock.
    pub fn get_or_build(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Path) -> Result<Built>,
    ) -> Result<Fetched> {
        let dir = self.entry_dir(key);
        let lock_path = self.lock_path(key);
        let mut warnings = Vec::new();
        let mut lock_wait = Duration::ZERO;

        // Hit: shared lock, verify.
        if dir.exists() {
            let guard = lock::lock_shared(&lock_path)?;
            lock_wait += guard.waited();
            if let Ok(meta) = entry::verify(&dir, key) {
                self.record_use(&dir);
                return Ok(Fetched {
                    key: *key,
                    dir,
                    meta,
                    hit: true,
                    warnings,
                    lock_wait,
                    _guard: guard,
                });
            }
            // Corrupt: repaired below under the exclusive lock.
        }

        // Miss: exclusive lock, look again.
        let short = &key.hex()[..16];
        let guard = lock::lock_exclusive(&lock_path, &mut |holder| {
            log::info!(
                "waiting for the lock on {short} held by {}",
                holder.unwrap_or("another process")
            )
        })?;
        lock_wait += guard.waited();
        if dir.exists() {
            match entry::verify(&dir, key) {
                Ok(meta) => {
                    self.record_use(&dir);
                    return Ok(Fetched {
                        key: *key,
                        dir,
                        meta,
                        hit: true,
                        warnings,
                        lock_wait,
                        _guard: guard,
                    });
                }
                Err(corruption) => {
                    let moved = self.quarantine(key, &dir)?;
                    let w = format!(
                        "corrupt cache entry {short}… ({corruption}): moved to {} and rebuilt",
                        moved.display()
                    );
                    log::warn!("{w}");
                    warnings.push(w);
                }
            }
        }

        let staging = self.new_staging(key)?;
        let built = match build(&staging) {
            Ok(b) => b,
            Err(e) => return Err(self.keep_failed(&staging, e)),
        };
        let meta = self.seal(&staging, key, built)?;
        publish(&staging, &dir)?;
        Ok(Fetched {
            key: *key,
            dir,
            meta,
            hit: false,
            warnings,
            lock_wait,
            _guard: guard,
        })
    }

    fn record_use(&self, dir: &Path) {
        let now = self.clock.now();
        if entry::touch_last_use(dir, now, self.last_use_resolution) {
            entry::touch_last_use(&self.compiledir, now, self.last_use_resolution);
        }
    }

    fn new_staging(&self, key: &Key) -> Result<PathBuf> {
        let tmp = self.compiledir.join("tmp");
        fs::create_dir_all(&tmp).ctx("creating directory", &tmp)?;
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!(
            "build-{}-{}-{n}",
            &key.hex()[..16],
            std::process::id()
        ));
        if dir.exists() {
            // Left by a crashed process that had our pid: nothing else can be using it.
            fs::remove_dir_all(&dir).ctx("removing stale staging directory", &dir)?;
        }
        fs::create_dir(&dir).ctx("creating staging directory", &dir)?;
        Ok(dir)
    }

    /// Renames a failed build's staging directory to `tmp/failed-…` and points the
    /// error at the kept files.
    fn keep_failed(&self, staging: &Path, err: Error) -> Error {
        let name = staging
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .replacen("build-", "failed-", 1);
        let kept = staging.with_file_name(name);
        let _ = fs::remove_dir_all(&kept);
        if fs::rename(staging, &kept).is_err() {
            return err;
        }
        match err {
            Error::Compile(mut ce) => {
                if let Ok(rel) = ce.kept_source.strip_prefix(staging) {
                    ce.kept_source = kept.join(rel);
                }
                ce.workdir = kept.clone();
                let _ = fs::write(kept.join("compiler-output.txt"), &ce.output);
                Error::Compile(ce)
            }
            other => other,
        }
    }

    /// Hashes the artifact, writes `last-use` and `entry.json`, syncs everything.
    fn seal(&self, staging: &Path, key: &Key, built: Built) -> Result<EntryMeta> {
        let artifact = staging.join(ARTIFACT_FILE);
        let (blake3, size) = entry::hash_file(&artifact).ctx("hashing", &artifact)?;
        for name in fs::read_dir(staging).ctx("reading", staging)? {
            let p = name.ctx("reading", staging)?.path();
            if p.is_file() {
                File::open(&p)
                    .and_then(|f| f.sync_all())
                    .ctx("syncing", &p)?;
            }
        }
        let now = self.clock.now();
        let meta = EntryMeta {
            format: LAYOUT_VERSION,
            key: key.hex(),
            source_name: built.source_name,
            source_file: built.source_file,
            artifact: Artifact {
                file: ARTIFACT_FILE.into(),
                blake3,
                size,
            },
            created: unix_secs(now),
            compile_ms: built.compile_time.as_millis() as u64,
            compiler_output: built.compiler_output,
            key_material: built.key_material,
        };
        let last_use = staging.join(LAST_USE_FILE);
        File::create(&last_use)
            .and_then(|f| {
                f.set_modified(now)?;
                f.sync_all()
            })
            .ctx("writing", &last_use)?;
        entry::write_meta(staging, &meta)?;
        sync_dir(staging)?;
        Ok(meta)
    }

    /// Moves a corrupt entry aside. Called under the key's exclusive lock.
    fn quarantine(&self, key: &Key, dir: &Path) -> Result<PathBuf> {
        let qdir = self.compiledir.join("quarantine");
        fs::create_dir_all(&qdir).ctx("creating directory", &qdir)?;
        let dest = qdir.join(format!(
            "{}-{}-{}",
            key.hex(),
            unix_secs(self.clock.now()),
            std::process::id()
        ));
        match fs::rename(dir, &dest) {
            Ok(()) => Ok(dest),
            Err(_) => {
                fs::remove_dir_all(dir).ctx("removing corrupt entry", dir)?;
                Ok(dir.to_path_buf())
            }
        }
    }

    /// Reads the compiledir's metadata.
    pub fn compiledir_meta(&self) -> Result<CompiledirMeta> {
        read_compiledir_meta(&self.compiledir)
    }
}

/// Reads `compiledir.json` of a compiledir.
pub fn read_compiledir_meta(dir: &Path) -> Result<CompiledirMeta> {
    let p = dir.join(COMPILEDIR_FILE);
    let bytes = fs::read(&p).ctx("reading", &p)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{} is not valid: {e}", p.display())))
}

/// Renames a sealed staging directory into place; "already there" is success.
fn publish(staging: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().expect("entry dirs have a parent");
    fs::create_dir_all(parent).ctx("creating directory", parent)?;
    match fs::rename(staging, dest) {
        Ok(()) => sync_dir(parent),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
            // Someone published the same key without our lock (a file system without
            // flock): the content is equivalent, keep theirs.
            let _ = fs::remove_dir_all(staging);
            Ok(())
        }
        Err(e) => Err(Error::io("publishing", dest, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("syncing directory", dir)
}

/// Writes a file whole or not at all: temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.ctx("writing", path)
}

/// Why a directory is not trusted, as (reason, fix); `None` if it is fine. Pure: takes
/// the directory's owner and mode and the current user.
pub fn trust_problem(path: &Path, owner: u32, mode: u32, euid: u32) -> Option<(String, String)> {
    let shown = path.display();
    if owner != euid {
        return Some((
            format!("it is owned by uid {owner}, not by you (uid {euid}), and xcache loads code from it"),
            format!("use a cache directory of your own (set XCACHE_DIR), or `chown -R {euid} {shown}` if it should be yours"),
        ));
    }
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some((
            format!("it is writable by {who} (mode {:03o}), so they could plant code that xcache would load", mode & 0o777),
            format!("`chmod go-w {shown}`, or set XCACHE_DIR to a private directory"),
        ));
    }
    None
}

fn check_trusted(dir: &Path) -> Result<()> {
    let md = fs::metadata(dir).ctx("inspecting", dir)?;
    if !md.is_dir() {
        return Err(Error::Untrusted {
            path: dir.to_path_buf(),
            reason: "it is not a directory".into(),
            fix: "remove it, or set XCACHE_DIR to a directory".into(),
        });
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    match trust_problem(dir, md.uid(), md.mode(), euid) {
        None => Ok(()),
        Some((reason, fix)) => Err(Error::Untrusted {
            path: dir.to_path_buf(),
            reason,
            fix,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_decisions() {
        let p = Path::new("/c");
        assert_eq!(trust_problem(p, 1000, 0o40755, 1000), None);
        assert_eq!(trust_problem(p, 1000, 0o40700, 1000), None);
        let (r, f) = trust_problem(p, 0, 0o40755, 1000).unwrap();
        assert!(
            r.contains("owned by uid 0") && f.contains("XCACHE_DIR"),
            "{r} {f}"
        );
        let (r, f) = trust_problem(p, 1000, 0o40777, 1000).unwrap();
        assert!(r.contains("group and others") && r.contains("777"), "{r}");
        assert!(f.contains("chmod go-w /c"), "{f}");
        let (r, _) = trust_problem(p, 1000, 0o40775, 1000).unwrap();
        assert!(r.contains("its group"), "{r}");
        let (r, _) = trust_problem(p, 1000, 0o41757, 1000).unwrap();
        assert!(r.contains("others"), "{r}");
    }
}
