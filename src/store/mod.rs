//! The on-disk store: compiledirs, entries, locks, and the protocol that keeps them
//! consistent between any number of processes. The store owns the layout (every name
//! is in [`layout`]) and its cleanup ([`gc`]): nothing outside this module creates,
//! renames or removes anything under the base dir.
//!
//! # Layout (layout version 3)
//!
//! ```text
//! <base>/
//!   CACHEDIR.TAG                      marks the tree as a cache for backup tools
//!   compiledir_<platform string>/
//!     compiledir.json                 platform fields, created, xcache version
//!     last-use                        mtime = last use of anything in this compiledir
//!     auto-prune                      mtime = when the automatic prune last ran
//!     gc.lock                         try-locked by the automatic prune
//!     index                           log of the entries' facts, what listings read
//!     index.lock                      shared by index appenders, exclusive for a rewrite
//!     entries/<fan>/<key>/            one directory per key, published whole by rename
//!         lib.so|kernel.cubin|kernel.ptx  source.c|.cpp|.cu  [headers]  entry.json
//!         last-use  handed-out        (the artifact: a shared object, or a CUDA module
//!                                     from NVRTC; exactly one, named in entry.json)
//!         files/<name>…               instead, for an artifact group ([`group`]): the
//!                                     files another compiler built, each hashed
//!         verified                    identity of the artifact when last hashed
//!     manifests/<fan>/<key>.manifest  results of a request key and the headers they read
//!     locks/<fan>/<key>.lock          per-key lock files ("pid=N host=H" of a writer)
//!     toolchains/host-<lang>-<h>.json resolved compiler command lines and versions
//!     toolchains/nvrtc-<h>.json       resolved libnvrtc: path, version, accepted options
//!     toolchains/render-<d>.json      a rendered template request (memo; docs/FORMAT.md)
//!     tmp/build-<key>-<unique>/       staging of a build in progress (or crashed)
//!     tmp/failed-<key>-<unique>/      a failed build (source, compiler-output.txt)
//!     tmp/delete-<key>-<unique>/      an entry being removed, renamed out first
//!     quarantine/<key>-<secs>-<unique>/  a corrupt entry moved aside
//!     stats/counters.json             usage counters of every process, under its lock
//! $TMPDIR/xcache-private-<uid>/build-<key>-<unique>/
//!                                     private builds, when the cache cannot be written
//! ```
//!
//! `<key>` is 64 hex digits of blake3 (see [`key`]); `<fan>` its first two; `<unique>`
//! is `<pid>-<counter>-<time>` ([`layout::unique`]). Layout version 3: version 2 had no
//! artifact groups (`files/`, `producer` and `group` in `entry.json`, member lines in
//! `verified`); version 1 had no manifests and keyed entries by the request alone
//! (their compiledirs are stale).
//!
//! # Protocol
//!
//! **Hit.**
//! 1. `stat` `entries/<fan>/<key>`. Absent: go to Miss.
//! 2. Take a *shared* lock on `locks/<fan>/<key>.lock`.
//! 3. Open the entry directory (no link on the way), check its owner and mode, read
//!    `entry.json`, check it names the key; hash the artifact with blake3 and compare
//!    size and hash with the metadata. Any failure: release, go to Miss (which
//!    quarantines).
//! 4. The caller dlopens the artifact while the lock is held ([`Fetched`] owns the
//!    guard), so no collector can remove the file between the check and the load. A
//!    CUDA module (`kernel.cubin`, `kernel.ptx`) is read into memory under the lock, its
//!    bytes checked against the hash again, and loaded from them (`cuModuleLoadData`).
//!    A caller that hands the *path* on instead (`xcache compile`, [`crate::Jit::build`])
//!    records the hand-out in `handed-out` under the lock ([`Fetched::hand_out`]):
//!    collectors leave the entry alone for `handout_grace` after that.
//! 5. Record the use in `last-use` if the recorded one is older than
//!    `last_use_resolution`; a failure to record (read-only cache) is ignored.
//! 6. Release. A loaded library survives the unlink of its file.
//!
//! **Miss.**
//! 1. Take the key's *exclusive* lock. Only if it is busy, log who holds it (the holder
//!    writes `pid=N host=H` into the lock file) and block.
//! 2. Look again: another process may have published while we waited (then it is a hit).
//!    A corrupt entry found here is renamed into `quarantine/` and reported as a warning.
//! 3. Create a fresh staging directory `tmp/build-<key>-<unique>`; compile into it.
//! 4. Compute the artifact's blake3; write `last-use`, `handed-out` and `verified`
//!    (advice: not synced), then `entry.json` last; fsync every other file (their
//!    writeback started together first, so that the fsyncs share a journal commit) and
//!    the staging directory.
//! 5. Append an intent record for the key to `index`; `rename` the staging directory to
//!    `entries/<fan>/<key>`; fsync `entries/<fan>`; append the entry's record. A
//!    destination that already exists is success: content addressing makes the two
//!    equivalent, and the staging copy is removed.
//! 6. The caller loads under the exclusive lock, then releases it.
//!
//! **Tracked requests** ([`Store::get_or_build_tracked`], what [`crate::Jit`] uses: the
//! header-aware form of the two above). A *request key* covers the source, flags,
//! toolchain, target, explicit inputs and runtime tag; the headers the compiler reads
//! are found only by compiling, so each request key has a manifest
//! (`manifests/<fan>/<request key>.manifest`, see [`manifest`]) listing up to 8 results,
//! each with the headers it read and their blake3 and stat signatures. An entry's key is
//! then a *result key*: blake3 of the request key and those (path, hash) pairs
//! ([`key::result_key`]).
//! 1. Read the manifest, without a lock (it is replaced whole). One whose hash fails is
//!    not trusted: a warning, and on to step 3. Take the first result whose headers all
//!    match the files now (a stat when the signature vouches, else a hash, read once per
//!    process and signature: [`manifest::VerifiedHashes`]; no stat for a header this
//!    store found with that signature less than [`manifest::RECHECK_AFTER`] ago,
//!    [`manifest::RecentChecks`]) and whose key
//!    is what the request key and those hashes give; do a Hit on its result key (which
//!    must name the request key in its `entry.json`). A removed or corrupt result: the
//!    next one.
//! 2. Nothing matches: take the request key's *exclusive* lock (builds and manifest
//!    updates of one request are serialised, distinct requests never wait), and look
//!    again.
//! 3. The build's start is the kernel's file clock as read when the request arrived
//!    (before step 1; re-read after a wait for the lock: [`manifest::build_start`]).
//!    Compile into
//!    `tmp/build-<request key>-<unique>` with `-MD -MF`; hash every header it read.
//!    NVRTC, which has no `-MD`, reports the headers it opened through its time profiler
//!    (`--fdevice-time-trace`: one "Processing Header File" event per file, nested and
//!    guarded ones included), and is given every search path explicitly
//!    (`-no-source-include`, the source's directory as an absolute `-I`); explicit extra
//!    inputs are handed to it in memory by name (they are in the request key already).
//!    An NVRTC without the profiler compiles only sources that include nothing it would
//!    compile ([`crate::compile::nvrtc::may_include`]), and refuses the others.
//! 4. Derive the result key. If a header's mtime or ctime is at or after the build's
//!    start, it may not be what the compiler read: the result gets a key nobody can
//!    look up (a unique tail in its derivation) and is not recorded.
//! 5. Take the result key's *exclusive* lock (always after the request key's); seal and
//!    publish the entry as in a Miss (an entry already there, with the same headers, is
//!    used as it is).
//! 6. Insert the result first in the manifest (dropping the least recently used beyond
//!    8) and write it whole, not synced (see [`manifest`]: a manifest lost or damaged by
//!    a crash costs a compile); release the request key. The caller loads under the result
//!    key's lock. A crash between the publish and the manifest costs the next request a
//!    compile (which finds the entry published and records it), never a wrong result.
//!
//! **Remote tier** ([`Store::set_remote`], see [`remote`]). Between steps 2 and 3, still
//! under the request key's exclusive lock, a remote tier is asked for the results it
//! knows for the request; the first whose headers have the same contents here (hashed:
//! this runs only on a local miss) is fetched and handed to [`Store::import_result`],
//! which believes nothing it claims (keys re-derived, artifact hash, every header
//! re-hashed here, plain file names) and publishes it by steps 5 and 6. After step 6 of
//! a compile, the entry is uploaded (not a racy one), bounded by the remote's timeout.
//! A remote that fails, stalls or lies costs at most its timeouts and never fails the
//! request; values come in only through the import.
//!
//! A hit whose headers matched by hash though their signatures changed, or whose use is
//! older than `last_use_resolution`, refreshes the manifest if the request key's lock is
//! free at that moment; it never waits for it.
//!
//! A failed compile publishes nothing: its staging directory is renamed to
//! `tmp/failed-<key>-<unique>` with the source and the compiler's output, the error names
//! it, and only the newest `keep_failed` failures of a key are kept (trimmed under the
//! key's lock, right then).
//!
//! **Cache faults.** If the cache cannot be written (read-only, full, permission
//! denied, or something planted where xcache writes), a miss compiles into a private
//! directory under `$TMPDIR/xcache-private-<uid>/` instead, with one warning: the caller
//! gets its library, the cache is left as it was. A private build holds a lock on its
//! own directory while it lives; later private builds and `prune` collect those whose
//! lock is free and that are older than `handout_grace`. A failure to *read* an entry
//! for reasons of this process (too many open files, EIO) is an error, never a reason
//! to quarantine a good entry.
//!
//! **Removal** (clear, prune, purge, the automatic prune): an entry is removed only
//! under a *try* exclusive lock on its key (busy entries are skipped), and not within
//! `handout_grace` of its last hand-out (unless forced), nor, when it was chosen by its
//! last use, if its `last-use` says it was used since. It is first renamed to
//! `tmp/delete-<key>-<unique>` (one atomic step: readers see the whole entry or none),
//! between an intent and a removal record in `index`, then deleted, then its lock file,
//! still under the lock.
//!
//! **Index** ([`index`]): `list`, `size`, `prune` and `clear` read `index`, a log of
//! records appended under a shared lock on `index.lock` (intent, publish, use,
//! hand-out, removal), instead of every entry. A key whose last record is an intent is
//! settled by looking at its entry; a missing or damaged index is rebuilt from the
//! entries under the exclusive lock; `verify` compares it with the entries. Loading never
//! reads it.
//!
//! **Leftovers** under `tmp/`, `quarantine/` and the private root are judged by one pure
//! function, [`gc::policy::leftover_verdict`], from their kind, age and whether the
//! key's lock is held: prune, purge, clear and verify all ask it.
//!
//! # Invariants
//!
//! - Every directory under `entries/` is complete: it appears by one atomic rename after
//!   its `entry.json` (written last) was synced. A crash leaves at most a staging
//!   directory under `tmp/`, which no reader ever looks at.
//! - An artifact whose blake3 differs from its metadata is never handed out: it is
//!   quarantined, a warning is reported, and it is rebuilt.
//! - A tracked request is served a result only if every header that result was built
//!   from has the same contents now; a result is recorded only if no header it read
//!   changed after its build started. No header is trusted by the toolchain's identity:
//!   system and toolkit headers are tracked like the user's.
//! - Distinct keys never wait for each other: there is no compiledir-wide lock (the
//!   index lock is shared by every writer; only a rewrite of the index takes it
//!   exclusively, and a hit that must append then waits for it).
//! - The index lists what is on disk after any crash of an xcache process; it never
//!   decides what is loaded.
//! - N processes (or threads, since each lock opens its own file description) asking for
//!   one key cost one compile.
//! - A dead process holds no lock: flock locks die with their last descriptor.
//! - A path handed out stays valid: while the key's lock is held (loading), and for
//!   `handout_grace` after a hand-out recorded in `handed-out` (printing a path).
//! - A staging or removal directory is collected only when the key's lock is free
//!   (its builder or remover holds it for as long as the directory is in use); staging
//!   also only when older than `staging_grace`.
//! - Nothing is removed that xcache did not make: entries are key-named directories,
//!   `tmp/` and `quarantine/` names parse ([`layout`]), compiledirs carry
//!   `compiledir.json`, a base dir xcache's `CACHEDIR.TAG`.
//! - Nothing outside the base dir is written or removed (but the private root, in the
//!   user's own temporary directory), and no link below the base dir is followed:
//!   every open, create, rename and removal goes through [`crate::fsx::Root`], which
//!   refuses links in any component; lock, stats and metadata files must be regular
//!   files that pass the trust rules. A planted link or foreign file is an error that
//!   names it, and `verify --repair` removes it (the link, never its target).
//!
//! # What the file system must provide
//!
//! Atomic `rename(2)` of a directory within one file system, and `flock(2)`. Local file
//! systems (ext4, xfs, btrfs, tmpfs, APFS) do. NFS gives flock only through lockd (NFSv3)
//! or v4 leases, and some FUSE and SMB mounts silently give none: there, concurrent
//! builders of one key may both compile, but the rename keeps the published entry whole,
//! and the age rules (`staging_grace`) keep collectors off builds in progress.
//!
//! # Trust
//!
//! dlopen runs code. The base dir, the compiledir, and each of its directories
//! (`entries/`, `manifests/`, `locks/`, `tmp/`, `quarantine/`, `toolchains/`, `stats/`) must be real
//! directories owned by the current user and not writable by group or others;
//! otherwise [`Store::open`] refuses them with an error naming the directory and the
//! fix. Every directory xcache creates is 0755 and every file 0644 whatever the umask
//! allows, and on a hit the entry directory and the artifact are checked the same way
//! (from the `fstat`s the hit makes anyway): a planted entry is quarantined, not loaded.
//! See [`trust`] for the shared-group mode.

