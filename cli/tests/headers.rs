//! Keys that see every header, through the `xcache` command as scripts use it: a header
//! reached through `-I`, beside the source, two levels deep, touched but unchanged; errors
//! that name the user's files; misses that say why; `show`; a manifest with flipped bytes.
//!
//! Headers are written, then their mtime is set a minute back: a header modified after a
//! build started is never recorded (it may not be what the compiler read), and a test
//! must not depend on how fast the next command starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{set_mtime, stdout, Env};
use serde_json::Value;

/// Writes a header as an editor would, settled (mtime a minute ago).
fn write_header(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    set_mtime(path, 60);
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

fn compile(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["compile"];
    a.extend_from_slice(args);
    a.push("--json");
    env.json(&a)
}

#[test]
fn the_console_session_of_the_issue() {
    let env = Env::new();
    let inc = env.dir.path().join("inc");
    write_header(&inc.join("h.h"), "#define VAL 1\n");
    let k = env.file("k.c", "#include \"h.h\"\nint val(void) { return VAL; }\n");
    let flag = format!("--flag=-I{}", inc.display());
    let args = [k.to_str().unwrap(), flag.as_str()];

    let first = compile(&env, &args);
    assert_eq!(first["hit"], false);
    assert_eq!(call(&env, first["path"].as_str().unwrap(), "val"), "1");

    write_header(&inc.join("h.h"), "#define VAL 2\n");
    let second = compile(&env, &args);
    assert_eq!(second["hit"], false, "a changed header is a miss: {second}");
    assert_eq!(call(&env, second["path"].as_str().unwrap(), "val"), "2");

    // Back to the first contents: the first result, from the cache.
    write_header(&inc.join("h.h"), "#define VAL 1\n");
    let third = compile(&env, &args);
    assert_eq!(third["hit"], true, "{third}");
    assert_eq!(third["key"], first["key"]);
    assert_eq!(call(&env, third["path"].as_str().unwrap(), "val"), "1");
}

#[test]
fn a_header_beside_the_source_two_levels_deep_and_touched() {
    let env = Env::new();
    let dir = env.dir.path().join("proj");
    write_header(
        &dir.join("a.h"),
        "#include \"sub/b.h\"\n#define A (B + 1)\n",
    );
    write_header(&dir.join("sub/b.h"), "#define B 10\n");
    let k = dir.join("k.c");
    std::fs::write(&k, "#include \"a.h\"\nint val(void) { return A; }\n").unwrap();
    let args = [k.to_str().unwrap()];
    let first = compile(&env, &args);
    assert_eq!(call(&env, first["path"].as_str().unwrap(), "val"), "11");

    // Touched, same contents: a hit, no compile.
    let b = dir.join("sub/b.h");
    let f = std::fs::File::options().write(true).open(&b).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(30))
        .unwrap();
    drop(f);
    let touched = compile(&env, &args);
    assert_eq!(touched["hit"], true, "{touched}");
    assert_eq!(touched["key"], first["key"]);

    // Two levels deep, changed: a miss, built from the new contents.
    write_header(&b, "#define B 20\n");
    let changed = compile(&env, &args);
    assert_eq!(changed["hit"], false);
    assert_eq!(call(&env, changed["path"].as_str().unwrap(), "val"), "21");

    // The same source in another directory, with its own header: its own result.
    let other = env.dir.path().join("other");
    write_header(&other.join("a.h"), "#define A 5\n");
    std::fs::copy(&k, other.join("k.c")).unwrap();
    let o = compile(&env, &[other.join("k.c").to_str().unwrap()]);
    assert_eq!(o["hit"], false);
    assert_eq!(call(&env, o["path"].as_str().unwrap(), "val"), "5");
}

