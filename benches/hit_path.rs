//! In-process figures of the hit path, each next to its floor, measured in the same run:
//!
//! - `key+registry` — a request whose library this process already loaded: key
//!   derivation for a 4 KiB source plus the registry lookup (budget ≤ 2 µs), next to
//!   blake3 of the same 4 KiB (the least any content key can cost);
//! - `hit+load` — lock, entry read, hash check, dlopen and dlsym of a cached artifact
//!   (budget ≤ 1.2× the floor), next to a bare dlopen + dlsym + dlclose of the same file.
//!
//! `cargo bench --bench hit_path`; `benches/run_all.sh` writes the medians into
//! docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use xcache::runtime::LoadedLibrary;
use xcache::{Config, Jit, Language, SourceRequest};

/// A 4 KiB kernel source, as a code generator would emit it.
fn source_4k() -> String {
    let mut s =
        String::from("#include <stdint.h>\nint kernel(int64_t n, const float *x, float *y) {\n");
    let mut i = 0;
    while s.len() < 4000 {
        s.push_str(&format!(
            "    /* stage {i} */ for (int64_t i = 0; i < n; i++) y[i] += {i}.0f * x[i];\n"
        ));
        i += 1;
    }
    s.push_str("    return 0;\n}\n");
    s.truncate(4096.min(s.len()));
    s
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.set_base_dir(dir.path().join("cache"));
    let jit = Jit::new(config.clone()).unwrap();
    let src = source_4k();
    let req = SourceRequest::new(Language::C, src.clone()).named("k.c");
    let compiled = jit.compile(&req).unwrap();
    let path = compiled.path.clone();

    let mut g = c.benchmark_group("hit_path");
    g.bench_function("blake3 of 4 KiB (floor)", |b| {
        b.iter(|| blake3::hash(black_box(src.as_bytes())))
    });
    g.bench_function("key+registry (loaded in this process)", |b| {
        b.iter(|| black_box(jit.compile(black_box(&req)).unwrap()))
    });

    // The loads below must really load: nothing else may hold the library.
    let store = jit.store().clone();
    let (key, _, _) = jit.key_for(&req).unwrap();
    drop(compiled);
    drop(jit);

    g.bench_function("dlopen+dlsym+dlclose (floor)", |b| {
        b.iter(|| {
            // The same flags xcache loads with: RTLD_NOW | RTLD_LOCAL.
            use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
            let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }.unwrap();
            let f = unsafe { lib.get::<unsafe extern "C" fn()>(b"kernel\0") }.unwrap();
            black_box(*f);
            drop(lib);
        })
    });
    g.bench_function(
        "hit+load: manifest, headers, lock, entry.json, blake3, dlopen, dlsym",
        |b| {
            b.iter(|| {
                let f = store
                    .get_or_build_tracked(&key, &Default::default(), &mut |_| {
                        unreachable!("cached")
                    })
                    .unwrap();
                let lib =
                    std::sync::Arc::new(LoadedLibrary::open(key, &f.artifact_path()).unwrap());
                let sym =
                    unsafe { xcache::runtime::symbol::<unsafe extern "C" fn()>(&lib, "kernel") }
                        .unwrap();
                black_box(*sym);
                drop(f);
            })
        },
    );
    g.finish();
}

criterion_group!(hit_path, benches);

/// The parts of the hit path, to see where its time goes.
fn parts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.set_base_dir(dir.path().join("cache"));
    let jit = Jit::new(config).unwrap();
    let req = SourceRequest::new(Language::C, source_4k());
    let (request, _, _) = jit.key_for(&req).unwrap();
    let key = jit.build(&req).unwrap().key;
    let store = jit.store().clone();
    let entry = xcache::fsx::Root::open(&store.entry_dir(&key)).unwrap();
    let lock = xcache::store::layout::lock(&key);
    let mut g = c.benchmark_group("hit_parts");
    g.bench_function("get_or_build_tracked (hit, no load)", |b| {
        b.iter(|| {
            black_box(
                store
                    .get_or_build_tracked(&request, &Default::default(), &mut |_| unreachable!())
                    .unwrap(),
            )
        })
    });
    g.bench_function("get_or_build (the entry's own key: no manifest)", |b| {
        b.iter(|| black_box(store.get_or_build(&key, &mut |_| unreachable!()).unwrap()))
    });
    g.bench_function("lock_shared + unlock", |b| {
        b.iter(|| black_box(xcache::store::lock::lock_shared(&store.root(), &lock).unwrap()))
    });
    g.bench_function("read_meta (entry.json)", |b| {
        b.iter(|| black_box(xcache::store::entry::read_meta(&entry, &key).is_ok()))
    });
    g.bench_function("verify (meta + blake3 of lib.so)", |b| {
        b.iter(|| black_box(xcache::store::entry::verify(&entry, &key, true).is_ok()))
    });
    g.bench_function("verify (meta + verified record, no hash)", |b| {
        b.iter(|| black_box(xcache::store::entry::verify(&entry, &key, false).is_ok()))
    });
    g.finish();
}

criterion_group!(hit_parts, parts);
criterion_main!(hit_path, hit_parts);
