//! Reliability suites, bounded for CI (the soak script runs them longer):
//!
//! - crash: rounds of SIGKILL at a random step of a compile and publish;
//! - race: 8 processes looping over hits, misses, prune, clear and verify.
//!
//! The workers are this test binary run again with `XC_WORKER` set (so they use the
//! library exactly as an embedding program does), each in its own process.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{subdirs, Rng, TestCache};
use xcache::ops::{clean, verify};
use xcache::{Config, Jit, Language, SourceRequest};

fn config_at(base: &Path) -> Config {
    let mut c = Config::defaults();
    c.set_base_dir(base);
    c
}

/// `int f_I(void) { return I; }` — every key's function knows its answer.
fn request(i: u64) -> SourceRequest {
    SourceRequest::new(
        Language::C,
        format!("int answer(void) {{ return {i}; }}\n/* key {i} */\n"),
    )
    .named(format!("k{i}.c"))
}

fn call(jit: &Jit, i: u64) -> Result<(), String> {
    let c = jit
        .compile(&request(i))
        .map_err(|e| format!("compile {i}: {e}"))?;
    let f = unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("answer") }
        .map_err(|e| format!("symbol {i}: {e}"))?;
    let got = unsafe { f() };
    if got as u64 != i {
        return Err(format!("key {i}: the loaded function returned {got}"));
    }
    Ok(())
}

fn worker_command(test: &str, base: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("XC_WORKER", "1")
        .env("XC_BASE", base)
        .stdin(Stdio::null());
    c
}

fn is_worker() -> bool {
    std::env::var_os("XC_WORKER").is_some()
}

fn fifo(path: &Path) {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
}

/// Waits until the worker writes its pause point to the `started` FIFO. A worker that
/// dies first would leave the read blocked forever: a watchdog thread notices and
/// unblocks it, and the round fails with what happened.
fn wait_for_pause(ctl: &Path, pid: u32, round: usize, point: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = ctl.join("started");
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(File::open(started).unwrap()).read_line(&mut line);
        let _ = tx.send(line);
    });
    loop {
        // A watchdog tick, not a wait for time to pass: the answer comes from the FIFO.
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => return line,
            Err(_) => {
                let alive = unsafe { libc::kill(pid as i32, 0) } == 0
                    && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z "));
                if !alive {
                    // Unblock the reader, then fail.
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .open(ctl.join("started"));
                    panic!("round {round}: the worker exited before reaching {point}");
                }
            }
        }
    }
}

/// Worker side of the crash suite: one compile of key XC_KEY, paused where
/// __XCACHE_TEST_PAUSE says (the parent kills it there).
#[test]
fn crash_worker() {
    if !is_worker() {
        return;
    }
    let base = PathBuf::from(std::env::var("XC_BASE").unwrap());
    let key: u64 = std::env::var("XC_KEY").unwrap().parse().unwrap();
    let jit = Jit::new(config_at(&base)).unwrap();
    call(&jit, key).unwrap();
}

#[test]
fn crash_at_random_steps_never_leaves_a_broken_cache() {
    if is_worker() {
        return;
    }
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the pause points exist in debug builds only");
        return;
    }
    let rounds: usize = std::env::var("XC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let tc = TestCache::new();
    let base = tc.base();
    let ctl = tc.dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    fifo(&ctl.join("started"));
    fifo(&ctl.join("release"));
    let points = ["source-written", "compiled", "sealed", "published"];
    let mut rng = Rng(0xc0ffee);
    let jit = Jit::new(config_at(&base)).unwrap();
    for round in 0..rounds {
        let key = rng.next() % 8;
        let point = points[(rng.next() % points.len() as u64) as usize];
        // Kill only builds: make sure this key is a miss.
        jit.store().clear(true, false).unwrap();
        let child = worker_command("crash_worker", &base)
            .env("XC_KEY", key.to_string())
            .env("__XCACHE_TEST_PAUSE", format!("{point}:{}", ctl.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let line = wait_for_pause(&ctl, child.id(), round, point);
        assert_eq!(line.trim(), point, "round {round}");
        assert_eq!(
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) },
            0
        );
        let _ = child.wait_with_output();

        // The next request succeeds and gives the right answer (a fresh Jit: no
        // library loaded in this process may hide the disk).
        let fresh = Jit::new(config_at(&base)).unwrap();
        call(&fresh, key).unwrap_or_else(|e| panic!("round {round} ({point}): {e}"));
        // Nothing is broken: every entry verifies.
        let v = verify::verify(fresh.store(), false).unwrap();
        let broken: Vec<_> = v
            .problems
            .iter()
            .filter(|p| p.kind != verify::ProblemKind::Leftover)
            .collect();
        assert!(broken.is_empty(), "round {round} ({point}): {broken:?}");
        assert_eq!(v.ok, v.entries, "round {round}: an entry failed its check");
    }
    // Crashed builds left staging; collected once past the grace period (the clock is
    // moved, not waited for).
    let tmp = jit.store().dirs().tmp();
    let staged = |prefix: &str| {
        subdirs(&tmp)
            .iter()
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .count()
    };
    assert!(
        staged("build-") > 0,
        "the kills left no staging: the suite tested nothing"
    );
    let later = Arc::new(xcache::clock::ManualClock::new(
        SystemTime::now() + Duration::from_secs(2 * 3600),
    ));
    let jit_later = Jit::with_clock(config_at(&base), later).unwrap();
    clean::prune(jit_later.store(), &clean::PruneOptions::default()).unwrap();
    assert_eq!(
        staged("build-"),
        0,
        "staging left by crashes is collected after the grace period"
    );
}

