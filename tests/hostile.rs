//! Hostile and odd input that is not covered where it is parsed: environment values and
//! file names that are not UTF-8, a 10 MB source, malformed metadata files. Each gets a
//! clear error or works; nothing crashes and nothing is written outside the base dir.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use common::{saxpy_source, TestCache};
use xcache::{Jit, Language, SourceRequest};

/// Runs `xcache` (the library, through a tiny embedding: this test binary re-executed)
/// with an environment; returns (status, stderr).
fn embed(env: &[(&OsStr, &OsStr)], base: &std::path::Path) -> (bool, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "embed_worker", "--nocapture"])
        .env("XC_WORKER", "1")
        .env("XC_BASE", base);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn embed_worker() {
    if std::env::var_os("XC_WORKER").is_none() {
        return;
    }
    let mut config = match xcache::Config::load() {
        Ok(c) => c,
        Err(e) => {
            println!("CONFIG ERROR: {e}");
            return;
        }
    };
    if std::env::var_os("XCACHE_DIR").is_none() {
        config.set_base_dir(std::env::var_os("XC_BASE").unwrap());
    }
    let jit = Jit::new(config).unwrap();
    let c = jit
        .compile(&SourceRequest::new(Language::C, saxpy_source("env")))
        .unwrap();
    println!("OK {}", c.path.display());
}

#[test]
fn non_utf8_environment_values_do_not_stop_xcache() {
    let tc = TestCache::new();
    let junk = OsStr::from_bytes(b"\xff\xfe not utf-8");
    let (ok, out) = embed(
        &[
            (OsStr::new("SOME_OTHER_VAR"), junk),
            (OsStr::new("CFLAGS_UNRELATED"), junk),
        ],
        &tc.base(),
    );
    assert!(ok && out.contains("OK "), "{out}");
    // One of xcache's own variables that is not UTF-8 is a clear error, not a panic.
    let (ok, out) = embed(&[(OsStr::new("XCACHE_FLAGS"), junk)], &tc.base());
    assert!(
        ok && out.contains("CONFIG ERROR") && out.contains("XCACHE_FLAGS is not valid UTF-8"),
        "{out}"
    );
}

#[test]
fn non_utf8_file_names_and_base_dirs_work() {
    let tc = TestCache::new();
    let odd = tc.dir.path().join(OsStr::from_bytes(b"caf\xe9-cache"));
    let mut config = xcache::Config::defaults();
    config.set_base_dir(&odd);
    let jit = Jit::new(config).unwrap();
    let src = tc.dir.path().join(OsStr::from_bytes(b"k\xe9rnel.c"));
    std::fs::write(&src, saxpy_source("odd")).unwrap();
    let req = SourceRequest::from_file(&src).unwrap();
    let c = jit.compile(&req).unwrap();
    assert!(c.path.starts_with(&odd));
    let rows = jit.store().entries().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].source.starts_with('k') && rows[0].source.ends_with("rnel.c"),
        "{}",
        rows[0].source
    );
}

#[test]
fn a_ten_megabyte_source_compiles_or_fails_cleanly() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    // 10 MB of comment around a real function: the key hashes it all, the compiler
    // reads it all, the entry keeps it.
    let mut src = String::with_capacity(10 << 20);
    src.push_str("int big(void) { return 7; }\n");
    let line = format!("/* {} */\n", "x".repeat(1000));
    while src.len() < 10 << 20 {
        src.push_str(&line);
    }
    let c = jit
        .compile(&SourceRequest::new(Language::C, src.clone()))
        .unwrap();
    let f = unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("big") }.unwrap();
    assert_eq!(unsafe { f() }, 7);
    let kept = std::fs::metadata(c.path.parent().unwrap().join("source.c"))
        .unwrap()
        .len();
    assert_eq!(kept as usize, src.len());
}

#[test]
fn malformed_compiledir_metadata_is_reported_and_repaired() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    jit.build(&SourceRequest::new(Language::C, saxpy_source("cdjson")))
        .unwrap();
    let cd = tc.compiledir();
    for junk in ["", "{", "[1,2]", "{\"layout\": \"x\"}", "\u{0}\u{1}"] {
        std::fs::write(cd.join("compiledir.json"), junk).unwrap();
        // Opening and using the cache still works: the file is informational.
        let jit = Jit::new(tc.config()).unwrap();
        assert!(
            jit.build(&SourceRequest::new(Language::C, saxpy_source("cdjson")))
                .unwrap()
                .hit
        );
        let v = xcache::ops::verify::verify(jit.store(), false).unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.kind == xcache::ops::verify::ProblemKind::BadCompiledirMetadata),
            "{junk:?}: {v:?}"
        );
        let v = xcache::ops::verify::verify(jit.store(), true).unwrap();
        assert!(v.clean(), "{junk:?}: {v:?}");
        assert!(
            xcache::store::read_compiledir_meta(&xcache::fsx::Root::open(&cd).unwrap()).is_ok()
        );
    }
}

#[test]
fn nothing_is_written_outside_the_base_dir() {
    let tc = TestCache::new();
    let outside = tc.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let jit = Jit::new(tc.config()).unwrap();
    // Hostile names and parameters: all refused, nothing created anywhere.
    for name in ["../outside/x", "/tmp/x", "c/../../outside/x", "cuda/../x"] {
        assert!(
            jit.render(&xcache::TemplateRequest::new(name)).is_err(),
            "{name}"
        );
    }
    let r = xcache::TemplateRequest::new("elemwise")
        .param("dtype", "float32")
        .param("arity", 1)
        .param(
            "expr",
            "a); } int evil(void) { return system(\"touch ../outside/pwned\"); } /*",
        );
    assert!(jit.render(&r).is_err());
    let bad = SourceRequest::new(Language::C, "int x;").extra_input("../outside/evil.h", "x");
    assert!(jit.build(&bad).is_err());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}
