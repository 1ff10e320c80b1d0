//! The C ABI from C: `examples/xcache_capi.c`, `capi/tests/c/threads.c` and
//! `capi/tests/c/flags.c` are compiled with `cc` against `include/xcache.h`, linked
//! with the built `libxcache.so`, and run in a temporary cache.
//!
//! `cargo test` does not build a cdylib for its tests, so these are ignored by a plain
//! `cargo test`; `scripts/test.sh` builds the library (`cargo build -p xcache-capi`)
//! and then runs them with `--ignored`. `XCACHE_CAPI_LIB_DIR` names another directory
//! holding `libxcache.so` (default: this test's own target directory).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding libxcache.so: target/<profile>/, two levels above this
/// test's executable (target/<profile>/deps/c_abi-…).
fn lib_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XCACHE_CAPI_LIB_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn build_c(src: &Path, out: &Path, extra: &[&str]) {
    let lib = lib_dir();
    assert!(
        lib.join("libxcache.so").exists(),
        "{} has no libxcache.so. Fix: cargo build -p xcache-capi first (scripts/test.sh does)",
        lib.display()
    );
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-D_DEFAULT_SOURCE"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(&lib)
        .arg("-lxcache")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(extra)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc failed on {}", src.display());
}

fn run(exe: &Path, cache: &Path, args: &[&Path]) -> String {
    let out = Command::new(exe)
        .args(args)
        .env("XCACHE_DIR", cache)
        .env_remove("XCACHE_FLAGS")
        .env_remove("XCACHE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed: {stdout}{}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn the_example_compiles_once_then_hits() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("xcache_capi");
    build_c(&repo().join("examples/xcache_capi.c"), &exe, &[]);
    let cache = tmp.path().join("cache");
    let inc = repo().join("examples/include");
    let env_cache = Path::new("");
    let first = run(&exe, &cache, &[env_cache, &inc]);
    assert!(first.contains("miss: compiled"), "{first}");
    assert!(first.contains("axpy(3, 4, 1) = 25"), "{first}");
    assert!(
        first.contains("status 4 (XCACHE_ERR_COMPILE is 4)"),
        "{first}"
    );
    // A second process: the cache answers.
    let second = run(&exe, &cache, &[env_cache, &inc]);
    assert!(second.contains("hit: no compiler ran"), "{second}");
    // The base dir as an argument instead of XCACHE_DIR.
    let other = tmp.path().join("other");
    let third = run(&exe, &tmp.path().join("unused"), &[&other, &inc]);
    assert!(third.contains("miss: compiled"), "{third}");
    assert!(third.contains(&other.display().to_string()), "{third}");
    // The header is in the result's identity: another include dir holding another
    // header is another result.
    let inc2 = tmp.path().join("inc2");
    std::fs::create_dir(&inc2).unwrap();
    std::fs::write(inc2.join("xcache_example.h"), "#define SCALE 3.0\n").unwrap();
    let fourth = run(&exe, &cache, &[env_cache, &inc2]);
    assert!(fourth.contains("miss: compiled"), "{fourth}");
    assert!(fourth.contains("axpy(3, 4, 1) = 37"), "{fourth}");
}

#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn threads_share_one_compile_and_errors_are_per_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("threads");
    build_c(&repo().join("capi/tests/c/threads.c"), &exe, &["-pthread"]);
    let cache = tmp.path().join("cache");
    let out = run(&exe, &cache, &[&cache]);
    assert_eq!(out.trim(), "ok");
}