pub mod entry;
pub mod explain;
pub mod gc;
pub mod group;
pub mod import;
pub mod index;
pub mod key;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod pin;
pub mod private;
pub mod remote;
pub mod scan;
pub mod stats;
mod tracked;
pub mod trust;
pub mod verify;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{unix_secs, Clock, SystemClock};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsx::{self, OpenHow, Root};
use crate::platform::{check_runtime_tag, CompiledirFormat, Platform, LAYOUT_VERSION};
use entry::{Artifact, EntryMeta, VerifyError, ARTIFACT_FILE};
use key::{Key, KeyMaterial};
use layout::{Dirs, QuarantineName, TmpKind, TmpName};
use lock::LockGuard;

pub use layout::CACHEDIR_TAG_TEXT as CACHEDIR_TAG;
pub use layout::COMPILEDIR_META as COMPILEDIR_FILE;

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
    /// The headers the compiler read (absolute paths), for a dependency-tracked build
    /// ([`Store::get_or_build_tracked`]); empty otherwise.
    pub headers: Vec<PathBuf>,
    /// For an artifact group ([`group`]): its producer, key material and files (under
    /// `files/` in the staging directory). `None` for what xcache compiled.
    pub group: Option<GroupBuild>,
}

/// What a group build hands to the store: who made the files, what they are keyed by,
/// and their names (in `files/` of the staging directory).
#[derive(Debug, Clone)]
pub struct GroupBuild {
    /// The producer (`numba`, `triton`, `cupy`, `pytensor`).
    pub producer: String,
    /// The producer's key material.
    pub material: String,
    /// The files' names, sorted; the first is the entry's artifact.
    pub members: Vec<String>,
}

