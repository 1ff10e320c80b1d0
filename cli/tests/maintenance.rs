//! The maintenance verbs — list, size, clear, purge, prune, basecompiledir, warm, stats,
//! verify, doctor, config, completions, man — against real caches in temp base dirs,
//! with JSON schemas and with entries held by another holder's real lock.

mod common;

use std::path::{Path, PathBuf};

use common::{age_entry, set_mtime, stderr, stdout, Env};
use serde_json::Value;

const DAY: u64 = 86_400;

fn src(env: &Env, name: &str) -> PathBuf {
    env.file(
        name,
        &format!(
            "int f_{0}(int x) {{ return x + {1}; }}\n",
            name.replace(['.', '/'], "_"),
            name.len()
        ),
    )
}

/// Compiles `names` and returns their entry directories, in order.
fn populate(env: &Env, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let s = src(env, n);
            let v = env.json(&["compile", s.to_str().unwrap(), "--json"]);
            PathBuf::from(v["path"].as_str().unwrap())
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .collect()
}

/// Holds the shared lock of an entry, as a process loading it would.
fn hold(entry_dir: &Path) -> xcache::store::lock::LockGuard {
    let key = entry_dir.file_name().unwrap().to_str().unwrap();
    let cd = entry_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let root = xcache::fsx::Root::open(cd).unwrap();
    let lock = Path::new("locks")
        .join(&key[..2])
        .join(format!("{key}.lock"));
    xcache::store::lock::lock_shared(&root, &lock).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_sorts_and_lists_every_compiledir() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c", "ccc.c"]);
    // a: used long ago; bb: recently; ccc: in between.
    age_entry(&dirs[0], 10 * DAY);
    age_entry(&dirs[1], 60);
    age_entry(&dirs[2], DAY);
    let by_use = env.json(&["list", "--sort", "use", "--json"]);
    let sources: Vec<&str> = by_use
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["a.c", "ccc.c", "bb.c"],
        "least recently used first"
    );
    let by_name = env.json(&["list", "--sort", "name", "--json"]);
    assert_eq!(by_name[0]["source"], "a.c");
    for r in by_name.as_array().unwrap() {
        for f in [
            "key",
            "source",
            "language",
            "template",
            "params",
            "size",
            "disk_size",
            "created",
            "last_use",
            "compile_ms",
            "compiledir",
            "path",
            "status",
        ] {
            assert!(r.get(f).is_some(), "{f} missing: {r}");
        }
    }
    // Another runtime's compiledir shows up with --all only.
    let s = src(&env, "other.c");
    let out = env
        .cmd(&["compile", s.to_str().unwrap()])
        .env("XCACHE_RUNTIME", "cpython-3.10")
        .output()
        .unwrap();
    stdout(&out);
    assert_eq!(env.json(&["list", "--json"]).as_array().unwrap().len(), 3);
    let all = env.json(&["list", "--all", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["compiledir"].as_str().unwrap().contains("cpython-3.10")));
    let text = stdout(&env.run(&["list", "--all"]));
    assert!(
        text.lines().next().unwrap().contains("COMPILEDIR"),
        "{text}"
    );
    assert_eq!(env.run(&["list", "--sort", "color"]).status.code(), Some(2));
}

#[test]
fn size_reports_bytes_per_compiledir_and_total() {
    let env = Env::new();
    populate(&env, &["a.c", "bb.c"]);
    let v = env.json(&["size", "--json"]);
    let cds = v["compiledirs"].as_array().unwrap();
    assert_eq!(cds.len(), 1);
    assert_eq!(cds[0]["entries"], 2);
    assert_eq!(cds[0]["current"], true);
    let in_entries = cds[0]["entries_bytes"].as_u64().unwrap();
    assert!(in_entries > 2 * 10_000, "{v}");
    assert!(cds[0]["apparent_bytes"].as_u64().unwrap() >= in_entries);
    assert!(cds[0]["disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["total"]["entries"], 2);
    let listed: u64 = env
        .json(&["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .sum();
    assert_eq!(listed, in_entries, "list and size agree");
    let text = stdout(&env.run(&["size"]));
    assert!(text.contains("(current)") && text.contains("KiB"), "{text}");
}

#[test]
fn clear_skips_entries_in_use_and_says_so() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c", "ccc.c"]);
    let guard = hold(&dirs[1]);
    let v = env.json(&["clear", "--json"]);
    assert_eq!(v["removed_entries"], 2);
    assert_eq!(v["skipped"], 1);
    let kept: Vec<&Value> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !a["skipped"].is_null())
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["skipped"]["why"], "in-use", "{v}");
    assert!(!dirs[0].exists() && dirs[1].exists() && !dirs[2].exists());
    drop(guard);
    let text = stdout(&env.run(&["clear"]));
    assert!(text.contains("1 entry, freed"), "{text}");
    assert!(env.json(&["list", "--json"]).as_array().unwrap().is_empty());
}

#[test]
fn purge_removes_the_current_compiledir_unless_in_use() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c"]);
    let cd = env.compiledir();
    let guard = hold(&dirs[0]);
    let v = env.json(&["purge", "--json"]);
    assert!(cd.exists(), "an entry in use keeps its compiledir");
    assert!(v["skipped"].as_u64().unwrap() >= 1);
    drop(guard);
    // Something of the user's inside, at the top and deep in xcache's directories: the
    // compiledir stays, with them.
    std::fs::write(cd.join("notes.txt"), "mine").unwrap();
    std::fs::create_dir_all(cd.join("entries/zz")).unwrap();
    std::fs::write(cd.join("entries/zz/notes.txt"), "mine").unwrap();
    std::fs::write(cd.join("tmp/keepme.txt"), "mine").unwrap();
    env.json(&["purge", "--json"]);
    for f in ["notes.txt", "entries/zz/notes.txt", "tmp/keepme.txt"] {
        assert!(cd.join(f).exists(), "{f} was deleted");
    }
    assert!(!cd.join("locks").exists() && !cd.join("toolchains").exists());
    assert_eq!(
        std::fs::read_dir(cd.join("entries")).unwrap().count(),
        1,
        "only the user's zz/ is left"
    );
    std::fs::remove_file(cd.join("notes.txt")).unwrap();
    std::fs::remove_dir_all(cd.join("entries")).unwrap();
    std::fs::remove_dir_all(cd.join("tmp")).unwrap();
    // Recreated on the next use, then purged whole.
    populate(&env, &["a.c"]);
    env.json(&["purge", "--json"]);
    assert!(!cd.exists());
}