/// A peer on loopback that drips one byte every 50 ms on every connection: the remote
/// tier's deadline must bound each request made through the C ABI too.
#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn a_dripping_remote_costs_each_request_at_most_its_deadline() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req);
                let _ = s.write_all(b"*2\r\n$1000000\r\n");
                // The peer's pace (it is the fake server), not the test waiting.
                while s.write_all(b"x").is_ok() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("xcache_capi");
    build_c(&repo().join("examples/xcache_capi.c"), &exe, &[]);
    let start = std::time::Instant::now();
    let out = Command::new(&exe)
        .arg(tmp.path().join("cache"))
        .arg(repo().join("examples/include"))
        .env(
            "XCACHE_FLAGS",
            format!("remote=redis://127.0.0.1:{port}/0,remote_timeout=1s"),
        )
        .env_remove("XCACHE_CONFIG")
        .output()
        .unwrap();
    let spent = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("axpy(3, 4, 1) = 25"), "{stdout}");
    // Two requests (the example's compile and its failing one), one second each at most,
    // plus the compiles themselves: before, the dripping server held each one forever.
    assert!(spent < std::time::Duration::from_secs(5), "{spent:?}");
}

#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn refused_flags_return_an_error_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("flags");
    build_c(&repo().join("capi/tests/c/flags.c"), &exe, &[]);
    // An `as` that would run if `--prefix` got through.
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let fake_as = scratch.join("as");
    std::fs::write(
        &fake_as,
        format!("#!/bin/sh\ntouch {}/ran\nexit 1\n", scratch.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_as,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let out = run(&exe, &cache, &[&cache, &scratch]);
    assert_eq!(out.trim(), "ok");
    assert!(!scratch.join("ran").exists());
}

/// A lock held forever by another process: a C embedder's request ends at
/// `lock_timeout` with an error naming the lock's holder, instead of waiting forever.
#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn a_lock_held_forever_ends_at_lock_timeout_naming_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("xcache_capi");
    build_c(&repo().join("examples/xcache_capi.c"), &exe, &[]);
    let cache = tmp.path().join("cache");
    let inc = repo().join("examples/include");
    run(&exe, &cache, &[Path::new(""), &inc]);
    // Hold the lock of every entry, as a stuck process would.
    let mut held = Vec::new();
    for cd in std::fs::read_dir(&cache).unwrap().flatten() {
        let entries = cd.path().join("entries");
        for fan in std::fs::read_dir(&entries).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(fan.path()).unwrap().flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                let lock = cd
                    .path()
                    .join("locks")
                    .join(&key[..2])
                    .join(format!("{key}.lock"));
                let f = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open(&lock)
                    .unwrap();
                f.lock().unwrap();
                held.push(f);
            }
        }
    }
    assert!(!held.is_empty());
    let start = std::time::Instant::now();
    let out = Command::new(&exe)
        .arg("")
        .arg(&inc)
        .env("XCACHE_DIR", &cache)
        .env("XCACHE_FLAGS", "lock_timeout=1s")
        .env_remove("XCACHE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("gave up waiting"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn groups_are_published_whole_and_found_through_the_c_abi() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("groups");
    build_c(&repo().join("capi/tests/c/groups.c"), &exe, &[]);
    let cache = tmp.path().join("cache");
    let out = run(&exe, &cache, &[&cache]);
    assert_eq!(out.trim(), "ok");
}

/// `capi/tests/c/cuda.c` with the cache's `cuda_arch` set: NVRTC builds the caller's
/// kernel (a cubin for that arch); a second process finds it by the same key. With a
/// GPU (and `XCACHE_TEST_GPU=1`, as scripts/test.sh sets where one is) it also launches
/// on a stream of its own and checks against a double-precision reference.
#[test]
#[ignore = "needs libxcache.so and libnvrtc: scripts/test.sh runs it where xcache doctor finds NVRTC"]
fn a_cuda_module_compiles_through_nvrtc_and_launches_where_a_gpu_is() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("cuda");
    build_c(&repo().join("capi/tests/c/cuda.c"), &exe, &["-ldl", "-lm"]);
    let cache = tmp.path().join("cache");
    // The kernel's header, settled (older than the compile), so the first compile
    // records it and the second process hits.
    let inc = tmp.path().join("inc");
    std::fs::create_dir(&inc).unwrap();
    let header = std::fs::File::create(inc.join("params.cuh")).unwrap();
    header
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(header);
    let gpu = std::env::var_os("XCACHE_TEST_GPU").is_some_and(|v| v == "1");
    let arch = std::env::var("XCACHE_TEST_CUDA_ARCH").unwrap_or_else(|_| "sm_90".into());
    let run_cuda = |extra: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.arg(&cache)
            .arg(&arch)
            .arg(&inc)
            .args(extra)
            .env("XCACHE_DIR", &cache)
            .env("XCACHE_FLAGS", format!("cuda_arch={arch}"))
            .env_remove("XCACHE_CONFIG");
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cuda failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run_cuda(&[]);
    let second = run_cuda(if gpu { &["gpu"] } else { &[] });
    let key = first
        .strip_prefix("ok ")
        .and_then(|r| r.strip_suffix(" miss\n"))
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(
        second,
        format!("ok {key} hit\n"),
        "the same key, a hit, in a second process"
    );
    let cubins: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cubin"))
        .collect();
    assert!(!cubins.is_empty(), "no cubin under {}", cache.display());
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