/// An entry that is ready: found or freshly built. Holds the key's lock (shared for a
/// hit, exclusive for a build) until dropped, so load the artifact, or record a
/// hand-out ([`Fetched::hand_out`]), before dropping it.
#[derive(Debug)]
pub struct Fetched {
    /// The key.
    pub key: Key,
    /// The entry directory (a private directory if the cache could not be written;
    /// see [`Fetched::is_private`]).
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
    /// True if it was in the cache; false if this call compiled it.
    pub hit: bool,
    /// Cache faults that were repaired or worked around along the way.
    pub warnings: Vec<String>,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    /// Each wait for a lock another process held: which, how long, held by whom.
    pub lock_waits: Vec<lock::LockWait>,
    /// Where it came from: this machine, or the remote tier.
    pub tier: remote::Tier,
    /// Set when this call compiled a dependency-tracked result but did not record it:
    /// the header named was changed at or after the build started ("file too new", see
    /// [`manifest`]), so the next request compiles again. `None` otherwise.
    pub unrecorded: Option<String>,
    entry: Option<Root>,
    /// The artifact as checked: loaded through this descriptor ([`Fetched::load_name`]).
    artifact: Option<File>,
    private: Option<private::PrivateBuild>,
    clock: Arc<dyn Clock>,
    handout_grace: Duration,
    /// The compiledir, when a hand-out is worth a record in its index: the entry is new
    /// or its last use was just rewritten (the index is as coarse as `last-use`).
    index_due: Option<Arc<Root>>,
    _guard: LockGuard,
}

impl Fetched {
    /// The shared object.
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(&self.meta.artifact.file)
    }

    /// A name that opens exactly the artifact that was checked ([`private::LoadName`]:
    /// a fresh link to `/proc/self/fd/N` of the descriptor the check read, or of one
    /// opened relative to the checked entry directory), so that a loader opening it gets
    /// this very file even if directories on the way were swapped since. Keep it (and
    /// this) until the load is done. Where no such name can be made (`/proc` missing,
    /// no private directory), `None`: load [`Fetched::artifact_path`], checked through
    /// descriptors just before.
    pub fn load_name(&mut self) -> Result<Option<private::LoadName>> {
        self.open_artifact()?;
        if !proc_fd_works() {
            return Ok(None);
        }
        let file = self.artifact.as_ref().expect("opened above");
        match private::LoadName::new(file) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                log::warn!(
                    "loading {} by its path: {e}",
                    self.artifact_path().display()
                );
                Ok(None)
            }
        }
    }

    /// The artifact's bytes, read through the descriptor that was checked (for a loader
    /// that takes bytes, such as `cuModuleLoadData`: no name is needed).
    pub fn read_artifact(&mut self) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        self.open_artifact()?;
        let file = self.artifact.as_ref().expect("opened above");
        let path = || self.artifact_path();
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading", path(), e))?
            .len();
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("reading", path(), e))?;
        Ok(buf)
    }

    fn open_artifact(&mut self) -> Result<()> {
        if self.artifact.is_none() {
            let file = match (&self.entry, &self.private) {
                (Some(dir), _) => dir.open_file(&self.meta.artifact.file, OpenHow::read()),
                (None, Some(p)) => p
                    .root()
                    .open_file(&self.meta.artifact.file, OpenHow::read()),
                (None, None) => File::open(self.artifact_path()),
            };
            self.artifact = Some(file.map_err(|e| Error::io("opening", self.artifact_path(), e))?);
        }
        Ok(())
    }

    /// Makes the lock this holds a shared one (see [`LockGuard::downgrade`]).
    pub(crate) fn downgrade_guard(&mut self) -> Result<()> {
        self._guard.downgrade()
    }

    /// The lock this holds, leaving an unlocked guard in its place.
    pub(crate) fn take_guard(&mut self) -> LockGuard {
        let none = LockGuard::none(self._guard.path());
        std::mem::replace(&mut self._guard, none)
    }

    /// True when the artifact lives in a private directory (removed when this is
    /// dropped, unless handed out) because the cache could not be written.
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Records that the artifact's path is handed to a caller that will not hold the
    /// key's lock (a script, another process): collectors leave the entry alone until
    /// the returned time (`handout_grace` from now; `--force` on the cleaning verbs
    /// excepted). A private build is kept instead of removed, and collected after the
    /// same grace. Recorded under the lock this holds, so a collector that takes the
    /// lock next sees it. Returns `None` when the hand-out could not be recorded (a
    /// read-only cache, which nobody can clean either).
    pub fn hand_out(&mut self) -> Option<SystemTime> {
        let now = self.clock.now();
        let until = now + self.handout_grace;
        if let Some(p) = &mut self.private {
            p.keep(now);
            return Some(until);
        }
        let entry = self.entry.as_ref()?;
        if !entry::touch(entry, layout::HANDED_OUT, now) {
            return None;
        }
        if let Some(cd) = self.index_due.take() {
            index::Writer::new(&cd).append(&index::hand_out_record(&self.key, unix_secs(now)));
        }
        Some(until)
    }

    /// Places a private copy of the artifact at `dest`, atomically (a temporary name
    /// beside it, then a rename over it), read from the descriptor that was checked: a
    /// reflink (`FICLONE`: shared blocks, copied on write) where the file system has
    /// them (Btrfs, XFS, bcachefs, …), else a copy. Never a hard link: the caller owns
    /// `dest` and may change it without touching the cache, and no collector ever
    /// touches it.
    pub fn place_copy(&mut self, dest: &Path) -> Result<()> {
        use std::io::Seek;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "--out {}: give a file name to write the library to",
                dest.display()
            ))
        })?;
        let src = self.checked_artifact()?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".xcache-{}", layout::unique()));
        let tmp = parent.join(tmp_name);
        let r = (|| {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&tmp)?;
            // SAFETY: FICLONE takes the source descriptor; both are open files.
            let cloned =
                unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
            if !cloned {
                let mut from = src.try_clone()?;
                from.seek(std::io::SeekFrom::Start(0))?;
                std::io::copy(&mut from, &mut out)?;
            }
            out.sync_all()?;
            std::fs::rename(&tmp, dest)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io("placing a copy of the library at", dest, e));
        }
        Ok(())
    }

    /// The artifact's descriptor as the check opened it (or, for a build, opened
    /// relative to the checked entry directory).
    fn checked_artifact(&mut self) -> Result<&File> {
        if self.artifact.is_none() {
            let file = match (&self.entry, &self.private) {
                (Some(dir), _) => dir.open_file(&self.meta.artifact.file, OpenHow::read()),
                (None, Some(p)) => p
                    .root()
                    .open_file(&self.meta.artifact.file, OpenHow::read()),
                (None, None) => File::open(self.artifact_path()),
            };
            self.artifact = Some(file.map_err(|e| Error::io("opening", self.artifact_path(), e))?);
        }
        Ok(self.artifact.as_ref().expect("opened above"))
    }
}

/// Largest toolchain record read (`toolchains/`: resolved compilers, rendered
/// templates): far above any real one, a bound on what a planted file can make xcache
/// allocate.
pub const MAX_TOOLCHAIN_RECORD: u64 = 16 << 20;

/// An opened compiledir, with the protocol above.
#[derive(Debug, Clone)]
pub struct Store {
    base_path: PathBuf,
    cd_path: PathBuf,
    /// The base dir's and the compiledir's descriptors, shared by every clone: reopened
    /// when a purge removed the directories under a live store ([`Store::recover`]).
    dirs: Arc<std::sync::RwLock<OpenDirs>>,
    platform: Platform,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    remote: Option<Arc<dyn remote::Remote>>,
    /// Headers this store found unchanged lately ([`manifest::RecentChecks`]), shared by
    /// its clones.
    recent: Arc<manifest::RecentChecks>,
}

/// What builds an entry into a staging directory (see [`Store::get_or_build`]).
pub type BuildFn<'a> = dyn FnMut(&Root) -> Result<Built> + 'a;

/// How often a request is tried again after its compiledir, or a directory of it, was
/// removed under it (a purge beside it): one is enough unless purges run back to back.
pub const PURGE_RETRIES: usize = 8;