#[test]
fn prune_by_size_evicts_least_recently_used_down_to_low_water() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c", "ccc.c", "dddd.c"]);
    for (i, d) in dirs.iter().enumerate() {
        age_entry(d, (10 - i as u64) * DAY); // a oldest, dddd newest
    }
    let sizes: Vec<u64> = env
        .json(&["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .collect();
    let total: u64 = sizes.iter().sum();
    let one = sizes[0];
    // Room for ~2.6 entries; low water 0.8 of that is ~2.1: keep the 2 newest.
    let max = (one as f64 * 2.6) as u64;
    let dry = env.json(&[
        "prune",
        "--max-size",
        &format!("{max}B"),
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed_entries"], 2);
    assert!(dirs.iter().all(|d| d.exists()), "a dry run removes nothing");
    let text = stdout(&env.run(&["prune", "--max-size", &format!("{max}B"), "--dry-run"]));
    assert!(
        text.contains("would remove") && text.contains("would free"),
        "{text}"
    );

    let v = env.json(&["prune", "--max-size", &format!("{max}B"), "--json"]);
    assert_eq!(v["removed_entries"], 2);
    assert!(!dirs[0].exists() && !dirs[1].exists() && dirs[2].exists() && dirs[3].exists());
    assert!(v["freed_bytes"].as_u64().unwrap() <= total);
}

#[test]
fn prune_by_age_and_while_another_process_loads() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c", "ccc.c"]);
    age_entry(&dirs[0], 40 * DAY);
    age_entry(&dirs[1], 40 * DAY);
    let guard = hold(&dirs[1]); // being loaded right now
    let v = env.json(&["prune", "--older-than", "30d", "--json"]);
    assert_eq!(v["removed_entries"], 1);
    assert_eq!(v["skipped"], 1);
    assert!(!dirs[0].exists());
    assert!(dirs[1].exists(), "never pulled from under a loader");
    assert!(dirs[2].exists(), "recent entries stay");
    drop(guard);
    let v = env.json(&["prune", "--older-than", "30d", "--json"]);
    assert_eq!(v["removed_entries"], 1);
    assert!(!dirs[1].exists());
    // The entry that stayed still loads.
    let s = src(&env, "ccc.c");
    assert_eq!(
        env.json(&["compile", s.to_str().unwrap(), "--json"])["hit"],
        true
    );
}

#[test]
fn prune_collects_crashed_staging_after_the_grace_period() {
    let env = Env::new();
    populate(&env, &["a.c"]);
    let tmp = env.compiledir().join("tmp");
    let old = tmp.join(format!("build-{}-1-0-dead", "0".repeat(64)));
    let fresh = tmp.join(format!("build-{}-2-0-live", "f".repeat(64)));
    for d in [&old, &fresh] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("source.c"), "int x;").unwrap();
    }
    set_mtime(&old, 2 * 3600);
    let foreign = tmp.join("not-ours");
    std::fs::create_dir_all(&foreign).unwrap();
    set_mtime(&foreign, 100 * DAY);
    let v = env.json(&["prune", "--older-than", "365d", "--json"]);
    assert!(!old.exists(), "{v}");
    assert!(fresh.exists(), "a build in progress is left alone");
    assert!(foreign.exists(), "what is not xcache's is left alone");
}

