//! The C ABI of xcache (`libxcache.so`, header `include/xcache.h`): thin over the
//! Rust library, with no logic of its own beyond conversion and error mapping.
//!
//! - Opaque handles: [`xcache_cache`] (a [`Jit`]: one per base dir is plenty, shared by
//!   any number of threads), [`xcache_library`] (a loaded library whose file stays
//!   in place while the handle lives: [`xcache::embed`]) and [`xcache_group`] (files
//!   another compiler built, kept as an artifact group: [`xcache::store::group`]). A
//!   library or group handle stays valid after its cache is closed.
//! - Every function returns an [`xcache_status`]; after a failure,
//!   [`xcache_last_error`] gives the message on the calling thread.
//! - Thread-safe: handles may be used from any thread at once (the message of the
//!   last error is per thread).
//! - No panic crosses the boundary: one becomes `XCACHE_ERR_PANIC`.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use xcache::embed::HeldLibrary;
use xcache::{Config, Error, Jit, Language, SourceRequest};

/// What a call returned. Failures match the library's error kinds (`xcache compile
/// --json` prints the same kinds); `xcache_last_error()` says more.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum xcache_status {
    /// Success.
    XCACHE_OK = 0,
    /// A setting could not be read or has a bad value (XCACHE_FLAGS, the config file).
    XCACHE_ERR_CONFIG = 1,
    /// A file-system operation failed.
    XCACHE_ERR_IO = 2,
    /// The cache directory fails the trust checks (owner, mode).
    XCACHE_ERR_UNTRUSTED = 3,
    /// The compiler failed; the message has its command line and output.
    XCACHE_ERR_COMPILE = 4,
    /// No compiler could be run.
    XCACHE_ERR_NO_COMPILER = 5,
    /// dlopen failed.
    XCACHE_ERR_LOAD = 6,
    /// The symbol is not exported by the library.
    XCACHE_ERR_MISSING_SYMBOL = 7,
    /// The CUDA runtime reported an error.
    XCACHE_ERR_CUDA = 8,
    /// A template is missing or was given bad parameters.
    XCACHE_ERR_TEMPLATE = 9,
    /// The request is malformed (a refused flag, a relative include dir...).
    XCACHE_ERR_INVALID_REQUEST = 10,
    /// A lock wait reached its limit.
    XCACHE_ERR_LOCK_TIMEOUT = 11,
    /// A NULL handle or out-pointer, a string that is not UTF-8, an unknown language.
    XCACHE_ERR_INVALID_ARGUMENT = 12,
    /// A bug in xcache: a Rust panic, caught at the boundary.
    XCACHE_ERR_PANIC = 13,
}

/// A cache and compile service (opaque).
pub struct xcache_cache {
    jit: Arc<Jit>,
}

/// A compiled, loaded library (opaque). Its file stays in place while the handle lives.
pub struct xcache_library {
    held: HeldLibrary,
    path: CString,
    key: CString,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: String) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> xcache_status {
    use xcache_status::*;
    match e.kind() {
        "config" => XCACHE_ERR_CONFIG,
        "io" => XCACHE_ERR_IO,
        "untrusted" => XCACHE_ERR_UNTRUSTED,
        "compile" => XCACHE_ERR_COMPILE,
        "no-compiler" => XCACHE_ERR_NO_COMPILER,
        "load" => XCACHE_ERR_LOAD,
        "missing-symbol" => XCACHE_ERR_MISSING_SYMBOL,
        "cuda" => XCACHE_ERR_CUDA,
        "template" => XCACHE_ERR_TEMPLATE,
        "lock-timeout" => XCACHE_ERR_LOCK_TIMEOUT,
        _ => XCACHE_ERR_INVALID_REQUEST,
    }
}

/// A failure of the C caller's making.
struct Invalid(String);

enum Failure {
    Lib(Error),
    Invalid(Invalid),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Lib(e)
    }
}

impl From<Invalid> for Failure {
    fn from(e: Invalid) -> Failure {
        Failure::Invalid(e)
    }
}

/// Runs `f`, maps its failure (or panic) to a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> xcache_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => xcache_status::XCACHE_OK,
        Ok(Err(Failure::Lib(e))) => {
            set_error(e.to_string());
            status_of(&e)
        }
        Ok(Err(Failure::Invalid(Invalid(m)))) => {
            set_error(m);
            xcache_status::XCACHE_ERR_INVALID_ARGUMENT
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            set_error(format!(
                "internal error in xcache (please report it): {what}"
            ));
            xcache_status::XCACHE_ERR_PANIC
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn string<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Invalid> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|_| Invalid(format!("{what} is not UTF-8")))
}

