//! All locking in one place: per-key lock files with std `File::lock` (flock(2) on
//! Linux), behind an RAII guard that unlocks on drop.
//!
//! - `lock_shared` / `lock_exclusive` block; `try_lock_exclusive` returns `None` when
//!   busy; [`probe`] tells whether a lock is held without creating its file.
//! - A waiter is told who holds the lock only when it actually has to wait: the holder
//!   of an exclusive lock writes `pid=N host=H` into the lock file.
//! - After acquiring, the guard checks that the path still names the inode it locked.
//!   Garbage collection may delete a lock file while holding it; a process that opened
//!   the old file before the unlink would otherwise hold a lock nobody else can see.
//! - Lock files are opened below the compiledir's descriptor without following links
//!   ([`crate::fsx`]), must be regular files, and must pass the trust rules: a link or a
//!   foreign file planted there is refused with an error that names it.
//! - A lock file that cannot be created because the cache is read-only yields an
//!   unlocked guard for readers: nobody can be writing there through xcache either.
//! - Every wait has a deadline: the calling thread's limit ([`with_wait_limit`]:
//!   embedders, the Python package's `lock_timeout`), else the process's
//!   ([`set_default_wait_limit`]: the `lock_timeout` setting, applied by every store
//!   opened). A wait that reaches it fails with [`Error::LockTimeout`], naming the lock
//!   and its holders. A wait polls `try_lock` with a backoff (1 ms doubling to 16 ms),
//!   since flock has no timeout.
//! - A wait that lasts [`NOTICE_AFTER`] says so, once, on the log (stderr for the CLI):
//!   the lock, who holds it (pid, command and host, from `/proc/locks` where the
//!   holder is on this machine, else from the lock file's record) and `xcache unlock`.
//!   Shorter waits (builders of one key queueing for each other) say nothing.

use std::cell::Cell;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsx::{OpenHow, Root};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many readers.
    Shared,
    /// One builder or collector.
    Exclusive,
}

/// Whether someone holds a lock, as [`probe`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockState {
    /// There is no lock file: nobody holds it.
    Absent,
    /// The file exists and nobody holds it.
    Free,
    /// Someone holds it (shared or exclusive).
    Held,
}

impl LockState {
    /// True when nobody holds it.
    pub fn is_free(self) -> bool {
        self != LockState::Held
    }
}

/// A wait for a lock that another process held: what `--explain` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockWait {
    /// The lock file.
    pub lock: PathBuf,
    /// How long the wait lasted, in ms.
    pub waited_ms: u64,
    /// Who held it when the wait began, as [`holders`] says.
    pub holder: String,
}

/// A held lock. Dropping it unlocks.
#[derive(Debug)]
pub struct LockGuard {
    file: Option<File>,
    path: PathBuf,
    mode: LockMode,
    waited: Duration,
    wait: Option<LockWait>,
}

impl LockGuard {
    /// How long acquiring it waited on another holder.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The wait for it, with who held it, if acquiring it had to wait.
    pub fn wait(&self) -> Option<&LockWait> {
        self.wait.as_ref()
    }

