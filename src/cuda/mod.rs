//! CUDA, as one subsystem: the driver (loaded at run time, no link-time CUDA
//! dependency), modules built by NVRTC through the cache and loaded from bytes, launch
//! plans decided in Rust, typed handles, and the device probe. `crate::compile` keeps
//! only the compilers (NVRTC in-process, nvcc as a process).
//!
//! # How a CUDA request flows
//!
//! 1. **Template → render.** A template request (`cuda/elemwise`, `cuda/reduce`,
//!    `cuda/gemm`: `templates/cuda`) is checked and rendered by
//!    [`crate::compile::template`]; the handles here ask for the kernels alone (no host
//!    launcher).
//! 2. **Key.** [`module`] derives the request key from the source, the NVRTC library's
//!    fingerprint, the options (the arch first), the arch as the target, extra inputs,
//!    the template and the runtime tag ([`crate::store::key`]).
//! 3. **NVRTC or nvcc.** On a miss, NVRTC compiles in-process ([`crate::compile::nvrtc`])
//!    to a cubin (or PTX for a virtual arch), under the request key's lock, and the
//!    store publishes it as any entry (tracked: the headers NVRTC read are in its
//!    manifest). With `cuda_compiler = nvcc`, the template with its own host launcher
//!    is compiled by nvcc into a shared object instead ([`crate::compile::nvcc`]) and
//!    called through its C ABI.
//! 4. **cubin/PTX → `cuModuleLoadData`.** A hit checks the entry (hash, trust) and reads
//!    the module's bytes through the checked descriptor; [`handles::Cuda::load`] loads
//!    them through the [`driver`], once per context.
//! 5. **Launch.** [`launch`] makes the template's launch decisions (kernel, grid, shared
//!    memory, workspace) in pure functions of the shapes and the device's properties
//!    (unit-tested without a GPU); the typed handles ([`handles`]) check their arguments
//!    and launch on the caller's stream.
//!
//! [`probe`] says what GPUs the machine has (for `xcache doctor` and the default arch).
//! The JIT runtime ([`crate::runtime`]) knows nothing of CUDA: this module adds its
//! methods to [`crate::Jit`] (`cuda`, `cuda_module`) and keeps its per-`Jit` state in
//! the runtime's extension slot, so that the two never import each other.

pub mod driver;
pub mod handles;
pub mod launch;
pub mod module;
pub mod probe;

pub use handles::*;
pub use module::{CudaModule, JitModules};