/// The descriptors of a store's base dir and compiledir.
#[derive(Debug)]
struct OpenDirs {
    base: Arc<Root>,
    cd: Arc<Root>,
}

/// The staging directory of a build; removed on drop unless published or kept.
#[derive(Debug)]
pub(crate) struct Staging {
    cd: Arc<Root>,
    name: TmpName,
    root: Root,
    done: bool,
}

impl Staging {
    fn path(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cd.remove_tree(self.name.rel());
        }
    }
}

/// Whether `/proc/self/fd/N` names this process's descriptors (procfs mounted).
fn proc_fd_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        Path::new("/proc/self/fd/0").exists() || Path::new("/proc/self/fd").is_dir()
    })
}

/// Maps an I/O error met below `root` to the error to report: a refused link names
/// the link (an untrusted cache), anything else is an I/O error on the path.
pub(crate) fn io_below(op: &'static str, root: &Root, rel: &Path, e: std::io::Error) -> Error {
    if fsx::is_link_refusal(&e) {
        trust::refused_link(root, rel)
    } else {
        Error::io(op, root.join(rel), e)
    }
}

impl Store {
    /// Opens (creating if needed) the current compiledir under the configured base dir.
    pub fn open(config: &Config) -> Result<Store> {
        Store::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`Store::open`] with an injected clock.
    pub fn open_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Store> {
        let (base_root, platform, name) = locate(config)?;
        let cd = ensure_compiledir(&base_root, &name, &platform, clock.now())?;
        Ok(Store {
            base_path: base_root.path().to_path_buf(),
            cd_path: cd.path().to_path_buf(),
            dirs: Arc::new(std::sync::RwLock::new(OpenDirs {
                base: Arc::new(base_root),
                cd: Arc::new(cd),
            })),
            platform,
            clock,
            config: Arc::new(config.clone()),
            remote: None,
            recent: Arc::new(manifest::RecentChecks::new()),
        })
    }

    /// Adds a remote tier: tracked requests that miss here ask it before compiling, and
    /// upload what they compile (see [`remote`]).
    pub fn set_remote(&mut self, remote: Option<Arc<dyn remote::Remote>>) {
        self.remote = remote;
    }

    /// The remote tier, if one is set.
    pub fn remote(&self) -> Option<&Arc<dyn remote::Remote>> {
        self.remote.as_ref()
    }

    /// The base dir.
    pub fn base_dir(&self) -> &Path {
        &self.base_path
    }

    /// The current compiledir.
    pub fn compiledir(&self) -> &Path {
        &self.cd_path
    }

    /// The base dir's descriptor.
    pub fn base_root(&self) -> Arc<Root> {
        self.dirs.read().unwrap().base.clone()
    }

    /// The current compiledir's descriptor: everything below it is reached through it.
    pub fn root(&self) -> Arc<Root> {
        self.cd()
    }

    fn cd(&self) -> Arc<Root> {
        self.dirs.read().unwrap().cd.clone()
    }

    /// True when `e` is a directory of this compiledir that was not found while the
    /// request created something in it: a purge removing the compiledir's directories
    /// one by one (`locks/`, `tmp/`, a fan) under a request, before it removes the
    /// compiledir itself. The next attempt makes them again.
    fn vanished_under(&self, e: &Error) -> bool {
        matches!(e, Error::Io { path, source, .. }
            if source.kind() == std::io::ErrorKind::NotFound && path.starts_with(&self.cd_path))
    }

    /// After a failed request: if the compiledir (or the base dir) this store opened was
    /// removed meanwhile (`xcache purge`, `basecompiledir purge`, or by hand), opens
    /// them again, creating them as [`Store::open`] does, and returns true: the request
    /// may be tried again. False when they are still there (the failure was something
    /// else) or cannot be made again.
    pub fn recover(&self) -> bool {
        let gone = |r: &Root| r.stat().map_or(true, |st| st.st_nlink == 0);
        {
            let d = self.dirs.read().unwrap();
            if !gone(&d.cd) && !gone(&d.base) {
                return false;
            }
        }
        let mut d = self.dirs.write().unwrap();
        // Another thread may have reopened them meanwhile.
        if !gone(&d.cd) && !gone(&d.base) {
            return true;
        }
        let reopened = open_base(&self.base_path).and_then(|base| {
            let name = self
                .cd_path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let cd = ensure_compiledir(&base, &name, &self.platform, self.clock.now())?;
            Ok((base, cd))
        });
        match reopened {
            Ok((base, cd)) => {
                log::info!(
                    "{} was removed while in use (a purge): made again",
                    self.cd_path.display()
                );
                *d = OpenDirs {
                    base: Arc::new(base),
                    cd: Arc::new(cd),
                };
                true
            }
            Err(e) => {
                log::debug!("could not make {} again: {e}", self.cd_path.display());
                false
            }
        }
    }

