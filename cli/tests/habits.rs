//! Hints that work and habits people bring (issue 23): every hint a command prints is
//! followed here and must work (`--force` on each cleaning verb, `-- -I…` after a
//! refused `-I`, `xcache cleanup`, key prefixes); dry runs judge entries as the real
//! run does; ccache's `-s`, `-z`, `-M SIZE`, `-C` and sccache's `--show-stats` and
//! `--zero-stats` do what they do there; use against `max_size`, the resolution of
//! LAST USE and the version in man pages are shown.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{set_mtime, stderr, stdout, Env};
use serde_json::Value;

/// A cache whose printed paths stay protected for an hour, as a user's does (the
/// common `Env` turns the protection off for the cleanup tests).
fn run(env: &Env, args: &[&str]) -> Output {
    env.cmd(args)
        .env("XCACHE_FLAGS", "handout_grace=1h")
        .current_dir(env.dir.path())
        .output()
        .unwrap()
}

fn json(env: &Env, args: &[&str]) -> Value {
    serde_json::from_str(&stdout(&run(env, args))).unwrap()
}

/// Compiles a small source named `name`; returns its entry directory.
fn compile(env: &Env, name: &str) -> PathBuf {
    let f = name.replace(['.', '/'], "_");
    env.file(name, &format!("int {f}(void) {{ return 1; }}\n"));
    let v = json(env, &["compile", name, "--json"]);
    PathBuf::from(v["path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Holds the shared lock of an entry, as a process that loaded (or pinned) it does.
fn pin(entry_dir: &Path) -> xcache::store::lock::LockGuard {
    let key = entry_dir.file_name().unwrap().to_str().unwrap();
    let cd = entry_dir.ancestors().nth(3).unwrap();
    let root = xcache::fsx::Root::open(cd).unwrap();
    let lock = Path::new("locks")
        .join(&key[..2])
        .join(format!("{key}.lock"));
    xcache::store::lock::lock_shared(&root, &lock).unwrap()
}

/// (name prefix, skip reason or "removed") of every entry action in a report.
fn verdicts(report: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "entry")
        .map(|a| {
            let why = match &a["skipped"] {
                Value::Null => "removed".to_string(),
                s => s["why"].as_str().unwrap().to_string(),
            };
            (a["name"].as_str().unwrap()[..12].to_string(), why)
        })
        .collect();
    v.sort();
    v
}

/// Writes a header dated a minute ago: a header written in the clock tick a request
/// arrives in is not recorded (it could change unseen), and these tests need it to be.
fn settled(env: &Env, name: &str, text: &str) {
    set_mtime(&env.file(name, text), 60);
}

fn key12(entry_dir: &Path) -> String {
    entry_dir.file_name().unwrap().to_str().unwrap()[..12].to_string()
}

#[test]
fn force_on_each_cleaning_verb_removes_handed_out_entries_never_pinned_ones() {
    for verb in [
        &["prune", "--max-size", "1B"][..],
        &["purge"],
        &["basecompiledir", "purge"],
    ] {
        let env = Env::new();
        let handed = compile(&env, "handed.c");
        let pinned = compile(&env, "pinned.c");
        let guard = pin(&pinned);
        // The hint, as printed.
        let text = stdout(&run(&env, verb));
        let line = text
            .lines()
            .find(|l| l.contains(&key12(&handed)))
            .unwrap_or_else(|| panic!("{verb:?}: {text}"));
        assert!(
            line.starts_with("kept") && line.contains("(--force removes it)"),
            "{verb:?}: {text}"
        );
        assert!(handed.exists() && pinned.exists());
        // Following it.
        let forced = [verb, &["--force", "--json"]].concat();
        let report = json(&env, &forced);
        let mut want = vec![
            (key12(&handed), "removed".to_string()),
            (key12(&pinned), "in-use".to_string()),
        ];
        want.sort();
        assert_eq!(verdicts(&report), want, "{verb:?}: {report}");
        assert!(!handed.exists(), "{verb:?}");
        assert!(
            pinned.join("lib.so").is_file(),
            "{verb:?}: a pinned entry stays"
        );
        drop(guard);
        let report = json(&env, &forced);
        assert_eq!(
            verdicts(&report),
            vec![(key12(&pinned), "removed".into())],
            "{verb:?}: {report}"
        );
        if verb[0] == "basecompiledir" {
            assert!(!env.base().exists(), "the base dir goes once nothing stays");
        }
    }
}

#[test]
fn dry_runs_judge_each_entry_as_the_real_run_does() {
    for verb in [
        &["prune", "--max-size", "1B"][..],
        &["clear"],
        &["purge"],
        &["basecompiledir", "purge"],
    ] {
        let env = Env::new();
        let handed = compile(&env, "handed.c");
        let free = compile(&env, "free.c");
        let pinned = compile(&env, "pinned.c");
        // Handed out two hours ago: beyond handout_grace.
        set_mtime(&free.join("handed-out"), 2 * 3600);
        let guard = pin(&pinned);
        let dry = json(&env, &[verb, &["--dry-run", "--json"]].concat());
        let real = json(&env, &[verb, &["--json"]].concat());
        let expected = |removed: &str| {
            let mut v = vec![
                (key12(&free), removed.to_string()),
                (key12(&handed), "handed-out".to_string()),
                (key12(&pinned), "in-use".to_string()),
            ];
            v.sort();
            v
        };
        assert_eq!(verdicts(&dry), expected("dry-run"), "{verb:?}: {dry}");
        assert_eq!(verdicts(&real), expected("removed"), "{verb:?}: {real}");
        assert_eq!(dry["removed_entries"], 1, "{verb:?}: {dry}");
        assert_eq!(dry["freed_bytes"], real["freed_bytes"], "{verb:?}");
        // Nothing is said to be removed that stays: the compiledir of a purge stays
        // with the entries it holds, in the dry run too.
        for report in [&dry, &real] {
            for a in report["actions"].as_array().unwrap() {
                if a["kind"] == "compiledir" {
                    assert_eq!(a["skipped"]["why"], "entries-in-use", "{verb:?}: {a}");
                }
            }
        }
        let text = stdout(&run(&env, &[verb, &["--dry-run"]].concat()));
        assert!(
            text.lines()
                .filter(|l| l.starts_with("would remove"))
                .all(|l| !l.contains(&key12(&handed)) && !l.contains(&key12(&pinned))),
            "{verb:?}: {text}"
        );
        drop(guard);
    }
}

#[test]
fn cleanup_is_prune_with_a_note() {
    let env = Env::new();
    compile(&env, "a.c");
    let prune = run(&env, &["prune", "--older-than", "1d", "--dry-run"]);
    let cleanup = run(&env, &["cleanup", "--older-than", "1d", "--dry-run"]);
    assert_eq!(stdout(&cleanup), stdout(&prune));
    assert!(stderr(&prune).is_empty(), "{}", stderr(&prune));
    let note = stderr(&cleanup);
    assert!(
        note.contains("`xcache cleanup` is `xcache prune`") && note.contains("verify --repair"),
        "{note}"
    );
    let help = stdout(&env.run(&["--help"]));
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("prune") && l.contains("cleanup")),
        "{help}"
    );
}

