//! Names from data reach the terminal escaped, never raw: a source file named with
//! terminal escape sequences (a window-title OSC ending in BEL, a clear-screen CSI),
//! compiled, listed, shown, exported, imported, and failing to compile; and a bundle
//! crafted to carry such a name in an entry's metadata. Every human view prints no raw
//! control byte; `--json` keeps the exact name.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{read_real, write_entries, Env};
use serde_json::Value;

/// A name as someone would plant it: sets the terminal's title, then clears the screen.
const EVIL: &str = "k\x1b]0;pwned\x07\x1b[2J.c";

/// How the CLI shows it: each control character escaped.
const SHOWN: &str = "k\\x1b]0;pwned\\x07\\x1b[2J.c";

fn xc(env: &Env, base: &str, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    c.env("XCACHE_DIR", env.dir.path().join(base));
    c
}

/// Fails when `bytes` hold a byte a terminal acts on: C0 controls but line breaks and
/// tabs, DEL, and C1 controls (as UTF-8, 0xC2 0x80..0x9F).
fn assert_no_raw_controls(what: &str, bytes: &[u8]) {
    let c0 = bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f);
    let c1 = bytes
        .windows(2)
        .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]));
    assert!(
        !c0 && !c1,
        "{what} printed a raw control character: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

fn check(what: &str, o: &Output) {
    assert_no_raw_controls(&format!("{what} (stdout)"), &o.stdout);
    assert_no_raw_controls(&format!("{what} (stderr)"), &o.stderr);
}

#[test]
fn a_source_named_with_escape_sequences_is_shown_escaped_everywhere() {
    let env = Env::new();
    let src = env.file(EVIL, "int f(void) { return 1; }\n");
    let o = xc(&env, "a", &["compile", src.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    check("compile --json", &o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["source"], EVIL, "JSON keeps the exact name");
    let key = v["key"].as_str().unwrap().to_string();

    let bundle = env.dir.path().join("b.tar.zst");
    let b = bundle.to_str().unwrap();
    for args in [
        &["list"][..],
        &["list", "--wide"],
        &["list", "--all", "--sort", "size"],
        &["show", &key],
        &["show", &key[..8]],
        &["stats"],
        &["size"],
        &["verify"],
        &["basecompiledir", "list"],
        &["clear", "--dry-run"],
        &["prune", "--max-size", "1B", "--dry-run"],
        &["export", "--out", b],
        &["compile", src.to_str().unwrap(), "--explain"],
    ] {
        let o = xc(&env, "a", args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
        check(&args.join(" "), &o);
    }
    // Shown, escaped, where people look for it.
    let list = common::stdout(&xc(&env, "a", &["list", "--wide"]).output().unwrap());
    assert!(list.contains(SHOWN), "{list}");
    let show = common::stdout(&xc(&env, "a", &["show", &key]).output().unwrap());
    assert!(show.contains(SHOWN), "{show}");
    // JSON: exact.
    let listed: Value =
        serde_json::from_slice(&xc(&env, "a", &["list", "--json"]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(listed[0]["source"], EVIL, "{listed}");
    let shown: Value = serde_json::from_slice(
        &xc(&env, "a", &["show", &key, "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        shown.to_string().contains(r"\u001b]0;pwned\u0007"),
        "{shown}"
    );

    // Into another base dir: the import's report names it escaped too.
    let o = xc(&env, "b", &["import", b]).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    check("import", &o);
    let o = xc(&env, "b", &["list"]).output().unwrap();
    check("list after import", &o);
}

#[test]
fn errors_and_compiler_output_carrying_such_a_name_are_escaped() {
    let env = Env::new();
    // The compiler repeats the file name in its diagnostics.
    let bad = env.file("bad\x1b[31m\x07.c", "int f(void) { return }\n");
    let o = xc(&env, "a", &["compile", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    check("a failed compile", &o);
    assert!(
        common::stderr(&o).contains("bad\\x1b[31m\\x07.c"),
        "{}",
        common::stderr(&o)
    );
    let o = xc(&env, "a", &["compile", bad.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    check("a failed compile --json", &o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    // A path from the command line that does not exist, in an error.
    let missing = env.dir.path().join("gone\x1b]0;x\x07.c");
    let ok = env.file("ok.c", "int g(void) { return 2; }\n");
    for args in [
        vec!["compile", missing.to_str().unwrap()],
        vec![
            "compile",
            ok.to_str().unwrap(),
            "--include",
            missing.to_str().unwrap(),
        ],
        vec!["import", missing.to_str().unwrap()],
    ] {
        let o = xc(&env, "a", &args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        check(&args.join(" "), &o);
        assert!(common::stderr(&o).contains("gone\\x1b]0;x\\x07.c"));
    }
}

#[test]
fn a_name_carried_by_a_crafted_bundle_is_shown_escaped() {
    let env = Env::new();
    let src = env.file("plain.c", "int p(void) { return 3; }\n");
    common::stdout(
        &xc(&env, "a", &["compile", src.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let real = env.dir.path().join("real.tar.zst");
    common::stdout(
        &xc(&env, "a", &["export", "--out", real.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    // The source name is no part of any key: it can be changed without breaking one.
    let evil = "evil\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{202e}.c";
    let (index, mut entries) = read_real(&real);
    for e in &mut entries {
        e.meta["source_name"] = evil.into();
        e.index.source = evil.into();
    }
    let crafted = env.dir.path().join("crafted.tar.zst");
    write_entries(index, entries, &crafted);
    let c = crafted.to_str().unwrap();

    let o = xc(&env, "b", &["import", c]).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    check("import", &o);
    let v: Value =
        serde_json::from_slice(&xc(&env, "b", &["list", "--json"]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(v[0]["source"], evil, "imported as it was: {v}");
    let key = v[0]["key"].as_str().unwrap().to_string();
    for args in [
        &["list"][..],
        &["list", "--wide"],
        &["show", &key],
        &["stats"],
        &["verify"],
        &[
            "export",
            "--out",
            &env.dir.path().join("again.tar.zst").display().to_string(),
        ],
    ] {
        let o = xc(&env, "b", args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
        check(&args.join(" "), &o);
    }
    let list = common::stdout(&xc(&env, "b", &["list", "--wide"]).output().unwrap());
    assert!(list.contains("\\x9b31m\\u{202e}.c"), "{list}");
    // A refused import of it warns with the name escaped too.
    let mut c2 = xc(&env, "c", &["import", c]);
    c2.env("XCACHE_FLAGS", "handout_grace=0s,max_entry_size=1B");
    let o = c2.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    check("a refused import", &o);
    assert!(Path::new(&crafted).exists());
}
