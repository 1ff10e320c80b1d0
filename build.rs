//! Records the target triple the library is built for: it is the default target of
//! host compiles and part of every key.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo:rustc-env=XCACHE_HOST_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
    // The renderer's identity, for memos of rendered templates: this version and the
    // code that renders (a change to either renders every template again).
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::env::var("CARGO_PKG_VERSION")
        .unwrap_or_default()
        .hash(&mut h);
    for f in [
        "src/compile/template.rs",
        "src/compile/expr.rs",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={f}");
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    println!("cargo:rustc-env=XCACHE_RENDERER_ID={:016x}", h.finish());
}