#[test]
fn compile_passes_what_follows_double_dash_with_relative_paths_resolved() {
    let env = Env::new();
    settled(&env, "inc/h.h", "#define N 4\n");
    env.file(
        "k.c",
        "#include <h.h>\nint k(void) { return N * M; }\n#if !defined(__OPTIMIZE__)\n#error no -O2\n#endif\n",
    );
    // The refusal of `-I inc` as an option of xcache's, and the hint clap gives.
    let refused = run(&env, &["compile", "k.c", "-I", "inc"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("'-- -I'"), "{}", stderr(&refused));
    // Following it, in both spellings, with more flags.
    let a = json(
        &env,
        &["compile", "k.c", "--json", "--", "-Iinc", "-DM=4", "-O2"],
    );
    let b = json(
        &env,
        &[
            "compile", "k.c", "--json", "--", "-I", "inc", "-DM=4", "-O2",
        ],
    );
    assert_eq!(a["hit"], false, "{a}");
    let inc = env.dir.path().join("inc");
    let show = json(&env, &["show", a["key"].as_str().unwrap(), "--json"]);
    let flags = show["entries"][0]["meta"]["key_material"]["flags"].to_string();
    assert!(
        flags.contains(&format!("-I{}", inc.display())) && flags.contains("-DM=4"),
        "{flags}"
    );
    assert_ne!(
        a["key"], b["key"],
        "-Idir and -I dir are different command lines"
    );
    // --flag resolves the same way: the same request.
    let f = json(
        &env,
        &[
            "compile", "k.c", "--json", "-f", "-Iinc", "-f", "-DM=4", "-f", "-O2",
        ],
    );
    assert_eq!(
        (&f["hit"], &f["key"]),
        (&Value::Bool(true), &a["key"]),
        "{f}"
    );
    // The header under the resolved directory is tracked: an edit compiles again.
    settled(&env, "inc/h.h", "#define N 5 /* edited */\n");
    let edited = json(
        &env,
        &["compile", "k.c", "--json", "--", "-Iinc", "-DM=4", "-O2"],
    );
    assert_eq!(edited["hit"], false, "{edited}");
    // What the flag policy refuses stays refused, with the flag named.
    let o = run(
        &env,
        &["compile", "k.c", "--json", "--", "-Iinc", "-o", "x.so"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(err["error"]["flag"], "-o x.so", "{err}");
}

#[test]
fn key_prefix_errors_say_what_is_wrong() {
    let env = Env::new();
    let entry = compile(&env, "a.c");
    let key = entry.file_name().unwrap().to_str().unwrap().to_string();
    for (prefix, says) in [
        ("zz", "'z' is not one"),
        ("7", "too short"),
        (&*"a".repeat(65), "longer than a key"),
    ] {
        let o = run(&env, &["show", prefix]);
        assert_eq!(o.status.code(), Some(1), "{prefix}");
        let e = stderr(&o);
        assert!(
            e.contains(says) && e.contains("xcache list"),
            "{prefix}: {e}"
        );
        let j = run(&env, &["show", prefix, "--json"]);
        let v: Value = serde_json::from_slice(&j.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "invalid-request", "{v}");
    }
    // A prefix of nothing in the cache: no entry's and no manifest's shard (the
    // request key of the manifest differs from the entry's, and by machine).
    let compiledir = entry.ancestors().nth(3).unwrap();
    let shards: Vec<String> = std::fs::read_dir(compiledir)
        .unwrap()
        .filter_map(|d| std::fs::read_dir(d.ok()?.path()).ok())
        .flatten()
        .filter_map(|d| Some(d.ok()?.file_name().to_str()?.to_string()))
        .collect();
    let other = (0..=255u8)
        .map(|b| format!("{b:02x}"))
        .find(|p| !shards.contains(p))
        .unwrap();
    let e = stderr(&run(&env, &["show", &other]));
    assert!(e.contains("no entry or manifest"), "{e}");
    // Following the hint: the first digits `list` shows, in either case.
    for prefix in [&key[..12], &key[..2].to_uppercase()] {
        let v = json(&env, &["show", prefix, "--json"]);
        assert_eq!(v["entries"][0]["meta"]["key"], key.as_str(), "{prefix}");
    }
}

/// `xcache ARGS` with a config file of its own (what `-M` writes).
fn with_config(env: &Env, args: &[&str]) -> Output {
    env.cmd(args)
        .env("XCACHE_CONFIG", env.dir.path().join("config.toml"))
        .output()
        .unwrap()
}

#[test]
fn ccache_options_do_what_they_do_in_ccache() {
    let env = Env::new();
    env.file("config.toml", "# mine\nopt_level = \"2\"\n");
    let k = env.file("k.c", "int k(void) { return 1; }\n");
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    // -s, --show-stats: the statistics, as `xcache stats` shows them.
    let stats = stdout(&with_config(&env, &["stats"]));
    assert_eq!(stdout(&with_config(&env, &["-s"])), stats);
    assert_eq!(stdout(&with_config(&env, &["--show-stats"])), stats);
    assert!(stats.contains("max_size: "), "{stats}");
    // -z, --zero-stats: zeroed; in the order given, as ccache runs them.
    let shown_then_zeroed = stdout(&with_config(&env, &["-s", "-z"]));
    assert!(
        shown_then_zeroed.starts_with(&stats) && shown_then_zeroed.ends_with("counters reset\n"),
        "{shown_then_zeroed}"
    );
    let v = env.json(&["stats", "--json"]);
    assert_eq!(
        (v[0]["hits"].as_u64(), v[0]["misses"].as_u64()),
        (Some(0), Some(0))
    );
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    let zs = stdout(&with_config(&env, &["-zs"]));
    assert!(zs.starts_with("counters reset\n"), "{zs}");
    assert_eq!(env.json(&["stats", "--json"])[0]["hits"], 0);
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    stdout(&with_config(&env, &["--zero-stats"]));
    assert_eq!(env.json(&["stats", "--json"])[0]["hits"], 0);
    // -M SIZE: max_size in the config file, kept with its other keys and comments.
    let m = stdout(&with_config(&env, &["-M", "2GiB"]));
    assert!(m.starts_with("max_size = \"2GiB\" written to "), "{m}");
    let file = std::fs::read_to_string(env.dir.path().join("config.toml")).unwrap();
    assert!(
        file.contains("# mine")
            && file.contains("opt_level")
            && file.contains("max_size = \"2GiB\""),
        "{file}"
    );
    let config =
        serde_json::from_str::<Value>(&stdout(&with_config(&env, &["config", "--json"]))).unwrap();
    let max = config
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "max_size")
        .unwrap()
        .clone();
    assert_eq!(
        (
            max["value"].as_str(),
            max["origin"].as_str().map(|o| o.starts_with("file"))
        ),
        (Some("2GiB"), Some(true))
    );
    assert!(stdout(&with_config(&env, &["-s"])).contains("/ 2.0 GiB"));
    // ccache's own spelling (G: powers of 1000, as in ccache), joined, and 0: no limit.
    stdout(&with_config(&env, &["-M5G"]));
    assert!(stdout(&with_config(&env, &["--max-size", "0"])).contains("max_size = \"0\""));
    assert!(stdout(&with_config(&env, &["-s"])).contains("no limit"));
    // A bare number is refused, with the fix, and nothing is written.
    let bare = with_config(&env, &["-M", "5"]);
    assert_eq!(bare.status.code(), Some(1));
    assert!(stderr(&bare).contains("write 5GiB"), "{}", stderr(&bare));
    let file = std::fs::read_to_string(env.dir.path().join("config.toml")).unwrap();
    assert!(file.contains("max_size = \"0\""), "{file}");
    // -C: every entry of the current compiledir goes (as `xcache clear`).
    let cleared = stdout(&with_config(&env, &["-C"]));
    assert!(cleared.contains("removed  entry"), "{cleared}");
    assert_eq!(env.json(&["list", "--json"]), serde_json::json!([]));
    // Not beside a command.
    let both = with_config(&env, &["-s", "list"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn stats_and_size_show_use_against_max_size() {
    let env = Env::new();
    let k = env.file("k.c", "int k(void) { return 1; }\n");
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    let limited = |args: &[&str]| {
        env.cmd(args)
            .env("XCACHE_FLAGS", "max_size=1MiB")
            .output()
            .unwrap()
    };
    let size: Value = serde_json::from_str(&stdout(&limited(&["size", "--json"]))).unwrap();
    assert_eq!(size["max_size"], 1 << 20, "{size}");
    let used = size["compiledirs"][0]["entries_bytes"].as_u64().unwrap();
    let stats: Value = serde_json::from_str(&stdout(&limited(&["stats", "--json"]))).unwrap();
    assert_eq!(
        (
            stats[0]["entries_bytes"].as_u64(),
            stats[0]["max_size"].as_u64(),
            stats[0]["entries"].as_u64()
        ),
        (Some(used), Some(1 << 20), Some(1))
    );
    let want = format!(
        "max_size: {} KiB / 1.0 MiB ({:.1}%) in the current compiledir",
        (used as f64 / 1024.0).round(),
        100.0 * used as f64 / (1 << 20) as f64
    );
    for args in [&["size"][..], &["stats"], &["-s"]] {
        let text = stdout(&limited(args));
        assert!(
            text.lines().any(|l| l == want),
            "{args:?}: {text}\nwanted: {want}"
        );
    }
}

#[test]
fn list_says_how_coarse_last_use_is_and_man_pages_their_version() {
    let env = Env::new();
    let k = env.file("k.c", "int k(void) { return 1; }\n");
    stdout(&env.run(&["compile", k.to_str().unwrap()]));
    let list = env
        .cmd(&["list"])
        .env("XCACHE_FLAGS", "last_use_resolution=6h")
        .output()
        .unwrap();
    assert!(
        stdout(&list).contains("LAST USE is written at most once per 6h (last_use_resolution)"),
        "{}",
        stdout(&list)
    );
    let version = env!("CARGO_PKG_VERSION");
    for page in [&["man"][..], &["man", "prune"], &["man", "compile"]] {
        let roff = stdout(&env.run(page));
        let th = roff.lines().find(|l| l.starts_with(".TH")).unwrap();
        assert!(th.contains(version), "{page:?}: {th}");
    }
}
