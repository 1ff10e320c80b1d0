//! Paths handed to scripts stay valid, and nothing piles up.
//!
//! The race: the pattern scripts use, `so=$(xcache compile k.c)` and then `dlopen` in
//! another process, from 4 clients at once, against a loop of `xcache prune --max-size
//! 1B` and `xcache clear`. Every request must load the function it asked for. Before
//! hand-outs were recorded, 10–47 of 34–132 requests failed this way (the `.so` was
//! removed between the print and the `dlopen`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{stdout, Env};
use serde_json::Value;

/// A C program that does what a script's `python -c "ctypes.CDLL('$so')"` does:
/// dlopen the path, call `f`, print its result.
const LOADER: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc != 2) return 64;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    int (*f)(void) = (int (*)(void))dlsym(h, "f");
    if (!f) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 2; }
    printf("%d\n", f());
    return 0;
}
"#;

fn loader(env: &Env) -> PathBuf {
    let src = env.file("loader.c", LOADER);
    let exe = env.dir.path().join("loader");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn race_secs() -> u64 {
    std::env::var("XC_HANDOUT_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[derive(Debug, Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    cleaner_runs: AtomicU64,
    cleaner_failed: AtomicU64,
    removed: AtomicU64,
    /// Compiledirs a purge removed whole.
    compiledirs_removed: AtomicU64,
    /// Requests that found their compiledir removed under them, made it again and went
    /// on (they say so at `XCACHE_LOG=info`).
    recovered: AtomicU64,
}

/// What the race's cleaner runs in a loop.
const PRUNE_AND_CLEAR: &[&[&str]] = &[
    &["prune", "--max-size", "1B", "--json"],
    &["clear", "--json"],
];

/// `purge` and `basecompiledir purge`: they remove the compiledir itself (and the base
/// dir), under requests that are compiling in it.
const PURGES: &[&[&str]] = &[&["purge", "--json"], &["basecompiledir", "purge", "--json"]];

/// 4 clients compile and load in separate processes while a cleaner prunes and clears.
/// `grace` is the handout_grace setting; `out` makes the clients use `--out`. Each
/// client asks for a key 5 times in a row (a miss, then hits), then moves on to a new
/// one, so that entries are hot for a moment and then left to the cleaner.
fn race(env: &Env, grace: &str, out: bool) -> (Tally, Vec<String>) {
    race_against(env, grace, out, true, PRUNE_AND_CLEAR, race_secs())
}

/// [`race`] against the cleaner commands `cleaner`, run in turn in a loop; with
/// `load` false, a printed path is not loaded (only the request itself must succeed).
fn race_against(
    env: &Env,
    grace: &str,
    out: bool,
    load: bool,
    cleaner: &[&[&str]],
    secs: u64,
) -> (Tally, Vec<String>) {
    let loader = loader(env);
    let flags = format!("handout_grace={grace}");
    let tally = Tally::default();
    let errors = std::sync::Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for client in 0..4u64 {
            let (loader, flags, tally, errors) = (&loader, &flags, &tally, &errors);
            s.spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let k = client * 1_000_000 + n / 5;
                    n += 1;
                    let src = env.file(
                        &format!("src/k{k}.c"),
                        &format!("int f(void) {{ return {k}; }}\n"),
                    );
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    let mut cmd = env.cmd(&["compile", src.to_str().unwrap()]);
                    cmd.env("XCACHE_FLAGS", flags).env("XCACHE_LOG", "info");
                    let copy = env.dir.path().join(format!("client{client}-{n}.so"));
                    if out {
                        cmd.arg("--out").arg(&copy);
                    }
                    let o = cmd.output().unwrap();
                    if String::from_utf8_lossy(&o.stderr).contains("removed while in use") {
                        tally.recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    if !o.status.success() {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("compile: {}", String::from_utf8_lossy(&o.stderr)));
                        continue;
                    }
                    let path = String::from_utf8(o.stdout).unwrap().trim().to_string();
                    if !load && !out {
                        continue;
                    }
                    let l = Command::new(loader).arg(&path).output().unwrap();
                    if !l.status.success() {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!(
                            "load {path}: {}",
                            String::from_utf8_lossy(&l.stderr)
                        ));
                    } else if String::from_utf8_lossy(&l.stdout).trim() != k.to_string() {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    if out {
                        let _ = std::fs::remove_file(&copy);
                    }
                }
            });
        }
        let (tally, flags, errors) = (&tally, &flags, &errors);
        s.spawn(move || {
            while Instant::now() < deadline {
                for args in cleaner {
                    tally.cleaner_runs.fetch_add(1, Ordering::Relaxed);
                    let o = env.cmd(args).env("XCACHE_FLAGS", flags).output().unwrap();
                    // `basecompiledir purge --json` prints its report after the action.
                    let report = serde_json::Deserializer::from_slice(&o.stdout)
                        .into_iter::<Value>()
                        .filter_map(|v| v.ok())
                        .find(|v| v.get("removed_entries").is_some());
                    match report {
                        Some(v) if o.status.success() => {
                            let n = v["removed_entries"].as_u64().unwrap_or(0);
                            tally.removed.fetch_add(n, Ordering::Relaxed);
                            let cds = v["actions"].as_array().map_or(0, |a| {
                                a.iter()
                                    .filter(|x| x["kind"] == "compiledir" && x["skipped"].is_null())
                                    .count() as u64
                            });
                            tally.compiledirs_removed.fetch_add(cds, Ordering::Relaxed);
                        }
                        _ => {
                            tally.cleaner_failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!(
                                "{}: {}",
                                args[0],
                                String::from_utf8_lossy(&o.stderr)
                            ));
                        }
                    }
                }
            }
        });
    });
    let errors = errors.into_inner().unwrap();
    eprintln!(
        "race ({grace}, out={out}, {}): {} requests, {} failed, {} wrong, {} found their compiledir removed; cleaner: {} runs, {} failed, {} entries and {} compiledirs removed",
        cleaner[0][0],
        tally.requests.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.recovered.load(Ordering::Relaxed),
        tally.cleaner_runs.load(Ordering::Relaxed),
        tally.cleaner_failed.load(Ordering::Relaxed),
        tally.removed.load(Ordering::Relaxed),
        tally.compiledirs_removed.load(Ordering::Relaxed),
    );
    (tally, errors)
}