    /// The platform of the current compiledir.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The paths inside the current compiledir.
    pub fn dirs(&self) -> Dirs {
        Dirs::new(self.cd().path())
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

    /// Reads a toolchain record (`toolchains/<name>`), if there is a trusted one no
    /// larger than [`MAX_TOOLCHAIN_RECORD`].
    pub fn read_toolchain_record(&self, name: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let rel = layout::toolchain_record(name);
        let f = self.cd().open_file(&rel, OpenHow::read()).ok()?;
        // The record names a program xcache runs: only trust one that nobody else
        // could have written.
        let md = f.metadata().ok()?;
        if let Some(why) = trust::untrusted("toolchain record", &md)
            .or_else(|| (!md.is_file()).then(|| "toolchain record: not a regular file".to_string()))
        {
            log::warn!("ignoring {}: {why}", self.cd().join(&rel).display());
            return None;
        }
        // Bounded: a record is a few KiB (a rendered template, tens), never this.
        let mut bytes = Vec::new();
        f.take(MAX_TOOLCHAIN_RECORD + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_TOOLCHAIN_RECORD {
            log::warn!(
                "ignoring {}: larger than {MAX_TOOLCHAIN_RECORD} bytes",
                self.cd().join(&rel).display()
            );
            return None;
        }
        Some(bytes)
    }

    /// The memo of a rendered template request (`toolchains/render-<digest>.json`), if
    /// there is a trusted one: what [`crate::Jit::render`] made of the same template
    /// text and parameters before, so that a fresh process neither parses nor renders
    /// the template again. Its reader checks what it holds.
    pub fn read_rendered(&self, digest: &Key) -> Option<Vec<u8>> {
        self.read_toolchain_record(&layout::rendered_record_name(digest))
    }

    /// Writes a rendered template request's memo, atomically but without syncing: one
    /// lost in a crash costs a render, never a wrong answer (its reader checks it).
    pub fn write_rendered(&self, digest: &Key, bytes: &[u8]) -> Result<()> {
        let rel = layout::toolchain_record(&layout::rendered_record_name(digest));
        self.cd()
            .write_replace(&rel, bytes, trust::file_mode())
            .map_err(|e| io_below("writing", &self.cd(), &rel, e))
    }

    /// Writes a toolchain record atomically.
    pub fn write_toolchain_record(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let rel = layout::toolchain_record(name);
        self.cd()
            .write_atomic(&rel, bytes, trust::file_mode())
            .map_err(|e| io_below("writing", &self.cd(), &rel, e))
    }

    /// Returns the entry for `key`, building it with `build` if it is missing or corrupt.
    ///
    /// `build` gets an empty staging directory; it must leave the source and
    /// [`ARTIFACT_FILE`] there. It runs under the key's exclusive lock, once; a second
    /// time only if the cache turns out not to be writable (into a private directory).
    pub fn get_or_build(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Root) -> Result<Built>,
    ) -> Result<Fetched> {
        self.request(key, build, &mut |s, b| s.get_or_build_cached(key, b))
    }

    /// One request by `attempt`, as every request goes: tried again (at most
    /// [`PURGE_RETRIES`] times) after a purge removed the compiledir under it, and
    /// compiled into a private directory when the cache cannot be written.
    fn request(
        &self,
        key: &Key,
        build: &mut BuildFn<'_>,
        attempt: &mut dyn FnMut(&Store, &mut BuildFn<'_>) -> Result<Fetched>,
    ) -> Result<Fetched> {
        let mut tries = 0;
        loop {
            match attempt(self, build) {
                Ok(f) => return Ok(f),
                Err(e) if tries < PURGE_RETRIES && (self.recover() || self.vanished_under(&e)) => {
                    tries += 1;
                    log::info!("{e}: removed while in use (a purge); trying again");
                }
                // A compiler that fails because the cache's disk is full (the linker's
                // "No space left on device") is a cache fault too.
                Err(e)
                    if is_cache_fault(&e)
                        || (matches!(e, Error::Compile(_)) && nearly_full(self.compiledir())) =>
                {
                    let w = format!(
                        "the cache cannot be written ({e}); compiled into a private directory instead"
                    );
                    log::warn!("{w}");
                    let mut f = self.build_private(key, build)?;
                    f.warnings.push(w);
                    return Ok(f);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The full check a hit makes, through descriptors: the entry is a real directory
    /// of ours, not writable by others, with valid metadata and an artifact of ours
    /// whose hash matches. `Ok(None)`: there is no entry.
    pub fn check_entry(&self, key: &Key) -> std::result::Result<Option<Checked>, VerifyError> {
        check_entry_in(&self.cd(), key, false)
    }

    fn get_or_build_cached(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Root) -> Result<Built>,
    ) -> Result<Fetched> {
        let entry_rel = layout::entry(key);
        let lock_rel = layout::lock(key);
        let mut warnings = Vec::new();
        let mut lock_wait = Duration::ZERO;

        // Hit: shared lock, verify.
        if self.cd().lstat_fast(&entry_rel).is_ok() {
            let guard = lock::lock_shared(&self.cd(), &lock_rel)?;
            lock_wait += guard.waited();
            match check_entry_in(&self.cd(), key, false) {
                Ok(Some(c)) => return Ok(self.hit(key, c, warnings, lock_wait, guard)),
                Ok(None) => {}                     // removed meanwhile
                Err(VerifyError::Corrupt(_)) => {} // repaired below, under the exclusive lock
                Err(e) => return Err(e.into_error()),
            }
        }

        // Miss: exclusive lock, look again.
        let short = &key.hex()[..16];
        let guard = lock::lock_exclusive(&self.cd(), &lock_rel, &mut |_| {})?;
        lock_wait += guard.waited();
        match check_entry_in(&self.cd(), key, false) {
            Ok(Some(c)) => return Ok(self.hit(key, c, warnings, lock_wait, guard)),
            Ok(None) => {}
            Err(VerifyError::Corrupt(corruption)) => {
                let w = match self.quarantine_entry(key)? {
                    Some(moved) => format!(
                        "corrupt cache entry {short}… ({corruption}): moved to {} and rebuilt",
                        moved.display()
                    ),
                    None => {
                        format!("corrupt cache entry {short}… ({corruption}): removed and rebuilt")
                    }
                };
                log::warn!("{w}");
                warnings.push(w);
            }
            Err(e) => return Err(e.into_error()),
        }

        let mut staging = self.new_staging(key)?;
        let built = match build(&staging.root) {
            Ok(b) => b,
            Err(e) => {
                // No entry will exist: its lock file would be an orphan. Safe to
                // remove under the lock (waiters re-check the inode).
                let _ = self.cd().remove_file(&lock_rel);
                return Err(self.keep_failed(staging, key, e));
            }
        };
        pause_point("compiled");
        let meta = seal(&staging.root, key, built, self.clock.now(), None)?;
        pause_point("sealed");
        self.publish(&mut staging, key)?;
        pause_point("published");
        let c = self.published(key)?;
        Ok(self.fetched(
            *key,
            c.dir,
            meta,
            Some(c.artifact),
            false,
            warnings,
            lock_wait,
            guard,
        ))
    }

    /// The entry just published under the key's exclusive lock, opened through the same
    /// check as a hit (its `verified` record spares the hash): what the caller loads is
    /// the file that was sealed, never something swapped in meanwhile.
    pub(crate) fn published(&self, key: &Key) -> Result<Checked> {
        match check_entry_in(&self.cd(), key, false) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(io_below(
                "opening",
                &self.cd(),
                &layout::entry(key),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
            Err(VerifyError::Corrupt(c)) => Err(trust::refused(
                &self.entry_dir(key),
                &format!("the entry just published does not pass its check ({c})"),
            )),
            Err(e) => Err(e.into_error()),
        }
    }

    /// An entry ready to hand out, with the lock that keeps it.
    #[allow(clippy::too_many_arguments)]
    fn fetched(
        &self,
        key: Key,
        entry: Root,
        meta: EntryMeta,
        artifact: Option<File>,
        hit: bool,
        warnings: Vec<String>,
        lock_wait: Duration,
        guard: LockGuard,
    ) -> Fetched {
        Fetched {
            key,
            dir: entry.path().to_path_buf(),
            meta,
            hit,
            warnings,
            lock_wait,
            lock_waits: guard.wait().cloned().into_iter().collect(),
            tier: remote::Tier::Local,
            unrecorded: None,
            entry: Some(entry),
            artifact,
            private: None,
            clock: self.clock.clone(),
            handout_grace: self.config.handout_grace,
            index_due: (!hit).then(|| self.cd().clone()),
            _guard: guard,
        }
    }

    /// Builds into a private directory outside the cache.
    fn build_private(
        &self,
        key: &Key,
        build: &mut dyn FnMut(&Root) -> Result<Built>,
    ) -> Result<Fetched> {
        let now = self.clock.now();
        let mut p = private::PrivateBuild::create(key)?;
        // Collect what earlier private builds left, now that we are here anyway.
        gc::collect_private(
            now,
            &gc::rules(&self.config),
            &mut gc::CleanReport::default(),
        );
        let built = match build(p.root()) {
            Ok(b) => b,
            Err(e) => {
                // Keep the source of a failed compile: the error points at it.
                p.keep(now);
                return Err(e);
            }
        };
        let meta = seal(p.root(), key, built, now, None)?;
        Ok(Fetched {
            key: *key,
            dir: p.path().to_path_buf(),
            meta,
            hit: false,
            warnings: Vec::new(),
            lock_wait: Duration::ZERO,
            lock_waits: Vec::new(),
            tier: remote::Tier::Local,
            unrecorded: None,
            entry: None,
            artifact: None,
            private: Some(p),
            clock: self.clock.clone(),
            handout_grace: self.config.handout_grace,
            index_due: None,
            _guard: LockGuard::none(&self.lock_path(key)),
        })
    }

    /// A verified entry, handed out with the lock it was verified under.
    fn hit(
        &self,
        key: &Key,
        checked: Checked,
        warnings: Vec<String>,
        lock_wait: Duration,
        guard: LockGuard,
    ) -> Fetched {
        let Checked {
            dir: entry,
            meta,
            artifact,
        } = checked;
        let now = self.clock.now();
        let res = self.config.last_use_resolution;
        let touched = entry::touch_last_use(&entry, "", now, res);
        if touched {
            entry::touch_last_use(&self.cd(), "", now, res);
            index::Writer::new(&self.cd()).append(&index::use_record(key, unix_secs(now)));
        }
        let mut fetched = self.fetched(
            *key,
            entry,
            meta,
            Some(artifact),
            true,
            warnings,
            lock_wait,
            guard,
        );
        if touched {
            fetched.index_due = Some(self.cd().clone());
        }
        fetched
    }

    fn new_staging(&self, key: &Key) -> Result<Staging> {
        let name = TmpName::new(TmpKind::Staging, key);
        let rel = name.rel();
        // A fresh unique name: never another builder's directory, even on a file
        // system without working locks.
        self.cd()
            .mkdir(layout::TMP, trust::dir_mode())
            .and_then(|()| self.cd().mkdir(&rel, trust::dir_mode()))
            .and_then(|()| self.cd().open_dir(&rel))
            .map(|root| Staging {
                cd: self.cd().clone(),
                name,
                root,
                done: false,
            })
            .map_err(|e| io_below("creating a staging directory", &self.cd(), &rel, e))
    }

    /// Renames a sealed staging directory into place; "already there" is success.
    fn publish(&self, staging: &mut Staging, key: &Key) -> Result<()> {
        let fan = layout::entry_fan(key);
        let new_fan = self.cd().lstat_fast(&fan).is_err();
        self.cd()
            .mkdir_all(&fan, trust::dir_mode())
            .map_err(|e| io_below("creating directory", &self.cd(), &fan, e))?;
        // The intent first: a crash between the rename and the record leaves a key
        // whose last record is an intent, which readers settle by looking.
        let cd = self.cd();
        let mut index = index::Writer::new(&cd);
        index.append(&index::intent_record(key));
        match self.cd().rename(staging.name.rel(), layout::entry(key)) {
            Ok(()) => {
                staging.done = true; // it is the entry now
                self.sync_dir(&fan)?;
                if new_fan {
                    self.sync_dir(Path::new(layout::ENTRIES))?;
                }
                pause_point("published-unindexed");
                index.published(key);
                Ok(())
            }
            // Someone published the same key without our lock (a file system without
            // flock): the content is equivalent, keep theirs; dropping `staging`
            // removes ours.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                Ok(())
            }
            Err(e) => Err(io_below("publishing", &self.cd(), &layout::entry(key), e)),
        }
    }

    fn sync_dir(&self, rel: &Path) -> Result<()> {
        self.cd()
            .sync_dir(rel)
            .map_err(|e| io_below("syncing directory", &self.cd(), rel, e))
    }

    /// Moves a corrupt entry aside into `quarantine/`; `None` if it had to be removed
    /// instead. Call it under the key's exclusive lock.
    pub fn quarantine_entry(&self, key: &Key) -> Result<Option<PathBuf>> {
        quarantine_entry_in(&self.cd(), key, self.clock.now())
    }

    /// Renames a failed build's staging directory to `tmp/failed-…` (keeping its source
    /// and the compiler's output), points the compile error at the kept files, and
    /// trims older failures of the key to `keep_failed`. Other errors just remove the
    /// staging directory. Runs under the key's exclusive lock.
    fn keep_failed(&self, mut staging: Staging, key: &Key, err: Error) -> Error {
        let Error::Compile(mut ce) = err else {
            return err; // dropping `staging` removes it
        };
        if self.config.keep_failed == 0 {
            return Error::Compile(ce);
        }
        let kept = TmpName::new(TmpKind::Failed, key);
        if self.cd().rename(staging.name.rel(), kept.rel()).is_err() {
            return Error::Compile(ce);
        }
        staging.done = true;
        let dir = self.cd().join(kept.rel());
        if let Ok(rel) = ce.kept_source.strip_prefix(staging.path()) {
            ce.kept_source = dir.join(rel);
        }
        ce.workdir = dir;
        let out_rel = kept.rel().join(layout::COMPILER_OUTPUT);
        if let Ok(mut f) = self.cd().create_file(&out_rel, trust::file_mode()) {
            let _ = f.write_all(ce.output.as_bytes());
        }
        // A rename keeps the directory's old mtime: its age starts now.
        let _ = self.cd().set_mtime(kept.rel(), self.clock.now());
        gc::trim_failures(self, key);
        Error::Compile(ce)
    }

    /// Reads the compiledir's metadata.
    pub fn compiledir_meta(&self) -> Result<CompiledirMeta> {
        read_compiledir_meta(&self.cd())
    }

    /// Rewrites the compiledir's metadata from the current platform (`verify --repair`).
    pub fn rewrite_compiledir_meta(&self, created_by: &str) -> Result<()> {
        write_compiledir_meta(&self.cd(), &self.platform, self.clock.now(), created_by)
    }
}

/// The hit check of [`Store::check_entry`], in any compiledir.
/// With `full`, the artifact is hashed whatever its `verified` record says (see
/// [`entry::verify`]).
pub fn check_entry_in(
    cd: &Root,
    key: &Key,
    full: bool,
) -> std::result::Result<Option<Checked>, VerifyError> {
    // The fan directory first: one that someone else may write lets them swap entries
    // under a reader's feet, whatever the entry itself looks like.
    let fan_rel = layout::entry_fan(key);
    let fan = match cd.open_dir(&fan_rel) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if fsx::is_link_refusal(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(VerifyError::UntrustedDir(
                cd.join(&fan_rel),
                "it is not a directory xcache made (a symbolic link, or a file)".into(),
            ))
        }
        Err(e) => return Err(VerifyError::Io(cd.join(&fan_rel), e)),
    };
    let st = fan
        .stat()
        .map_err(|e| VerifyError::Io(fan.path().to_path_buf(), e))?;
    if let Some(why) = trust::untrusted_stat("its directory", &st) {
        return Err(VerifyError::UntrustedDir(fan.path().to_path_buf(), why));
    }
    let name = key.hex();
    let root = match fan.open_dir(&name) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if fsx::is_link_refusal(&e) => {
            return Err(entry::Corruption::Untrusted(
                "the entry is a symbolic link (or lies under one)".into(),
            )
            .into())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(entry::Corruption::Untrusted("the entry is not a directory".into()).into())
        }
        Err(e) => return Err(VerifyError::Io(fan.join(&name), e)),
    };
    let st = root
        .stat()
        .map_err(|e| VerifyError::Io(root.path().to_path_buf(), e))?;
    if let Some(why) = trust::untrusted_stat("the entry directory", &st) {
        return Err(entry::Corruption::Untrusted(why).into());
    }
    let (meta, artifact) = entry::verify(&root, key, full)?;
    Ok(Some(Checked {
        dir: root,
        meta,
        artifact,
    }))
}

/// An entry that passed the hit check: its directory and its artifact as they were
/// checked (held open: what is loaded is this very file, see [`Fetched::load_name`]).
#[derive(Debug)]
pub struct Checked {
    /// The entry directory.
    pub dir: Root,
    /// Its metadata.
    pub meta: EntryMeta,
    /// The artifact, opened and checked.
    pub artifact: File,
}

/// Moves a corrupt entry of `cd` aside into `quarantine/`; `None` if it had to be
/// removed instead. Call it under the key's exclusive lock.
pub fn quarantine_entry_in(cd: &Root, key: &Key, now: SystemTime) -> Result<Option<PathBuf>> {
    let rel = layout::entry(key);
    cd.mkdir(layout::QUARANTINE, trust::dir_mode())
        .map_err(|e| io_below("creating directory", cd, Path::new(layout::QUARANTINE), e))?;
    let dest = QuarantineName::new(key, unix_secs(now)).rel();
    let mut index = index::Writer::new(cd);
    index.append(&index::intent_record(key));
    let moved = match cd.rename(&rel, &dest) {
        Ok(()) => Some(cd.join(dest)),
        Err(_) => {
            cd.remove_tree(&rel)
                .map_err(|e| io_below("removing corrupt entry", cd, &rel, e))?;
            None
        }
    };
    index.append(&index::remove_record(key));
    Ok(moved)
}

/// The base dir (opened, checked and tagged), the platform, and the name of its
/// compiledir, as [`Store::open`] finds them.
fn locate(config: &Config) -> Result<(Root, Platform, String)> {
    let base = config.base_dir()?;
    // The fields are public: check again what reaches a path.
    check_runtime_tag(&config.runtime_tag).map_err(|m| {
        Error::Config(format!(
            "runtime_tag {:?}: expected {m}",
            config.runtime_tag
        ))
    })?;
    trust::set_shared_group(config.shared_gid);
    lock::set_default_wait_limit(config.lock_timeout);
    let platform = Platform::detect(&config.runtime_tag);
    let format = CompiledirFormat::parse(&config.compiledir_format)
        .map_err(|m| Error::Config(format!("compiledir_format: {m}")))?;
    let base_root = open_base(&base)?;
    let name = format.render(&platform);
    Ok((base_root, platform, name))
}

/// Opens the base dir (creating it if missing), checks it, and tags it.
fn open_base(base: &Path) -> Result<Root> {
    let fresh = std::fs::symlink_metadata(base).is_err();
    if fresh {
        mkdir_p(base).map_err(|e| Error::io("creating cache directory", base, e))?;
    }
    let root = Root::open(base).map_err(|e| {
        if fsx::is_link_refusal(&e) {
            Error::Untrusted {
                path: base.to_path_buf(),
                reason: "it is a symbolic link".into(),
                fix: format!(
                    "set XCACHE_DIR to the directory it points to ({}), so that xcache sees where its files go",
                    std::fs::canonicalize(base)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "?".into())
                ),
            }
        } else if e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::Untrusted {
                path: base.to_path_buf(),
                reason: "it is not a directory".into(),
                fix: "remove it, or set XCACHE_DIR to a directory".into(),
            }
        } else {
            Error::io("opening cache directory", base, e)
        }
    })?;
    check_trusted(&root, Path::new(""))?;
    if root.lstat_fast(layout::CACHEDIR_TAG).is_err() {
        // Tag only a directory that is ours: a user who points XCACHE_DIR at a
        // directory full of their own files must not have backups skip it.
        let empty = root.read_dir("").map(|d| d.is_empty()).unwrap_or(false);
        if fresh || empty {
            root.write_atomic(
                layout::CACHEDIR_TAG,
                layout::CACHEDIR_TAG_TEXT.as_bytes(),
                trust::file_mode(),
            )
            .map_err(|e| Error::io("writing", base.join(layout::CACHEDIR_TAG), e))?;
        }
    }
    Ok(root)
}

/// Creates (or opens) the compiledir `name` below the base dir and checks it and each
/// of its directories.
fn ensure_compiledir(
    base: &Root,
    name: &str,
    platform: &Platform,
    now: SystemTime,
) -> Result<Root> {
    let here = Path::new("");
    let cd = match base.open_dir(name) {
        Ok(cd) => cd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => base
            .mkdir(name, trust::dir_mode())
            .and_then(|()| base.open_dir(name))
            .map_err(|e| io_below("creating compiledir", base, Path::new(name), e))?,
        Err(e) => return Err(io_below("opening compiledir", base, Path::new(name), e)),
    };
    check_trusted(&cd, here)?;
    // What is loaded, run or written comes from these: the same rules as the base
    // dir. A user may have deleted one by hand: make it again.
    for sub in layout::COMPILEDIR_SUBDIRS {
        match cd.lstat_fast(sub) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => cd
                .mkdir(sub, trust::dir_mode())
                .map_err(|e| io_below("creating directory", &cd, Path::new(sub), e))?,
            _ => check_trusted(&cd, Path::new(sub))?,
        }
    }
    if cd.lstat_fast(layout::COMPILEDIR_META).is_err() {
        index::create(&cd);
        write_compiledir_meta(&cd, platform, now, "")?;
        entry::touch_last_use(&cd, here, now, Duration::ZERO);
    }
    Ok(cd)
}