/// # Safety
/// `p` is NULL (with `n` 0) or points to `n` NUL-terminated strings.
unsafe fn strings(p: *const *const c_char, n: usize, what: &str) -> Result<Vec<String>, Invalid> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(Invalid(format!("{what} is NULL with a count of {n}")));
    }
    (0..n)
        .map(|i| match string(*p.add(i), what)? {
            Some(s) => Ok(s.to_string()),
            None => Err(Invalid(format!("{what}[{i}] is NULL"))),
        })
        .collect()
}

fn out_ptr<T>(p: *mut T, what: &str) -> Result<(), Invalid> {
    if p.is_null() {
        Err(Invalid(format!("the out-pointer {what} is NULL")))
    } else {
        Ok(())
    }
}

/// Opens the cache at `base_dir`, or, with NULL, where the environment says
/// (XCACHE_DIR, XCACHE_FLAGS, the config file: as the `xcache` command does; the
/// other settings come from the environment in both cases). On success `*out` is a
/// handle to close with `xcache_close`.
///
/// # Safety
/// `base_dir` is NULL or a NUL-terminated string; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn xcache_open(
    base_dir: *const c_char,
    out: *mut *mut xcache_cache,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        let mut config = Config::load()?;
        if let Some(dir) = string(base_dir, "base_dir")? {
            config.set_base_dir(dir);
        }
        let jit = Jit::new(config)?;
        *out = Box::into_raw(Box::new(xcache_cache { jit: Arc::new(jit) }));
        Ok(())
    })
}

/// Closes a cache. Library handles obtained from it stay valid. NULL is accepted.
///
/// # Safety
/// `cache` is NULL or a handle from `xcache_open`, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xcache_close(cache: *mut xcache_cache) -> xcache_status {
    guard(|| {
        if !cache.is_null() {
            drop(Box::from_raw(cache));
        }
        Ok(())
    })
}

/// Compiles `source` through the cache (once, ever, per key) and loads it.
///
/// - `language`: "c", "c++" or "cuda".
/// - `flags`: `n_flags` compiler flags, after xcache's own, in order (in the key).
///   A flag that runs other programs, writes files elsewhere, or takes over the output
///   or the dependency file (`-B`, `-fplugin=`, `-save-temps`, `-o`, `-MMD`, ...) is
///   refused with `XCACHE_ERR_INVALID_REQUEST`, and `xcache_last_error()` names it.
/// - `include_dirs`: `n_include_dirs` absolute directories searched for headers
///   (`-I`); every header the compiler reads from them is part of the result's
///   identity, so editing one makes the next request compile again.
///
/// Arrays may be NULL when their count is 0. On success `*out` is a library handle to
/// release with `xcache_library_release`.
///
/// # Safety
/// Strings are NUL-terminated; arrays hold their count of strings; `out` is valid.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xcache_compile(
    cache: *const xcache_cache,
    language: *const c_char,
    source: *const c_char,
    flags: *const *const c_char,
    n_flags: usize,
    include_dirs: *const *const c_char,
    n_include_dirs: usize,
    out: *mut *mut xcache_library,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        let cache = cache
            .as_ref()
            .ok_or_else(|| Invalid("the cache handle is NULL".into()))?;
        let language = match string(language, "language")? {
            Some("c") => Language::C,
            Some("c++") | Some("cxx") => Language::Cxx,
            Some("cuda") => Language::Cuda,
            other => {
                return Err(Invalid(format!(
                    "unknown language {other:?}: use \"c\", \"c++\" or \"cuda\""
                ))
                .into())
            }
        };
        let source = string(source, "source")?.ok_or_else(|| Invalid("source is NULL".into()))?;
        let mut req = SourceRequest::new(language, source);
        for dir in strings(include_dirs, n_include_dirs, "include_dirs")? {
            if !Path::new(&dir).is_absolute() {
                return Err(Invalid(format!(
                    "include dir {dir:?} is relative: give an absolute path"
                ))
                .into());
            }
            req = req.flag(format!("-I{dir}"));
        }
        for f in strings(flags, n_flags, "flags")? {
            req = req.flag(f);
        }
        let held = cache.jit.compile_held(&req)?;
        let path = CString::new(held.path.as_os_str().as_encoded_bytes())
            .map_err(|_| Invalid("the library path holds a NUL byte".into()))?;
        let key = CString::new(held.compiled.key.hex()).expect("hex has no NUL");
        *out = Box::into_raw(Box::new(xcache_library { held, path, key }));
        Ok(())
    })
}

