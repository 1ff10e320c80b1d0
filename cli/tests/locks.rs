//! A lock held by another process is a wait that says what it waits for: after a
//! second, one line on stderr naming the lock, its holder (pid, command, host) and
//! `xcache unlock`; at `lock_timeout`, an error saying the same (JSON with `--json`);
//! `--explain` and `compile --json` report the wait. Before, a hit, `verify`, `verify
//! --repair` and `export` waited out the timeout with nothing on stderr.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use common::{stdout, Env};
use serde_json::Value;

/// Compiles `k.c` and returns the lock file of its entry (the result key's).
fn entry_lock(env: &Env) -> (PathBuf, PathBuf) {
    let src = env.file("k.c", "int f(void) { return 1; }\n");
    let v = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    let key = v["key"].as_str().unwrap().to_string();
    let lock = env
        .compiledir()
        .join("locks")
        .join(&key[..2])
        .join(format!("{key}.lock"));
    assert!(lock.exists(), "{}", lock.display());
    (src, lock)
}

/// Holds an exclusive flock on `path` (as this test's process) until dropped.
fn hold(path: &PathBuf) -> File {
    let f = File::options().read(true).write(true).open(path).unwrap();
    f.lock().unwrap();
    f
}

#[test]
fn a_wait_says_what_it_waits_for_and_explain_reports_it() {
    let env = Env::new();
    let (src, lock) = entry_lock(&env);
    let held = hold(&lock);
    let mut child = env
        .cmd(&["compile", src.to_str().unwrap(), "--explain", "--json"])
        .env("XCACHE_FLAGS", "handout_grace=0s,lock_timeout=5m")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The notice comes after about a second: read it as it is written (no sleeping).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let started = Instant::now();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr ended first");
        if line.contains("waiting for the lock") {
            break;
        }
    }
    assert!(
        started.elapsed().as_millis() >= 900,
        "not before a second: {line}"
    );
    let me = format!("pid {}", std::process::id());
    assert!(line.contains(&lock.display().to_string()), "{line}");
    assert!(
        line.contains(&me) && line.contains("xcache unlock"),
        "{line}"
    );
    drop(held);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hit"], true);
    let waits = v["lock_waits"].as_array().unwrap();
    assert_eq!(waits.len(), 1, "{v}");
    assert!(waits[0]["waited_ms"].as_u64().unwrap() >= 900, "{v}");
    assert!(waits[0]["holder"].as_str().unwrap().contains(&me), "{v}");
    assert!(
        rest.contains("explain: waited") && rest.contains(&me),
        "--explain says it waited and for what: {rest}"
    );
}

#[test]
fn a_lock_held_forever_ends_at_lock_timeout_naming_its_holder_everywhere() {
    let env = Env::new();
    let (src, lock) = entry_lock(&env);
    let _held = hold(&lock);
    let me = format!("pid {}", std::process::id());
    let bundle = env.dir.path().join("b.tar.zst");
    for args in [
        vec!["compile", src.to_str().unwrap()],
        vec!["verify"],
        vec!["verify", "--repair"],
        vec!["export", "--out", bundle.to_str().unwrap()],
    ] {
        let o = env
            .cmd(&args)
            .env("XCACHE_FLAGS", "handout_grace=0s,lock_timeout=1500ms")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("waiting for the lock") && err.contains("gave up waiting"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&me) && err.contains("xcache unlock") && err.contains("lock_timeout"),
            "{args:?}: {err}"
        );
    }
    // --json stays JSON on the timeout.
    let o = env
        .cmd(&["compile", src.to_str().unwrap(), "--json"])
        .env("XCACHE_FLAGS", "handout_grace=0s,lock_timeout=1500ms")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "lock-timeout", "{v}");
    // `unlock` names the holder, and the lock is free again once it is gone.
    let shown = stdout(&env.run(&["unlock"]));
    assert!(shown.contains(&std::process::id().to_string()), "{shown}");
}
