//! Pins: a path kept valid for as long as an embedder holds a handle on it.
//!
//! A library loaded by [`crate::Jit::compile`] survives the unlink of its file, but
//! programs that hand the *path* on (a Python extension imported from it, a C caller
//! that prints it, a debugger) need the file itself to stay. A [`Pin`] holds a
//! *shared* lock on the entry's key for its whole life: collectors delete only under a
//! *try* exclusive lock and skip busy entries, so neither `prune`, `clear` (with or
//! without `--force`), `purge` nor the automatic prune removes a pinned entry, in any
//! process. Builders of the same key are not blocked (a pinned entry exists, so they
//! hit, and hits take shared locks too).
//!
//! One pin per entry per process: pins are shared through a process-wide map, so a
//! thousand handles on one library cost one file descriptor. A pin is released when
//! the last handle on it is dropped.
//!
//! Caveat: flock locks of one process exclude each other like any others. A process
//! that pins an entry and then needs its *exclusive* lock (a rebuild after the entry
//! was found corrupt) waits for itself; set a wait limit
//! ([`super::lock::with_wait_limit`]) to turn that into an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::key::Key;
use super::lock::{self, LockGuard};
use super::{layout, Store};
use crate::error::Result;

/// A shared lock on an entry, held while the value lives. See the module docs.
#[derive(Debug)]
pub struct Pin {
    key: Key,
    artifact: PathBuf,
    _guard: LockGuard,
}

impl Pin {
    /// The key of the entry (the result key, for dependency-tracked requests).
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The artifact that stays in place.
    pub fn artifact(&self) -> &Path {
        &self.artifact
    }
}

/// What [`Store::pin`] found.
#[derive(Debug)]
pub enum Pinned {
    /// The entry is there and now pinned.
    Held(Arc<Pin>),
    /// The entry was removed before the lock was taken (the caller may rebuild it).
    Gone,
    /// The path is not an artifact of this compiledir's entries (a private build, or a
    /// copy the caller owns): nothing to pin.
    NotAnEntry,
}

type PinMap = HashMap<PathBuf, Weak<Pin>>;

fn pins() -> &'static Mutex<PinMap> {
    static PINS: OnceLock<Mutex<PinMap>> = OnceLock::new();
    PINS.get_or_init(Default::default)
}

impl super::Fetched {
    /// Turns this (a hit, holding a shared lock, or a build, holding an exclusive one)
    /// into a pin of its entry: the lock becomes shared (and is looked at again: the
    /// entry must still be there), and is kept for as long as the pin lives. The pin is
    /// registered under the entry directory, so that later pins of it share it. `None`
    /// when the entry went meanwhile (a collector took the key between the downgrade's
    /// two steps), or when it is a private build (nothing to pin).
    pub fn into_pin(mut self) -> Result<Option<Arc<Pin>>> {
        if self.is_private() {
            return Ok(None);
        }
        let dir = self.dir.clone();
        if let Some(p) = pins().lock().unwrap().get(&dir).and_then(Weak::upgrade) {
            return Ok(Some(p));
        }
        self.downgrade_guard()?;
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(None);
        }
        let key = self.key;
        let guard = self.take_guard();
        let pin = Arc::new(Pin {
            key,
            artifact: dir.clone(),
            _guard: guard,
        });
        let mut map = pins().lock().unwrap();
        map.retain(|_, w| w.strong_count() > 0);
        let kept = map.entry(dir).or_insert_with(|| Arc::downgrade(&pin));
        Ok(Some(kept.upgrade().unwrap_or(pin)))
    }
}

impl Store {
    /// The key of the entry whose artifact is `artifact`, if it is one of this
    /// compiledir's (`<compiledir>/entries/<fan>/<key>/lib.so`).
    pub fn entry_of_artifact(&self, artifact: &Path) -> Option<Key> {
        let rel = artifact.strip_prefix(self.compiledir()).ok()?;
        let mut parts = rel.components().map(|c| c.as_os_str().to_str());
        let (Some(Some(entries)), Some(Some(fan)), Some(Some(hex)), Some(Some(file)), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let key: Key = hex.parse().ok()?;
        (entries == layout::ENTRIES && fan == key.fan() && file == layout::ARTIFACT).then_some(key)
    }

    /// This process's live pin of the entry holding `artifact`, if there is one: a map
    /// lookup, never a lock.
    pub fn live_pin(&self, artifact: &Path) -> Option<Arc<Pin>> {
        pins().lock().unwrap().get(artifact).and_then(Weak::upgrade)
    }

    /// Pins the entry holding `artifact` (see the module docs): takes a shared lock on
    /// its key, then checks the artifact is still there. Reuses this process's pin of
    /// the same entry when one is alive.
    pub fn pin(&self, artifact: &Path) -> Result<Pinned> {
        let Some(key) = self.entry_of_artifact(artifact) else {
            return Ok(Pinned::NotAnEntry);
        };
        if let Some(p) = self.live_pin(artifact) {
            return Ok(Pinned::Held(p));
        }
        let guard = lock::lock_shared(&self.root(), &layout::lock(&key))?;
        let rel = layout::entry(&key).join(layout::ARTIFACT);
        if self.root().lstat_fast(&rel).is_err() {
            return Ok(Pinned::Gone);
        }
        let pin = Arc::new(Pin {
            key,
            artifact: artifact.to_path_buf(),
            _guard: guard,
        });
        let mut map = pins().lock().unwrap();
        map.retain(|_, w| w.strong_count() > 0);
        // Another thread may have pinned it meanwhile: either pin works; keep one.
        let kept = map
            .entry(artifact.to_path_buf())
            .or_insert_with(|| Arc::downgrade(&pin));
        Ok(Pinned::Held(kept.upgrade().unwrap_or(pin)))
    }
}
