//! The compiledir's index, through real `xcache` processes: a crash between an entry's
//! publish and its record, publishers racing each other and a rewrite, an index deleted,
//! damaged, lying or planted as a link. The entries are the truth every time.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{stdout, Env};
use serde_json::Value;

fn source(env: &Env, name: &str, n: u32) -> PathBuf {
    env.file(name, &format!("int f{n}(void) {{ return {n}; }}\n"))
}

fn index_path(env: &Env) -> PathBuf {
    env.compiledir().join("index")
}

fn index_text(env: &Env) -> String {
    std::fs::read_to_string(index_path(env)).unwrap_or_default()
}

/// Keys with an `A` record in the index file as it is on disk.
fn indexed_keys(env: &Env) -> BTreeSet<String> {
    index_text(env)
        .lines()
        .filter_map(|l| l.strip_prefix("A\t"))
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect()
}

fn listed(env: &Env) -> Vec<Value> {
    env.json(&["list", "--json"]).as_array().unwrap().clone()
}

fn listed_sources(env: &Env) -> BTreeSet<String> {
    listed(env)
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect()
}

fn compile(env: &Env, src: &Path) -> Value {
    env.json(&["compile", src.to_str().unwrap(), "--json"])
}

/// Problems `verify --json` reports about the index.
fn index_problems(env: &Env, repair: bool) -> Vec<Value> {
    let mut args = vec!["verify", "--json"];
    if repair {
        args.push("--repair");
    }
    let out = env.run(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "stale-index")
        .cloned()
        .collect()
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// SIGKILL after the entry's rename into `entries/` and before its index record: the
/// index ends with the intent, which the next listing settles by looking at the entry.
#[test]
fn a_crash_between_publish_and_its_record_is_listed_and_mended() {
    let env = Env::new();
    let first = source(&env, "first.c", 1);
    let k1 = compile(&env, &first)["key"].as_str().unwrap().to_string();
    for f in ["started", "release"] {
        mkfifo(&env.dir.path().join(f));
    }
    let src = source(&env, "crashed.c", 2);
    let child = env
        .cmd(&["compile", src.to_str().unwrap(), "--json"])
        .env(
            "__XCACHE_TEST_PAUSE",
            format!("published-unindexed:{}", env.dir.path().display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(File::open(env.dir.path().join("started")).unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "published-unindexed");
    assert_eq!(
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) },
        0
    );
    assert!(!child.wait_with_output().unwrap().status.success());

    assert_eq!(indexed_keys(&env), BTreeSet::from([k1.clone()]));
    let last = index_text(&env).lines().last().unwrap().to_string();
    assert!(last.starts_with("I\t"), "{last}");
    assert_eq!(
        listed_sources(&env),
        BTreeSet::from(["first.c".to_string(), "crashed.c".to_string()])
    );
    assert!(index_problems(&env, false).is_empty());
    // And the entry itself is whole: the same request finds it (its manifest was not
    // written before the crash, so the request is compiled again to learn its key).
    let again = compile(&env, &src);
    let crashed = listed(&env)
        .into_iter()
        .find(|r| r["source"] == "crashed.c")
        .unwrap();
    assert_eq!(again["key"], crashed["key"], "{again}");
    assert_eq!(listed(&env).len(), 2);
    assert_eq!(compile(&env, &src)["hit"], true);
}

/// SIGKILL in the middle of a removal, after the rename out of `entries/` and before
/// the record: the intent is settled by looking, so the entry is not listed; the
/// half-removed directory is a leftover that the next prune collects.
#[test]
fn a_crash_in_the_middle_of_a_removal_is_not_listed() {
    let env = Env::new();
    let keep = compile(&env, &source(&env, "keep.c", 1));
    let gone = compile(&env, &source(&env, "gone.c", 2));
    for f in ["started", "release"] {
        mkfifo(&env.dir.path().join(f));
    }
    // `clear` removes in key order; the first removal stops at the pause point.
    let child = env
        .cmd(&["clear", "--json"])
        .env(
            "__XCACHE_TEST_PAUSE",
            format!("renamed-for-removal:{}", env.dir.path().display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(File::open(env.dir.path().join("started")).unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "renamed-for-removal");
    assert_eq!(
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) },
        0
    );
    assert!(!child.wait_with_output().unwrap().status.success());
    let last = index_text(&env).lines().last().unwrap().to_string();
    assert!(last.starts_with("I\t"), "{last}");
    let rows = listed(&env);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(index_problems(&env, false).is_empty());
    let left = rows[0]["key"].clone();
    assert!(left == keep["key"] || left == gone["key"]);
    // The next listing, prune and verify agree with the disk.
    stdout(&env.run(&["prune", "--json"]));
    assert_eq!(listed(&env).len(), 1);
}

/// Publishers racing each other, and listings that rewrite the index while they
/// publish: every entry ends up listed, with its facts, and nothing else.
#[test]
fn racing_publishers_and_rewrites_lose_no_record() {
    let env = Env::new();
    let _ = compile(&env, &source(&env, "seed.c", 0));
    let mut srcs = Vec::new();
    for round in 0..3u32 {
        // A missing index makes every listing a rewrite (under the exclusive lock).
        let _ = std::fs::remove_file(index_path(&env));
        let mut children = Vec::new();
        for i in 0..6u32 {
            let n = 1 + round * 10 + i;
            let src = source(&env, &format!("k{n}.c"), n);
            srcs.push(src.clone());
            children.push(
                env.cmd(&["compile", src.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            children.push(
                env.cmd(&["list", "--json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let rows = listed(&env);
    assert_eq!(rows.len(), srcs.len() + 1);
    let keys: BTreeSet<String> = rows
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(indexed_keys(&env), keys);
    assert!(
        index_problems(&env, false).is_empty(),
        "{}",
        index_text(&env)
    );
}

/// A deleted index, a damaged one, one that lists an entry that is not there, and one
/// that lies about an entry's facts.
#[test]
fn a_deleted_damaged_or_lying_index_never_wins_over_the_entries() {
    let env = Env::new();
    for n in 0..3 {
        compile(&env, &source(&env, &format!("e{n}.c"), n));
    }
    let truth = listed(&env);
    let names: BTreeSet<String> = ["e0.c", "e1.c", "e2.c"].map(String::from).into();
    let idx = index_path(&env);

    std::fs::remove_file(&idx).unwrap();
    assert_eq!(listed(&env), truth);
    assert_eq!(indexed_keys(&env).len(), 3, "rewritten by the listing");

    // Garbage, a cut line, an unknown record, and an entry that does not exist.
    let ghost = "ab".repeat(32);
    let mut damaged = index_text(&env);
    damaged.push_str("not a record\nX\tfoo\n");
    damaged.push_str(&format!(
        "A\t{ghost}\t1\t1\t1\t1\t-\t-\tc\tx86_64\tghost.c\t-\n"
    ));
    damaged.push_str("A\tcut sho");
    std::fs::write(&idx, damaged).unwrap();
    assert_eq!(listed_sources(&env), names);
    assert!(!index_text(&env).contains("not a record"), "compacted");
    assert!(!index_text(&env).contains(&ghost));

    // A lie about facts the listing cannot see without reading the entry: verify
    // finds it, --repair rewrites the index from the entries.
    let lied = index_text(&env).replace("\te1.c\t", "\tlie.c\t");
    std::fs::write(&idx, lied).unwrap();
    let problems = index_problems(&env, false);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0]["detail"]
        .as_str()
        .unwrap()
        .contains("other facts"));
    let problems = index_problems(&env, true);
    assert!(problems[0]["repaired"].is_string(), "{problems:?}");
    assert_eq!(listed_sources(&env), names);
    assert!(index_problems(&env, false).is_empty());
}

/// An index planted as a link to a file outside the cache is neither read nor written
/// through: the listing reads the entries, and the rewrite replaces the link itself.
#[test]
fn a_planted_index_link_is_not_followed() {
    let env = Env::new();
    compile(&env, &source(&env, "a.c", 1));
    let victim = env.file("victim.txt", "precious\n");
    let idx = index_path(&env);
    std::fs::remove_file(&idx).unwrap();
    std::os::unix::fs::symlink(&victim, &idx).unwrap();
    assert_eq!(listed_sources(&env), BTreeSet::from(["a.c".to_string()]));
    compile(&env, &source(&env, "b.c", 2));
    assert_eq!(listed_sources(&env).len(), 2);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// Removals write their records: after a prune and a clear the index says what is on
/// disk, and sizes come from it.
#[test]
fn prune_and_clear_keep_the_index_true() {
    let env = Env::new();
    for n in 0..4 {
        compile(&env, &source(&env, &format!("p{n}.c"), n));
    }
    let rows = listed(&env);
    // Age two of them: prune --older-than takes those.
    for r in rows.iter().take(2) {
        common::set_mtime(
            &Path::new(r["path"].as_str().unwrap()).join("last-use"),
            10 * 86400,
        );
    }
    // The index learns ages from records, not from the markers: without it, the next
    // listing reads the aged markers.
    std::fs::remove_file(index_path(&env)).unwrap();
    listed(&env);
    let out = stdout(&env.run(&["prune", "--older-than", "1d", "--json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    let removed = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "entry" && a["skipped"].is_null())
        .count();
    assert_eq!(removed, 2, "{report}");
    assert_eq!(
        indexed_keys(&env).len(),
        4,
        "D records follow the A records"
    );
    assert_eq!(listed(&env).len(), 2);
    assert!(index_problems(&env, false).is_empty());
    let size = env.json(&["size", "--json"]);
    let sum: u64 = listed(&env)
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .sum();
    assert_eq!(size["total"]["entries"], 2);
    assert_eq!(size["total"]["entries_bytes"].as_u64().unwrap(), sum);
    stdout(&env.run(&["clear", "--json"]));
    assert!(listed(&env).is_empty());
    assert!(index_problems(&env, false).is_empty());
}
