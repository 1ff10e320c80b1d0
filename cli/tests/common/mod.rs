//! Helpers shared by the CLI tests: each test gets its own temp base dir and runs the
//! real `xcache` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("xcache-cli-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xcache"));
        c.args(args)
            .env("XCACHE_DIR", self.base())
            // Paths printed by `compile` are protected from cleanup for handout_grace;
            // the cleanup tests make entries look old by their mtimes, so they start
            // without it. The tests of the hand-out itself set their own flags.
            .env("XCACHE_FLAGS", "handout_grace=0s")
            .env_remove("XCACHE_CONFIG")
            .env_remove("XCACHE_RUNTIME")
            .env_remove("XCACHE_LOG")
            .stdin(Stdio::null());
        c
    }
    /// Runs and parses stdout as JSON, failing on a non-zero exit.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&stdout(&self.run(args))).unwrap()
    }
    /// The current compiledir, as `xcache` prints it.
    pub fn compiledir(&self) -> PathBuf {
        PathBuf::from(stdout(&self.run(&[])).trim())
    }
}

pub fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sets the mtime of a file (to make entries and compiledirs look old, without waiting).
pub fn set_mtime(path: &Path, secs_ago: u64) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
    let f = if path.is_dir() {
        std::fs::File::open(path).unwrap()
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    };
    f.set_modified(t).unwrap();
}

/// Makes the entry directory `entry` look unused for `secs_ago`: sets its `last-use`
/// marker and removes its compiledir's index. The index records last uses as xcache
/// writes them; a marker set by hand is seen once a listing rebuilds the index from
/// the entries, which it does when the index is missing.
pub fn age_entry(entry: &Path, secs_ago: u64) {
    set_mtime(&entry.join("last-use"), secs_ago);
    let cd = entry
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap();
    match std::fs::remove_file(cd.join("index")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{e}"),
    }
}

/// What [`run_bounded`] saw of a child.
#[derive(Debug)]
pub struct Bounded {
    /// Its exit code (`None`: killed by a signal, the deadline's included).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Its peak resident memory, KiB (`getrusage` of that child, from `wait4`).
    pub max_rss_kib: u64,
    /// True when the deadline passed and it was killed.
    pub timed_out: bool,
}

/// Runs `cmd` to its end, or kills it (SIGKILL) when `limit` has passed: a test of
/// something that could hang fails instead of hanging. Its output goes through files
/// in `scratch` (no pipe to drain), and its peak memory comes from `wait4`.
pub fn run_bounded(mut cmd: Command, scratch: &Path, limit: std::time::Duration) -> Bounded {
    let out_path = scratch.join(".bounded.stdout");
    let err_path = scratch.join(".bounded.stderr");
    cmd.stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    // `wait4` on a thread of its own; this one keeps the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not yet waited for (its `Child` is never waited).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        tx.send((status, usage.ru_maxrss as u64)).unwrap();
    });
    let (timed_out, (status, max_rss_kib)) = match rx.recv_timeout(limit) {
        Ok(r) => (false, r),
        Err(_) => {
            // SAFETY: signalling our own child, which is not reaped until wait4 returns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (true, rx.recv().unwrap())
        }
    };
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Bounded {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        max_rss_kib,
        timed_out,
    }
}

/// Apparent bytes of every file below `dir` (not following links).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        total += if m.is_dir() {
            tree_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}