#[path = "../../cli/tests/common/docblocks.rs"]
mod docblocks;

/// Every C block of README.md and docs/*.md marked `as: program` is a whole program:
/// compiled against include/xcache.h, linked with libxcache.so and run in a fresh cache.
/// (The C templates of docs/TEMPLATES.md are compiled by cli/tests/docs.rs.)
#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn the_docs_c_programs_compile_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ran = Vec::new();
    for b in docblocks::all_blocks() {
        if b.lang != "c" || b.directives.kind.as_deref() != Some("program") {
            continue;
        }
        let name = b.place().replace(['/', ':', '.'], "_");
        let src = tmp.path().join(format!("{name}.c"));
        std::fs::write(&src, &b.body).unwrap();
        let exe = tmp.path().join(&name);
        build_c(&src, &exe, &[]);
        let cache = tmp.path().join(format!("{name}-cache"));
        let first = run(&exe, &cache, &[]);
        let second = run(&exe, &cache, &[]);
        assert_eq!(first, second.replace("hit", "compiled"), "{}", b.place());
        ran.push(b.place());
    }
    assert!(ran.len() >= 2, "README.md's and docs/PYTHON.md's: {ran:?}");
    // What ran, for scripts/test.sh's summary.
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doc-examples-c.txt");
    let lines: Vec<String> = ran.iter().map(|p| format!("ran: {p} (c)")).collect();
    std::fs::write(report, lines.join("\n") + "\n").unwrap();
}

/// The build line at the top of examples/xcache_capi.c, run from the repository's root
/// as written (with the directory of the libxcache.so under test for target/release),
/// builds the program under target/, never into the repository's root.
#[test]
#[ignore = "needs libxcache.so built first: scripts/test.sh runs it after `cargo build -p xcache-capi`"]
fn the_examples_build_line_builds_into_target() {
    let text = std::fs::read_to_string(repo().join("examples/xcache_capi.c")).unwrap();
    let header = &text[..text.find("*/").unwrap()];
    // The `cc` line and its continuation.
    let mut line = String::new();
    let mut lines = header
        .lines()
        .map(|l| l.trim_start_matches([' ', '*']).trim());
    while let Some(l) = lines.next() {
        if l.starts_with("cc ") {
            line.push_str(l);
            while line.ends_with('\\') {
                line.pop();
                line.push(' ');
                line.push_str(lines.next().unwrap());
            }
            break;
        }
    }
    assert!(line.contains("-o target/"), "{line}");
    let lib = lib_dir();
    let line = line
        .replace("target/release", lib.to_str().unwrap())
        .replace("$PWD/", "");
    let out_name = format!("xcache_capi_doctest_{}", std::process::id());
    let line = line.replace("-o target/xcache_capi", &format!("-o target/{out_name}"));
    let status = Command::new("sh")
        .args(["-c", &line])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success(), "{line}");
    let exe = repo().join("target").join(&out_name);
    assert!(exe.is_file(), "{line}");
    assert!(!repo().join(&out_name).exists());
    std::fs::remove_file(exe).unwrap();
}
