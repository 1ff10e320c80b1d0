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

// Bundles built by hand, as someone who can write a bundle builds them: from a real
// export (so that every key derives), changed where the test says.

/// A piece of a hand-made zstd frame.
pub enum Part {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// A zstd frame as an attacker writes one by hand: bytes in raw blocks, runs of zeros
/// in RLE blocks (4 bytes for each 128 KiB, so a gigabyte is 32 KiB of frame), with or
/// without the content size declared in its header.
pub fn zstd_frame(parts: &[Part], declare_size: bool) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let total: u64 = parts
        .iter()
        .map(|p| match p {
            Part::Bytes(b) => b.len() as u64,
            Part::Zeros(n) => *n,
        })
        .sum();
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor (8-byte content size, or none), then the window
    // descriptor: 2^17 bytes, so blocks of 128 KiB.
    f.push(if declare_size { 0xC0 } else { 0x00 });
    f.push(0x38);
    if declare_size {
        f.extend_from_slice(&total.to_le_bytes());
    }
    let mut blocks: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    for p in parts {
        match p {
            Part::Bytes(b) => {
                for c in b.chunks(BLOCK as usize) {
                    blocks.push((0, c.len() as u64, c.to_vec()));
                }
            }
            Part::Zeros(n) => {
                let mut left = *n;
                while left > 0 {
                    let k = left.min(BLOCK);
                    blocks.push((1, k, vec![0]));
                    left -= k;
                }
            }
        }
    }
    if blocks.is_empty() {
        blocks.push((0, 0, Vec::new()));
    }
    let last = blocks.len() - 1;
    for (i, (kind, size, content)) in blocks.into_iter().enumerate() {
        let header = (i == last) as u32 | (kind << 1) | ((size as u32) << 3);
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(&content);
    }
    f
}

/// One entry of a real bundle: its index row, its `entry.json` and its files.
pub struct RealEntry {
    pub index: xcache::remote::bundle::IndexEntry,
    pub meta: serde_json::Value,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Reads a real (unsigned) bundle the way anyone can: zstd, tar, the documented frame.
pub fn read_real(path: &Path) -> (xcache::remote::bundle::Index, Vec<RealEntry>) {
    let tar_bytes = zstd::stream::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut index = None;
    let mut values = std::collections::HashMap::new();
    for m in archive.entries().unwrap() {
        use std::io::Read;
        let mut m = m.unwrap();
        let name = String::from_utf8_lossy(&m.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        m.read_to_end(&mut bytes).unwrap();
        if name == xcache::remote::bundle::INDEX_MEMBER {
            index = Some(xcache::remote::bundle::Index::decode(&bytes).unwrap());
        } else {
            values.insert(name, bytes);
        }
    }
    let index = index.unwrap();
    let entries = index
        .entries
        .iter()
        .map(|e| {
            let value = &values[&e.member()];
            assert_eq!(&value[..5], b"XCE1\0", "an unsigned value");
            let frame = zstd::stream::decode_all(&value[5..]).unwrap();
            let mut r = &frame[..];
            let mut take = |n: usize| {
                let (a, b) = r.split_at(n);
                r = b;
                a.to_vec()
            };
            let meta_len = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            let meta: serde_json::Value = serde_json::from_slice(&take(meta_len)).unwrap();
            let count = u32::from_le_bytes(take(4).try_into().unwrap());
            let files = (0..count)
                .map(|_| {
                    let n = u16::from_le_bytes(take(2).try_into().unwrap()) as usize;
                    let name = String::from_utf8(take(n)).unwrap();
                    let len = u64::from_le_bytes(take(8).try_into().unwrap()) as usize;
                    (name, take(len))
                })
                .collect();
            RealEntry {
                index: e.clone(),
                meta,
                files,
            }
        })
        .collect();
    (index, entries)
}

/// Writes `entries` (as [`read_real`] gave them, changed or not) as an unsigned bundle,
/// each packed as xcache packs values, the index's sizes and hashes made to match.
pub fn write_entries(
    mut index: xcache::remote::bundle::Index,
    entries: Vec<RealEntry>,
    out: &Path,
) {
    index.entries.clear();
    let mut values = Vec::new();
    for mut e in entries {
        let value = xcache::store::pack::Packed {
            meta: serde_json::to_vec(&e.meta).unwrap(),
            files: e.files,
        }
        .encode(None);
        e.index.size = value.len() as u64;
        e.index.blake3 = blake3::hash(&value).to_hex().to_string();
        index.entries.push(e.index);
        values.extend_from_slice(&value);
    }
    let f = std::fs::File::create(out).unwrap();
    xcache::remote::bundle::write_bundle(f, &index, &mut &values[..], None).unwrap();
}
