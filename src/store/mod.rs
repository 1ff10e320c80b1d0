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
//!     tmp/build-<key>-<random>/       staging of a build in progress (or crashed)
//!     tmp/failed-<key>-<random>/      failed builds, kept for inspection
//!     tmp/delete-<key16>-<pid>-<n>/   an entry being removed, renamed out first
//!     quarantine/<key>-<secs>-<pid>-<n>/  corrupt entries moved aside
//!     stats/<pid>-<nanos>.json        per-process counters (see `crate::stats`)
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
//! **Cache faults.** If the cache cannot be written (read-only, full, permission
//! denied), a miss compiles into a private temporary directory outside the cache
//! instead, with one warning: the caller gets its library, the cache is left as it was.
//! A failure to *read* an entry for reasons of this process (too many open files, EIO)
//! is an error, never a reason to quarantine a good entry.
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
//!   with a *try*; busy entries are skipped. The entry is renamed out of `entries/`
//!   first, so readers see it whole or not at all. Lock files may be deleted under their
//!   lock: [`lock`] re-checks the inode after acquiring.
//! - A staging directory is collected only when its builder no longer holds the key's
//!   lock (the builder holds it for as long as the directory is in use) and it is older
//!   than `staging_grace`; age alone never decides.
//! - Nothing is removed that xcache did not make: entries are key-named directories,
//!   compiledirs carry `compiledir.json`, a base dir xcache's `CACHEDIR.TAG`.
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
//! dlopen runs code. The base dir, the compiledir, and its `entries/` and `toolchains/`
//! must be owned by the current user and not writable by group or others; otherwise
//! [`Store::open`] refuses them with an error naming the directory and the fix. Every
//! directory xcache creates is 0755 and every file 0644 whatever the umask allows, and
//! on a hit the entry directory and the artifact are checked the same way (from the
//! `stat` and `fstat` the hit makes anyway): a planted entry is quarantined, not loaded.

pub mod entry;
pub mod gc;
pub mod key;
pub mod lock;
pub mod trust;

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{unix_secs, Clock, SystemClock};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::platform::{check_runtime_tag, CompiledirFormat, Platform, LAYOUT_VERSION};
use entry::{Artifact, EntryMeta, VerifyError, ARTIFACT_FILE, LAST_USE_FILE};
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
    /// The entry directory (a private temporary directory if the cache could not be
    /// written; see [`Fetched::is_private`]).
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
    /// True if it was in the cache; false if this call compiled it.
    pub hit: bool,
    /// Cache faults that were repaired or worked around along the way.
    pub warnings: Vec<String>,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    private: Option<tempfile::TempDir>,
    _guard: LockGuard,
}

impl Fetched {
    /// The shared object.
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(&self.meta.artifact.file)
    }

    /// True when the artifact lives in a private temporary directory (removed when
    /// this is dropped) because the cache could not be written.
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Keeps a private temporary directory after drop (for callers that hand the path
    /// on). No effect on cache entries.
    pub fn keep_private(&mut self) {
        if let Some(d) = self.private.take() {
            let _ = d.keep();
        }
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

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a directory and its parents with mode 0755 (2775 in shared-group mode; never
/// wider, whatever the umask).
pub fn mkdir_p(path: &Path) -> std::io::Result<()> {
    let existed = path.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(trust::dir_mode())
        .create(path)?;
    if !existed && trust::shared_group().is_some() {
        // The umask may have taken the group's write bit: set it exactly.
        fs::set_permissions(path, fs::Permissions::from_mode(trust::dir_mode()))?;
    }
    Ok(())
}

/// The paths inside one compiledir (any compiledir, not only the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    root: PathBuf,
}

impl Dirs {
    /// The layout of the compiledir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Dirs {
        Dirs { root: root.into() }
    }

    /// The compiledir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `entries/`.
    pub fn entries(&self) -> PathBuf {
        self.root.join("entries")
    }

    /// `entries/<fan>/<key>`.
    pub fn entry(&self, key: &Key) -> PathBuf {
        self.entries().join(key.fan()).join(key.hex())
    }

    /// `locks/`.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// `locks/<fan>/<key>.lock`.
    pub fn lock(&self, key: &Key) -> PathBuf {
        self.locks()
            .join(key.fan())
            .join(format!("{}.lock", key.hex()))
    }

    /// `tmp/`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `quarantine/`.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `toolchains/`.
    pub fn toolchains(&self) -> PathBuf {
        self.root.join("toolchains")
    }
}

/// The key a staging directory (`build-<key>-<random>`) is building, if its name says.
pub fn staging_key(name: &str) -> Option<Key> {
    name.strip_prefix("build-")?.get(..64)?.parse().ok()
}

/// True while the build that owns a staging directory is alive: its builder holds the
/// key's exclusive lock for as long as the directory is in use, so a free lock means
/// the builder is gone (crashed or killed) and the directory is garbage. Takes no
/// lock for long: a try, released at once.
pub fn staging_in_use(dirs: &Dirs, name: &str) -> bool {
    let Some(key) = staging_key(name) else {
        return false;
    };
    let lock_path = dirs.lock(&key);
    if !lock_path.exists() {
        return false;
    }
    !matches!(lock::try_lock_exclusive(&lock_path), Ok(Some(_)))
}

/// What happened to an entry that garbage collection wanted to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed; it held this many bytes.
    Removed(u64),
    /// Another process holds its lock (it is being loaded or built): left alone.
    Busy,
    /// It was already gone.
    Gone,
}