fn library<'a>(lib: *const xcache_library) -> Result<&'a xcache_library, Invalid> {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { lib.as_ref() }.ok_or_else(|| Invalid("the library handle is NULL".into()))
}

/// The shared object's path. `*out` stays valid, and the file in place, until the
/// handle is released.
///
/// # Safety
/// `lib` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_library_path(
    lib: *const xcache_library,
    out: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = library(lib)?.path.as_ptr();
        Ok(())
    })
}

/// The request's key (64 hex digits). `*out` is valid until the handle is released.
///
/// # Safety
/// `lib` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_library_key(
    lib: *const xcache_library,
    out: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = library(lib)?.key.as_ptr();
        Ok(())
    })
}

/// Whether no compiler ran for this request (`*out` true: found in the cache or already
/// loaded by this process).
///
/// # Safety
/// `lib` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_library_hit(
    lib: *const xcache_library,
    out: *mut bool,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = library(lib)?.held.compiled.hit;
        Ok(())
    })
}

/// The address of the exported symbol `name`, valid while the handle (or another
/// handle on the same library) lives. Cast it to the function's real type.
///
/// # Safety
/// `lib` is a live handle; `name` is NUL-terminated; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_library_symbol(
    lib: *const xcache_library,
    name: *const c_char,
    out: *mut *mut c_void,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        let lib = library(lib)?;
        let name = string(name, "name")?.ok_or_else(|| Invalid("name is NULL".into()))?;
        // Looked up as an opaque pointer; the caller casts it.
        let sym = lib.held.compiled.symbol::<*mut c_void>(name)?;
        *out = *sym;
        Ok(())
    })
}

/// Releases a library handle: the file may be collected afterwards, and the library
/// unloaded once no other handle (in this process) uses it. NULL is accepted.
///
/// # Safety
/// `lib` is NULL or a live handle, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xcache_library_release(lib: *mut xcache_library) -> xcache_status {
    guard(|| {
        if !lib.is_null() {
            drop(Box::from_raw(lib));
        }
        Ok(())
    })
}

/// Files that another compiler built, kept by the cache as an artifact group (opaque):
/// found or published, and in place while the handle lives.
pub struct xcache_group {
    held: xcache::store::group::HeldGroup,
    files: Vec<(CString, CString)>,
}

fn group_handle(held: xcache::store::group::HeldGroup) -> Result<*mut xcache_group, Failure> {
    let files = held
        .files
        .iter()
        .map(|(n, p)| {
            Ok((
                CString::new(n.as_str()).map_err(|_| Invalid("a file name with a NUL".into()))?,
                CString::new(p.to_string_lossy().into_owned())
                    .map_err(|_| Invalid("a path with a NUL".into()))?,
            ))
        })
        .collect::<Result<Vec<_>, Invalid>>()?;
    Ok(Box::into_raw(Box::new(xcache_group { held, files })))
}

/// # Safety
/// `cache` is NULL or a live handle.
unsafe fn cache_ref<'a>(cache: *const xcache_cache) -> Result<&'a xcache_cache, Invalid> {
    cache
        .as_ref()
        .ok_or_else(|| Invalid("the cache handle is NULL".into()))
}

/// # Safety
/// Both are NULL or NUL-terminated strings.
unsafe fn group_spec(
    producer: *const c_char,
    material: *const c_char,
    name: *const c_char,
) -> Result<xcache::store::group::GroupSpec, Failure> {
    let producer =
        string(producer, "producer")?.ok_or_else(|| Invalid("producer is NULL".into()))?;
    let material =
        string(material, "material")?.ok_or_else(|| Invalid("material is NULL".into()))?;
    let name = string(name, "name")?.unwrap_or("");
    Ok(xcache::store::group::GroupSpec::new(
        producer, material, name,
    )?)
}

