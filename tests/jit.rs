//! The library end to end with a real C compiler, real dlopen and real files: hits and
//! misses, corruption, compile errors, trust checks, last use, threads.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use common::*;
use xcache::clock::ManualClock;
use xcache::{Error, Jit, Language, SourceRequest};

fn saxpy(tag: &str) -> SourceRequest {
    SourceRequest::new(Language::C, saxpy_source(tag)).named("saxpy.c")
}

#[test]
fn miss_then_hit_then_registry() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let c = jit.compile(&saxpy("a")).unwrap();
    assert!(!c.hit);
    assert!(c.path.starts_with(tc.base()));
    check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());

    // Same Jit: served by the registry, same loaded library.
    let again = jit.compile(&saxpy("a")).unwrap();
    assert!(again.hit);
    assert!(Arc::ptr_eq(c.library(), again.library()));

    // A fresh Jit (a new process's view): a disk hit, no compile.
    let jit2 = Jit::new(tc.config()).unwrap();
    let hit = jit2.compile(&saxpy("a")).unwrap();
    assert!(hit.hit);
    assert_eq!(hit.path, c.path);
    assert_eq!(hit.compile_ms, c.compile_ms, "a hit reports what it saved");
    check_saxpy(*unsafe { hit.symbol::<SaxpyFn>("saxpy") }.unwrap());
    assert_eq!(tc.entry_dirs().len(), 1);
}

#[test]
fn entry_is_complete_and_explains_itself() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let r = jit.build(&saxpy("meta").flag("-DFOO=1")).unwrap();
    let dir = r.path.parent().unwrap();
    for f in ["lib.so", "source.c", "entry.json", "last-use"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("entry.json")).unwrap()).unwrap();
    assert_eq!(meta["key"], r.key.hex());
    assert_eq!(meta["source_name"], "saxpy.c");
    let flags: Vec<String> = serde_json::from_value(meta["key_material"]["flags"].clone()).unwrap();
    let n = flags.len();
    assert_eq!(
        flags[n - 2..],
        ["-DFOO=1", "-lm"],
        "user flags come last, before the link libraries"
    );
    assert!(flags.contains(&"-shared".to_string()));
    assert!(
        meta["key_material"]["toolchain"]["version"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    let (request, material, _) = jit.key_for(&saxpy("meta").flag("-DFOO=1")).unwrap();
    let stored: xcache::store::key::KeyMaterial =
        serde_json::from_value(meta["key_material"].clone()).unwrap();
    assert_eq!(
        stored.key(),
        request,
        "stored key material re-derives the request key"
    );
    assert_eq!(stored, material);
    assert_eq!(meta["request_key"], request.hex());
    // The entry's own key is the request key and the headers the compiler read.
    let headers: Vec<(String, String)> = meta["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["blake3"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        headers.iter().any(|(p, _)| p.ends_with("/stdint.h")),
        "saxpy includes stdint.h: {headers:?}"
    );
    let digests: Vec<(&str, &str)> = headers
        .iter()
        .map(|(p, h)| (p.as_str(), h.as_str()))
        .collect();
    assert_eq!(xcache::store::key::result_key(&request, &digests), r.key);
    assert!(tc.base().join("CACHEDIR.TAG").is_file());
}

#[test]
fn flags_headers_and_native_cpu_change_the_key() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let base = jit.key_for(&saxpy("k")).unwrap();
    let o2 = jit.key_for(&saxpy("k").flag("-O2")).unwrap();
    let native = jit.key_for(&saxpy("k").flag("-march=native")).unwrap();
    assert_ne!(base.0, o2.0);
    assert_ne!(base.0, native.0);
    assert!(
        native.1.target.cpu.is_some(),
        "-march=native records the CPU"
    );
    assert!(base.1.target.cpu.is_none());

    let src = "#include \"defs.h\"\nint get(void) { return N; }\n";
    let with = |n: &str| {
        SourceRequest::new(Language::C, src).extra_input("defs.h", format!("#define N {n}\n"))
    };
    let k4 = jit.key_for(&with("4")).unwrap().0;
    let k5 = jit.key_for(&with("5")).unwrap().0;
    assert_ne!(k4, k5, "a header's content is in the key");
    let c = jit.compile(&with("5")).unwrap();
    let get = unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("get") }.unwrap();
    assert_eq!(unsafe { get() }, 5);
}

