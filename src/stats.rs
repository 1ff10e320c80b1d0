//! Usage counters, kept without making the hit path contend.
//!
//! Each [`Jit`](crate::Jit) counts in atomics. It writes its counts to a file of its own,
//! `<compiledir>/stats/<pid>-<nanos>.json`, which it holds under an exclusive flock for
//! its whole life: after every compile, at most once a second on hits, and when it is
//! dropped. No two processes ever write the same file, and a hit never waits for a lock.
//!
//! `xcache stats` sums `stats/total.json` and every process file. A process file whose
//! lock it can take belongs to a process that has exited: its counts are folded into
//! `total.json` and the file removed (under `stats/stats.lock`). `--zero` removes all of
//! them; a live process notices that its file is gone and starts a new one, carrying
//! over only what it had not written yet.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The counters. `xcache stats --json` reports these per compiledir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests served from the disk cache.
    pub hits: u64,
    /// Requests served by a library already loaded in the process.
    pub memory_hits: u64,
    /// Requests that had to compile.
    pub misses: u64,
    /// Compiles that succeeded.
    pub compiles: u64,
    /// Compiles that failed.
    pub failed_compiles: u64,
    /// Time spent in the compiler, ms.
    pub compile_ms: u64,
    /// Compile time that hits saved (the recorded compile time of each entry hit), ms.
    pub saved_ms: u64,
    /// Time spent waiting for other processes' locks, ms.
    pub lock_wait_ms: u64,
}

impl Counters {
    fn fields(&mut self) -> [&mut u64; 8] {
        [
            &mut self.hits,
            &mut self.memory_hits,
            &mut self.misses,
            &mut self.compiles,
            &mut self.failed_compiles,
            &mut self.compile_ms,
            &mut self.saved_ms,
            &mut self.lock_wait_ms,
        ]
    }

    /// Adds `o` field by field.
    pub fn add(&mut self, o: &Counters) {
        let mut o = *o;
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a += *b;
        }
    }

    fn minus(&self, o: &Counters) -> Counters {
        let mut r = *self;
        let mut o = *o;
        for (a, b) in r.fields().into_iter().zip(o.fields()) {
            *a = a.saturating_sub(*b);
        }
        r
    }
}

/// Width every process file is padded to, so that one `pwrite` replaces it whole.
const RECORD_LEN: usize = 512;

struct OwnFile {
    file: File,
    path: PathBuf,
    /// Counts already written to a previous file (removed by `--zero`).
    base: Counters,
}

/// A process's counters and its stats file.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    live: [AtomicU64; 8],
    file: Mutex<Option<OwnFileDebug>>,
    last_flush_ms: AtomicU64,
    written: Mutex<Counters>,
    start: Instant,
}

struct OwnFileDebug(OwnFile);

impl std::fmt::Debug for OwnFileDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnFile({})", self.0.path.display())
    }
}

const HITS: usize = 0;
const MEMORY_HITS: usize = 1;
const MISSES: usize = 2;
const COMPILES: usize = 3;
const FAILED: usize = 4;
const COMPILE_MS: usize = 5;
const SAVED_MS: usize = 6;
const LOCK_WAIT_MS: usize = 7;

impl Recorder {
    /// Counters for the compiledir whose `stats/` directory is `dir`.
    pub fn new(dir: PathBuf) -> Recorder {
        Recorder {
            dir,
            live: Default::default(),
            file: Mutex::new(None),
            last_flush_ms: AtomicU64::new(0),
            written: Mutex::new(Counters::default()),
            start: Instant::now(),
        }
    }

    fn bump(&self, i: usize, by: u64) {
        self.live[i].fetch_add(by, Ordering::Relaxed);
    }

    /// A request served from disk.
    pub fn hit(&self, saved_ms: u64, lock_wait: Duration) {
        self.bump(HITS, 1);
        self.bump(SAVED_MS, saved_ms);
        self.bump(LOCK_WAIT_MS, lock_wait.as_millis() as u64);
        self.flush_if_due();
    }

    /// A request served from memory.
    pub fn memory_hit(&self) {
        self.bump(MEMORY_HITS, 1);
        self.flush_if_due();
    }

    /// A request that compiled.
    pub fn miss(&self, compile_ms: u64, lock_wait: Duration) {
        self.bump(MISSES, 1);
        self.bump(COMPILES, 1);
        self.bump(COMPILE_MS, compile_ms);
        self.bump(LOCK_WAIT_MS, lock_wait.as_millis() as u64);
        self.flush();
    }

    /// A compile that failed.
    pub fn failed(&self) {
        self.bump(MISSES, 1);
        self.bump(FAILED, 1);
        self.flush();
    }

    /// What this process counted so far.
    pub fn snapshot(&self) -> Counters {
        let v: Vec<u64> = self
            .live
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        Counters {
            hits: v[HITS],
            memory_hits: v[MEMORY_HITS],
            misses: v[MISSES],
            compiles: v[COMPILES],
            failed_compiles: v[FAILED],
            compile_ms: v[COMPILE_MS],
            saved_ms: v[SAVED_MS],
            lock_wait_ms: v[LOCK_WAIT_MS],
        }
    }