/// Makes a compiledir for another platform by copying the current one's layout.
fn fake_compiledir(env: &Env, name: &str, last_use_secs_ago: u64) -> PathBuf {
    let cd = env.base().join(name);
    std::fs::create_dir_all(cd.join("entries")).unwrap();
    std::fs::copy(
        env.compiledir().join("compiledir.json"),
        cd.join("compiledir.json"),
    )
    .unwrap();
    set_mtime(&cd.join("last-use"), last_use_secs_ago);
    cd
}

#[test]
fn stale_compiledirs_of_older_runtimes_and_kernels() {
    let env = Env::new();
    let run = |args: &[&str]| {
        env.cmd(args)
            .env("XCACHE_RUNTIME", "cpython-3.11")
            .output()
            .unwrap()
    };
    let current = PathBuf::from(stdout(&run(&[])).trim());
    let name = current.file_name().unwrap().to_str().unwrap().to_string();
    let s = src(&env, "a.c");
    // An older runtime, recently used: stale by version.
    stdout(
        &env.cmd(&["compile", s.to_str().unwrap()])
            .env("XCACHE_RUNTIME", "cpython-3.10")
            .output()
            .unwrap(),
    );
    // A newer runtime: other.
    stdout(
        &env.cmd(&["compile", s.to_str().unwrap()])
            .env("XCACHE_RUNTIME", "cpython-3.12")
            .output()
            .unwrap(),
    );
    // An older kernel (same os, arch, runtime), recently used: stale.
    let kernel = name.split('-').nth(1).unwrap();
    let old_kernel = fake_compiledir(
        &env,
        &name.replacen(&format!("-{kernel}-"), "-4.19-", 1),
        60,
    );
    // Another arch, recent: other; another arch, unused for 40 days: stale.
    let arm = name
        .replacen("-x86_64-", "-aarch64-", 1)
        .replacen("-aarch64-", "-armv7l-", 1);
    let arm_recent = fake_compiledir(&env, &arm.replace("cpython-3.11", "cpython-3.9"), 60);
    let arm_old = fake_compiledir(&env, &arm.replace("cpython-3.11", "cpython-3.8"), 40 * DAY);
    // Not xcache's (no compiledir.json), old.
    let foreign = env.base().join("compiledir_something-else");
    std::fs::create_dir_all(&foreign).unwrap();
    set_mtime(&foreign.join("last-use"), 400 * DAY);

    let list: Value =
        serde_json::from_str(&stdout(&run(&["basecompiledir", "list", "--json"]))).unwrap();
    let mark = |needle: &str| -> String {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle} not listed: {list}"))["mark"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mark(&name), "current");
    assert_eq!(mark("cpython-3.10"), "stale");
    assert_eq!(mark("cpython-3.12"), "other");
    assert_eq!(mark("-4.19-"), "stale");
    assert_eq!(mark("cpython-3.9"), "other");
    assert_eq!(mark("cpython-3.8"), "stale");
    let text = stdout(&run(&["basecompiledir", "list"]));
    assert!(
        text.contains("older runtime cpython-3.10") && text.contains("older kernel 4.19"),
        "{text}"
    );
    assert!(
        text.contains("unused for 40 days (stale_after is 30d)"),
        "{text}"
    );

    let dry: Value =
        serde_json::from_str(&stdout(&run(&["prune", "--stale", "--dry-run", "--json"]))).unwrap();
    assert!(
        dry["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "compiledir")
            .count()
            >= 3
    );
    assert!(old_kernel.exists());
    stdout(&run(&["prune", "--stale"]));
    assert!(current.exists());
    assert!(!old_kernel.exists() && !arm_old.exists());
    assert!(!env.base().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .contains("cpython-3.10")));
    assert!(arm_recent.exists());
    assert!(env.base().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .contains("cpython-3.12")));
    assert!(
        foreign.exists(),
        "a directory without compiledir.json is never removed"
    );
}

#[test]
fn basecompiledir_purge_refuses_what_does_not_look_like_xcache() {
    let env = Env::new();
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(home.join("documents")).unwrap();
    std::fs::write(home.join("documents/thesis.tex"), "precious").unwrap();
    let out = env.run(&["--dir", home.to_str().unwrap(), "basecompiledir", "purge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to purge") && err.contains("CACHEDIR.TAG") && err.contains("Fix"),
        "{err}"
    );
    assert!(home.join("documents/thesis.tex").exists());
    let left: Vec<String> = home
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["documents"],
        "refusing must not create anything there"
    );
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(
        env.run(&["--dir", empty.to_str().unwrap(), "basecompiledir", "purge"])
            .status
            .code(),
        Some(1)
    );
    assert!(
        empty.exists(),
        "an empty directory is not an xcache base dir either"
    );

    // A real base dir: every compiledir goes, the user's own file stays.
    populate(&env, &["a.c"]);
    stdout(
        &env.cmd(&["compile", src(&env, "b.c").to_str().unwrap()])
            .env("XCACHE_RUNTIME", "x-1")
            .output()
            .unwrap(),
    );
    std::fs::write(env.base().join("README.mine"), "keep").unwrap();
    let v = env.json(&["basecompiledir", "purge", "--json"]);
    assert_eq!(v["skipped"], 0, "{v}");
    let left: Vec<String> = env
        .base()
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["README.mine"]);
}