#[test]
fn cxx_sources_compile() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let src = "#include <vector>\n#include <numeric>\n\
               extern \"C\" long sum_to(long n) { std::vector<long> v(n); \
               std::iota(v.begin(), v.end(), 1); return std::accumulate(v.begin(), v.end(), 0L); }\n";
    let c = jit
        .compile(&SourceRequest::new(Language::Cxx, src))
        .unwrap();
    let f = unsafe { c.symbol::<unsafe extern "C" fn(i64) -> i64>("sum_to") }.unwrap();
    assert_eq!(unsafe { f(100) }, 5050);
}

#[test]
fn flipped_bytes_are_quarantined_and_rebuilt() {
    let tc = TestCache::new();
    let first = Jit::new(tc.config())
        .unwrap()
        .build(&saxpy("flip"))
        .unwrap();
    flip_bytes(&first.path);

    let jit = Jit::new(tc.config()).unwrap();
    let c = jit.compile(&saxpy("flip")).unwrap();
    assert!(!c.hit, "a corrupt entry is rebuilt");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("corrupt") && c.warnings[0].contains("hash"),
        "{}",
        c.warnings[0]
    );
    check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
    let q = subdirs(&tc.compiledir().join("quarantine"));
    assert_eq!(q.len(), 1, "the bad entry is kept aside for inspection");
    assert!(q[0].join("lib.so").is_file());
    // And the new entry verifies.
    let again = Jit::new(tc.config())
        .unwrap()
        .build(&saxpy("flip"))
        .unwrap();
    assert!(again.hit && again.warnings.is_empty());
}

#[test]
fn broken_metadata_and_missing_artifacts_are_rebuilt() {
    let tc = TestCache::new();
    type Breakage = fn(&std::path::Path);
    let breakages: [(&str, Breakage); 4] = [
        ("garbage", |d| {
            std::fs::write(d.join("entry.json"), b"{not json").unwrap()
        }),
        ("empty", |d| {
            std::fs::write(d.join("entry.json"), b"").unwrap()
        }),
        ("no-meta", |d| {
            std::fs::remove_file(d.join("entry.json")).unwrap()
        }),
        ("no-lib", |d| {
            std::fs::remove_file(d.join("lib.so")).unwrap()
        }),
    ];
    for (tag, breakage) in breakages {
        let first = Jit::new(tc.config()).unwrap().build(&saxpy(tag)).unwrap();
        breakage(first.path.parent().unwrap());
        let c = Jit::new(tc.config()).unwrap().compile(&saxpy(tag)).unwrap();
        assert!(!c.hit, "{tag}");
        assert_eq!(c.warnings.len(), 1, "{tag}: {:?}", c.warnings);
        check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
    }
}

#[test]
fn compile_errors_show_the_compiler_and_publish_nothing() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let src = "int f(void) { return undefined_thing; }\n";
    let err = jit
        .compile(&SourceRequest::new(Language::C, src))
        .unwrap_err();
    let Error::Compile(ce) = &err else {
        panic!("expected a compile error, got {err}")
    };
    assert!(ce.output.contains("undefined_thing"), "{}", ce.output);
    assert_eq!(ce.status, Some(1));
    assert!(ce.command.contains("-shared") && ce.command.contains("source.c"));
    assert_eq!(std::fs::read_to_string(&ce.kept_source).unwrap(), src);
    assert!(ce.kept_source.starts_with(tc.compiledir().join("tmp")));
    let shown = err.to_string();
    assert!(
        shown.contains("compilation failed") && shown.contains("error:"),
        "{shown}"
    );
    assert!(shown.contains(&ce.kept_source.display().to_string()));
    assert!(tc.entry_dirs().is_empty(), "nothing published");
    // The lock was released: the same process can try again (and fail the same way).
    assert!(jit.compile(&SourceRequest::new(Language::C, src)).is_err());
}

#[test]
fn missing_symbols_are_named() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let c = jit.compile(&saxpy("sym")).unwrap();
    let e = unsafe { c.symbol::<SaxpyFn>("saxpi") }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`saxpi` not found") && e.contains("extern"),
        "{e}"
    );
}