    /// Turns an exclusive lock into a shared one (a builder that will go on reading
    /// what it published, beside others). flock does not promise that this is atomic:
    /// another process's exclusive request may be granted in between, so whoever
    /// downgrades must look again at what the lock guards.
    pub fn downgrade(&mut self) -> Result<()> {
        if self.mode == LockMode::Shared {
            return Ok(());
        }
        if let Some(f) = &self.file {
            f.lock_shared()
                .map_err(|e| Error::io("locking", &self.path, e))?;
        }
        self.mode = LockMode::Shared;
        Ok(())
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
            wait: None,
        }
    }

    /// Whether the locked file is still the one at the path (for tests of the
    /// delete-under-lock rule).
    pub fn holds_live_file(&self) -> bool {
        self.file.as_ref().is_some_and(|f| {
            match (f.metadata(), std::fs::symlink_metadata(&self.path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            }
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.unlock();
        }
    }
}

/// Checks an opened lock file against the trust rules: a file someone else made (or
/// could write) in the lock directory is refused.
/// Checks an opened lock file and returns its identity (device, inode), which does not
/// change while it is open.
fn check_lock_file(file: &File, path: &Path) -> Result<(u64, u64)> {
    let md = file
        .metadata()
        .map_err(|e| Error::io("inspecting lock file", path, e))?;
    if !md.is_file() {
        return Err(super::trust::refused(path, "it is not a regular file"));
    }
    match super::trust::untrusted("the lock file", &md) {
        None => Ok((md.dev(), md.ino())),
        Some(why) => Err(super::trust::refused(path, &why)),
    }
}

/// Opens (creating) the lock file at `root/rel`, checked; with its identity.
fn open_lock_file(root: &Root, rel: &Path, mode: LockMode) -> Result<Option<(File, (u64, u64))>> {
    let path = root.join(rel);
    let how = OpenHow::read_write_create(super::trust::file_mode());
    let opened = match root.open_file(rel, how) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match rel
                .parent()
                .map(|p| root.mkdir_all(p, super::trust::dir_mode()))
            {
                Some(Ok(())) | None => root.open_file(rel, how),
                Some(Err(e2)) if mode == LockMode::Shared && is_read_only(&e2) => return Ok(None),
                Some(Err(e2)) if crate::fsx::is_link_refusal(&e2) => {
                    return Err(super::trust::refused_link(root, rel))
                }
                Some(Err(e2)) => {
                    return Err(Error::io(
                        "creating lock directory",
                        rel.parent().map(|p| root.join(p)).unwrap_or_default(),
                        e2,
                    ))
                }
            }
        }
        r => r,
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) if crate::fsx::is_link_refusal(&e) => {
            return Err(super::trust::refused_link(root, rel))
        }
        Err(e) if mode == LockMode::Shared && is_read_only(&e) => {
            // Readers can lock through a read-only descriptor; if even that fails the
            // cache is read-only and unlocked reading is all there is.
            match root.open_file(rel, OpenHow::read()) {
                Ok(f) => f,
                Err(e) if crate::fsx::is_link_refusal(&e) => {
                    return Err(super::trust::refused_link(root, rel))
                }
                Err(_) => return Ok(None),
            }
        }
        Err(e) => return Err(Error::io("opening lock file", &path, e)),
    };
    let id = check_lock_file(&file, &path)?;
    Ok(Some((file, id)))
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

/// Whether the file at `root/rel` is still the one with identity `id` (the one locked).
fn same_inode(id: (u64, u64), root: &Root, rel: &Path) -> bool {
    match root.lstat_fast(rel) {
        Ok(b) => id == (b.st_dev, b.st_ino),
        _ => false,
    }
}

/// What the lock file says about its last exclusive holder (`pid=N host=H`).
fn holder_of(file: &mut File) -> Option<String> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(200).read_to_string(&mut s).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn record_holder(file: &mut File) {
    use std::os::unix::fs::FileExt;
    // One write at offset 0, then the length: no seek, no formatted writes (each a
    // system call), and the host name read once per process (it is only a hint).
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(hostname);
    let line = format!("pid={} host={host}\n", std::process::id());
    if file.write_all_at(line.as_bytes(), 0).is_ok() {
        let _ = file.set_len(line.len() as u64);
    }
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

/// Who holds the lock on `file`, in words: the processes of this machine that hold a
/// flock on its inode, from `/proc/locks` (pid, whether shared, and its command line),
/// else what the file records of its last exclusive holder (a holder on another
/// machine of a network file system, or where `/proc` is not mounted).
pub fn holders(file: &File, record: Option<&str>) -> String {
    let local = file
        .metadata()
        .ok()
        .map(|md| local_holders(md.dev(), md.ino()))
        .unwrap_or_default();
    if local.is_empty() {
        return match record {
            Some(r) => format!("{} (as its lock file records)", printable(r, 80)),
            None => "another process".into(),
        };
    }
    let host = hostname();
    let mut words: Vec<String> = local
        .iter()
        .take(3)
        .map(|(pid, shared)| {
            let cmd = command_line(*pid);
            format!(
                "pid {pid}{}{} on {host}",
                if cmd.is_empty() {
                    String::new()
                } else {
                    format!(" ({cmd})")
                },
                if *shared { ", shared" } else { "" }
            )
        })
        .collect();
    if local.len() > 3 {
        words.push(format!("and {} more", local.len() - 3));
    }
    words.join("; ")
}

/// The (pid, shared) of every process of this machine holding a flock on the inode
/// (`dev`, `ino`), from `/proc/locks`: `N: FLOCK ADVISORY WRITE pid MAJ:MIN:INO 0 EOF`;
/// waiters (`N: -> FLOCK …`) are not holders.
fn local_holders(dev: u64, ino: u64) -> Vec<(u32, bool)> {
    let Ok(text) =
        crate::fsx::read_named_file(Path::new("/proc/locks"), crate::fsx::Bounds::size(16 << 20))
    else {
        return Vec::new();
    };
    parse_proc_locks(
        &String::from_utf8_lossy(&text),
        libc::major(dev),
        libc::minor(dev),
        ino,
    )
}

/// The holders of a flock on an inode, from the text of `/proc/locks`.
pub fn parse_proc_locks(text: &str, major: u32, minor: u32, ino: u64) -> Vec<(u32, bool)> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace().skip(1);
        let (Some(kind), Some(_), Some(rw), Some(pid), Some(id)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if kind != "FLOCK" || id != want {
            continue;
        }
        if let Ok(pid) = pid.parse::<u32>() {
            if !out.iter().any(|(p, _)| *p == pid) {
                out.push((pid, rw == "READ"));
            }
        }
    }
    out
}

