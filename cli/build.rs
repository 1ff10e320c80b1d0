//! Links the `xcache` binary as a position-dependent executable (`-no-pie`), unless
//! `XCACHE_LINK_PIE` is set at build time (for distributions whose policy requires PIE).
//!
//! A fresh-process cache hit is mostly process start: a PIE binary of this size carries
//! some 9,000 relative relocations that the dynamic loader applies at every start,
//! touching (and copying) every page of relocated data. Linked at a fixed address it has
//! under 200, and a hit runs 14 % fewer instructions with 30 fewer page faults
//! (docs/BENCHMARKS.md). The cost is ASLR of the main executable's own image (libraries,
//! heap and stack are still randomised); xcache is not setuid and loads the code it
//! compiles by design. Only the binary is affected: the library and the Python
//! extension stay position-independent.

fn main() {
    println!("cargo:rerun-if-env-changed=XCACHE_LINK_PIE");
    if std::env::var_os("XCACHE_LINK_PIE").is_none() {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