#[test]
fn a_missing_compiler_is_a_clear_error() {
    let tc = TestCache::new();
    let mut config = tc.config();
    config.set("cc", "/nonexistent/bin/cc").unwrap();
    let e = Jit::new(config)
        .unwrap()
        .compile(&saxpy("nocc"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/bin/cc") && e.contains("Fix"),
        "{e}"
    );
}

#[test]
fn base_dir_writable_by_others_is_refused() {
    let tc = TestCache::new();
    std::fs::create_dir_all(tc.base()).unwrap();
    std::fs::set_permissions(tc.base(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Jit::new(tc.config()).unwrap_err();
    assert!(matches!(e, Error::Untrusted { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&tc.base().display().to_string()), "{msg}");
    assert!(msg.contains("writable by group and others"), "{msg}");
    assert!(msg.contains("chmod go-w"), "{msg}");
    // Nothing was created inside.
    assert_eq!(std::fs::read_dir(tc.base()).unwrap().count(), 0);
}

#[test]
fn compiledir_writable_by_group_is_refused() {
    let tc = TestCache::new();
    Jit::new(tc.config()).unwrap();
    let cd = tc.compiledir();
    std::fs::set_permissions(&cd, std::fs::Permissions::from_mode(0o775)).unwrap();
    let msg = Jit::new(tc.config()).unwrap_err().to_string();
    assert!(
        msg.contains(&cd.display().to_string()) && msg.contains("its group"),
        "{msg}"
    );
}

#[test]
fn base_dir_owned_by_someone_else_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to chown a directory to another user");
        return;
    }
    let tc = TestCache::new();
    std::fs::create_dir_all(tc.base()).unwrap();
    std::os::unix::fs::chown(tc.base(), Some(65534), Some(65534)).unwrap();
    let msg = Jit::new(tc.config()).unwrap_err().to_string();
    assert!(msg.contains("owned by uid 65534"), "{msg}");
    assert!(msg.contains("XCACHE_DIR"), "{msg}");
}

#[test]
fn a_foreign_directory_is_not_tagged() {
    let tc = TestCache::new();
    std::fs::create_dir_all(tc.base()).unwrap();
    std::fs::write(tc.base().join("notes.txt"), "mine").unwrap();
    Jit::new(tc.config()).unwrap();
    assert!(
        !tc.base().join("CACHEDIR.TAG").exists(),
        "backup tools would skip the user's own files"
    );
}

#[test]
fn last_use_is_recorded_coarsely_through_the_clock() {
    let tc = TestCache::new();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let clock = Arc::new(ManualClock::new(t0));
    let open = || Jit::with_clock(tc.config(), clock.clone()).unwrap();
    let r = open().build(&saxpy("lu")).unwrap();
    let dir = r.path.parent().unwrap().to_path_buf();
    let root = xcache::fsx::Root::open(&dir).unwrap();
    let last_use = || xcache::store::entry::last_use(&root, "").unwrap();
    assert_eq!(last_use(), t0);
    assert_eq!(r.meta.created, 1_900_000_000);

    clock.advance(Duration::from_secs(1800));
    assert!(open().build(&saxpy("lu")).unwrap().hit);
    assert_eq!(last_use(), t0, "within the resolution: no write");

    clock.advance(Duration::from_secs(2 * 3600));
    assert!(open().build(&saxpy("lu")).unwrap().hit);
    assert_eq!(last_use(), t0 + Duration::from_secs(1800 + 7200));
    let cd_root = xcache::fsx::Root::open(&tc.compiledir()).unwrap();
    let cd_use = xcache::store::entry::last_use(&cd_root, "").unwrap();
    assert_eq!(cd_use, t0 + Duration::from_secs(1800 + 7200));
}

#[test]
fn threads_asking_for_one_key_cost_one_compile() {
    let tc = TestCache::new();
    // Independent Jits: no shared registry, so only the file locks keep it to one compile.
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let config = tc.config();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let jit = Jit::new(config).unwrap();
                barrier.wait();
                let c = jit.compile(&saxpy("threads")).unwrap();
                check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
                (c.hit, c.path)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|(hit, _)| !hit).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|(_, p)| *p == results[0].1));

    // And one shared Jit: the registry serialises per key.
    let jit = Arc::new(Jit::new(tc.config()).unwrap());
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let jit = jit.clone();
            std::thread::spawn(move || jit.compile(&saxpy("shared-jit")).unwrap().hit)
        })
        .collect();
    let misses = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|hit| !hit)
        .count();
    assert_eq!(misses, 1);
}