/// The artifact group that `producer` (lowercase letters, digits, `-`: the compiler
/// whose files these are) keeps under `material` (its own key material: text that
/// covers everything that changes what it builds). On a hit `*out` is a handle to
/// release with `xcache_group_release`; on a miss `*out` is NULL (and the status OK).
/// The producer's version belongs in the cache's runtime tag (XCACHE_FLAGS
/// `runtime_tag=myjit-1.2`), so that each version has its own compiledir.
///
/// # Safety
/// Strings are NUL-terminated; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_group_get(
    cache: *const xcache_cache,
    producer: *const c_char,
    material: *const c_char,
    out: *mut *mut xcache_group,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        let cache = cache_ref(cache)?;
        let spec = group_spec(producer, material, std::ptr::null())?;
        if let Some(held) = cache.jit.store().get_group_held(&spec)? {
            cache.jit.stats().hit(held.compile_ms, held.lock_wait);
            *out = group_handle(held)?;
        }
        Ok(())
    })
}

/// Publishes `n_files` files (`file_names[i]`: a plain file name; `file_data[i]`,
/// `file_sizes[i]` bytes) as the group `producer` keeps under `material`, named `name`
/// in listings (NULL: none), and returns it in `*out` (a handle to release with
/// `xcache_group_release`). If another process published it first, that group is
/// returned: a group is published whole or not at all.
///
/// # Safety
/// Strings are NUL-terminated; the arrays hold `n_files` entries; `file_data[i]` points
/// to `file_sizes[i]` readable bytes; `out` is valid.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xcache_group_put(
    cache: *const xcache_cache,
    producer: *const c_char,
    material: *const c_char,
    name: *const c_char,
    file_names: *const *const c_char,
    file_data: *const *const c_void,
    file_sizes: *const usize,
    n_files: usize,
    out: *mut *mut xcache_group,
) -> xcache_status {
    guard(|| {
        use xcache::store::group::HeldLeased;
        out_ptr(out, "out")?;
        let cache = cache_ref(cache)?;
        let spec = group_spec(producer, material, name)?;
        let names = strings(file_names, n_files, "file_names")?;
        if n_files > 0 && (file_data.is_null() || file_sizes.is_null()) {
            return Err(Invalid("file_data or file_sizes is NULL".into()).into());
        }
        let mut files = Vec::with_capacity(n_files);
        for (i, n) in names.into_iter().enumerate() {
            let (p, len) = (*file_data.add(i), *file_sizes.add(i));
            if p.is_null() && len > 0 {
                return Err(Invalid(format!("file_data[{i}] is NULL")).into());
            }
            let bytes = if len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec()
            };
            files.push((n, bytes));
        }
        let held = match cache.jit.store().lease_group_held(&spec)? {
            HeldLeased::Found(h) => h,
            HeldLeased::Lease(mut lease) => {
                for (n, b) in &files {
                    lease.add(n, b)?;
                }
                lease.publish_held(std::time::Duration::ZERO)?
            }
        };
        if held.hit {
            cache.jit.stats().hit(held.compile_ms, held.lock_wait);
        } else {
            cache.jit.stats().miss(held.compile_ms, held.lock_wait);
        }
        *out = group_handle(held)?;
        Ok(())
    })
}

/// # Safety
/// `g` is NULL or a live group handle.
unsafe fn group_ref<'a>(g: *const xcache_group) -> Result<&'a xcache_group, Invalid> {
    g.as_ref()
        .ok_or_else(|| Invalid("the group handle is NULL".into()))
}

/// The number of files of a group.
///
/// # Safety
/// `group` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_group_file_count(
    group: *const xcache_group,
    out: *mut usize,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = group_ref(group)?.files.len();
        Ok(())
    })
}

/// The name and path of the file `index` of a group (in name order). Both strings stay
/// valid, and the file in place, until the handle is released.
///
/// # Safety
/// `group` is a live handle; `name` and `path` are valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_group_file(
    group: *const xcache_group,
    index: usize,
    name: *mut *const c_char,
    path: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(name, "name")?;
        out_ptr(path, "path")?;
        let g = group_ref(group)?;
        let (n, p) = g.files.get(index).ok_or_else(|| {
            Invalid(format!(
                "file {index} of a group of {} files",
                g.files.len()
            ))
        })?;
        *name = n.as_ptr();
        *path = p.as_ptr();
        Ok(())
    })
}

/// Whether the group was found (true) or published by this call (false).
///
/// # Safety
/// `group` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_group_hit(
    group: *const xcache_group,
    out: *mut bool,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = group_ref(group)?.held.hit;
        Ok(())
    })
}

