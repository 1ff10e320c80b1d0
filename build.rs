//! Records the target triple the library is built for: it is the default target of
//! host compiles and part of every key.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo:rustc-env=XCACHE_HOST_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