fn write_compiledir_meta(
    cd: &Root,
    platform: &Platform,
    now: SystemTime,
    note: &str,
) -> Result<()> {
    let meta = CompiledirMeta {
        layout: LAYOUT_VERSION,
        platform: platform.clone(),
        created: unix_secs(now),
        created_by: format!("xcache {}{note}", env!("CARGO_PKG_VERSION")),
    };
    let json = serde_json::to_vec_pretty(&meta).expect("serialises");
    cd.write_atomic(layout::COMPILEDIR_META, &json, trust::file_mode())
        .map_err(|e| io_below("writing", cd, Path::new(layout::COMPILEDIR_META), e))
}

/// Reads `compiledir.json` of a compiledir.
pub fn read_compiledir_meta(cd: &Root) -> Result<CompiledirMeta> {
    use std::io::Read;
    let p = cd.join(layout::COMPILEDIR_META);
    let mut bytes = Vec::new();
    cd.open_file(layout::COMPILEDIR_META, OpenHow::read())
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io("reading", &p, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{} is not valid: {e}", p.display())))
}

/// Creates a directory and its parents with mode 0755 (2775 in shared-group mode; never
/// wider, whatever the umask). For the base dir itself, whose path the user chose;
/// everything below it is made through [`Root::mkdir`].
pub fn mkdir_p(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let existed = path.is_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(trust::dir_mode())
        .create(path)?;
    if !existed && trust::shared_group().is_some() {
        // The umask may have taken the group's write bit: set it exactly.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(trust::dir_mode()))?;
    }
    Ok(())
}

/// Apparent bytes (sum of file lengths) and on-disk bytes (allocated blocks) of the
/// files directly in the directory `root/rel`.
pub fn dir_bytes(root: &Root, rel: impl AsRef<Path>) -> (u64, u64) {
    let rel = rel.as_ref();
    let Ok(dir) = root.open_dir(rel) else {
        return (0, 0);
    };
    let (mut apparent, mut disk) = (0, 0);
    for e in dir.read_dir("").unwrap_or_default() {
        if e.kind == fsx::Kind::File {
            if let Ok(st) = dir.lstat_fast(&e.name) {
                apparent += st.st_size as u64;
                disk += st.st_blocks as u64 * 512;
            }
        }
    }
    (apparent, disk)
}

/// True when the file system holding `dir` has less than 1 MiB left for this user.
fn nearly_full(dir: &Path) -> bool {
    rustix::fs::statvfs(dir)
        .is_ok_and(|st| (st.f_bavail as u128) * (st.f_frsize as u128) < (1 << 20))
}

/// Errors that mean "the cache cannot be written", after which compiling privately
/// still works: a read-only or full file system, a permission problem, or something
/// planted where xcache writes (refused, never followed).
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
        Error::Untrusted { .. } => true,
        _ => false,
    }
}