/// Removes one entry under a *try* exclusive lock on its key: busy entries are
/// skipped. The directory is first renamed into `tmp/` (one atomic step: readers see
/// the whole entry or none), then deleted; then its lock file, still under the lock.
pub fn remove_entry(dirs: &Dirs, key: &Key) -> Result<Removal> {
    let lock_path = dirs.lock(key);
    let Some(guard) = lock::try_lock_exclusive(&lock_path)? else {
        return Ok(Removal::Busy);
    };
    let dir = dirs.entry(key);
    let removal = if dir.exists() {
        let bytes = dir_bytes(&dir).0;
        let tmp = dirs.tmp();
        mkdir_p(&tmp).ctx("creating directory", &tmp)?;
        let trash = tmp.join(format!(
            "delete-{}-{}-{}",
            &key.hex()[..16],
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&dir, &trash).ctx("removing", &dir)?;
        // The entry is gone from entries/ now; what is left in tmp/ is garbage that a
        // crash or a concurrent collector may also be removing.
        if let Err(e) = fs::remove_dir_all(&trash) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("could not remove {}: {e}", trash.display());
            }
        }
        Removal::Removed(bytes)
    } else {
        Removal::Gone
    };
    // Safe under the lock: a waiter on this file re-checks the inode (see `lock`).
    let _ = fs::remove_file(&lock_path);
    drop(guard);
    Ok(removal)
}

/// Moves a corrupt entry aside into `quarantine/`; `None` if it had to be removed
/// instead. Call it under the key's exclusive lock.
pub fn quarantine_entry(
    dirs: &Dirs,
    key: &Key,
    dir: &Path,
    now: std::time::SystemTime,
) -> Result<Option<PathBuf>> {
    let qdir = dirs.quarantine();
    mkdir_p(&qdir).ctx("creating directory", &qdir)?;
    let dest = qdir.join(format!(
        "{}-{}-{}-{}",
        key.hex(),
        unix_secs(now),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    match fs::rename(dir, &dest) {
        Ok(()) => Ok(Some(dest)),
        Err(_) => {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(dir).ctx("removing corrupt entry", dir)?;
            } else {
                fs::remove_file(dir).ctx("removing corrupt entry", dir)?;
            }
            Ok(None)
        }
    }
}

/// Apparent bytes (sum of file lengths) and on-disk bytes (allocated blocks) of the
/// files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    let mut apparent = 0;
    let mut disk = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(md) = e.metadata() {
                if md.is_file() {
                    apparent += md.len();
                    disk += md.blocks() * 512;
                }
            }
        }
    }
    (apparent, disk)
}