fn assert_race_clean(env: &Env, out: bool) {
    // Long enough for any client to load what it was given, short enough that the
    // cleaner removes entries many times over during the race.
    let (t, errors) = race(env, "3s", out);
    assert!(
        t.requests.load(Ordering::Relaxed) > 8,
        "too few requests to mean anything"
    );
    assert_eq!(t.failed.load(Ordering::Relaxed), 0, "{errors:#?}");
    assert_eq!(t.wrong.load(Ordering::Relaxed), 0);
    assert_eq!(t.cleaner_failed.load(Ordering::Relaxed), 0, "{errors:#?}");
    assert!(
        t.removed.load(Ordering::Relaxed) > 0,
        "the cleaner removed nothing: the race tested nothing"
    );
    let v = env.json(&["verify", "--json"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
}

/// Compiles beside `purge` and `basecompiledir purge`, which remove the compiledir (and
/// the base dir) under them: before, 4 of 134 and 8 of 117 requests failed ("creating
/// lock directory …: No such file or directory"), 27–102 of about 600 with `--out`.
fn assert_purge_race_clean(out: bool) {
    let env = Env::new();
    // No hand-out grace: purges remove whatever is not locked at that moment. A printed
    // path may then be gone before a script loads it (the grace is what protects
    // those, and it keeps purges off the compiledir): not loaded here; an `--out` copy
    // is the caller's, and must load.
    let secs = std::env::var("XC_PURGE_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // On a loaded machine the clients may hold a lock at every moment a purge looks,
    // so that no compiledir goes within one round: race again (at most 4 rounds) until
    // one has, every round held to the same checks.
    let mut purged = 0;
    for _ in 0..4 {
        let (t, errors) = race_against(&env, "0s", out, false, PURGES, secs);
        assert!(t.requests.load(Ordering::Relaxed) > 8, "too few requests");
        assert_eq!(t.failed.load(Ordering::Relaxed), 0, "{errors:#?}");
        assert_eq!(t.wrong.load(Ordering::Relaxed), 0);
        assert_eq!(t.cleaner_failed.load(Ordering::Relaxed), 0, "{errors:#?}");
        purged +=
            t.compiledirs_removed.load(Ordering::Relaxed) + t.recovered.load(Ordering::Relaxed);
        if purged > 0 {
            break;
        }
    }
    assert!(
        purged > 0,
        "no compiledir was purged under a request in 4 rounds: the race tested nothing"
    );
}

#[test]
fn compiles_survive_a_concurrent_purge() {
    assert_purge_race_clean(false);
}

#[test]
fn out_copies_survive_a_concurrent_purge() {
    assert_purge_race_clean(true);
}

#[test]
fn out_is_a_private_copy_not_a_link_into_the_cache() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 3; }\n");
    let mine = env.dir.path().join("mine.so");
    let v = env.json(&[
        "compile",
        src.to_str().unwrap(),
        "--out",
        mine.to_str().unwrap(),
        "--json",
    ]);
    let _ = v;
    let cached = PathBuf::from(
        env.json(&["compile", src.to_str().unwrap(), "--json"])["path"]
            .as_str()
            .unwrap(),
    );
    assert_ne!(
        std::fs::metadata(&mine).unwrap().ino(),
        std::fs::metadata(&cached).unwrap().ino(),
        "not a hard link"
    );
    // Appending to the copy leaves the entry as it was: the next request is a plain hit.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&mine)
        .unwrap()
        .write_all(b"appended by the user")
        .unwrap();
    let o = env.run(&["compile", src.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hit"], true, "{v}");
    assert!(
        common::stderr(&o).is_empty(),
        "no quarantine: {}",
        common::stderr(&o)
    );
    let verify = env.json(&["verify", "--json"]);
    assert!(
        verify["problems"].as_array().unwrap().is_empty(),
        "{verify}"
    );
}

#[test]
fn printed_paths_survive_a_concurrent_prune_and_clear() {
    assert_race_clean(&Env::new(), false);
}

#[test]
fn out_copies_survive_a_concurrent_prune_and_clear() {
    assert_race_clean(&Env::new(), true);
}

/// The same race without the hand-out grace: what scripts met before. Not a test of a
/// guarantee (it shows the failure the grace prevents); run it to measure:
/// `cargo test -p xcache-cli --test handout -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement of the unprotected race, not a guarantee"]
fn without_the_grace_printed_paths_vanish() {
    let (t, _) = race(&Env::new(), "0s", false);
    assert!(t.failed.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_printed_path_is_protected_for_handout_grace_and_force_removes_it() {
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 7; }\n");
    let o = env
        .cmd(&["compile", src.to_str().unwrap(), "--json"])
        .env("XCACHE_FLAGS", "handout_grace=1h")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let path = PathBuf::from(v["path"].as_str().unwrap());
    let until = v["valid_until"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(until >= now + 3590 && until <= now + 3610, "{v}");
    for args in [
        &["clear", "--json"][..],
        &["prune", "--max-size", "1B", "--json"][..],
        &["purge", "--json"][..],
    ] {
        let o = env
            .cmd(args)
            .env("XCACHE_FLAGS", "handout_grace=1h")
            .output()
            .unwrap();
        let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(path.exists(), "{args:?} removed a handed-out path: {r}");
        let entry = r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "entry")
            .unwrap_or_else(|| panic!("{args:?}: {r}"));
        assert_eq!(entry["skipped"]["why"], "handed-out", "{r}");
        assert_eq!(entry["skipped"]["until"], until, "{r}");
    }
    let text = stdout(
        &env.cmd(&["clear"])
            .env("XCACHE_FLAGS", "handout_grace=1h")
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("handed out") && text.contains("--force"),
        "{text}"
    );
    let o = env
        .cmd(&["clear", "--force", "--json"])
        .env("XCACHE_FLAGS", "handout_grace=1h")
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["removed_entries"], 1, "{r}");
    assert!(!path.exists());
}

#[test]
fn out_places_a_private_copy_atomically() {
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 3; }\n");
    let dest = env.dir.path().join("mine/k.so");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, "an older copy").unwrap();
    let printed = stdout(&env.run(&[
        "compile",
        src.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]));
    assert_eq!(printed.trim(), dest.to_str().unwrap());
    // The cache can go; the copy stays and loads.
    stdout(&env.run(&["clear", "--force"]));
    let l = Command::new(loader(&env)).arg(&dest).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&l.stdout).trim(), "3", "{l:?}");
    // Nothing but the copy was left beside it.
    let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["k.so"]);
    // A hit places it too; --out cannot be combined with --symbol.
    stdout(&env.run(&[
        "compile",
        src.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]));
    let o = env.run(&["compile", src.to_str().unwrap(), "--out", "x.so", "-s", "f"]);
    assert_eq!(o.status.code(), Some(2));
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn five_hundred_fresh_process_hits_leave_one_stats_file_and_totals_add_up() {
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 1; }\n");
    for _ in 0..500 {
        stdout(&env.run(&["compile", src.to_str().unwrap()]));
    }
    let stats = env.compiledir().join("stats");
    assert_eq!(names_in(&stats), ["counters.json"]);
    let v = env.json(&["stats", "--json"]);
    assert_eq!(v[0]["hits"], 499, "{v}");
    assert_eq!(v[0]["misses"], 1, "{v}");
    assert_eq!(v[0]["compiles"], 1, "{v}");
}

