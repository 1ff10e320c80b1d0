//! The `xcache` command's verbs, output formats and exit statuses, each test in its own
//! temp base dir.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{stderr, stdout, Env};
use serde_json::Value;

const SRC: &str = "int twice(int x) { return 2 * x; }\n";

#[test]
fn no_arguments_prints_the_compiledir() {
    let env = Env::new();
    let out = stdout(&env.run(&[]));
    let p = Path::new(out.trim());
    assert_eq!(p.parent().unwrap(), env.base());
    let name = p.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("compiledir_") && name.ends_with("-xc3"),
        "{name}"
    );
    assert!(p.join("compiledir.json").is_file());
}

#[test]
fn basecompiledir_and_the_dir_flag() {
    let env = Env::new();
    assert_eq!(
        stdout(&env.run(&["basecompiledir"])).trim(),
        env.base().to_str().unwrap()
    );
    let other = env.dir.path().join("other");
    let out = stdout(&env.run(&["--dir", other.to_str().unwrap(), "basecompiledir"]));
    assert_eq!(out.trim(), other.to_str().unwrap());
    let out = stdout(&env.run(&["basecompiledir", "--dir", other.to_str().unwrap()]));
    assert_eq!(out.trim(), other.to_str().unwrap(), "--dir is global");
}

#[test]
fn runtime_tag_from_the_environment() {
    let env = Env::new();
    let out = env
        .cmd(&[])
        .env("XCACHE_RUNTIME", "cpython-3.11")
        .output()
        .unwrap();
    assert!(stdout(&out).trim().ends_with("-cpython-3.11-xc3"));
}

#[test]
fn compile_prints_the_path_then_hits() {
    let env = Env::new();
    let src = env.file("twice.c", SRC);
    let path = stdout(&env.run(&["compile", src.to_str().unwrap()]));
    let path = Path::new(path.trim());
    assert!(path.is_file() && path.starts_with(env.base()));
    let out = env.run(&["compile", src.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["hit"], true);
    assert_eq!(v["path"], path.to_str().unwrap());
    assert_eq!(v["key"].as_str().unwrap().len(), 64);
    assert!(v["compile_ms"].as_u64().is_some());
    assert_eq!(v["source"], "twice.c");
    // A flag changes the key.
    let out = env.run(&["compile", src.to_str().unwrap(), "--flag", "-O1", "--json"]);
    let v2: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v2["hit"], false);
    assert_ne!(v2["key"], v["key"]);
}

#[test]
fn compile_with_a_header() {
    let env = Env::new();
    let h = env.file("defs.h", "#define K 7\n");
    let src = env.file("k.c", "#include \"defs.h\"\nint k(void) { return K; }\n");
    let out = env.run(&[
        "compile",
        src.to_str().unwrap(),
        "--include",
        h.to_str().unwrap(),
        "--symbol",
        "k",
    ]);
    let path = PathBuf::from(stdout(&out).trim());
    assert!(path.parent().unwrap().join("defs.h").is_file());
}