impl Store {
    /// Opens (creating if needed) the current compiledir under the configured base dir.
    pub fn open(config: &Config) -> Result<Store> {
        Store::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`Store::open`] with an injected clock.
    pub fn open_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Store> {
        let base = config.base_dir()?;
        // The fields are public: check again what reaches a path.
        check_runtime_tag(&config.runtime_tag).map_err(|m| {
            Error::Config(format!(
                "runtime_tag {:?}: expected {m}",
                config.runtime_tag
            ))
        })?;
        trust::set_shared_group(config.shared_gid);
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

    /// The paths inside the current compiledir.
    pub fn dirs(&self) -> Dirs {
        Dirs::new(&self.compiledir)
    }

    /// Directory of the entries.
    pub fn entries_dir(&self) -> PathBuf {
        self.dirs().entries()
    }

    /// Directory of an entry (whether or not it exists).
    pub fn entry_dir(&self, key: &Key) -> PathBuf {
        self.dirs().entry(key)
    }

    /// The lock file of a key.
    pub fn lock_path(&self, key: &Key) -> PathBuf {
        self.dirs().lock(key)
    }

    /// Directory of cached toolchain resolutions.
    pub fn toolchains_dir(&self) -> PathBuf {
        self.dirs().toolchains()
    }

    fn ensure_base(&self) -> Result<()> {
        let base = &self.base;
        let fresh = !base.exists();
        if fresh {
            mkdir_p(base).ctx("creating cache directory", base)?;
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
        if !dir.join(COMPILEDIR_FILE).exists() {
            mkdir_p(dir).ctx("creating compiledir", dir)?;
            check_trusted(dir)?;
            for sub in ["entries", "locks", "tmp", "quarantine", "toolchains"] {
                let p = dir.join(sub);
                mkdir_p(&p).ctx("creating directory", &p)?;
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
        }
        // What is loaded or run comes from these: the same rules as the base dir. A
        // user may have deleted one by hand: make it again.
        check_trusted(dir)?;
        for sub in ["entries", "toolchains"] {
            let p = dir.join(sub);
            if !p.exists() {
                mkdir_p(&p).ctx("creating directory", &p)?;
            }
            check_trusted(&p)?;
        }
        Ok(())
    }

    /// Returns the entry for `key`, building it with `build` if it is missing or corrupt.
    ///
    /// `build` gets an empty staging directory; it must leave the source and
    /// [`ARTIFACT_FILE`] there. It runs under the key's exclusive lock, once; a second
    /// time only if the cache turns out not to be writable (into a private directory).
    pub fn get_or_build(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Path) -> Result<Built>,
    ) -> Result<Fetched> {
        match self.get_or_build_cached(key, build) {
            // A compiler that fails because the cache's disk is full (the linker's
            // "No space left on device") is a cache fault too.
            Err(e)
                if is_cache_fault(&e)
                    || (matches!(e, Error::Compile(_)) && nearly_full(&self.compiledir)) =>
            {
                let w = format!(
                    "the cache cannot be written ({e}); compiled into a private temporary directory instead"
                );
                log::warn!("{w}");
                let mut f = self.build_private(key, build)?;
                f.warnings.push(w);
                Ok(f)
            }
            r => r,
        }
    }

    fn get_or_build_cached(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Path) -> Result<Built>,
    ) -> Result<Fetched> {
        let dir = self.entry_dir(key);
        let lock_path = self.lock_path(key);
        let mut warnings = Vec::new();
        let mut lock_wait = Duration::ZERO;

        // Hit: shared lock, verify.
        if let Ok(md) = fs::symlink_metadata(&dir) {
            let guard = lock::lock_shared(&lock_path)?;
            lock_wait += guard.waited();
            match check_entry(&dir, &md, key) {
                Ok(meta) => return Ok(self.hit(key, dir, meta, warnings, lock_wait, guard)),
                Err(VerifyError::Io(p, e)) => return Err(Error::io("reading", p, e)),
                Err(VerifyError::Corrupt(_)) => {} // repaired below, under the exclusive lock
            }
        }

        // Miss: exclusive lock, look again.
        let short = &key.hex()[..16];
        let guard = lock::lock_exclusive(&lock_path, &mut |holder| {
            log::warn!(
                "waiting for the lock on {short}… held by {}",
                holder.unwrap_or("another process")
            )
        })?;
        lock_wait += guard.waited();
        if let Ok(md) = fs::symlink_metadata(&dir) {
            match check_entry(&dir, &md, key) {
                Ok(meta) => return Ok(self.hit(key, dir, meta, warnings, lock_wait, guard)),
                Err(VerifyError::Io(p, e)) => return Err(Error::io("reading", p, e)),
                Err(VerifyError::Corrupt(corruption)) => {
                    let w = match quarantine_entry(&self.dirs(), key, &dir, self.clock.now())? {
                        Some(moved) => format!(
                            "corrupt cache entry {short}… ({corruption}): moved to {} and rebuilt",
                            moved.display()
                        ),
                        None => format!(
                            "corrupt cache entry {short}… ({corruption}): removed and rebuilt"
                        ),
                    };
                    log::warn!("{w}");
                    warnings.push(w);
                }
            }
        }

        let staging = self.new_staging(key)?;
        let built = match build(staging.path()) {
            Ok(b) => b,
            Err(e) => {
                // No entry will exist: its lock file would be an orphan. Safe to
                // remove under the lock (waiters re-check the inode).
                let _ = fs::remove_file(&lock_path);
                return Err(keep_failed(staging, e));
            }
        };
        pause_point("compiled");
        let meta = seal(staging.path(), key, built, self.clock.now())?;
        pause_point("sealed");
        publish(staging, &dir)?;
        pause_point("published");
        Ok(Fetched {
            key: *key,
            dir,
            meta,
            hit: false,
            warnings,
            lock_wait,
            private: None,
            _guard: guard,
        })
    }

    /// Builds into a private temporary directory outside the cache.
    fn build_private(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Path) -> Result<Built>,
    ) -> Result<Fetched> {
        let tmp = tempfile::Builder::new()
            .prefix("xcache-private-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| {
                Error::io(
                    "creating a private build directory in",
                    std::env::temp_dir(),
                    e,
                )
            })?;
        let built = match build(tmp.path()) {
            Ok(b) => b,
            Err(e) => {
                // Keep the source of a failed compile: the error points at it.
                let _ = tmp.keep();
                return Err(e);
            }
        };
        let meta = seal(tmp.path(), key, built, self.clock.now())?;
        Ok(Fetched {
            key: *key,
            dir: tmp.path().to_path_buf(),
            meta,
            hit: false,
            warnings: Vec::new(),
            lock_wait: Duration::ZERO,
            private: Some(tmp),
            _guard: LockGuard::none(&self.lock_path(key)),
        })
    }

    /// A verified entry, handed out with the lock it was verified under.
    fn hit(
        &self,
        key: &Key,
        dir: PathBuf,
        meta: EntryMeta,
        warnings: Vec<String>,
        lock_wait: Duration,
        guard: LockGuard,
    ) -> Fetched {
        self.record_use(&dir);
        Fetched {
            key: *key,
            dir,
            meta,
            hit: true,
            warnings,
            lock_wait,
            private: None,
            _guard: guard,
        }
    }

    fn record_use(&self, dir: &Path) {
        let now = self.clock.now();
        if entry::touch_last_use(dir, now, self.last_use_resolution) {
            entry::touch_last_use(&self.compiledir, now, self.last_use_resolution);
        }
    }

    fn new_staging(&self, key: &Key) -> Result<tempfile::TempDir> {
        let tmp = self.compiledir.join("tmp");
        mkdir_p(&tmp).ctx("creating directory", &tmp)?;
        // A fresh random name: never another builder's directory, even on a file
        // system without working locks.
        let dir = tempfile::Builder::new()
            .prefix(&format!("build-{}-", key.hex()))
            .permissions(fs::Permissions::from_mode(trust::dir_mode()))
            .tempdir_in(&tmp)
            .ctx("creating a staging directory in", &tmp)?;
        if trust::shared_group().is_some() {
            // The umask may have taken the group's write bit.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(trust::dir_mode()))
                .ctx("setting the mode of", dir.path())?;
        }
        Ok(dir)
    }

    /// Reads the compiledir's metadata.
    pub fn compiledir_meta(&self) -> Result<CompiledirMeta> {
        read_compiledir_meta(&self.compiledir)
    }
}