#[test]
fn twenty_failures_of_one_key_keep_keep_failed() {
    let env = Env::new();
    let src = env.file("broken.c", "int f(void) { return }\n");
    for _ in 0..20 {
        let o = env.run(&["compile", src.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
    }
    let tmp = env.compiledir().join("tmp");
    let failed = || {
        names_in(&tmp)
            .into_iter()
            .filter(|n| n.starts_with("failed-"))
            .count()
    };
    assert_eq!(failed(), 3, "keep_failed is 3 by default");
    let o = env
        .cmd(&["compile", src.to_str().unwrap()])
        .env("XCACHE_FLAGS", "keep_failed=1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(failed(), 1);
    // The error names the kept source, which is still there.
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let kept = names_in(&tmp)
        .into_iter()
        .find(|n| n.starts_with("failed-"))
        .unwrap();
    assert!(err.contains(&kept), "{err}");
}

#[test]
fn private_fallback_builds_are_collected() {
    let env = Env::new();
    let tmpdir = env.dir.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    let src = env.file("k.c", "int f(void) { return 5; }\n");
    let v = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    let key = v["key"].as_str().unwrap().to_string();
    stdout(&env.run(&["clear"]));
    // Something planted at the key's lock file: the cache cannot be used for this key,
    // so each request compiles privately (and says so).
    let lock = env
        .compiledir()
        .join("locks")
        .join(&key[..2])
        .join(format!("{key}.lock"));
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env.dir.path().join("victim"), &lock).unwrap();
    let uid = unsafe { libc::geteuid() };
    let private = tmpdir.join(format!("xcache-private-{uid}"));
    let loader = loader(&env);
    for _ in 0..5 {
        let o = env
            .cmd(&["compile", src.to_str().unwrap()])
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap();
        let path = stdout(&o).trim().to_string();
        assert!(path.starts_with(private.to_str().unwrap()), "{path}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(lock.to_str().unwrap()),
            "the warning names the planted link"
        );
        let l = Command::new(&loader).arg(&path).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&l.stdout).trim(), "5");
    }
    // Each private build collected the ones before it (handout_grace is 0s here).
    assert!(names_in(&private).len() <= 2, "{:?}", names_in(&private));
    stdout(&env.cmd(&["prune"]).env("TMPDIR", &tmpdir).output().unwrap());
    assert!(names_in(&private).is_empty(), "{:?}", names_in(&private));
    assert!(!env.dir.path().join("victim").exists());
}