#[test]
fn runtime_tag_selects_another_compiledir() {
    let tc = TestCache::new();
    let plain = Jit::new(tc.config()).unwrap();
    let mut c = tc.config();
    c.set("runtime_tag", "cpython-3.11").unwrap();
    let tagged = Jit::new(c).unwrap();
    assert_ne!(plain.store().compiledir(), tagged.store().compiledir());
    let name = tagged
        .store()
        .compiledir()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(name.contains("-cpython-3.11-xc3"), "{name}");
    assert_ne!(
        plain.key_for(&saxpy("rt")).unwrap().0,
        tagged.key_for(&saxpy("rt")).unwrap().0
    );
}

#[test]
fn entries_writable_by_others_are_not_loaded() {
    let tc = TestCache::new();
    for (tag, loosen) in [("dir", true), ("lib", false)] {
        let first = Jit::new(tc.config()).unwrap().build(&saxpy(tag)).unwrap();
        let target = if loosen {
            first.path.parent().unwrap().to_path_buf()
        } else {
            first.path.clone()
        };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
        let c = Jit::new(tc.config()).unwrap().compile(&saxpy(tag)).unwrap();
        assert!(
            !c.hit,
            "{tag}: an entry others could have written must not be loaded"
        );
        assert_eq!(c.warnings.len(), 1, "{tag}: {:?}", c.warnings);
        assert!(c.warnings[0].contains("writable by"), "{}", c.warnings[0]);
        check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
    }
}

#[test]
fn relative_include_paths_are_refused_with_the_fix() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let e = jit
        .build(&saxpy("rel").flag("-Iinclude"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("relative path") && e.contains("--include"),
        "{e}"
    );
}

#[test]
fn directories_deleted_by_hand_are_made_again() {
    let tc = TestCache::new();
    Jit::new(tc.config())
        .unwrap()
        .build(&saxpy("gone"))
        .unwrap();
    for sub in ["entries", "toolchains", "locks", "tmp", "quarantine"] {
        std::fs::remove_dir_all(tc.compiledir().join(sub)).unwrap();
    }
    let c = Jit::new(tc.config())
        .unwrap()
        .compile(&saxpy("gone"))
        .unwrap();
    assert!(!c.hit);
    check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
}

#[test]
fn the_in_process_memo_never_confuses_requests() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let a = jit.compile(&saxpy("memo")).unwrap();
    let again = jit.compile(&saxpy("memo")).unwrap();
    assert!(again.hit && again.key == a.key);
    // Same source, other flags: another key, compiled, not served from memory.
    let b = jit.compile(&saxpy("memo").flag("-O1")).unwrap();
    assert!(!b.hit);
    assert_ne!(b.key, a.key);
    // Same flags, other source; and a header that differs only in content.
    let c = jit.compile(&saxpy("memo2")).unwrap();
    assert!(!c.hit && c.key != a.key);
    let with = |v: &str| {
        SourceRequest::new(Language::C, "#include \"k.h\"\nint k(void) { return K; }\n")
            .extra_input("k.h", format!("#define K {v}\n"))
    };
    let k1 = jit.compile(&with("1")).unwrap();
    let k2 = jit.compile(&with("2")).unwrap();
    assert_ne!(k1.key, k2.key);
    let f = unsafe { k2.symbol::<unsafe extern "C" fn() -> i32>("k") }.unwrap();
    assert_eq!(unsafe { f() }, 2);
}

/// A purge from another store (another process, as `xcache purge` is) removes the
/// compiledir under a live `Jit`: its next requests make it again and succeed.
#[test]
fn a_jit_outlives_a_purge_of_its_compiledir() {
    let tc = TestCache::new();
    let mut config = tc.config();
    config.set("handout_grace", "0s").unwrap();
    let jit = Jit::new(config.clone()).unwrap();
    let req = |n: i32| SourceRequest::new(Language::C, format!("int f(void) {{ return {n}; }}\n"));
    jit.build(&req(1)).unwrap();
    let other = Jit::new(config).unwrap();
    let r = other.store().purge_base(false, false).unwrap();
    assert_eq!(r.skipped, 0, "{r:?}");
    assert!(!tc.base().exists(), "the base dir itself went");
    let c = jit.compile(&req(2)).unwrap();
    assert_eq!(
        unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("f").unwrap()() },
        2
    );
    assert!(
        c.path.starts_with(tc.base()),
        "in the cache made again, not privately"
    );
    assert!(!jit.build(&req(1)).unwrap().hit);
}