/// The artifact a build left in `staging`: the one of [`layout::ARTIFACTS`] there (a
/// shared object, or a CUDA module from NVRTC). None is the missing shared object's
/// error, as before; two are refused (which one would `entry.json` name?).
fn artifact_in(staging: &Root) -> Result<&'static str> {
    let present: Vec<&'static str> = layout::ARTIFACTS
        .iter()
        .copied()
        .filter(|a| staging.lstat_fast(a).is_ok())
        .collect();
    match present[..] {
        [] => Ok(ARTIFACT_FILE),
        [one] => Ok(one),
        _ => Err(Error::InvalidRequest(format!(
            "the build left several artifacts in {} ({}); an entry holds one",
            staging.path().display(),
            present.join(", ")
        ))),
    }
}

/// Hashes the artifact, writes `last-use`, `handed-out` (never: the epoch) and
/// `entry.json`, sets modes,
/// syncs everything.
/// Sets a staging file's mode to the one xcache gives files, only if it differs: a chmod
/// changes the ctime even to the same mode, and the artifact's ctime is part of the
/// identity its `verified` record names.
fn set_mode(f: &File) -> std::io::Result<()> {
    let want = trust::file_mode();
    if f.metadata()?.mode() & 0o7777 != want {
        rustix::fs::fchmod(f, rustix::fs::Mode::from_raw_mode(want))?;
    }
    Ok(())
}

