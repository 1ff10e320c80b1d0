//! Compiler flags through the `xcache` command as scripts use it. A warm manifest is
//! data: its flags pass by an allow-list (the five attacks of issue 21 are refused,
//! each naming the flag; safe flags, include directories inside the tree, and what
//! `allowed_flags` vouches for pass). Flags on the command line that run programs,
//! write elsewhere or take over xcache's outputs are refused, `--json` staying JSON.
//! `-MMD` is refused from the user and removed from `CFLAGS`, so an edit to a system
//! header is still seen. Nothing a refused flag would have run or written exists.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{set_mtime, stderr, stdout, Env};
use serde_json::{json, Value};

/// Writes a header as an editor would, settled (mtime a minute ago: a header modified
/// after a build started is not recorded).
fn write_settled(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    set_mtime(path, 60);
}

/// A directory holding an `as` that records that it ran: what `--prefix=DIR` or `-B DIR`
/// would make gcc run.
fn trap_dir(env: &Env) -> PathBuf {
    let dir = env.dir.path().join("trap");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("as");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}/ran'\nexit 1\n", dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

/// dlopens `lib` in another process and prints what `sym()` returns.
fn call(env: &Env, lib: &str, sym: &str) -> String {
    let exe = env.dir.path().join("call");
    if !exe.exists() {
        let src = env.file(
            "call.c",
            "#include <dlfcn.h>\n#include <stdio.h>\nint main(int c, char **v) {\n  void *h = dlopen(v[1], RTLD_NOW);\n  if (!h) { fprintf(stderr, \"%s\\n\", dlerror()); return 1; }\n  int (*f)(void) = (int (*)(void))dlsym(h, v[2]);\n  if (!f) return 2;\n  printf(\"%d\\n\", f());\n  return 0;\n}\n",
        );
        let o = Command::new("cc")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .arg("-ldl")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let o = Command::new(&exe).arg(lib).arg(sym).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn manifest(dir: &Path, requests: Value) -> PathBuf {
    let m = dir.join("m.json");
    std::fs::write(
        &m,
        serde_json::to_string(&json!({ "requests": requests })).unwrap(),
    )
    .unwrap();
    m
}

#[test]
fn warm_refuses_the_issues_five_flags_each_named() {
    let env = Env::new();
    let tree = env.dir.path().join("tree");
    let outside = env.dir.path().join("outside");
    write_settled(&outside.join("secret.h"), "#define SECRET 42\n");
    env.file(
        "tree/k.c",
        "#include \"secret.h\"\nint k(void) { return SECRET; }\n",
    );
    let trap = trap_dir(&env);
    let listing = env.dir.path().join("listing.txt");
    let dump = env.dir.path().join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let d = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![format!("--include-directory={}", d(&outside))],
            format!("--include-directory={}", d(&outside)),
        ),
        (
            vec![format!("-Wp,-I{}", d(&outside))],
            format!("-Wp,-I{}", d(&outside)),
        ),
        (
            vec![format!("--prefix={}", d(&trap))],
            format!("--prefix={}", d(&trap)),
        ),
        (
            vec![format!("-Wa,-a={}", d(&listing))],
            format!("-Wa,-a={}", d(&listing)),
        ),
        (
            vec![
                "-save-temps".into(),
                "-dumpdir".into(),
                format!("{}/", d(&dump)),
            ],
            "-save-temps".into(),
        ),
        (
            vec!["-dumpdir".into(), format!("{}/", d(&dump))],
            format!("-dumpdir {}/", d(&dump)),
        ),
    ];
    for (flags, named) in cases {
        let m = manifest(&tree, json!([{"source": "k.c", "flags": flags}]));
        let out = env.run(&["warm", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("refusing the compiler flag {named:?}"))
                && err.contains("m.json requests[0]")
                && err.contains("allowed_flags"),
            "{flags:?}: {err}"
        );
        // --json stays JSON, with the flag.
        let out = env.run(&["warm", m.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "invalid-request", "{v}");
        assert_eq!(v["error"]["flag"], named.as_str(), "{v}");
    }
    // Nothing was compiled, run or written.
    assert!(!trap.join("ran").exists());
    assert!(!listing.exists());
    assert_eq!(std::fs::read_dir(&dump).unwrap().count(), 0);
    assert_eq!(env.json(&["list", "--json"]), json!([]));
}

#[test]
fn warm_passes_safe_flags_and_include_dirs_inside_its_tree() {
    let env = Env::new();
    let tree = env.dir.path().join("tree");
    write_settled(&tree.join("inc/defs.h"), "#define N 3\n");
    write_settled(&tree.join("sys/sysdefs.h"), "#define M 4\n");
    env.file(
        "tree/k.c",
        "#include \"defs.h\"\n#include <sysdefs.h>\nint k(void) { return N * M; }\n",
    );
    let flags = json!([
        "-O2",
        "-fopenmp",
        "-ffast-math",
        "-march=native",
        "-DEXTRA=1",
        "-Wall",
        "-Wno-unused-function",
        "-std=c11",
        "-g",
        "-Iinc",
        "-isystem",
        "sys",
        "-lm",
        "-pthread",
        "--param=max-unroll-times=4",
        "--include-directory=inc"
    ]);
    let m = manifest(
        &tree,
        json!([
            {"source": "k.c", "flags": flags},
            {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "a+1"},
             "flags": ["-O2", "-fno-math-errno", "-mno-fma"]}
        ]),
    );
    let v = env.json(&["warm", m.to_str().unwrap(), "--json"]);
    assert_eq!(v["compiled"], 2, "{v}");
    assert_eq!(v["failed"], json!([]), "{v}");
    // The source's entry: its include dirs were made absolute, and the header under
    // -isystem is tracked.
    let list = env.json(&["list", "--json"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.to_string().contains("k.c"))
        .unwrap_or_else(|| panic!("{list}"));
    let key = entry["key"].as_str().unwrap();
    let show = env.json(&["show", key, "--json"]);
    let sys = tree.canonicalize().unwrap().join("sys/sysdefs.h");
    assert!(
        show["entries"][0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["path"] == sys.to_str().unwrap()),
        "{show}"
    );

    // A flag off the list is refused, naming the setting; vouched for, it passes.
    let m = manifest(
        &tree,
        json!([{"source": "k.c", "flags": ["-Iinc", "-isystem", "sys", "-fdebug-prefix-map=/a=/b"]}]),
    );
    let out = env.run(&["warm", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("allowed_flags = \"-fdebug-prefix-map=/a=/b\""),
        "{}",
        stderr(&out)
    );
    let out = env
        .cmd(&["warm", m.to_str().unwrap(), "--json"])
        .env(
            "XCACHE_FLAGS",
            "handout_grace=0s,allowed_flags=-fdebug-prefix-map=*",
        )
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["compiled"], 1, "{v}");
}

#[test]
fn compile_refuses_flags_that_run_programs_or_write_elsewhere() {
    let env = Env::new();
    let k = env.file("k.c", "int k(void) { return 7; }\n");
    let trap = trap_dir(&env);
    let listing = env.dir.path().join("listing.txt");
    let map = env.dir.path().join("map.txt");
    let d = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec![format!("-B{}", d(&trap))], format!("-B{}", d(&trap))),
        (vec!["-B".into(), d(&trap)], format!("-B {}", d(&trap))),
        (
            vec![format!("--prefix={}", d(&trap))],
            format!("--prefix={}", d(&trap)),
        ),
        (vec!["-save-temps".into()], "-save-temps".into()),
        (
            vec![format!("-Wa,-a={}", d(&listing))],
            format!("-Wa,-a={}", d(&listing)),
        ),
        (
            vec![format!("-Wl,-Map={}", d(&map))],
            format!("-Wl,-Map={}", d(&map)),
        ),
        (
            vec!["-fplugin=/nonexistent/p.so".into()],
            "-fplugin=/nonexistent/p.so".into(),
        ),
        (
            vec!["-o/tmp/elsewhere.so".into()],
            "-o/tmp/elsewhere.so".into(),
        ),
        (vec!["-specs=/dev/null".into()], "-specs=/dev/null".into()),
    ];
    for (flags, named) in cases {
        let mut args = vec!["compile".to_string(), d(&k)];
        args.extend(flags.iter().map(|f| format!("--flag={f}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("refusing the compiler flag {named:?}")) && err.contains("Fix: "),
            "{flags:?}: {err}"
        );
        let mut json_args = args.clone();
        json_args.push("--json");
        let out = env.run(&json_args);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "invalid-request", "{v}");
        assert_eq!(v["error"]["flag"], named.as_str(), "{v}");
    }
    // A template's flags go through the same check.
    let out = env.run(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=float32",
        "-p",
        "arity=1",
        "-p",
        "expr=a",
        &format!("--flag=-B{}", d(&trap)),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing the compiler flag"),
        "{}",
        stderr(&out)
    );
    assert!(!trap.join("ran").exists());
    assert!(!listing.exists() && !map.exists());
    assert_eq!(env.json(&["list", "--json"]), json!([]));

    // What the user vouches for (in the config file: the flag holds a comma) passes.
    let config = env.file(
        "config.toml",
        &format!("allowed_flags = \"-Wa,-a={}\"\n", d(&listing)),
    );
    let out = env
        .cmd(&[
            "compile",
            &d(&k),
            &format!("--flag=-Wa,-a={}", d(&listing)),
            "--json",
        ])
        .env("XCACHE_CONFIG", &config)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(call(&env, v["path"].as_str().unwrap(), "k"), "7");
    assert!(listing.exists(), "the vouched-for listing was written");
}