#[test]
fn warm_compiles_a_manifest_in_parallel_then_nothing() {
    let env = Env::new();
    src(&env, "kernels/k.c");
    env.file("kernels/defs.h", "#define N 3\n");
    env.file(
        "kernels/uses_h.c",
        "#include \"defs.h\"\nint n(void) { return N; }\n",
    );
    let manifest = env.file(
        "manifest.json",
        r#"{"requests": [
            {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "exp(a)"}},
            {"template": "elemwise", "params": {"dtype": "float64", "arity": 2, "expr": "a*b"}},
            {"template": "reduce", "params": {"dtype": "float32", "op": "sum"}},
            {"template": "gemm", "params": {"dtype": "float32", "relu": true}},
            {"source": "kernels/k.c", "flags": ["-O2"]},
            {"source": "kernels/uses_h.c", "include": ["kernels/defs.h"]},
            {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "exp(a)"}}
        ]}"#,
    );
    let out = env.run(&["warm", manifest.to_str().unwrap(), "--jobs", "2"]);
    let text = stdout(&out);
    assert!(
        text.contains("7 requests") && text.contains("0 failed"),
        "{text}"
    );
    let progress = stderr(&out);
    assert!(
        progress.contains("[7/7]"),
        "plain progress lines when not a terminal: {progress}"
    );
    let v = env.json(&["warm", manifest.to_str().unwrap(), "--jobs", "2", "--json"]);
    assert_eq!(v["requests"], 7);
    assert_eq!(v["compiled"], 0, "a warm cache compiles nothing: {v}");
    assert_eq!(v["hits"], 7);
    assert_eq!(env.json(&["list", "--json"]).as_array().unwrap().len(), 6);
}