/// A process's command line, shortened to 80 characters and safe to print (control
/// characters escaped: it is another program's text).
fn command_line(pid: u32) -> String {
    let Ok(raw) = crate::fsx::read_named_file(
        Path::new(&format!("/proc/{pid}/cmdline")),
        crate::fsx::Bounds::size(64 << 10),
    ) else {
        return String::new();
    };
    let joined = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    printable(&joined, 80)
}

/// `text` cut to `max` characters, control characters escaped: another program's
/// words, printed on a terminal.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How long a wait goes on before it says so (and for what).
pub const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The default limit on a lock wait: the `lock_timeout` setting's default.
pub const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(20 * 60);

/// The limit on waits of threads that set none, in ms.
static PROCESS_WAIT_LIMIT: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_WAIT_LIMIT.as_millis() as u64);

/// Sets the limit on lock waits of every thread that set none of its own (the
/// `lock_timeout` setting; every [`crate::Store`] opened applies its own).
pub fn set_default_wait_limit(limit: Duration) {
    PROCESS_WAIT_LIMIT.store(
        limit.as_millis().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

thread_local! {
    static WAIT_LIMIT: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Runs `f` with every blocking lock wait on this thread bounded by `limit` (`None`:
/// unbounded, the default): a wait that would last longer fails with
/// [`Error::LockTimeout`]. The previous limit is restored afterwards, also on unwind.
pub fn with_wait_limit<T>(limit: Option<Duration>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Duration>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WAIT_LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(WAIT_LIMIT.with(|l| l.replace(limit)));
    f()
}

/// Waits for `file`'s lock in `mode`, for at most this thread's wait limit (else the
/// process's), saying once what it waits for when that takes [`NOTICE_AFTER`].
/// Returns who held it.
fn wait_for(file: &File, mode: LockMode, path: &Path, record: Option<&str>) -> Result<String> {
    let limit = WAIT_LIMIT.with(Cell::get).unwrap_or_else(|| {
        Duration::from_millis(PROCESS_WAIT_LIMIT.load(std::sync::atomic::Ordering::Relaxed))
    });
    // Who held it as the wait began (a shared holder leaves no record in the file).
    let holder = holders(file, record);
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut told = false;
    loop {
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => return Ok(holder),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
        }
        let waited = start.elapsed();
        if waited >= limit {
            return Err(Error::LockTimeout {
                path: path.to_path_buf(),
                waited,
                holder: Some(holders(file, record)),
            });
        }
        if !told && waited >= NOTICE_AFTER {
            told = true;
            log::warn!(
                "waiting for the lock {} (held by {}); `xcache unlock` lists the locks and their holders",
                path.display(),
                holders(file, record)
            );
        }
        std::thread::sleep(pause.min(limit - waited));
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}

/// Blocks until a shared lock on `root/rel` is held.
pub fn lock_shared(root: &Root, rel: &Path) -> Result<LockGuard> {
    acquire(root, rel, LockMode::Shared, &mut |_| {})
}

/// Blocks until an exclusive lock on `root/rel` is held (within the wait limit).
/// `on_wait` is called once, with what the lock file records of its last exclusive
/// holder, if and only if the lock is busy (the wait itself says, after
/// [`NOTICE_AFTER`], what it waits for).
pub fn lock_exclusive(
    root: &Root,
    rel: &Path,
    on_wait: &mut dyn FnMut(Option<&str>),
) -> Result<LockGuard> {
    acquire(root, rel, LockMode::Exclusive, on_wait)
}

/// Takes an exclusive lock if nobody holds one; `None` if busy.
pub fn try_lock_exclusive(root: &Root, rel: &Path) -> Result<Option<LockGuard>> {
    for _ in 0..MAX_LOCK_ATTEMPTS {
        let Some((mut file, id)) = open_lock_file(root, rel, LockMode::Exclusive)? else {
            unreachable!("exclusive opens never degrade to unlocked")
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", root.join(rel), e)),
        }
        if !same_inode(id, root, rel) {
            continue;
        }
        record_holder(&mut file);
        return Ok(Some(LockGuard {
            file: Some(file),
            path: root.join(rel),
            mode: LockMode::Exclusive,
            waited: Duration::ZERO,
            wait: None,
        }));
    }
    Err(replaced_too_often(&root.join(rel)))
}

/// Whether someone holds the lock at `root/rel`, without creating the file and
/// without keeping anything: a try, released at once. A file that cannot be opened
/// (a planted link, a read-only cache) counts as held: whoever asks must leave the
/// thing it guards alone.
pub fn probe(root: &Root, rel: &Path) -> LockState {
    let file = match root.open_file(rel, OpenHow::read()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LockState::Absent,
        Err(_) => return LockState::Held,
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            LockState::Free
        }
        Err(_) => LockState::Held,
    }
}

fn acquire(
    root: &Root,
    rel: &Path,
    mode: LockMode,
    on_wait: &mut dyn FnMut(Option<&str>),
) -> Result<LockGuard> {
    let mut waited = Duration::ZERO;
    let mut wait = None;
    let mut told = false;
    for _ in 0..MAX_LOCK_ATTEMPTS {
        let Some((mut file, id)) = open_lock_file(root, rel, mode)? else {
            return Ok(LockGuard {
                file: None,
                path: root.join(rel),
                mode,
                waited,
                wait,
            });
        };
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let record = holder_of(&mut file);
                if !told {
                    told = true;
                    on_wait(record.as_deref());
                }
                let start = Instant::now();
                let r = wait_for(&file, mode, &root.join(rel), record.as_deref());
                waited += start.elapsed();
                let held_by = r?;
                wait = Some(LockWait {
                    lock: root.join(rel),
                    waited_ms: waited.as_millis() as u64,
                    holder: held_by,
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", root.join(rel), e)),
        }
        if !same_inode(id, root, rel) {
            // Deleted (and maybe recreated) while we waited: lock the live file instead.
            continue;
        }
        if mode == LockMode::Exclusive {
            record_holder(&mut file);
        }
        return Ok(LockGuard {
            file: Some(file),
            path: root.join(rel),
            mode,
            waited,
            wait,
        });
    }
    Err(replaced_too_often(&root.join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn root() -> (tempfile::TempDir, std::sync::Arc<Root>) {
        let dir = tempfile::tempdir().unwrap();
        let r = std::sync::Arc::new(Root::open(dir.path()).unwrap());
        (dir, r)
    }

    #[test]
    fn shared_locks_coexist_and_exclude_writers() {
        let (_d, r) = root();
        let p = Path::new("locks/ab/k.lock");
        assert_eq!(probe(&r, p), LockState::Absent);
        let a = lock_shared(&r, p).unwrap();
        let b = lock_shared(&r, p).unwrap();
        assert_eq!(probe(&r, p), LockState::Held);
        assert!(try_lock_exclusive(&r, p).unwrap().is_none());
        drop(a);
        assert!(try_lock_exclusive(&r, p).unwrap().is_none());
        drop(b);
        assert_eq!(probe(&r, p), LockState::Free);
        assert!(try_lock_exclusive(&r, p).unwrap().is_some());
    }

    #[test]
    fn planted_links_are_refused_and_named() {
        let (d, r) = root();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::create_dir_all(d.path().join("locks/ab")).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("locks/ab/k.lock")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("locks/cd")).unwrap();
        for rel in ["locks/ab/k.lock", "locks/cd/victim", "locks/cd/new.lock"] {
            let rel = Path::new(rel);
            let e = lock_shared(&r, rel).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            let e = try_lock_exclusive(&r, rel).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            assert_eq!(probe(&r, rel), LockState::Held);
        }
        let e = lock_shared(&r, Path::new("locks/cd/new.lock"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&d.path().join("locks/cd").display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!outside.path().join("new.lock").exists());
    }

    #[test]
    fn a_bounded_wait_gives_up_naming_the_holder_and_an_unbounded_one_waits() {
        let (_d, r) = root();
        let p = Path::new("k.lock");
        let held = lock_exclusive(&r, p, &mut |_| {}).unwrap();
        let r2 = r.clone();
        let err = std::thread::spawn(move || {
            with_wait_limit(Some(Duration::from_millis(30)), || {
                lock_shared(&r2, Path::new("k.lock"))
            })
        })
        .join()
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), "lock-timeout");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "names the holder from /proc/locks: {msg}"
        );
        // The limit is the thread's and is restored: a plain wait blocks until release.
        let (tx, rx) = mpsc::channel();
        let r3 = r.clone();
        let t = std::thread::spawn(move || {
            with_wait_limit(Some(Duration::from_millis(1)), || {});
            let g = lock_shared(&r3, Path::new("k.lock")).unwrap();
            tx.send(()).unwrap();
            drop(g);
        });
        assert!(rx.try_recv().is_err());
        drop(held);
        rx.recv().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn holders_are_read_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF\n2: FLOCK  ADVISORY  READ  77 08:01:99 0 EOF\n2: -> FLOCK  ADVISORY  READ  78 08:01:99 0 EOF\n3: POSIX  ADVISORY  WRITE 5 08:01:99 0 EOF\n4: FLOCK  ADVISORY  READ  79 08:01:99 0 EOF\n";
        assert_eq!(parse_proc_locks(text, 0, 0x2f, 1234), vec![(4242, false)]);
        assert_eq!(
            parse_proc_locks(text, 8, 1, 99),
            vec![(77, true), (79, true)],
            "waiters (->) and POSIX locks are not flock holders"
        );
        assert!(parse_proc_locks(text, 8, 1, 100).is_empty());
        // A live holder of a real lock is found, with its command line.
        let (_d, r) = root();
        let g = lock_shared(&r, Path::new("k.lock")).unwrap();
        let f = r.open_file("k.lock", OpenHow::read()).unwrap();
        let said = holders(&f, None);
        assert!(
            said.contains(&format!("pid {}", std::process::id())),
            "{said}"
        );
        assert!(said.contains("shared"), "{said}");
        drop(g);
        assert_eq!(
            holders(&f, Some("pid=1 host=\x1b[2J")),
            "pid=1 host=\\u{1b}[2J (as its lock file records)"
        );
    }

    #[test]
    fn waiter_is_told_the_holder_only_when_waiting() {
        let (_d, r) = root();
        let p = Path::new("k.lock");
        let mut calls = 0;
        let g = lock_exclusive(&r, p, &mut |_| calls += 1).unwrap();
        assert_eq!(calls, 0, "an uncontended lock must not report waiting");
        let (told_tx, told_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let g2 = lock_exclusive(&r2, Path::new("k.lock"), &mut |h| {
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
        let (d, r) = root();
        let p = Path::new("k.lock");
        let a = lock_exclusive(&r, p, &mut |_| {}).unwrap();
        // B opens the current file and blocks on it.
        let (blocked_tx, blocked_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let r2 = r.clone();
        let b = std::thread::spawn(move || {
            let g = lock_exclusive(&r2, Path::new("k.lock"), &mut |_| {
                blocked_tx.send(()).unwrap()
            })
            .unwrap();
            done_tx.send(g.holds_live_file()).unwrap();
        });
        blocked_rx.recv().unwrap();
        // A collector deletes the file while holding it; C locks the new file.
        std::fs::remove_file(d.path().join(p)).unwrap();
        let c = try_lock_exclusive(&r, p)
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