#[test]
fn errors_name_the_users_files_and_a_missing_header_gets_a_hint() {
    let env = Env::new();
    let dir = env.dir.path().join("src");
    write_header(&dir.join("defs.h"), "int broken(void) { return }\n");
    let k = dir.join("kernel.c");
    std::fs::write(&k, "#include \"defs.h\"\nint f(void) { return 1; }\n").unwrap();
    let o = env.run(&["compile", k.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:", dir.join("defs.h").display())),
        "the header is named by its path: {err}"
    );
    assert!(
        err.contains(&format!("{}:", k.display())),
        "the source is named as given: {err}"
    );
    assert!(!err.contains("source.c:"), "{err}");

    let m = dir.join("missing.c");
    std::fs::write(&m, "#include \"nowhere.h\"\nint f(void) { return 0; }\n").unwrap();
    let o = env.run(&["compile", m.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let out = v["error"]["compiler_output"].as_str().unwrap();
    assert!(out.contains("hint: nowhere.h was not found"), "{out}");
    assert!(out.contains("--include nowhere.h"), "{out}");
}

#[test]
fn explain_names_what_changed_and_show_lists_the_headers() {
    let env = Env::new();
    let inc = env.dir.path().join("inc");
    let h = inc.join("h.h");
    write_header(&h, "#define VAL 1\n");
    let k = env.file("k.c", "#include \"h.h\"\nint val(void) { return VAL; }\n");
    let flag = format!("--flag=-I{}", inc.display());
    let first = compile(&env, &[k.to_str().unwrap(), &flag, "--explain"]);
    assert_eq!(first["explain"]["why"], "new-request");
    assert!(first["explain"]["closest"].is_null());

    let hit = compile(&env, &[k.to_str().unwrap(), &flag, "--explain"]);
    assert_eq!(hit["explain"]["why"], "hit");

    write_header(&h, "#define VAL 2\n");
    let o = env.run(&["compile", k.to_str().unwrap(), &flag, "--explain"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{} changed", h.display())),
        "--explain names the header: {err}"
    );
    let v = compile(
        &env,
        &[k.to_str().unwrap(), &flag, "-f", "-DEXTRA", "--explain"],
    );
    let e = &v["explain"];
    assert_eq!(e["why"], "new-request", "{v}");
    let diffs = e["closest"]["differences"].as_array().unwrap();
    assert!(
        diffs
            .iter()
            .any(|d| d["field"] == "flags" && d["now"] == "-DEXTRA"),
        "{e}"
    );

    // show: the entry's key material and headers, by a prefix of its key.
    let key = v["key"].as_str().unwrap();
    let text = stdout(&env.run(&["show", &key[..8]]));
    assert!(text.contains(h.to_str().unwrap()), "{text}");
    assert!(text.contains("-DEXTRA"), "{text}");
    let j = env.json(&["show", key, "--json"]);
    let headers = j["entries"][0]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|x| x["path"] == h.to_str().unwrap() && x["now"] == "same"),
        "{j}"
    );
    // The manifest, by the request key.
    let request = j["entries"][0]["meta"]["request_key"].as_str().unwrap();
    let m = env.json(&["show", request, "--json"]);
    assert_eq!(m["manifests"][0]["results"][0]["key"], key, "{m}");
    // XCACHE_LOG=debug says why too.
    write_header(&h, "#define VAL 3\n");
    let o = env
        .cmd(&["compile", k.to_str().unwrap(), &flag])
        .env("XCACHE_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("changed since result"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.run(&["show", "ffff"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_manifest_with_flipped_bytes_is_never_trusted() {
    let env = Env::new();
    let inc = env.dir.path().join("inc");
    write_header(&inc.join("h.h"), "#define VAL 4\n");
    let k = env.file("k.c", "#include \"h.h\"\nint val(void) { return VAL; }\n");
    let flag = format!("--flag=-I{}", inc.display());
    let first = compile(&env, &[k.to_str().unwrap(), &flag]);
    let manifests: Vec<PathBuf> = walk(&env.compiledir().join("manifests"));
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let mut bytes = std::fs::read(&manifests[0]).unwrap();
    let n = bytes.len() - 5;
    bytes[n] ^= 0x01;
    std::fs::write(&manifests[0], &bytes).unwrap();

    let o = env.run(&["verify", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "corrupt-manifest"),
        "{v}"
    );
    let o = env.run(&["compile", k.to_str().unwrap(), &flag, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not trusted"),
        "a warning says so"
    );
    assert_eq!(
        v["key"], first["key"],
        "rebuilt: the same headers, the same result"
    );
    assert_eq!(call(&env, v["path"].as_str().unwrap(), "val"), "4");
    // Rewritten whole: the next request hits.
    let again = compile(&env, &[k.to_str().unwrap(), &flag]);
    assert_eq!(again["hit"], true);
    let v = env.json(&["verify", "--json"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn templates_and_plain_sources_are_tracked_and_cleanup_keeps_manifests_tidy() {
    let env = Env::new();
    let t = env.json(&[
        "compile",
        "-t",
        "elemwise",
        "-p",
        "dtype=float32",
        "-p",
        "arity=1",
        "-p",
        "expr=exp(a)",
        "--json",
    ]);
    let key = t["key"].as_str().unwrap();
    let j = env.json(&["show", key, "--json"]);
    let headers = j["entries"][0]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["path"].as_str().unwrap().ends_with("/math.h")),
        "a template's system headers are tracked: {j}"
    );
    stdout(&env.run(&["clear"]));
    assert!(walk(&env.compiledir().join("manifests")).is_empty());
    let v = env.json(&["verify", "--json"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A header edited while the compiler runs ("file too new"): the result is handed to
/// its caller, which is told which header kept it out of the manifest, and never
/// served again: the next request compiles from the header as it is now, and the one
/// after hits. The edit is made by a compiler wrapper right after the real compile,
/// so nothing waits for time to pass.
#[test]
fn a_header_edited_during_the_compile_is_never_served_from_the_cache() {
    let env = Env::new();
    let inc = env.dir.path().join("inc");
    let h = inc.join("h.h");
    write_header(&h, "#define VAL 1\n");
    let mark = env.dir.path().join("edit-next-compile");
    let wrapper = env.file(
        "cc-edit.sh",
        &format!(
            "#!/bin/sh\ncc \"$@\" || exit $?\ncase \" $* \" in *\" -MD \"*)\n  if [ -f '{m}' ]; then rm -f '{m}'; printf '#define VAL 2\\n' > '{h}'; fi ;;\nesac\n",
            m = mark.display(),
            h = h.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flags = format!("handout_grace=0s,cc={}", wrapper.display());
    let compile = |src: &Path| -> Value {
        let inc_flag = format!("--flag=-I{}", inc.display());
        let o = env
            .cmd(&["compile", src.to_str().unwrap(), &inc_flag, "--json"])
            .env("XCACHE_FLAGS", &flags)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    // The wrapper is probed and known before the edit is armed.
    compile(&env.file("warm.c", "int warm(void) { return 0; }\n"));
    let k = env.file("k.c", "#include \"h.h\"\nint val(void) { return VAL; }\n");

    std::fs::write(&mark, "").unwrap();
    let first = compile(&k);
    assert_eq!(first["hit"], false);
    assert!(!mark.exists(), "the wrapper edited the header");
    assert_eq!(first["unrecorded"], h.to_str().unwrap(), "{first}");
    // Built from what the compiler read.
    assert_eq!(call(&env, first["path"].as_str().unwrap(), "val"), "1");

    let mut second = compile(&k);
    assert_eq!(second["hit"], false, "never served: {second}");
    assert_eq!(call(&env, second["path"].as_str().unwrap(), "val"), "2");
    if !second["unrecorded"].is_null() {
        // This request arrived in the clock tick of the wrapper's edit: too new again.
        second = compile(&k);
        assert_eq!(second["hit"], false, "{second}");
    }
    assert_eq!(second["unrecorded"], Value::Null, "{second}");

    let third = compile(&k);
    assert_eq!(third["hit"], true, "{third}");
    assert_eq!(third["key"], second["key"]);
    assert_eq!(call(&env, third["path"].as_str().unwrap(), "val"), "2");
}
