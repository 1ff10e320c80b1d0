//! Compiler flags through the Rust API, with a real C compiler: flags that run other
//! programs, write files elsewhere or take over xcache's outputs and dependency file are
//! refused as `Error::RefusedFlag` naming the flag, for plain sources, templates, nvcc
//! and NVRTC requests alike (before any compiler is looked for); nothing they would
//! have run or written exists; `allowed_flags` vouches; safe flags compile.

mod common;

use common::*;
use xcache::{Error, Jit, Language, SourceRequest, TemplateRequest};

const K: &str = "int k(void) { return 7; }\n";

/// A directory holding an `as` that records that it ran (what `-B DIR` would run).
fn trap(tc: &TestCache) -> std::path::PathBuf {
    let dir = tc.base().with_file_name("trap");
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

fn refused<T>(r: xcache::Result<T>) -> (String, String, String) {
    match r {
        Err(Error::RefusedFlag { flag, reason, fix }) => (flag, reason, fix),
        Err(e) => panic!("expected a refused flag, got {e}"),
        Ok(_) => panic!("expected a refused flag, got a success"),
    }
}

#[test]
fn refused_flags_are_typed_errors_naming_the_flag_and_nothing_runs() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let trap = trap(&tc);
    let t = trap.display();
    for (flags, named, why) in [
        (vec![format!("-B{t}")], format!("-B{t}"), "run programs"),
        (
            vec!["--prefix".into(), t.to_string()],
            format!("--prefix {t}"),
            "run programs",
        ),
        (
            vec![format!("-Wa,-a={t}/listing")],
            format!("-Wa,-a={t}/listing"),
            "writes files",
        ),
        (
            vec!["-save-temps".into()],
            "-save-temps".into(),
            "chooses the output",
        ),
        (
            vec!["-dumpdir".into(), format!("{t}/")],
            format!("-dumpdir {t}/"),
            "chooses the output",
        ),
        (vec!["-MMD".into()], "-MMD".into(), "tracks every header"),
        (
            vec!["-MF".into(), "x.d".into()],
            "-MF x.d".into(),
            "tracks every header",
        ),
        (
            vec!["-o".into(), "/tmp/x.so".into()],
            "-o /tmp/x.so".into(),
            "chooses the output",
        ),
    ] {
        let mut req = SourceRequest::new(Language::C, K);
        req.flags = flags.clone();
        let (flag, reason, fix) = refused(jit.compile(&req));
        assert_eq!(flag, named, "{flags:?}");
        assert!(reason.contains(why), "{flags:?}: {reason}");
        assert!(!fix.is_empty());
        let e = jit.build(&req).unwrap_err();
        assert_eq!(e.kind(), "invalid-request");
        assert!(e.to_string().contains(&format!("{named:?}")), "{e}");
    }
    // A template's flags, and the key alone (`explain`, `key_for`), are checked too.
    let tr = TemplateRequest::new("elemwise")
        .param("dtype", "float32")
        .param("arity", 1)
        .param("expr", "a")
        .flag(format!("-B{t}"));
    assert_eq!(refused(jit.compile_template(&tr)).0, format!("-B{t}"));
    assert!(matches!(
        jit.explain(&SourceRequest::new(Language::C, K).flag("-save-temps")),
        Err(Error::RefusedFlag { .. })
    ));
    assert!(!trap.join("ran").exists() && !trap.join("listing").exists());
    assert!(tc.entry_dirs().is_empty(), "nothing was compiled");
}

#[test]
fn cuda_flags_are_checked_for_nvcc_and_nvrtc_before_any_toolkit_is_looked_for() {
    let tc = TestCache::new();
    let mut config = tc.config();
    // No toolkit is needed: the flags are refused first.
    config.set("nvcc", "/nonexistent/nvcc").unwrap();
    config.set("nvrtc", "/nonexistent/libnvrtc.so").unwrap();
    let jit = Jit::new(config).unwrap();
    let cu = || SourceRequest::new(Language::Cuda, "__global__ void k() {}\n");
    let (flag, _, fix) = refused(jit.key_for(&cu().flag("-ccbin").flag("/usr/bin/gcc")));
    assert_eq!(flag, "-ccbin /usr/bin/gcc");
    assert!(fix.contains("`cxx` setting"), "{fix}");
    assert_eq!(
        refused(jit.key_for(&cu().flag("--keep-dir=/tmp/k"))).0,
        "--keep-dir=/tmp/k"
    );
    assert_eq!(
        refused(jit.key_for(&cu().flag("-Xcompiler").flag("-MMD"))).0,
        "-Xcompiler -MMD"
    );
    assert_eq!(
        refused(jit.nvrtc_key_for(&cu().flag("--pch-dir=/tmp"))).0,
        "--pch-dir=/tmp"
    );
    assert_eq!(
        refused(jit.nvrtc_key_for(&cu().flag("--fdevice-time-trace=/tmp/t.json"))).0,
        "--fdevice-time-trace=/tmp/t.json"
    );
    // Safe ones get as far as looking for the toolkit.
    assert!(matches!(
        jit.key_for(
            &cu()
                .flag("-lineinfo")
                .flag("--use_fast_math")
                .flag("-Xptxas")
                .flag("-v")
        ),
        Err(Error::NoCompiler { .. })
    ));
}

#[test]
fn safe_flags_compile_and_allowed_flags_vouches() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let req = SourceRequest::new(Language::C, "int k(void) { return N; }\n")
        .flag("-O2")
        .flag("-DN=3")
        .flag("-ffast-math")
        .flag("-march=native")
        .flag("-Wall")
        .flag("-std=c11")
        .flag("-Wl,-O1");
    let lib = jit.compile(&req).unwrap();
    let k = unsafe { lib.symbol::<unsafe extern "C" fn() -> i32>("k") }.unwrap();
    assert_eq!(unsafe { k() }, 3);

    let listing = tc.base().with_file_name("listing.txt");
    let flag = format!("-Wa,-a={}", listing.display());
    let req = SourceRequest::new(Language::C, K).flag(flag.clone());
    assert_eq!(refused(jit.compile(&req)).0, flag);
    let mut config = tc.config();
    config.set("allowed_flags", &flag).unwrap();
    let vouched = Jit::new(config).unwrap();
    vouched.compile(&req).unwrap();
    assert!(listing.exists(), "the flag vouched for did what it says");
    // Nothing vouches over what xcache owns.
    let mut config = tc.config();
    config.set("allowed_flags", "-MMD -save-temps").unwrap();
    let jit = Jit::new(config).unwrap();
    for f in ["-MMD", "-save-temps"] {
        assert_eq!(
            refused(jit.compile(&SourceRequest::new(Language::C, K).flag(f))).0,
            f
        );
    }
}