fn seal(
    staging: &Root,
    key: &Key,
    built: Built,
    now: SystemTime,
    provenance: Option<(Key, Vec<entry::HeaderDigest>)>,
) -> Result<EntryMeta> {
    let io = |op, name: &str, e| Error::io(op, staging.join(name), e);
    // A group's files are hashed (and given their final modes) one by one; its first
    // is the artifact. A compiled entry has one artifact.
    let member_files: Vec<String> = match &built.group {
        Some(g) => g
            .members
            .iter()
            .map(|m| format!("{}/{m}", layout::GROUP_FILES))
            .collect(),
        None => vec![artifact_in(staging)?.to_string()],
    };
    let mut hashed = Vec::new();
    let mut record = String::new();
    for (i, rel) in member_files.iter().enumerate() {
        let f = staging
            .open_file(rel, OpenHow::read())
            .map_err(|e| io("opening", rel, e))?;
        let (blake3, size) = entry::hash_open_file(&f).map_err(|e| io("hashing", rel, e))?;
        // The final mode first, so that its identity (inode, ctime, size) is final when
        // the `verified` record takes it: nothing below changes its ctime again (the
        // loop only sets modes that differ). The record is one of the staging files,
        // synced with them: no write of its own to make atomic.
        set_mode(&f).map_err(|e| io("setting the mode of", rel, e))?;
        let identity = f
            .metadata()
            .map(|md| entry::FileIdentity::of(&md))
            .map_err(|e| io("inspecting", rel, e))?;
        let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        record.push_str(&if i == 0 {
            entry::verified_record(&identity, &blake3)
        } else {
            entry::verified_member_record(&name, &identity, &blake3)
        });
        hashed.push(Artifact {
            file: name,
            blake3,
            size,
        });
    }
    let artifact_file = member_files[0].clone();
    let (blake3, size) = (hashed[0].blake3.clone(), hashed[0].size);
    staging
        .create_file(layout::VERIFIED, trust::file_mode())
        .and_then(|mut f| f.write_all(record.as_bytes()))
        .map_err(|e| io("writing", layout::VERIFIED, e))?;
    // `handed-out` starts at the epoch (never handed out): a hand-out then costs one
    // utimensat under the lock, no create.
    for (marker, t) in [
        (layout::LAST_USE, now),
        (layout::HANDED_OUT, SystemTime::UNIX_EPOCH),
    ] {
        staging
            .create_file(marker, trust::file_mode())
            .and_then(|f| f.set_modified(t))
            .map_err(|e| io("writing", marker, e))?;
    }
    let mut files = entry::FileBytes {
        apparent: 0,
        disk: 0,
    };
    // Every file's writeback is started first, `entry.json` too, and only then is each
    // fsynced. Each file is still fsynced (the guarantee does not rest on the file
    // system), but the fsyncs overlap: the first one's journal commit carries the
    // others' block allocations, and theirs find little left to do (one commit where
    // there were four on ext4). Sizes are read before the syncs: file systems count
    // blocks reserved for data not yet written (ext4, xfs, btrfs).
    let mut to_sync = Vec::new();
    let mut listing: Vec<(String, fsx::Kind)> = staging
        .read_dir("")
        .map_err(|e| io("reading", "", e))?
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    if built.group.is_some() {
        for e in staging
            .read_dir(layout::GROUP_FILES)
            .map_err(|e| io("reading", layout::GROUP_FILES, e))?
        {
            let name = format!("{}/{}", layout::GROUP_FILES, e.name.to_string_lossy());
            listing.push((name, e.kind));
        }
    }
    for (name, kind) in listing {
        match kind {
            fsx::Kind::File => {}
            fsx::Kind::Dir => continue,
            // Nothing xcache makes: never published.
            _ => {
                staging
                    .remove_file(&name)
                    .map_err(|e| io("removing", &name, e))?;
                continue;
            }
        }
        // The compiler creates files with the umask's idea of a mode.
        let f = staging
            .open_file(&name, OpenHow::read())
            .map_err(|e| io("opening", &name, e))?;
        set_mode(&f).map_err(|e| io("setting the mode of", &name, e))?;
        let md = f.metadata().map_err(|e| io("inspecting", &name, e))?;
        files.apparent += md.len();
        files.disk += md.blocks() * 512;
        // The markers are empty and the `verified` record is advice: after a crash, one
        // missing or empty costs a default (never used, never handed out) or a hash.
        // Everything the entry's correctness rests on is synced.
        let advisory = [layout::LAST_USE, layout::HANDED_OUT, layout::VERIFIED];
        if !advisory.contains(&name.as_str()) {
            fsx::start_writeback(&f);
            to_sync.push((name, f));
        }
    }
    let meta = EntryMeta {
        format: LAYOUT_VERSION,
        key: key.hex(),
        source_name: built.source_name,
        source_file: built.source_file,
        artifact: Artifact {
            file: artifact_file,
            blake3,
            size,
        },
        created: unix_secs(now),
        compile_ms: built.compile_time.as_millis() as u64,
        compiler_output: built.compiler_output,
        files: Some(files),
        key_material: built.key_material,
        request_key: provenance.as_ref().map(|(k, _)| k.hex()),
        headers: provenance.map(|(_, h)| h).unwrap_or_default(),
        producer: built.group.as_ref().map(|g| g.producer.clone()),
        group: built.group.map(|g| entry::GroupMeta {
            material: g.material,
            members: hashed,
        }),
    };
    if meta.group.is_some() {
        staging
            .sync_dir(layout::GROUP_FILES)
            .map_err(|e| io("syncing directory", layout::GROUP_FILES, e))?;
    }
    let meta_file = entry::write_meta(staging, &meta)?;
    fsx::start_writeback(&meta_file);
    to_sync.push((layout::ENTRY_META.to_string(), meta_file));
    for (name, f) in to_sync {
        f.sync_all().map_err(|e| io("syncing", &name, e))?;
    }
    staging
        .sync_dir("")
        .map_err(|e| io("syncing directory", "", e))?;
    Ok(meta)
}

/// Test hook (debug builds only): with `__XCACHE_TEST_PAUSE=<point>:<dir>`, a build
/// stops at `<point>` (`source-written`, `compiled`, `sealed`, `published`; `checked`:
/// a load, between the entry's check and the dlopen), writes the point's name to
/// the FIFO `<dir>/started` and waits for a line on the FIFO `<dir>/release`. The
/// crash tests kill a process there, at a known step of the protocol, without sleeping.
pub(crate) fn pause_point(point: &str) {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("__XCACHE_TEST_PAUSE") {
        if let Some((p, dir)) = spec.split_once(':') {
            if p == point {
                let dir = Path::new(dir);
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("started"))
                {
                    let _ = writeln!(f, "{point}");
                }
                let _ = std::fs::read_to_string(dir.join("release"));
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Checks `root/rel` (a directory xcache loads from or writes into) against the trust
/// rules: a real directory, owned by the user (or the shared group), writable by no one
/// else.
pub(crate) fn check_trusted(root: &Root, rel: &Path) -> Result<()> {
    let path = root.join(rel);
    let st = if rel.as_os_str().is_empty() {
        root.stat()
    } else {
        root.lstat_fast(rel)
    }
    .map_err(|e| Error::io("inspecting", &path, e))?;
    match fsx::Kind::of_stat(&st) {
        fsx::Kind::Dir => {}
        fsx::Kind::Link => return Err(trust::refused_link(root, rel)),
        _ => {
            return Err(Error::Untrusted {
                path,
                reason: "it is not a directory".into(),
                fix: "remove it (xcache makes it again), or set XCACHE_DIR to a directory".into(),
            })
        }
    }
    match trust::problem(
        &path,
        st.st_uid,
        st.st_gid,
        st.st_mode,
        fsx::euid(),
        trust::shared_group(),
    ) {
        None => Ok(()),
        Some((reason, fix)) => Err(Error::Untrusted { path, reason, fix }),
    }
}