/// Worker side of the race suite: hits, misses, prune, clear and verify until the
/// deadline; prints one line, `RESULT <ops> <calls> <failures>` then the failures.
#[test]
fn race_worker() {
    if !is_worker() {
        return;
    }
    let base = PathBuf::from(std::env::var("XC_BASE").unwrap());
    let secs: u64 = std::env::var("XC_SECS").unwrap().parse().unwrap();
    let seed: u64 = std::env::var("XC_SEED").unwrap().parse().unwrap();
    let keys: u64 = 50;
    let mut rng = Rng(seed);
    let mut config = config_at(&base);
    config.set("staging_grace", "0s").unwrap();
    let mut jit = Jit::new(config.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut ops, mut calls) = (0u64, 0u64);
    let mut failures = Vec::new();
    while Instant::now() < deadline {
        ops += 1;
        match rng.next() % 100 {
            0..=64 => {
                calls += 1;
                if let Err(e) = call(&jit, rng.next() % keys) {
                    failures.push(e);
                }
            }
            65..=79 => jit = Jit::new(config.clone()).unwrap(), // next calls load from disk
            80..=87 => {
                let opts = clean::PruneOptions {
                    max_size: Some(64 << 10),
                    ..Default::default()
                };
                if let Err(e) = clean::prune(jit.store(), &opts) {
                    failures.push(format!("prune: {e}"));
                }
            }
            88..=93 => {
                if let Err(e) = clean::clear(jit.store(), false, false) {
                    failures.push(format!("clear: {e}"));
                }
            }
            _ => match verify::verify(jit.store(), false) {
                Ok(v) => {
                    for p in v.problems.iter().filter(|p| {
                        matches!(
                            p.kind,
                            verify::ProblemKind::CorruptEntry
                                | verify::ProblemKind::UnreadableEntry
                        )
                    }) {
                        failures.push(format!("verify: {}: {}", p.path.display(), p.detail));
                    }
                }
                Err(e) => failures.push(format!("verify: {e}")),
            },
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "RESULT {ops} {calls} {}", failures.len()).unwrap();
    for f in failures.iter().take(20) {
        writeln!(out, "FAILURE {f}").unwrap();
    }
}

#[test]
fn eight_processes_racing_never_fail_and_never_load_a_wrong_library() {
    if is_worker() {
        return;
    }
    let secs: u64 = std::env::var("XC_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let tc = TestCache::new();
    let base = tc.base();
    Jit::new(config_at(&base)).unwrap(); // create the compiledir once
    let children: Vec<_> = (0..8)
        .map(|i| {
            worker_command("race_worker", &base)
                .env("XC_SECS", secs.to_string())
                .env("XC_SEED", (1000 + i).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut ops, mut calls) = (0u64, 0u64);
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The harness prints "test race_worker ... " on the same line.
        let line = text
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, rest)| rest.to_string()))
            .unwrap_or_else(|| panic!("worker died: {text}"));
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(f[2], 0, "failures in a worker:\n{text}");
        ops += f[0];
        calls += f[1];
    }
    eprintln!("race: 8 processes, {secs} s: {ops} operations, {calls} calls checked, 0 failures");
    assert!(
        calls > 100,
        "too little happened to mean anything: {calls} calls"
    );
}