/// Releases a group handle: its files may be collected afterwards. NULL is accepted.
///
/// # Safety
/// `group` is NULL or a live handle, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xcache_group_release(group: *mut xcache_group) -> xcache_status {
    guard(|| {
        if !group.is_null() {
            drop(Box::from_raw(group));
        }
        Ok(())
    })
}

/// CUDA device code compiled by NVRTC through the cache (opaque): a cubin for the
/// `cuda_arch` setting (else this machine's GPU), or PTX for a virtual arch. Loaded on
/// the GPU at the first `xcache_cuda_function` or `xcache_cuda_launch`.
pub struct xcache_module {
    module: xcache::cuda::CudaModule,
    jit: Arc<Jit>,
    path: CString,
    key: CString,
    arch: CString,
    loaded: OnceLock<(xcache::cuda::Cuda, xcache::cuda::CudaKernels)>,
}

impl xcache_module {
    fn kernels(&self) -> Result<&xcache::cuda::CudaKernels, Failure> {
        if let Some((_, k)) = self.loaded.get() {
            return Ok(k);
        }
        let cuda = self.jit.shared_cuda()?;
        let k = cuda.load(&self.module)?;
        let _ = self.loaded.set((cuda, k));
        Ok(&self.loaded.get().expect("set").1)
    }
}

fn cuda_module<'a>(m: *const xcache_module) -> Result<&'a xcache_module, Invalid> {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { m.as_ref() }.ok_or_else(|| Invalid("the CUDA module handle is NULL".into()))
}

/// Compiles CUDA device code (`extern "C" __global__` kernels) with NVRTC through the
/// cache, once, ever, per key, for the `cuda_arch` setting (else this machine's GPU).
/// Needs libnvrtc, not a GPU.
///
/// - `options`: `n_options` NVRTC options (`-DNAME=1`, `--use_fast_math`, ...), in
///   the key.
/// - `include_dirs`: `n_include_dirs` absolute directories searched for
///   `#include "..."`; the headers read from them are part of the result's identity.
///
/// On success `*out` is a handle to release with `xcache_module_release`.
///
/// # Safety
/// Strings are NUL-terminated; arrays hold their count of strings; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_cuda_module(
    cache: *const xcache_cache,
    source: *const c_char,
    options: *const *const c_char,
    n_options: usize,
    include_dirs: *const *const c_char,
    n_include_dirs: usize,
    out: *mut *mut xcache_module,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        let cache = cache
            .as_ref()
            .ok_or_else(|| Invalid("the cache handle is NULL".into()))?;
        let source = string(source, "source")?.ok_or_else(|| Invalid("source is NULL".into()))?;
        let mut req = SourceRequest::new(Language::Cuda, source);
        for dir in strings(include_dirs, n_include_dirs, "include_dirs")? {
            if !Path::new(&dir).is_absolute() {
                return Err(Invalid(format!(
                    "include dir {dir:?} is relative: give an absolute path"
                ))
                .into());
            }
            req = req.flag(format!("-I{dir}"));
        }
        for f in strings(options, n_options, "options")? {
            req = req.flag(f);
        }
        let module = cache.jit.cuda_module(&req)?;
        let path = CString::new(module.path.as_os_str().as_encoded_bytes())
            .map_err(|_| Invalid("the module path holds a NUL byte".into()))?;
        let key = CString::new(module.key.hex()).expect("hex has no NUL");
        let arch = CString::new(module.arch.clone()).expect("an arch has no NUL");
        *out = Box::into_raw(Box::new(xcache_module {
            module,
            jit: Arc::clone(&cache.jit),
            path,
            key,
            arch,
            loaded: OnceLock::new(),
        }));
        Ok(())
    })
}

/// The module's file in the cache (a cubin, or PTX). Valid until the handle is released.
///
/// # Safety
/// `module` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_path(
    module: *const xcache_module,
    out: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = cuda_module(module)?.path.as_ptr();
        Ok(())
    })
}

/// The request's key (64 hex digits). Valid until the handle is released.
///
/// # Safety
/// `module` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_key(
    module: *const xcache_module,
    out: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = cuda_module(module)?.key.as_ptr();
        Ok(())
    })
}

/// The arch it was built for: `sm_90`, or `compute_80` for PTX. Valid until the
/// handle is released.
///
/// # Safety
/// `module` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_arch(
    module: *const xcache_module,
    out: *mut *const c_char,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = cuda_module(module)?.arch.as_ptr();
        Ok(())
    })
}

