//! `xcache unlock [--remove-free]`: the lock files of the current compiledir, whether
//! each is held now, and who last held it.
//!
//! theano-cache has `unlock` because its one compiledir-wide lock is a directory that a
//! crashed process leaves behind, and everyone waits on it until someone removes it by
//! hand. xcache's locks are per key and are OS file locks ([`crate::store::lock`]): the
//! kernel releases a lock when its holder exits, however it exits, so no lock is ever
//! stale and there is nothing to unlock. What a user who reaches for `unlock` wants to
//! know is who holds what; this verb tells, and can remove the lock files nobody holds
//! (harmless: a lock file is recreated when its key is next used), each under a
//! try-lock so that a holder is never pulled from under.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::fsx::{Kind, OpenHow, Root};
use crate::store::lock::{self, LockState};
use crate::store::{layout, Store};

/// Who last took a lock exclusively, as the holder wrote it into the file (`pid=N
/// host=H`). Readers take shared locks and write nothing, so the holder of a lock held
/// now may be a reader that is not named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// The host it ran on.
    pub host: String,
    /// Whether that process is running now: `None` when it ran on another host.
    pub running: Option<bool>,
}

/// One lock file.
#[derive(Debug, Clone, Serialize)]
pub struct LockRow {
    /// The key it locks (64 hex digits).
    pub key: String,
    /// The lock file.
    pub path: PathBuf,
    /// `held` or `free`, at the moment it was probed.
    pub state: LockState,
    /// The last exclusive holder recorded in the file, if any.
    pub last_holder: Option<Holder>,
    /// Who holds it now, when it is held: the processes of this machine holding it
    /// (from `/proc/locks`: pid, command, host, shared or not), else the recorded
    /// holder ([`lock::holders`]).
    pub held_by: Option<String>,
    /// Whether the key has an entry (the lock of a result).
    pub has_entry: bool,
    /// Whether the key has a manifest (the lock of a request key: its builds and its
    /// manifest's updates). A free lock with neither is an orphan.
    pub has_manifest: bool,
    /// Whether `--remove-free` removed it.
    pub removed: bool,
}

/// `xcache unlock --json` prints this.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UnlockReport {
    /// Every lock file, held ones first.
    pub locks: Vec<LockRow>,
    /// How many are held now.
    pub held: usize,
    /// How many are free.
    pub free: usize,
    /// How many free ones were removed.
    pub removed: usize,
}

/// Parses what a holder writes into its lock file: `pid=N host=H`.
pub fn parse_holder(text: &str) -> Option<(u32, String)> {
    let mut pid = None;
    let mut host = None;
    for field in text.split_whitespace() {
        match field.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("host", v)) => host = Some(v.to_string()),
            _ => {}
        }
    }
    Some((pid?, host.unwrap_or_default()))
}

fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates or truncates.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn is_running(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The recorded holder of the lock file at `rel`, read without following links.
fn last_holder(cd: &Root, rel: &Path, host: &str) -> Option<Holder> {
    let mut text = String::new();
    cd.open_file(rel, OpenHow::read())
        .ok()?
        .take(200)
        .read_to_string(&mut text)
        .ok()?;
    let (pid, h) = parse_holder(&text)?;
    let running = (h == host).then(|| is_running(pid));
    Some(Holder {
        pid,
        host: h,
        running,
    })
}

/// Lists the lock files of the current compiledir; with `remove_free`, removes each one
/// nobody holds, under an exclusive try-lock taken on it first.
pub fn unlock(store: &Store, remove_free: bool) -> Result<UnlockReport> {
    let cd = &store.root();
    let host = this_host();
    let mut report = UnlockReport::default();
    for fan in cd.read_dir(layout::LOCKS).unwrap_or_default() {
        let Some(fan_name) = fan.name_str().filter(|n| layout::is_fan(n)) else {
            continue;
        };
        if fan.kind != Kind::Dir {
            continue;
        }
        let fan_rel = Path::new(layout::LOCKS).join(fan_name);
        for l in cd.read_dir(&fan_rel).unwrap_or_default() {
            let Some(key) = l.name_str().and_then(layout::parse_lock_file_name) else {
                continue;
            };
            if l.kind != Kind::File {
                continue; // not xcache's: verify reports it
            }
            let rel = fan_rel.join(&l.name);
            let last_holder = last_holder(cd, &rel, &host);
            let mut state = lock::probe(cd, &rel);
            if state == LockState::Absent {
                continue; // removed since the listing
            }
            let mut removed = false;
            if remove_free && state == LockState::Free {
                match lock::try_lock_exclusive(cd, &rel)? {
                    Some(guard) => {
                        cd.remove_file(&rel)
                            .map_err(|e| crate::store::io_below("removing", cd, &rel, e))?;
                        drop(guard);
                        removed = true;
                    }
                    None => state = LockState::Held, // taken since the probe
                }
            }
            let held_by = (state == LockState::Held)
                .then(|| cd.open_file(&rel, OpenHow::read()).ok())
                .flatten()
                .map(|f| {
                    let record = last_holder
                        .as_ref()
                        .map(|h| format!("pid={} host={}", h.pid, h.host));
                    lock::holders(&f, record.as_deref())
                });
            report.locks.push(LockRow {
                held_by,
                has_entry: cd.lstat_fast(layout::entry(&key)).is_ok(),
                has_manifest: cd.lstat_fast(layout::manifest(&key)).is_ok(),
                key: key.hex(),
                path: cd.join(&rel),
                state,
                last_holder,
                removed,
            });
        }
    }
    report.locks.sort_by(|a, b| {
        (a.state != LockState::Held, &a.key).cmp(&(b.state != LockState::Held, &b.key))
    });
    report.held = report
        .locks
        .iter()
        .filter(|l| l.state == LockState::Held)
        .count();
    report.free = report.locks.len() - report.held;
    report.removed = report.locks.iter().filter(|l| l.removed).count();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_read_as_they_are_written() {
        assert_eq!(
            parse_holder("pid=42 host=box\n"),
            Some((42, "box".to_string()))
        );
        assert_eq!(parse_holder("host=box pid=7"), Some((7, "box".into())));
        assert_eq!(parse_holder(""), None);
        assert_eq!(parse_holder("pid=x host=box"), None);
        assert!(is_running(std::process::id()));
    }
}