/// True when the file system holding `dir` has less than 1 MiB left for this user.
fn nearly_full(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut st) == 0
            && (st.f_bavail as u128) * (st.f_frsize as u128) < (1 << 20)
    }
}

/// The full check a hit makes: the entry is a real directory of ours, not writable by
/// others, with valid metadata and an artifact of ours whose hash matches. `md` is the
/// entry directory's `symlink_metadata`.
pub fn check_entry(
    dir: &Path,
    md: &fs::Metadata,
    key: &Key,
) -> std::result::Result<EntryMeta, VerifyError> {
    if !md.is_dir() {
        return Err(entry::Corruption::Untrusted("the entry is not a directory".into()).into());
    }
    if let Some(why) = trust::untrusted("the entry directory", md) {
        return Err(entry::Corruption::Untrusted(why).into());
    }
    entry::verify(dir, key)
}

/// Errors that mean "the cache cannot be written", after which compiling privately
/// still works.
fn is_cache_fault(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::EROFS)
                | Some(libc::EACCES)
                | Some(libc::EPERM)
                | Some(libc::ENOSPC)
                | Some(libc::EDQUOT)
        ),
        _ => false,
    }
}

/// Renames a failed build's staging directory to `tmp/failed-…` and points the compile
/// error at the kept files. Other errors just remove the staging directory.
fn keep_failed(staging: tempfile::TempDir, err: Error) -> Error {
    let Error::Compile(mut ce) = err else {
        return err; // dropping `staging` removes it
    };
    let path = staging.keep();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .replacen("build-", "failed-", 1);
    let kept = path.with_file_name(name);
    if fs::rename(&path, &kept).is_err() {
        let _ = fs::write(path.join("compiler-output.txt"), &ce.output);
        return Error::Compile(ce);
    }
    if let Ok(rel) = ce.kept_source.strip_prefix(&path) {
        ce.kept_source = kept.join(rel);
    }
    ce.workdir = kept.clone();
    let _ = fs::write(kept.join("compiler-output.txt"), &ce.output);
    Error::Compile(ce)
}