#[test]
fn compile_error_exits_1_with_the_diagnostics() {
    let env = Env::new();
    let src = env.file("bad.c", "int f(void) { return nope; }\n");
    let out = env.run(&["compile", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("compilation failed"), "{err}");
    assert!(
        err.contains("'nope' undeclared") || err.contains("‘nope’ undeclared"),
        "{err}"
    );
    assert!(err.contains("source kept at"), "{err}");
    let list: Value = serde_json::from_str(&stdout(&env.run(&["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn missing_symbol_exits_1() {
    let env = Env::new();
    let src = env.file("twice.c", SRC);
    let out = env.run(&["compile", src.to_str().unwrap(), "--symbol", "thrice"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`thrice` not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_usage_exits_2() {
    let env = Env::new();
    assert_eq!(env.run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(env.run(&["compile"]).status.code(), Some(2));
    assert_eq!(env.run(&["list", "--bogus"]).status.code(), Some(2));
    let help = env.run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("compile"));
}

#[test]
fn unknown_language_and_bad_flags_are_explained() {
    let env = Env::new();
    let src = env.file("k.f90", "program k\nend\n");
    let out = env.run(&["compile", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(".c file for C"), "{}", stderr(&out));
    let src = env.file("twice.c", SRC);
    let out = env.run(&[
        "compile",
        src.to_str().unwrap(),
        "--flag",
        "-o",
        "--flag",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing the compiler flag \"-o x\"")
            && stderr(&out).contains("--out FILE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_setting_in_xcache_flags_lists_the_known_ones() {
    let env = Env::new();
    let out = env
        .cmd(&["list"])
        .env("XCACHE_FLAGS", "optlevel=2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unknown setting `optlevel`") && err.contains("opt_level"),
        "{err}"
    );
}

#[test]
fn untrusted_base_dir_exits_1_naming_dir_and_fix() {
    let env = Env::new();
    std::fs::create_dir_all(env.base()).unwrap();
    std::fs::set_permissions(env.base(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(env.base().to_str().unwrap()), "{err}");
    assert!(err.contains("chmod go-w"), "{err}");
}

#[test]
fn corrupt_entries_are_reported_as_warnings() {
    let env = Env::new();
    let src = env.file("twice.c", SRC);
    let path = PathBuf::from(stdout(&env.run(&["compile", src.to_str().unwrap()])).trim());
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = env.run(&[
        "compile",
        src.to_str().unwrap(),
        "--symbol",
        "twice",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["hit"], false);
    let err = stderr(&out);
    assert!(
        err.contains("xcache: warning: corrupt cache entry"),
        "{err}"
    );
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    // XCACHE_LOG=off silences the log; the JSON still says it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = env
        .cmd(&[
            "compile",
            src.to_str().unwrap(),
            "--symbol",
            "twice",
            "--json",
        ])
        .env("XCACHE_LOG", "off")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    assert!(!stderr(&out).contains("corrupt"), "{}", stderr(&out));
}

#[test]
fn list_human_and_json() {
    let env = Env::new();
    let empty = stdout(&env.run(&["list"]));
    assert!(empty.starts_with("no entries in"), "{empty}");
    let a = env.file("twice.c", SRC);
    let b = env.file(
        "sum_long_name.cpp",
        "extern \"C\" int s(int a, int b) { return a + b; }\n",
    );
    stdout(&env.run(&["compile", a.to_str().unwrap()]));
    stdout(&env.run(&["compile", b.to_str().unwrap()]));

    let v: Value = serde_json::from_str(&stdout(&env.run(&["list", "--json"]))).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for field in [
            "key",
            "source",
            "language",
            "size",
            "created",
            "last_use",
            "compile_ms",
            "path",
            "status",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["status"], "ok");
        assert!(r["size"].as_u64().unwrap() > 1000);
    }
    let mut sources: Vec<&str> = rows.iter().map(|r| r["source"].as_str().unwrap()).collect();
    sources.sort();
    assert_eq!(sources, ["sum_long_name.cpp", "twice.c"]);

    let text = stdout(&env.run(&["list"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("LAST USE"),
        "{text}"
    );
    // The rows, the total, and how coarse LAST USE is.
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[4].contains("last_use_resolution"), "{text}");
    // Columns line up: SIZE is right-aligned, so each row's size ends where the header does.
    let end = lines[0].find("SIZE").unwrap() + 4;
    for row in &lines[1..3] {
        assert!(row[..end].ends_with("KiB"), "misaligned: {row:?}\n{text}");
    }
    assert!(lines[3].starts_with("2 entries"), "{text}");
}

#[test]
fn compile_a_template_with_parameters() {
    let env = Env::new();
    let args = [
        "compile",
        "--template",
        "elemwise",
        "-p",
        "dtype=float32",
        "-p",
        "arity=2",
        "-p",
        "expr=a*exp(b)",
        "--symbol",
        "xc_elemwise",
        "--json",
    ];
    let v: Value = serde_json::from_str(&stdout(&env.run(&args))).unwrap();
    assert_eq!(v["hit"], false);
    assert_eq!(
        v["source"],
        "elemwise(arity=2, dtype=float32, expr=a * exp(b))"
    );
    let again: Value = serde_json::from_str(&stdout(&env.run(&args))).unwrap();
    assert_eq!(again["hit"], true);
    assert_eq!(again["key"], v["key"]);
    let list: Value = serde_json::from_str(&stdout(&env.run(&["list", "--json"]))).unwrap();
    assert_eq!(
        list[0]["source"],
        "elemwise(arity=2, dtype=float32, expr=a * exp(b))"
    );
}

#[test]
fn bad_template_parameters_exit_1_naming_everything() {
    let env = Env::new();
    let out = env.run(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=float16",
        "-p",
        "arity=1",
        "-p",
        "expr=a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in ["c/elemwise", "`dtype`", "\"float16\"", "one of float32"] {
        assert!(err.contains(want), "{err}");
    }
    let out = env.run(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=float32",
        "-p",
        "arity=1",
        "-p",
        "expr=a); system(\"id\"",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`expr`"), "{}", stderr(&out));
    let out = env.run(&["compile", "-t", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a template name is"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["compile", "-t", "elemwise", "-p", "novalue"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed parameter is bad usage"
    );
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    // A source and a template at once is bad usage.
    let src = env.file("x.c", SRC);
    assert_eq!(
        env.run(&["compile", src.to_str().unwrap(), "-t", "gemm"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn templates_lists_parameters_and_entry_points() {
    let env = Env::new();
    let text = stdout(&env.run(&["templates"]));
    for want in [
        "c/elemwise",
        "c/reduce",
        "c/gemm",
        "entry: int xc_elemwise(int64_t n, const void *const *inputs, void *out)",
        "one of float32, float64, int32, int64",
        "an integer from 1 to 8",
        "default false",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let v: Value = serde_json::from_str(&stdout(&env.run(&["templates", "--json"]))).unwrap();
    let all = v.as_array().unwrap();
    let names: Vec<&str> = all.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "c/elemwise",
            "c/gemm",
            "c/reduce",
            "cuda/elemwise",
            "cuda/gemm",
            "cuda/reduce",
            "cuda/support"
        ]
    );
    for t in all {
        for f in [
            "name",
            "language",
            "description",
            "entry",
            "flags",
            "origin",
            "params",
        ] {
            assert!(t.get(f).is_some(), "{f} missing in {t}");
        }
        for p in t["params"].as_array().unwrap() {
            for f in ["name", "accepts", "default", "doc"] {
                assert!(p.get(f).is_some(), "{f} missing in {p}");
            }
        }
    }
}

#[test]
fn demo_runs_check1_cold_then_warm() {
    let env = Env::new();
    let v: Value =
        serde_json::from_str(&stdout(&env.run(&["demo", "--iters", "20", "--json"]))).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["n"], 230_400);
    assert_eq!(v["iters"], 20);
    assert_eq!(v["cold_was_cached"], false);
    assert_eq!(v["warm_hit"], true);
    assert!(v["max_rel_err"].as_f64().unwrap() <= 1e-6);
    let v2: Value =
        serde_json::from_str(&stdout(&env.run(&["demo", "--iters", "20", "--json"]))).unwrap();
    assert_eq!(v2["cold_was_cached"], true);
    assert_eq!(v2["key"], v["key"]);
    let text = stdout(&env.run(&["demo", "--iters", "5"]));
    for want in [
        "cold",
        "warm",
        "loop",
        "device",
        "check",
        "OK",
        "Used the cpu",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}

#[test]
fn sizes_and_durations_need_a_unit_everywhere() {
    let env = Env::new();
    // The command line: bad usage, with the fix.
    for (args, fix) in [
        (&["prune", "--max-size", "5"][..], "5GiB"),
        (&["prune", "--older-than", "7"][..], "7d"),
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(fix), "{args:?}: {}", stderr(&out));
    }
    // XCACHE_FLAGS and the config file: a configuration error, with the fix.
    let out = env
        .cmd(&["config"])
        .env("XCACHE_FLAGS", "max_size=5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("5GiB"), "{}", stderr(&out));
    let file = env.file("config.toml", "stale_after = 30\n");
    let out = env
        .cmd(&["config"])
        .env("XCACHE_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml, line 1") && err.contains("30d"),
        "{err}"
    );
    // Fractions of any unit; values shown as they were meant.
    let v = env.json(&[
        "prune",
        "--older-than",
        "1.5d",
        "--max-size",
        "1.5GiB",
        "--json",
    ]);
    assert_eq!(v["removed_entries"], 0);
    let out = env
        .cmd(&["config", "--json"])
        .env("XCACHE_FLAGS", "max_size=5G,stale_after=1.5d")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let value = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value("max_size"), "5GB");
    assert_eq!(value("stale_after"), "36h");
}

#[test]
fn a_max_size_of_zero_is_no_limit_on_the_command_line_too() {
    let env = Env::new();
    let src = env.file("twice.c", SRC);
    stdout(&env.run(&["compile", src.to_str().unwrap()]));
    let v = env.json(&["prune", "--max-size", "0", "--json"]);
    assert_eq!(v["removed_entries"], 0, "{v}");
    let out = env
        .cmd(&["prune", "--json"])
        .env("XCACHE_FLAGS", "max_size=0,handout_grace=0s")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["removed_entries"], 0, "{v}");
    assert_eq!(env.json(&["list", "--json"]).as_array().unwrap().len(), 1);
    // A size limit does evict.
    let v = env.json(&["prune", "--max-size", "1B", "--json"]);
    assert_eq!(v["removed_entries"], 1, "{v}");
}

/// A command asked for JSON answers in JSON on stdout even when it fails.
fn json_error(out: &std::process::Output) -> Value {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", out.stdout));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"].clone()
}

#[test]
fn json_stays_json_on_failure() {
    let env = Env::new();
    let bad = env.file("broken.c", "int f(void) { return nope; }\n");
    let out = env.run(&["compile", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let e = json_error(&out);
    assert_eq!(e["kind"], "compile", "{e}");
    assert!(
        e["compiler_output"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    assert!(
        e["kept_source"].as_str().unwrap().ends_with("source.c"),
        "{e}"
    );
    assert!(
        stderr(&out).contains("compilation failed"),
        "people still read stderr"
    );

    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = env.run(&[
        "--dir",
        home.to_str().unwrap(),
        "basecompiledir",
        "purge",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = json_error(&out);
    assert_eq!(e["kind"], "invalid-request", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("CACHEDIR.TAG"),
        "{e}"
    );
    assert!(e["compiler_output"].is_null());

    let out = env
        .cmd(&["list", "--json"])
        .env("XCACHE_FLAGS", "max_size=5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_error(&out)["kind"], "config");

    // Bad usage: exit 2, and JSON too.
    let out = env.run(&["prune", "--older-than", "7", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let e = json_error(&out);
    assert_eq!(e["kind"], "usage");
    assert!(e["message"].as_str().unwrap().contains("7d"), "{e}");
    // Without --json, stdout stays empty.
    let out = env.run(&["compile", bad.to_str().unwrap()]);
    assert!(out.stdout.is_empty());
}

#[test]
fn basecompiledir_takes_json_before_or_after_its_action() {
    let env = Env::new();
    let v = env.json(&["basecompiledir", "--json"]);
    assert_eq!(v["base_dir"], env.base().to_str().unwrap());
    env.compiledir();
    for args in [
        &["basecompiledir", "list", "--json"][..],
        &["basecompiledir", "--json", "list"][..],
    ] {
        let v = env.json(args);
        assert_eq!(v.as_array().unwrap().len(), 1, "{args:?}: {v}");
        assert_eq!(v[0]["mark"], "current");
    }
}

#[test]
fn list_fits_the_terminal_unless_wide_or_piped() {
    let env = Env::new();
    let expr: Vec<String> = (1..40).map(|i| format!("exp(a*{i})")).collect();
    let expr = expr.join("+");
    let param = format!("expr={expr}");
    stdout(&env.run(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=float64",
        "-p",
        "arity=1",
        "-p",
        &param,
    ]));
    let src = env.file("twice.c", SRC);
    stdout(&env.run(&["compile", src.to_str().unwrap()]));
    let list = |args: &[&str], columns: Option<&str>| {
        let mut c = env.cmd(args);
        match columns {
            Some(n) => c.env("COLUMNS", n),
            None => c.env_remove("COLUMNS"),
        };
        stdout(&c.output().unwrap())
    };
    let text = list(&["list"], Some("100"));
    let rows: Vec<&str> = text.lines().filter(|l| !l.contains("entries,")).collect();
    for l in &rows {
        assert!(l.chars().count() <= 100, "{} chars: {l}", l.chars().count());
    }
    assert!(text.contains('…') && text.contains("twice.c"), "{text}");
    // --wide, and a pipe without COLUMNS: whole sources.
    for text in [
        list(&["list", "--wide"], Some("100")),
        list(&["list"], None),
    ] {
        assert!(
            text.contains("exp(a * 39)") && !text.contains('…'),
            "{text}"
        );
    }
    // JSON is always complete.
    let v = env.json(&["list", "--json"]);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["source"].as_str().unwrap().contains("exp(a * 39)")));
}

#[test]
fn dtypes_are_named_as_users_write_them_in_errors() {
    let env = Env::new();
    let out = env.run(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=int32",
        "-p",
        "arity=1",
        "-p",
        "expr=erf(a)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("not int32") && !err.contains("I32"), "{err}");
}

/// `xcache compile -t` keeps what it rendered (`toolchains/render-<digest>.json`): the
/// next process compiles the same source from it; an edited template (through
/// `template_path`) is rendered and compiled again; a damaged memo is not used, and
/// the request still hits the entry its real source gives.
#[test]
fn compile_t_reads_its_rendered_source_back_and_never_a_stale_or_damaged_one() {
    let env = Env::new();
    let text = xcache::compile::template::EMBEDDED
        .iter()
        .find(|(rel, _)| *rel == "c/elemwise.c")
        .unwrap()
        .1;
    let tpl = env.file("tpl/c/elemwise.c", text);
    let flags = format!(
        "handout_grace=0s,template_path={}",
        tpl.parent().unwrap().parent().unwrap().display()
    );
    let compile = || -> Value {
        let out = env
            .cmd(&[
                "compile",
                "-t",
                "c/elemwise",
                "-p",
                "dtype=float32",
                "-p",
                "arity=1",
                "-p",
                "expr=a+1",
                "--json",
            ])
            .env("XCACHE_FLAGS", &flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let memos = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(env.compiledir().join("toolchains"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("render-")
            })
            .collect();
        v.sort();
        v
    };
    let first = compile();
    assert_eq!(first["hit"], false);
    let [memo] = <[PathBuf; 1]>::try_from(memos()).unwrap();
    let again = compile();
    assert_eq!(
        (&again["hit"], &again["key"]),
        (&Value::Bool(true), &first["key"])
    );

    // Damaged: rendered again, the same entry.
    std::fs::write(&memo, b"{\"format\": 1, \"source\": \"int x;\"}").unwrap();
    let damaged = compile();
    assert_eq!(
        (&damaged["hit"], &damaged["key"]),
        (&Value::Bool(true), &first["key"])
    );

    // Edited: a new source, a new entry, and a memo of its own.
    std::fs::write(&tpl, format!("{text}\n/* edited */\n")).unwrap();
    let edited = compile();
    assert_eq!(edited["hit"], false);
    assert_ne!(edited["key"], first["key"]);
    assert_eq!(memos().len(), 2);
}