    fn flush_if_due(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_flush_ms.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .last_flush_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.flush();
        }
    }

    /// Writes the counts to this process's file. Failures (a read-only cache) are
    /// ignored: statistics never fail a request.
    pub fn flush(&self) {
        // Another thread flushing has the same numbers to write: don't wait for it.
        let Ok(mut slot) = self.file.try_lock() else {
            return;
        };
        let now = self.snapshot();
        let gone = slot
            .as_ref()
            .is_none_or(|f| !same_inode(&f.0.file, &f.0.path));
        if gone {
            // First flush, or `--zero` removed our file: start one, counting only
            // what was never written.
            let base = *self.written.lock().unwrap();
            let base = if slot.is_none() {
                Counters::default()
            } else {
                base
            };
            *slot = open_own_file(&self.dir)
                .map(|(file, path)| OwnFileDebug(OwnFile { file, path, base }));
        }
        let Some(f) = slot.as_ref() else { return };
        let content = now.minus(&f.0.base);
        let mut text = serde_json::to_string(&content).expect("serialises");
        if text.len() < RECORD_LEN {
            text.push_str(&" ".repeat(RECORD_LEN - 1 - text.len()));
            text.push('\n');
        }
        if f.0.file.write_all_at(text.as_bytes(), 0).is_ok() {
            *self.written.lock().unwrap() = now;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.snapshot() != Counters::default() {
            self.flush();
        }
    }
}

fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn open_own_file(dir: &Path) -> Option<(File, PathBuf)> {
    crate::store::mkdir_p(dir).ok()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{}-{nanos}.json", std::process::id());
    // Locked before it is visible under its name: `collect` must never take a fresh
    // file for a dead process's.
    let hidden = dir.join(format!(".{name}.tmp"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(crate::store::trust::file_mode())
        .open(&hidden)
        .ok()?;
    file.try_lock().ok()?;
    let path = dir.join(name);
    fs::rename(&hidden, &path).ok()?;
    Some((file, path))
}

fn read_open(mut file: &File) -> Option<Counters> {
    use std::io::Read;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Reads a stats file (process file or `total.json`).
fn read_counters(path: &Path) -> Option<Counters> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Sums the counters of a compiledir's `stats/` directory, folding the files of exited
/// processes into `total.json`. With `zero`, removes every file first.
pub fn collect(dir: &Path, zero: bool) -> crate::Result<Counters> {
    use crate::error::IoContext;
    if !dir.exists() {
        return Ok(Counters::default());
    }
    let lock_path = dir.join("stats.lock");
    let _guard = crate::store::lock::lock_exclusive(&lock_path, &mut |_| {})?;
    let total_path = dir.join("total.json");
    let mut total = if zero {
        Counters::default()
    } else {
        read_counters(&total_path).unwrap_or_default()
    };
    let mut live = Counters::default();
    let mut folded = false;
    for e in fs::read_dir(dir).ctx("reading", dir)?.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name == "total.json" || name.starts_with('.') {
            continue;
        }
        if zero {
            let _ = fs::remove_file(&path);
            continue;
        }
        // Lock first, then read: an owner that writes its last counts and exits in
        // between must not have them folded stale.
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            total.add(&read_open(&file).unwrap_or_default());
            let _ = fs::remove_file(&path);
            folded = true;
        } else {
            live.add(&read_open(&file).unwrap_or_default());
        }
    }
    if zero {
        let _ = fs::remove_file(&total_path);
    } else if folded {
        let json = serde_json::to_vec_pretty(&total).expect("serialises");
        crate::store::write_atomic(&total_path, &json)?;
    }
    total.add(&live);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_process_and_zero_resets() {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats");
        {
            let r = Recorder::new(stats.clone());
            r.miss(120, Duration::from_millis(3));
            r.hit(120, Duration::ZERO);
            r.hit(120, Duration::ZERO);
            r.memory_hit();
            r.failed();
            // While the recorder lives, its file is live and counted as such.
            let c = collect(&stats, false).unwrap();
            assert_eq!(c.misses, 2);
            assert_eq!(c.compiles, 1);
            assert_eq!(c.failed_compiles, 1);
            assert_eq!(c.compile_ms, 120);
            assert_eq!(c.lock_wait_ms, 3);
            // Hits are written at most once a second: the second may not be there yet.
            assert!(c.hits >= 1);
        } // dropped: final flush
        let c = collect(&stats, false).unwrap();
        assert_eq!((c.hits, c.memory_hits, c.saved_ms), (2, 1, 240));
        // Folded into total.json, process file gone.
        assert!(stats.join("total.json").exists());
        assert_eq!(fs::read_dir(&stats).unwrap().count(), 2); // total.json, stats.lock
        assert_eq!(collect(&stats, false).unwrap(), c, "folding is idempotent");

        // Zero with a live process: only what it counts afterwards remains.
        let r = Recorder::new(stats.clone());
        r.miss(10, Duration::ZERO);
        assert_eq!(collect(&stats, true).unwrap(), Counters::default());
        r.miss(5, Duration::ZERO);
        let c = collect(&stats, false).unwrap();
        assert_eq!((c.misses, c.compile_ms), (1, 5));
        drop(r);
        let c = collect(&stats, false).unwrap();
        assert_eq!((c.misses, c.compile_ms), (1, 5));
    }
}