#[test]
fn dependency_flags_are_refused_from_the_user_and_stripped_from_cflags() {
    let env = Env::new();
    let sys = env.dir.path().join("sys");
    let h = sys.join("sysh.h");
    write_settled(&h, "#define V 1\n");
    let k = env.file("k.c", "#include <sysh.h>\nint v(void) { return V; }\n");
    let (k, sys) = (k.display().to_string(), sys.display().to_string());

    for flags in [
        &["-MMD"][..],
        &["-MD"],
        &["-MF", "x.d"],
        &["-MT", "t"],
        &["-MP"],
        &["-Wp,-MMD,x.d"],
    ] {
        let mut args = vec!["compile".to_string(), k.clone()];
        args.extend(flags.iter().map(|f| format!("--flag={f}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("refusing the compiler flag {:?}", flags.join(" ")))
                && err.contains("xcache tracks every header itself")
                && err.contains("Fix: remove the flag"),
            "{flags:?}: {err}"
        );
    }

    // -MMD in CFLAGS (the cc crate reads it): removed, with a warning; the system
    // header is tracked, so an edit to it is a miss, not the old library.
    let isystem = format!("--flag={sys}");
    let args = ["compile", &k, "--flag=-isystem", &isystem, "--json"];
    let run = || {
        let out = env.cmd(&args).env("CFLAGS", "-MMD -O1").output().unwrap();
        assert!(
            stderr(&out).contains("ignoring -MMD from CFLAGS"),
            "{}",
            stderr(&out)
        );
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let first = run();
    assert_eq!(first["hit"], false);
    assert_eq!(call(&env, first["path"].as_str().unwrap(), "v"), "1");
    let key = first["key"].as_str().unwrap();
    let text = stdout(&env.run(&["show", key]));
    assert!(
        text.contains(h.to_str().unwrap()) && !text.contains("headers   0 read"),
        "{text}"
    );
    let again = run();
    assert_eq!(again["hit"], true, "{again}");

    write_settled(&h, "#define V 2\n");
    let second = run();
    assert_eq!(
        second["hit"], false,
        "an edited system header is a miss: {second}"
    );
    assert_eq!(call(&env, second["path"].as_str().unwrap(), "v"), "2");
}
