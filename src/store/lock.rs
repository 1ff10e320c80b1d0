//! All locking in one place: per-key lock files with std `File::lock` (flock(2) on
//! Linux), behind an RAII guard that unlocks on drop.
//!
//! - `lock_shared` / `lock_exclusive` block; `try_lock_exclusive` returns `None` when busy.
//! - A waiter is told who holds the lock only when it actually has to wait: the holder
//!   of an exclusive lock writes `pid=N host=H` into the lock file.
//! - After acquiring, the guard checks that the path still names the inode it locked.
//!   Garbage collection may delete a lock file while holding it; a process that opened
//!   the old file before the unlink would otherwise hold a lock nobody else can see.
//! - A lock file that cannot be created because the cache is read-only yields an
//!   unlocked guard for readers: nobody can be writing there through xcache either.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many readers.
    Shared,
    /// One builder or collector.
    Exclusive,
}

/// A held lock. Dropping it unlocks.
#[derive(Debug)]
pub struct LockGuard {
    file: Option<File>,
    path: PathBuf,
    mode: LockMode,
    waited: Duration,
}

impl LockGuard {
    /// How long acquiring it waited on another holder.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shared or exclusive.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// True when no lock is held: the cache is read-only (or full), or the build is
    /// private.
    pub fn is_unlocked(&self) -> bool {
        self.file.is_none()
    }

    /// A guard that holds nothing, for builds outside the cache.
    pub(crate) fn none(path: &Path) -> LockGuard {
        LockGuard {
            file: None,
            path: path.to_path_buf(),
            mode: LockMode::Exclusive,
            waited: Duration::ZERO,
        }
    }

    /// Whether the locked file is still the one at the path (for tests of the
    /// delete-under-lock rule).
    pub fn holds_live_file(&self) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| same_inode(f, &self.path))
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.unlock();
        }
    }
}

fn open_lock_file(path: &Path, mode: LockMode) -> Result<Option<File>> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(true)
        .create(true)
        .mode(super::trust::file_mode());
    match opts.open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                match super::mkdir_p(parent) {
                    Ok(()) => {
                        return opts
                            .open(path)
                            .map(Some)
                            .map_err(|e| Error::io("opening lock file", path, e))
                    }
                    Err(e2) if mode == LockMode::Shared && is_read_only(&e2) => return Ok(None),
                    Err(e2) => return Err(Error::io("creating lock directory", parent, e2)),
                }
            }
            Err(Error::io("opening lock file", path, e))
        }
        Err(e) if mode == LockMode::Shared && is_read_only(&e) => {
            // Readers can lock through a read-only descriptor; if even that fails the
            // cache is read-only and unlocked reading is all there is.
            match File::open(path) {
                Ok(f) => Ok(Some(f)),
                Err(_) => Ok(None),
            }
        }
        Err(e) => Err(Error::io("opening lock file", path, e)),
    }
}

/// Errors after which a *reader* may go on without a lock: the cache is read-only or
/// full, so no xcache can be writing to it either.
fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS)
            | Some(libc::EACCES)
            | Some(libc::EPERM)
            | Some(libc::ENOSPC)
            | Some(libc::EDQUOT)
    )
}

/// How often the lock file may be replaced under us before we give up. Each round
/// means another process deleted it between our open and our lock: a handful at most
/// in practice, unbounded only when stat keeps failing (ESTALE on NFS).
const MAX_LOCK_ATTEMPTS: usize = 64;

fn replaced_too_often(path: &Path) -> Error {
    Error::io(
        "locking",
        path,
        std::io::Error::other(format!(
            "the lock file was replaced {MAX_LOCK_ATTEMPTS} times while acquiring it (is the file system NFS without locking?)"
        )),
    )
}

fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn holder_of(file: &mut File) -> Option<String> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(200).read_to_string(&mut s).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn record_holder(file: &mut File) {
    let host = hostname();
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = writeln!(file, "pid={} host={host}", std::process::id());
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "?".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Blocks until a shared lock on `path` is held.
pub fn lock_shared(path: &Path) -> Result<LockGuard> {
    acquire(path, LockMode::Shared, &mut |_| {})
}

/// Blocks until an exclusive lock on `path` is held. `on_wait` is called once, with
/// what the lock file says about its holder, if and only if the lock is busy.
pub fn lock_exclusive(path: &Path, on_wait: &mut dyn FnMut(Option<&str>)) -> Result<LockGuard> {
    acquire(path, LockMode::Exclusive, on_wait)
}

/// Takes an exclusive lock if nobody holds one; `None` if busy.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<LockGuard>> {
    for _ in 0..MAX_LOCK_ATTEMPTS {
        let Some(mut file) = open_lock_file(path, LockMode::Exclusive)? else {
            unreachable!("exclusive opens never degrade to unlocked")
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
        }
        if !same_inode(&file, path) {
            continue;
        }
        record_holder(&mut file);
        return Ok(Some(LockGuard {
            file: Some(file),
            path: path.to_path_buf(),
            mode: LockMode::Exclusive,
            waited: Duration::ZERO,
        }));
    }
    Err(replaced_too_often(path))
}

fn acquire(
    path: &Path,
    mode: LockMode,
    on_wait: &mut dyn FnMut(Option<&str>),
) -> Result<LockGuard> {
    let mut waited = Duration::ZERO;
    let mut told = false;
    for _ in 0..MAX_LOCK_ATTEMPTS {
        let Some(mut file) = open_lock_file(path, mode)? else {
            return Ok(LockGuard {
                file: None,
                path: path.to_path_buf(),
                mode,
                waited,
            });
        };
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                if !told {
                    told = true;
                    let holder = holder_of(&mut file);
                    on_wait(holder.as_deref());
                }
                let start = Instant::now();
                let r = match mode {
                    LockMode::Shared => file.lock_shared(),
                    LockMode::Exclusive => file.lock(),
                };
                waited += start.elapsed();
                r.map_err(|e| Error::io("locking", path, e))?;
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
        }
        if !same_inode(&file, path) {
            // Deleted (and maybe recreated) while we waited: lock the live file instead.
            continue;
        }
        if mode == LockMode::Exclusive {
            record_holder(&mut file);
        }
        return Ok(LockGuard {
            file: Some(file),
            path: path.to_path_buf(),
            mode,
            waited,
        });
    }
    Err(replaced_too_often(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn shared_locks_coexist_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/ab/k.lock");
        let a = lock_shared(&p).unwrap();
        let b = lock_shared(&p).unwrap();
        assert!(try_lock_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(try_lock_exclusive(&p).unwrap().is_none());
        drop(b);
        assert!(try_lock_exclusive(&p).unwrap().is_some());
    }

    #[test]
    fn waiter_is_told_the_holder_only_when_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let mut calls = 0;
        let g = lock_exclusive(&p, &mut |_| calls += 1).unwrap();
        assert_eq!(calls, 0, "an uncontended lock must not report waiting");
        let (told_tx, told_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let g2 = lock_exclusive(&p2, &mut |h| {
                told_tx.send(h.map(str::to_string)).unwrap();
            })
            .unwrap();
            done_tx.send(()).unwrap();
            drop(g2);
        });
        // We hold the lock, so the thread must report the holder before it blocks.
        let holder = told_rx
            .recv()
            .unwrap()
            .expect("holder recorded in lock file");
        assert!(
            holder.contains(&format!("pid={}", std::process::id())),
            "{holder}"
        );
        assert!(done_rx.try_recv().is_err(), "acquired while still held");
        drop(g);
        done_rx.recv().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_lock_on_a_deleted_file_is_retried_on_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let a = lock_exclusive(&p, &mut |_| {}).unwrap();
        // B opens the current file and blocks on it.
        let (blocked_tx, blocked_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let p2 = p.clone();
        let b = std::thread::spawn(move || {
            let g = lock_exclusive(&p2, &mut |_| blocked_tx.send(()).unwrap()).unwrap();
            done_tx.send(g.holds_live_file()).unwrap();
        });
        blocked_rx.recv().unwrap();
        // A collector deletes the file while holding it; C locks the new file.
        std::fs::remove_file(&p).unwrap();
        let c = try_lock_exclusive(&p)
            .unwrap()
            .expect("the new file is free");
        drop(a);
        // B wakes holding the deleted inode: it must notice, move to the live file and
        // wait for C there, so it holds a lock only on the live file.
        drop(c);
        assert!(done_rx.recv().unwrap(), "B's lock is on a deleted file");
        b.join().unwrap();
    }
}
