//! # xcache: a compile service, an on-disk compilation cache and a JIT runtime
//!
//! Programs that generate C at run time hand xcache an op template with parameters, or
//! plain source; xcache checks and renders the template, derives a content key, compiles the source once into a
//! shared object in a platform-specific *compiledir* under the user's cache directory,
//! loads it, and hands back typed function pointers. The next process, or the next CI
//! job, skips the compiler.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # std::env::set_var("XCACHE_DIR", dir.path());
//! use xcache::{Jit, Language, SourceRequest};
//!
//! let jit = Jit::from_env()?; // XCACHE_DIR, XCACHE_FLAGS, ~/.config/xcache/config.toml
//!
//! // An op template with typed parameters: one fused, vectorised loop.
//! let f = jit.elemwise::<f32>("a * exp(b) + c", 3)?;
//! let (a, b, c) = ([2.0f32, 1.0], [0.0f32, 0.0], [1.0f32, 0.5]);
//! let mut out = [0.0f32; 2];
//! f.call(&[&a, &b, &c], &mut out)?;
//! assert_eq!(out, [3.0, 1.5]);
//!
//! // Or plain source, and a typed symbol.
//! let req = SourceRequest::new(Language::C, "int add(int a, int b) { return a + b; }");
//! let lib = jit.compile(&req)?; // compiled once, ever; loaded once per process
//! // SAFETY: `add` has exactly this signature.
//! let add = unsafe { lib.symbol::<unsafe extern "C" fn(i32, i32) -> i32>("add")? };
//! assert_eq!(unsafe { add(2, 3) }, 5);
//! # Ok::<(), xcache::Error>(())
//! ```
//!
//! ## The model
//!
//! - **base dir**: `$XCACHE_DIR`, else the `base_dir` setting, else
//!   `$XDG_CACHE_HOME/xcache`, else `~/.cache/xcache` ([`config`]).
//! - **compiledir**: `<base>/compiledir_<platform string>/`; everything in one is usable
//!   on one platform: OS, kernel major.minor, arch, libc, runtime tag, layout version
//!   ([`platform`]).
//! - **key**: blake3 over a canonical encoding of the source, the compiler's identity,
//!   the flags, the target (the CPU too under `-march=native`), extra inputs and the
//!   runtime tag ([`store::key`]). The key material is kept in the entry.
//! - **entry**: a directory published whole by rename, holding the artifact, its source
//!   and `entry.json`; per-key locks, so distinct keys never wait for each other and N
//!   processes asking for one key cost one compile ([`store`], whose docs state the
//!   on-disk protocol).
//!
//! ## Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`fsx`], [`platform`], [`clock`], [`error`] | the bottom: file access that never follows a link below a root, platform strings and arch checks, the injectable clock, typed errors |
//! | [`config`] | settings, their defaults and sources |
//! | [`store`] | the on-disk protocol and everything it names: [`store::layout`] (every name), [`store::key`], [`store::lock`], [`store::entry`], [`store::trust`], cleanup in [`store::gc`] (pure policy in [`store::gc::policy`]), [`store::scan`], [`store::stats`], [`store::verify`], [`store::private`] |
//! | [`compile`] | requests, op templates, the expression grammar, which flags pass ([`compile::flags`]: a deny-list for the user's, an allow-list for data's), the host C/C++ compiler, nvcc and NVRTC ([`compile::nvrtc`]), one [`compile::toolchain`] resolver |
//! | [`cuda`] | CUDA as one subsystem: the driver API loaded at run time ([`cuda::driver`]), device code compiled by NVRTC through the cache ([`cuda::module`]), the templates' launch decisions as pure plans ([`cuda::launch`]), typed GPU handles ([`cuda::handles`]), the device probe ([`cuda::probe`]); its module doc says how a CUDA request flows |
//! | [`kernels`] | typed CPU handles for the shipped templates: `elemwise`, `reduce`, `gemm` |
//! | [`remote`] | remote tiers (Redis, S3-compatible stores, and the two in a chain), within one deadline per request and a circuit breaker per tier; bundles for CI caches |
//! | [`runtime`] | [`Jit`]: cache + compiler + loaded-library registry, typed symbols |
//! | [`embed`] | handles for the Python package and the C ABI: a loaded library whose file stays while the handle lives ([`store::pin`]) |
//! | [`ops`] | what the `xcache` command's verbs do, thin over the store, returning data |
//!
//! Dependencies point down the table: nothing below [`store`] knows of it, and the
//! store knows nothing of [`compile`], [`runtime`] or [`ops`].

#![warn(missing_docs)]

pub mod clock;
pub mod compile;
pub mod config;
pub mod cuda;
pub mod embed;
pub mod error;
pub mod fsx;
#[doc(hidden)]
pub mod fuzzing;
pub mod kernels;
pub mod ops;
pub mod platform;
pub mod remote;
pub mod runtime;

pub mod store;

pub use compile::{Language, Request, SourceRequest, TemplateRequest};
pub use config::Config;
pub use error::{CompileError, Error, Result};
pub use runtime::{CacheOutcome, Compiled, Jit, Symbol};
pub use store::key::Key;
pub use store::Store;