/// Hashes the artifact, writes `last-use` and `entry.json`, sets modes, syncs
/// everything.
fn seal(staging: &Path, key: &Key, built: Built, now: std::time::SystemTime) -> Result<EntryMeta> {
    let artifact = staging.join(ARTIFACT_FILE);
    let (blake3, size) = entry::hash_file(&artifact).ctx("hashing", &artifact)?;
    let last_use = staging.join(LAST_USE_FILE);
    entry::create_file(&last_use)
        .and_then(|f| f.set_modified(now))
        .ctx("writing", &last_use)?;
    let mut files = entry::FileBytes {
        apparent: 0,
        disk: 0,
    };
    for name in fs::read_dir(staging).ctx("reading", staging)? {
        let p = name.ctx("reading", staging)?.path();
        if p.is_file() {
            // The compiler creates files with the umask's idea of a mode.
            fs::set_permissions(&p, fs::Permissions::from_mode(trust::file_mode()))
                .ctx("setting the mode of", &p)?;
            let f = File::open(&p).ctx("syncing", &p)?;
            f.sync_all().ctx("syncing", &p)?;
            // Measured after the sync: allocated blocks are known by then.
            let md = f.metadata().ctx("inspecting", &p)?;
            files.apparent += md.len();
            files.disk += md.blocks() * 512;
        }
    }
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
        files: Some(files),
        key_material: built.key_material,
    };
    entry::write_meta(staging, &meta)?;
    sync_dir(staging)?;
    Ok(meta)
}

/// Reads `compiledir.json` of a compiledir.
pub fn read_compiledir_meta(dir: &Path) -> Result<CompiledirMeta> {
    let p = dir.join(COMPILEDIR_FILE);
    let bytes = fs::read(&p).ctx("reading", &p)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{} is not valid: {e}", p.display())))
}

/// Renames a sealed staging directory into place; "already there" is success.
fn publish(staging: tempfile::TempDir, dest: &Path) -> Result<()> {
    let fan = dest.parent().expect("entry dirs have a parent");
    let new_fan = !fan.exists();
    mkdir_p(fan).ctx("creating directory", fan)?;
    match fs::rename(staging.path(), dest) {
        Ok(()) => {
            let _ = staging.keep(); // it is the entry now
            sync_dir(fan)?;
            if new_fan {
                sync_dir(fan.parent().expect("fan dirs have a parent"))?;
            }
            Ok(())
        }
        // Someone published the same key without our lock (a file system without
        // flock): the content is equivalent, keep theirs; dropping `staging` removes ours.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => Ok(()),
        Err(e) => Err(Error::io("publishing", dest, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("syncing directory", dir)
}

/// Writes a file whole or not at all (mode 0644): temp file beside it, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(trust::file_mode())
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.ctx("writing", path)?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Test hook (debug builds only): with `__XCACHE_TEST_PAUSE=<point>:<dir>`, a build
/// stops at `<point>` (`source-written`, `compiled`, `sealed`, `published`), writes the point's name to
/// the FIFO `<dir>/started` and waits for a line on the FIFO `<dir>/release`. The
/// crash tests kill a process there, at a known step of the protocol, without sleeping.
pub(crate) fn pause_point(point: &str) {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("__XCACHE_TEST_PAUSE") {
        if let Some((p, dir)) = spec.split_once(':') {
            if p == point {
                let dir = Path::new(dir);
                if let Ok(mut f) = fs::OpenOptions::new().write(true).open(dir.join("started")) {
                    let _ = writeln!(f, "{point}");
                }
                let _ = fs::read_to_string(dir.join("release"));
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
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
    match trust::problem(
        dir,
        md.uid(),
        md.gid(),
        md.mode(),
        euid,
        trust::shared_group(),
    ) {
        None => Ok(()),
        Some((reason, fix)) => Err(Error::Untrusted {
            path: dir.to_path_buf(),
            reason,
            fix,
        }),
    }
}