#[test]
fn warm_reports_failures_and_refuses_paths_outside_the_manifest() {
    let env = Env::new();
    env.file("bad.c", "int f(void) { return nope; }\n");
    let manifest = env.file(
        "m.json",
        r#"[{"source": "bad.c"}, {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "a+1"}}]"#,
    );
    let out = env.run(&["warm", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("failed: bad.c") && text.contains("nope"),
        "{text}"
    );
    assert!(text.contains("1 compiled, 1 failed"), "{text}");

    for bad in [
        r#"[{"source": "../escape.c"}]"#,
        r#"[{"source": "/etc/hostname"}]"#,
    ] {
        let m = env.file("evil.json", bad);
        let out = env.run(&["warm", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("stay inside it"), "{}", stderr(&out));
    }
    // A symbolic link out of the tree, and flags that read files, are refused too.
    let secret = env.file("outside/secret.txt", "SECRET_TOKEN=hunter2\n");
    let tree = env.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(secret.parent().unwrap(), tree.join("link")).unwrap();
    std::fs::write(tree.join("ok.c"), "int ok(void) { return 1; }\n").unwrap();
    for bad in [
        r#"[{"source": "link/secret.txt"}]"#.to_string(),
        format!(r#"[{{"source": "ok.c", "flags": ["-include", "{}"]}}]"#, secret.display()),
        r#"[{"source": "ok.c", "flags": ["-I/etc"]}]"#.to_string(),
        r#"[{"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "a"}, "flags": ["@/etc/passwd"]}]"#.to_string(),
    ] {
        std::fs::write(tree.join("m.json"), &bad).unwrap();
        let out = env.run(&["warm", tree.join("m.json").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = stderr(&out);
        assert!(
            err.contains("stay inside it") || err.contains("refusing the compiler flag"),
            "{bad}: {err}"
        );
        assert!(!err.contains("hunter2") && !String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    }
    let m = env.file("garbage.json", "{\"requests\": 3}");
    let out = env.run(&["warm", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid manifest"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warm_refuses_a_fifo_listed_as_include_or_source_without_hanging() {
    let env = Env::new();
    let tree = env.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("ok.c"), "int ok(void) { return 1; }\n").unwrap();
    for name in ["defs.h", "fifo.c"] {
        let c = std::ffi::CString::new(tree.join(name).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path. Nobody ever opens its other end.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }
    for (manifest, named) in [
        (r#"[{"source": "ok.c", "include": ["defs.h"]}]"#, "defs.h"),
        (r#"[{"source": "fifo.c"}]"#, "fifo.c"),
    ] {
        std::fs::write(tree.join("m.json"), manifest).unwrap();
        let r = common::run_bounded(
            env.cmd(&["warm", tree.join("m.json").to_str().unwrap()]),
            env.dir.path(),
            std::time::Duration::from_secs(60),
        );
        assert!(!r.timed_out, "warm waited on a FIFO: {manifest}");
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(
            r.stderr.contains(tree.join(named).to_str().unwrap())
                && r.stderr.contains("is not a regular file")
                && r.stderr.contains("requests[0]"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn stats_count_hits_misses_and_compile_time_and_reset() {
    let env = Env::new();
    let s = src(&env, "a.c");
    env.json(&["compile", s.to_str().unwrap(), "--json"]);
    env.json(&["compile", s.to_str().unwrap(), "--json"]);
    env.json(&["compile", s.to_str().unwrap(), "--json"]);
    let bad = env.file("bad.c", "int f(void) { return nope; }\n");
    assert_eq!(
        env.run(&["compile", bad.to_str().unwrap()]).status.code(),
        Some(1)
    );
    let v = env.json(&["stats", "--json"]);
    let cur = &v.as_array().unwrap()[0];
    for f in [
        "compiledir",
        "current",
        "hits",
        "memory_hits",
        "misses",
        "compiles",
        "failed_compiles",
        "compile_ms",
        "saved_ms",
        "lock_wait_ms",
    ] {
        assert!(cur.get(f).is_some(), "{f} missing: {cur}");
    }
    assert_eq!(cur["hits"], 2);
    assert_eq!(cur["compiles"], 1);
    assert_eq!(cur["failed_compiles"], 1);
    assert_eq!(cur["misses"], 2);
    assert_eq!(
        cur["saved_ms"].as_u64().unwrap(),
        2 * cur["compile_ms"].as_u64().unwrap(),
        "each hit saves the entry's compile time"
    );
    let text = stdout(&env.run(&["stats"]));
    assert!(text.contains("HIT RATE") && text.contains("50%"), "{text}");
    stdout(&env.run(&["stats", "--zero"]));
    let v = env.json(&["stats", "--json"]);
    assert_eq!(v[0]["hits"], 0);
    assert_eq!(v[0]["compiles"], 0);
}

#[test]
fn verify_finds_and_repairs() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c"]);
    let v = env.json(&["verify", "--json"]);
    assert_eq!(v["entries"], 2);
    assert_eq!(v["ok"], 2);
    assert!(v["problems"].as_array().unwrap().is_empty());

    // Corrupt artifact, orphan lock, crashed staging.
    let lib = dirs[0].join("lib.so");
    let mut bytes = std::fs::read(&lib).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&lib, bytes).unwrap();
    let cd = env.compiledir();
    let orphan = cd.join("locks/ee").join(format!("{}.lock", "e".repeat(64)));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, "").unwrap();
    let staging = cd.join(format!("tmp/build-{}-1-0-crashed", "0".repeat(64)));
    std::fs::create_dir_all(&staging).unwrap();
    set_mtime(&staging, 3 * 3600);

    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "corrupt-entry",
        "hash",
        "orphan-lock",
        "leftover",
        "--repair",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let out = env.run(&["verify", "--repair", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["repaired"].is_null()),
        "{v}"
    );
    assert!(!dirs[0].exists() && !orphan.exists() && !staging.exists());
    assert_eq!(std::fs::read_dir(cd.join("quarantine")).unwrap().count(), 1);
    let v = env.json(&["verify", "--json"]);
    assert_eq!(v["entries"], 1);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn doctor_reports_each_part_with_a_verdict() {
    let env = Env::new();
    let v = env.json(&["doctor", "--json"]);
    let checks = v["checks"].as_array().unwrap();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {v}"))
    };
    for name in [
        "platform",
        "base dir",
        "compiledir",
        "C compiler",
        "C++ compiler",
        "nvcc",
        "GPU",
    ] {
        let c = get(name);
        assert!(
            ["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(get("platform")["status"], "ok");
    assert_eq!(get("base dir")["status"], "ok");
    assert_eq!(get("C compiler")["status"], "ok");
    assert!(get("C compiler")["detail"]
        .as_str()
        .unwrap()
        .contains("builds and loads"));
    let text = stdout(&env.run(&["doctor"]));
    assert!(text.starts_with("CHECK"), "{text}");
    // A broken compiler fails the doctor.
    let out = env
        .cmd(&["doctor"])
        .env("XCACHE_FLAGS", "cc=/nonexistent/cc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn config_shows_values_and_where_they_came_from() {
    let env = Env::new();
    let file = env.file("xcache.toml", "opt_level = 2\nmax_size = \"1GiB\"\n");
    let out = env
        .cmd(&["config", "--json"])
        .env("XCACHE_CONFIG", &file)
        .env("XCACHE_FLAGS", "stale_after=7d")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let get = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(get("opt_level")["value"], "2");
    assert!(get("opt_level")["origin"]
        .as_str()
        .unwrap()
        .starts_with("file "));
    assert_eq!(get("max_size")["value"], "1GiB");
    assert_eq!(get("stale_after")["value"], "7d");
    assert_eq!(get("stale_after")["origin"], "XCACHE_FLAGS");
    assert_eq!(get("base_dir")["origin"], "env XCACHE_DIR");
    assert_eq!(get("low_water")["origin"], "default");
    for r in v.as_array().unwrap() {
        for f in ["name", "value", "origin", "default", "doc"] {
            assert!(r.get(f).is_some(), "{f}: {r}");
        }
    }
    let text = stdout(&env.run(&["config"]));
    assert!(
        text.starts_with("SETTING") && text.contains("env XCACHE_DIR"),
        "{text}"
    );
}

#[test]
fn completions_and_man_page() {
    let env = Env::new();
    let bash = stdout(&env.run(&["completions", "bash"]));
    assert!(bash.contains("xcache") && bash.contains("prune") && bash.contains("basecompiledir"));
    let zsh = stdout(&env.run(&["completions", "zsh"]));
    assert!(zsh.contains("#compdef xcache"));
    let man = stdout(&env.run(&["man"]));
    assert!(
        man.contains(".TH xcache") && man.contains("compile"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert_eq!(env.run(&["completions", "tcsh"]).status.code(), Some(2));
    let page = stdout(&env.run(&["man", "prune"]));
    assert!(
        page.contains(".TH xcache-prune") && page.contains("dry"),
        "{page}"
    );
    // A bare number of seconds is never what is meant by an age.
    let out = env.run(&["prune", "--older-than", "7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no unit: write 7d"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn automatic_prune_keeps_the_compiledir_under_max_size() {
    let env = Env::new();
    let flags = "max_size=40KiB,low_water=0.5,auto_prune_interval=0s,handout_grace=0s";
    for i in 0..6 {
        let s = env.file(
            &format!("k{i}.c"),
            &format!("int k{i}(void) {{ return {i}; }}\n"),
        );
        let out = env
            .cmd(&["compile", s.to_str().unwrap()])
            .env("XCACHE_FLAGS", flags)
            .output()
            .unwrap();
        stdout(&out);
    }
    let v = env.json(&["size", "--json"]);
    let bytes = v["total"]["entries_bytes"].as_u64().unwrap();
    // The entry just built is held while pruning, so one entry may sit above the mark.
    assert!(bytes <= 40 * 1024 + 20 * 1024, "{v}");
    let left = v["total"]["entries"].as_u64().unwrap();
    assert!(left < 6, "auto-prune removed nothing: {v}");
    // The newest entry survived: it is a hit.
    let last = env.dir.path().join("k5.c");
    assert_eq!(
        env.json(&["compile", last.to_str().unwrap(), "--json"])["hit"],
        true
    );
    let _ = keys(&env.json(&["list", "--json"]));
}

#[test]
fn warm_takes_a_manifest_named_without_a_directory() {
    let env = Env::new();
    src(&env, "kernels/k.c");
    env.file(
        "warm.json",
        r#"{"requests": [{"source": "kernels/k.c"}, {"template": "elemwise", "params": {"dtype": "int32", "arity": 1, "expr": "a+1"}}]}"#,
    );
    let out = env
        .cmd(&["warm", "warm.json", "--json"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["compiled"], 2, "{v}");
}

#[test]
fn warm_names_the_request_and_the_field_that_is_wrong() {
    let env = Env::new();
    src(&env, "k.c");
    let cases = [
        (
            r#"{"requests": [{"source": "k.c"}, {"sorce": "k.c"}]}"#,
            &["requests[1]", "unknown field `sorce`", "expected one of"][..],
        ),
        (
            r#"[{"source": "k.c", "flags": "-O2"}]"#,
            &["requests[0]", "invalid type", "a sequence"][..],
        ),
        (
            r#"{"request": []}"#,
            &["not a valid manifest", "`requests`"][..],
        ),
        (
            r#"{"requests": [], "extra": 1}"#,
            &["unknown field `extra`"][..],
        ),
        (
            r#"[{"source": "k.c", "template": "gemm"}]"#,
            &["requests[0]", "exactly one of"][..],
        ),
    ];
    for (manifest, wants) in cases {
        let m = env.file("m.json", manifest);
        let out = env.run(&["warm", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{manifest}");
        let err = stderr(&out);
        assert!(err.contains("m.json"), "{manifest}: {err}");
        for want in wants {
            assert!(err.contains(want), "{manifest}: {want:?} missing in {err}");
        }
    }
}

#[test]
fn verify_exit_status_follows_what_is_left_unrepaired() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c"]);
    let cd = env.compiledir();
    // A file that is not xcache's: reported, left alone, and not a failure.
    std::fs::write(cd.join("entries/notes.txt"), "mine").unwrap();
    let out = env.run(&["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["problems"][0]["kind"], "unknown-file", "{v}");
    assert!(v["problems"][0]["repaired"].is_null(), "{v}");
    let text = stdout(&env.run(&["verify"]));
    assert!(
        text.contains("1 entry checked, 1 ok, no problems; 1 file not made by xcache, left alone"),
        "{text}"
    );
    // A corrupt entry: exit 1, `repaired` null for everything without --repair.
    let lib = dirs[0].join("lib.so");
    let mut bytes = std::fs::read(&lib).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&lib, bytes).unwrap();
    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["repaired"].is_null()),
        "{v}"
    );
    let out = env.run(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 problem, 1 repaired"), "{text}");
    assert!(cd.join("entries/notes.txt").exists());
}

#[test]
fn doctor_diagnoses_a_bad_cache_dir_and_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let file = env.file("not-a-dir", "");
    let open = env.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, fix) in [(&file, "not a directory"), (&open, "chmod go-w")] {
        let out = env
            .cmd(&["doctor", "--json"])
            .env("XCACHE_DIR", dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let get = |name: &str| {
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("{name}: {v}"))
                .clone()
        };
        let base = get("base dir");
        assert_eq!(base["status"], "fail", "{v}");
        let detail = base["detail"].as_str().unwrap();
        assert!(detail.contains(fix) && detail.contains("Fix:"), "{detail}");
        assert_eq!(get("compiledir")["status"], "skip");
        // The rest is still checked.
        assert_eq!(get("C compiler")["status"], "ok", "{v}");
        for name in ["C++ compiler", "nvcc", "GPU"] {
            assert_ne!(get(name)["status"], "skip", "{v}");
        }
        // And the human table shows each check.
        let out = env
            .cmd(&["doctor"])
            .env("XCACHE_DIR", dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("FAIL") && text.contains("C compiler"),
            "{text}"
        );
    }
    // Settings it cannot read: reported as a check, the compilers still checked.
    let out = env
        .cmd(&["doctor", "--json"])
        .env("XCACHE_FLAGS", "max_size=5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checks"][0]["name"], "settings");
    assert_eq!(v["checks"][0]["status"], "fail");
    assert!(v["checks"][0]["detail"].as_str().unwrap().contains("5GiB"));
}

#[test]
fn doctor_gives_each_missing_tool_its_own_fix() {
    let env = Env::new();
    let detail = |flags: &str, name: &str| {
        let out = env
            .cmd(&["doctor", "--json"])
            .env("XCACHE_FLAGS", flags)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let nvcc = detail("nvcc=/nonexistent/bin/nvcc", "nvcc");
    assert!(
        nvcc.contains("CUDA toolkit") && !nvcc.contains("install a C compiler"),
        "{nvcc}"
    );
    let cxx = detail("cxx=/nonexistent/bin/g++", "C++ compiler");
    assert!(cxx.contains("install a C++ compiler"), "{cxx}");
    let cc = detail("cc=/nonexistent/bin/gcc", "C compiler");
    assert!(cc.contains("install a C compiler"), "{cc}");
}

#[test]
fn completions_offer_values_and_survive_a_closed_pipe() {
    let env = Env::new();
    let bash = stdout(&env.run(&["completions", "bash"]));
    assert!(bash.contains("name age size use"), "list --sort keys");
    for t in ["elemwise", "gemm", "reduce", "cuda/elemwise"] {
        assert!(bash.contains(t), "compile -t {t}");
    }
    let fish = stdout(&env.run(&["completions", "fish"]));
    assert!(fish.contains("cuda/gemm"), "{fish}");
    // A template from template_path is still accepted: the list only helps completion.
    let out = env.run(&["compile", "-t", "nonesuch"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unknown templates are the library's to refuse"
    );
    // `xcache completions bash | true`: the reader is gone before anything is written.
    for args in [
        &["completions", "bash"][..],
        &["man"][..],
        &["templates"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env.cmd(args).stdout(writer).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn unlock_tells_who_holds_what_and_removes_only_free_lock_files() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c", "ccc.c"]);
    let cd = env.compiledir();
    let guard = hold(&dirs[1]);
    let v = env.json(&["unlock", "--json"]);
    let locks = v["locks"].as_array().unwrap();
    // Each compile has two: its request key's (guarding the manifest) and its
    // result's (guarding the entry).
    assert_eq!(locks.len(), 6, "{v}");
    assert_eq!(
        locks.iter().filter(|l| l["has_manifest"] == true).count(),
        3,
        "{v}"
    );
    assert_eq!(
        (v["held"].as_u64(), v["free"].as_u64()),
        (Some(1), Some(5)),
        "{v}"
    );
    let held_key = dirs[1].file_name().unwrap().to_str().unwrap();
    assert_eq!(locks[0]["key"], held_key, "held ones first: {v}");
    assert_eq!(locks[0]["state"], "held");
    for l in locks {
        assert!(l["has_entry"] == true || l["has_manifest"] == true, "{l}");
        assert_eq!(l["removed"], false);
        // The compile that built it took it exclusively, wrote its pid, and exited.
        let h = &l["last_holder"];
        assert!(h["pid"].as_u64().is_some(), "{l}");
        assert_eq!(h["running"], false, "{l}");
    }
    let text = stdout(&env.run(&["unlock"]));
    assert!(text.contains("6 lock files: 1 held, 5 free"), "{text}");
    assert!(
        text.contains("nothing needs unlocking") && text.contains("--remove-free"),
        "{text}"
    );
    assert!(text.contains("(exited)"), "{text}");

    let v = env.json(&["unlock", "--remove-free", "--json"]);
    assert_eq!(v["removed"], 5, "{v}");
    let left: Vec<PathBuf> = std::fs::read_dir(cd.join("locks"))
        .unwrap()
        .flat_map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(left.len(), 1, "only the held lock file is left: {left:?}");
    assert!(left[0].to_str().unwrap().contains(held_key));
    drop(guard);
    // The entries are untouched, and their locks come back when used.
    for d in &dirs {
        assert!(d.join("lib.so").exists());
    }
    let s = src(&env, "a.c");
    assert_eq!(
        env.json(&["compile", s.to_str().unwrap(), "--json"])["hit"],
        true
    );
    let v = env.json(&["unlock", "--json"]);
    assert_eq!(v["held"], 0, "{v}");
}

#[test]
fn dry_runs_of_clear_purge_and_basecompiledir_purge_remove_nothing() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c"]);
    stdout(
        &env.cmd(&["compile", src(&env, "c.c").to_str().unwrap()])
            .env("XCACHE_RUNTIME", "x-1")
            .output()
            .unwrap(),
    );
    let snapshot = || {
        let mut all: Vec<PathBuf> = walk(&env.base());
        all.sort();
        all
    };
    let before = snapshot();
    for args in [
        &["clear", "--dry-run"][..],
        &["purge", "--dry-run"][..],
        &["basecompiledir", "purge", "--dry-run"][..],
    ] {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let v = env.json(&with_json);
        assert_eq!(v["dry_run"], true, "{args:?}: {v}");
        assert!(v["removed_entries"].as_u64().unwrap() >= 2, "{args:?}: {v}");
        assert!(v["freed_bytes"].as_u64().unwrap() > 0, "{args:?}: {v}");
        for a in v["actions"].as_array().unwrap() {
            assert_eq!(a["skipped"]["why"], "dry-run", "{args:?}: {a}");
        }
        let text = stdout(&env.run(args));
        assert!(
            text.contains("would remove") && text.contains("would free"),
            "{args:?}: {text}"
        );
        assert_eq!(snapshot(), before, "{args:?} removed something");
    }
    assert!(dirs.iter().all(|d| d.join("lib.so").exists()));
    // A dry run is refused where the real one would be.
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = env.run(&[
        "--dir",
        home.to_str().unwrap(),
        "basecompiledir",
        "purge",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn config_set_writes_the_file_keeping_the_rest() {
    let env = Env::new();
    let file = env.file("conf/xcache.toml", "# my settings\ncc = \"cc\"\n");
    let run = |args: &[&str]| env.cmd(args).env("XCACHE_CONFIG", &file).output().unwrap();
    let text = stdout(&run(&["config", "set", "max_size", "2GiB"]));
    assert!(text.contains("max_size = \"2GiB\" written to"), "{text}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.starts_with("# my settings\ncc = \"cc\"\n"),
        "{written}"
    );
    let v: Value = serde_json::from_str(&stdout(&run(&["config", "--json"]))).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "max_size")
        .unwrap()
        .clone();
    assert_eq!(row["value"], "2GiB");
    assert!(
        row["origin"].as_str().unwrap().starts_with("file "),
        "{row}"
    );
    // Checked as every source is: nothing written.
    for (args, want) in [
        (&["config", "set", "max_size", "5"][..], "5GiB"),
        (
            &["config", "set", "maxsize", "5GiB"][..],
            "unknown setting `maxsize`",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("max_size = \"2GiB\""));
    // A key XCACHE_FLAGS also sets: written, with a note that the flag wins.
    let out = run(&["config", "set", "handout_grace", "2m", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["overridden_by"], "XCACHE_FLAGS", "{v}");
    let text = stdout(&run(&["config", "unset", "max_size"]));
    assert!(text.contains("removed"), "{text}");
    assert!(!std::fs::read_to_string(&file).unwrap().contains("max_size"));
    // Without XCACHE_CONFIG: the default file under the XDG config dir, created.
    let xdg = env.dir.path().join("xdg");
    let out = env
        .cmd(&["config", "set", "max_size", "1GiB"])
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .unwrap();
    stdout(&out);
    assert!(std::fs::read_to_string(xdg.join("xcache/config.toml"))
        .unwrap()
        .contains("max_size = \"1GiB\""));
}

#[test]
fn prune_and_verify_show_progress_on_a_terminal_only() {
    let env = Env::new();
    let dirs = populate(&env, &["a.c", "bb.c"]);
    for d in &dirs {
        age_entry(d, 10 * DAY);
    }
    let xcache = env!("CARGO_BIN_EXE_xcache");
    // Piped: the report alone, nothing on stderr.
    for args in [&["verify"][..], &["prune", "--older-than", "30d"][..]] {
        let out = env.run(args);
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    // On a terminal (script(1) gives the command a pseudo-terminal): a bar.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("script(1) (util-linux) is needed for this test");
    }
    for (args, what) in [
        ("verify", "verifying"),
        ("prune --older-than 7d", "pruning"),
    ] {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{xcache} {args}"), "/dev/null"])
            .env("XCACHE_DIR", env.base())
            .env("XCACHE_FLAGS", "handout_grace=0s")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(what) && text.contains("entries"),
            "{args}: {text}"
        );
    }
    assert!(dirs.iter().all(|d| !d.exists()), "the prune ran");
}