/// Whether NVRTC did not run for this request (the module was in the cache).
///
/// # Safety
/// `module` is a live handle; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_hit(
    module: *const xcache_module,
    out: *mut bool,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        *out = cuda_module(module)?.module.hit;
        Ok(())
    })
}

/// The module's bytes as checked against the cache entry (a cubin, or NUL-terminated
/// PTX), for a caller that loads it itself (`cuModuleLoadData`). Valid until the
/// handle is released.
///
/// # Safety
/// `module` is a live handle; `data` and `size` are valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_image(
    module: *const xcache_module,
    data: *mut *const c_void,
    size: *mut usize,
) -> xcache_status {
    guard(|| {
        out_ptr(data, "data")?;
        out_ptr(size, "size")?;
        let image = cuda_module(module)?.module.image();
        *data = image.as_ptr().cast();
        *size = image.len();
        Ok(())
    })
}

/// The kernel `name`'s `CUfunction`, the module loaded into the calling thread's
/// current CUDA context (else the first GPU's primary context, which the CUDA runtime
/// shares, made current). Fails with `XCACHE_ERR_CUDA` where there is no GPU or no such
/// kernel.
///
/// # Safety
/// `module` is a live handle; `name` is NUL-terminated; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn xcache_cuda_function(
    module: *const xcache_module,
    name: *const c_char,
    out: *mut *mut c_void,
) -> xcache_status {
    guard(|| {
        out_ptr(out, "out")?;
        let name = string(name, "name")?.ok_or_else(|| Invalid("name is NULL".into()))?;
        *out = cuda_module(module)?.kernels()?.function(name)?;
        Ok(())
    })
}

/// Queues the kernel `name` on `stream` (a `CUstream`/`cudaStream_t` of the current
/// context; NULL for the legacy default stream) with `grid` and `block` (3 dimensions
/// each), `shared_mem` bytes of dynamic shared memory, and `args`: `n_args` pointers,
/// the i-th to the value of the kernel's i-th parameter (as `cuLaunchKernel`'s
/// `kernelParams`). Raises the kernel's dynamic shared memory limit when needed.
///
/// # Safety
/// `module` is a live handle; `grid` and `block` point at 3 values; `args` holds one
/// pointer per kernel parameter, each to a value of that parameter's type; the kernel
/// must touch only memory that is valid for it.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn xcache_cuda_launch(
    module: *const xcache_module,
    name: *const c_char,
    grid: *const u32,
    block: *const u32,
    shared_mem: u32,
    stream: *mut c_void,
    args: *mut *mut c_void,
    n_args: usize,
) -> xcache_status {
    guard(|| {
        let name = string(name, "name")?.ok_or_else(|| Invalid("name is NULL".into()))?;
        let dim = |p: *const u32, what: &str| -> Result<(u32, u32, u32), Invalid> {
            if p.is_null() {
                return Err(Invalid(format!("{what} is NULL: give 3 dimensions")));
            }
            // SAFETY: the caller's contract: 3 values.
            let v = unsafe { std::slice::from_raw_parts(p, 3) };
            if v.contains(&0) {
                return Err(Invalid(format!("{what} has a 0 dimension: {v:?}")));
            }
            Ok((v[0], v[1], v[2]))
        };
        let (grid, block) = (dim(grid, "grid")?, dim(block, "block")?);
        let params: &mut [*mut c_void] = if n_args == 0 {
            &mut []
        } else if args.is_null() {
            return Err(Invalid(format!("args is NULL with a count of {n_args}")).into());
        } else {
            std::slice::from_raw_parts_mut(args, n_args)
        };
        let k = cuda_module(module)?.kernels()?;
        k.launch_params(name, grid, block, shared_mem, stream, params)?;
        Ok(())
    })
}

/// Releases a CUDA module handle (the module stays loaded on the GPU for the rest of
/// the process, as CUDA keeps it for other handles of the same entry). NULL is
/// accepted.
///
/// # Safety
/// `module` is NULL or a live handle, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xcache_module_release(module: *mut xcache_module) -> xcache_status {
    guard(|| {
        if !module.is_null() {
            drop(Box::from_raw(module));
        }
        Ok(())
    })
}

/// The message of the last failed call on this thread ("" if none failed). Valid until
/// the next failing call on this thread.
#[no_mangle]
pub extern "C" fn xcache_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
