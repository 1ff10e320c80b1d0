//! NVRTC: CUDA C++ compiled in-process to a cubin for one GPU arch (or to PTX where the
//! arch is unknown), with no host compiler and no process spawned.
//!
//! `libnvrtc` is loaded at run time (no link-time CUDA dependency), found as nvcc is:
//! the `nvrtc` setting (the library, or a directory holding it), `$CUDA_HOME` and
//! `$CUDA_PATH` (`lib64/`, `lib/`), the `nvidia-cuda-nvrtc` wheel of the Python
//! interpreter xcache runs in (the Python package registers it: [`set_interpreter`])
//! and of the `python3` on `PATH`, then system places (`$LD_LIBRARY_PATH`, beside an `nvcc` on `PATH`,
//! `/usr/local/cuda`, the distribution's library directories). Where it was looked for
//! is in the error when none is found, with how to install it.
//!
//! The key's toolchain is the library's path, the NVRTC version, and the identity of
//! both `libnvrtc` and `libnvrtc-builtins` (which holds NVRTC's built-in headers). The
//! flags are the NVRTC options in order, the arch first. Finding the library and
//! asking its version loads it (a few hundred milliseconds the first time): a hit must
//! not pay that, so the resolution is recorded in `toolchains/` as nvcc's is, and
//! trusted while both libraries' sizes and mtimes are unchanged.
//!
//! **Headers.** NVRTC has no `-MD`. It reports the files it opened through its time
//! profiler (`--fdevice-time-trace`): one "Processing Header File" event per header,
//! nested and guarded ones included. That list, from the compiler itself, is what enters
//! the manifest, as `-MD`'s does for gcc and nvcc. To keep it complete, every search
//! path is explicit: the program is compiled with `-no-source-include` (else NVRTC would
//! search the process's working directory for `#include "..."`), the source's own
//! directory is an absolute `-I` (as for nvcc), and explicit extra inputs are handed
//! to NVRTC in memory under their names (they are in the key already). An NVRTC too old
//! for the profiler compiles sources without `#include` (nothing to report) and refuses
//! the others, saying why.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::host;
use crate::config::{CompilerCheck, Config};
use crate::error::{CompileError, Error, Result};
use crate::store::key::{Target, Toolchain};
use crate::store::Store;

/// How to get libnvrtc, for error messages.
pub const INSTALL_HINT: &str = "`pip install nvidia-cuda-nvrtc` (the library alone, no CUDA toolkit needed), or install the CUDA toolkit, or set nvrtc=/path/to/libnvrtc.so";

/// The virtual arch NVRTC builds PTX for when the GPU's arch is unknown (no setting, no
/// GPU): Ampere, whose PTX every later GPU's driver compiles at load.
pub const DEFAULT_PTX_ARCH: &str = "compute_80";

/// What NVRTC produces for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Machine code for one arch (`sm_90`): loads without a JIT step.
    Cubin,
    /// PTX for a virtual arch (`compute_80`): the driver compiles it at load, for any
    /// GPU of that arch or later.
    Ptx,
}

impl Output {
    /// The artifact's file name in an entry.
    pub fn artifact_file(self) -> &'static str {
        match self {
            Output::Cubin => crate::store::layout::CUBIN,
            Output::Ptx => crate::store::layout::PTX,
        }
    }
}

/// The arch to compile for and what that gives: the `cuda_arch` setting (`sm_90`: a
/// cubin; `compute_80`: PTX), else the local GPU's arch (a cubin), else
/// [`DEFAULT_PTX_ARCH`].
pub fn target(config: &Config) -> (String, Output) {
    let arch = config
        .cuda_arch
        .clone()
        .or_else(super::nvcc::detected_arch)
        .unwrap_or_else(|| DEFAULT_PTX_ARCH.to_string());
    let out = if arch.starts_with("compute_") {
        Output::Ptx
    } else {
        Output::Cubin
    };
    (arch, out)
}

/// A resolved libnvrtc: where, which version, what it supports, its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvrtcTool {
    /// The library (symlinks resolved).
    pub library: PathBuf,
    /// How it was found: `setting`, `CUDA_HOME`, `pip wheel`, ...
    pub how: String,
    /// `nvrtcVersion`.
    pub version: (i32, i32),
    /// `libnvrtc-builtins` beside it, when there is one (NVRTC's built-in headers).
    pub builtins: Option<PathBuf>,
    /// The CUDA headers beside the library (`../include` holding `cuda_fp16.h`), searched
    /// after the user's: `#include <cuda_fp16.h>` works as with nvcc.
    pub include_dir: Option<PathBuf>,
    /// Whether it takes `-minimal` (a faster front end for small kernels).
    pub minimal: bool,
    /// Whether it takes `--fdevice-time-trace` (the list of headers it read).
    pub time_trace: bool,
    /// Whether it takes `--Ofast-compile=min` (less optimisation effort where the
    /// kernel is bound by memory anyway: `cuda/elemwise`).
    #[serde(default)]
    pub fast_compile: bool,
    /// The fingerprint that enters keys.
    pub toolchain: Toolchain,
}

impl NvrtcTool {
    /// `13.0`.
    pub fn version_text(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// Every option but the trace file, in order: the arch, the dialect, no implicit
    /// search path, the toolkit headers, then `user` (the template's and the request's,
    /// the source directory's `-I`). This exact list is in the key.
    pub fn options(&self, arch: &str, user: &[String]) -> Vec<String> {
        let mut v = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
            "-no-source-include".to_string(),
        ];
        if let Some(d) = &self.include_dir {
            v.push(format!("-I{}", d.display()));
        }
        v.extend(user.iter().cloned());
        v
    }

    /// The target recorded in the key.
    pub fn key_target(arch: &str) -> Target {
        Target {
            triple: arch.to_string(),
            cpu: None,
        }
    }
}

/// Where libnvrtc was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The library file.
    pub path: PathBuf,
    /// `setting`, `CUDA_HOME`, `CUDA_PATH`, `pip wheel`, `LD_LIBRARY_PATH`, `beside nvcc`
    /// or `system`.
    pub how: &'static str,
}

/// The libnvrtc in `dir` with the highest major version (`libnvrtc.so.13` before
/// `libnvrtc.so.12`), else a plain `libnvrtc.so`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("libnvrtc.so") else {
            continue;
        };
        let major = if rest.is_empty() {
            0
        } else if let Some(v) = rest.strip_prefix('.') {
            match v.split('.').next().and_then(|m| m.parse::<u32>().ok()) {
                Some(m) => m,
                None => continue,
            }
        } else {
            continue;
        };
        let p = e.path();
        if !p.is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, p));
        }
    }
    best.map(|(_, p)| p)
}

/// The places searched, in order, each with how it is named (see the module doc).
/// `python_lib_dirs` are the wheel's directories (asked of `python3` only when the
/// earlier places have none).
fn candidate_dirs(config: &Config) -> Vec<(PathBuf, &'static str)> {
    let mut v = Vec::new();
    if let Some(s) = &config.nvrtc {
        let p = PathBuf::from(s);
        v.push((p, "setting"));
        return v;
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let how = if var == "CUDA_HOME" {
                "CUDA_HOME"
            } else {
                "CUDA_PATH"
            };
            for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
                v.push((Path::new(&home).join(sub), how));
            }
        }
    }
    v
}

fn system_dirs() -> Vec<(PathBuf, &'static str)> {
    let mut v = Vec::new();
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        for d in std::env::split_paths(&ld) {
            if !d.as_os_str().is_empty() {
                v.push((d, "LD_LIBRARY_PATH"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("nvcc").is_file() {
                for sub in ["../lib64", "../lib"] {
                    v.push((d.join(sub), "beside nvcc"));
                }
            }
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/opt/cuda/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        v.push((PathBuf::from(d), "system"));
    }
    v
}

/// Where an embedding interpreter's `nvidia` namespace package lies: `None` when it has
/// none (not installed in that interpreter).
pub type NvidiaDirsProvider = fn() -> Option<Vec<PathBuf>>;

static NVIDIA_DIRS: std::sync::OnceLock<NvidiaDirsProvider> = std::sync::OnceLock::new();
static INTERPRETER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Registers the interpreter this library runs in (the Python package does, at import):
/// `prefix` names it (`sys.prefix`: a venv is its own) and `provider` asks it for its
/// `nvidia` package's directories, so that the NVRTC wheel of the running interpreter
/// is found, whatever `python3` on `PATH` is, and without starting one. The provider is
/// asked only when discovery gets that far. The first registration stays.
pub fn set_interpreter(prefix: String, provider: NvidiaDirsProvider) {
    if INTERPRETER.set(prefix).is_ok() {
        let _ = NVIDIA_DIRS.set(provider);
    }
}

/// The `lib/` directories of the `nvidia` namespace package of the running interpreter
/// (where one registered itself) and of `python3`, each named as it is shown.
fn pip_wheel_dirs() -> Vec<(PathBuf, &'static str)> {
    let libs = |dirs: Vec<PathBuf>, how: &'static str| -> Vec<(PathBuf, &'static str)> {
        dirs.iter()
            .flat_map(|d| ["cu13", "cu12", "cuda_nvrtc"].map(|sub| (d.join(sub).join("lib"), how)))
            .collect()
    };
    let mut v = Vec::new();
    if let Some(dirs) = NVIDIA_DIRS.get().and_then(|provider| provider()) {
        v.extend(libs(dirs, "pip wheel"));
        if v.iter().any(|(d, _)| library_in(d).is_some()) {
            return v; // found in-process: no python3 to start
        }
    }
    let out = host::dies_with_xcache(&mut Command::new("python3"))
        .args([
            "-c",
            "import nvidia, sys; print('\\n'.join(nvidia.__path__))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return v };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    v.extend(libs(text.lines().map(PathBuf::from).collect(), "pip wheel"));
    v
}

/// Searches the places of the module doc, in order. `Err` lists every place looked at.
pub fn discover(config: &Config) -> std::result::Result<Found, Vec<String>> {
    let mut looked = Vec::new();
    let try_dir = |dir: &Path, how: &'static str, looked: &mut Vec<String>| {
        if how == "setting" && dir.is_file() {
            return Some(Found {
                path: dir.to_path_buf(),
                how,
            });
        }
        match library_in(dir) {
            Some(path) => Some(Found { path, how }),
            None => {
                looked.push(format!("{} ({how})", dir.display()));
                None
            }
        }
    };
    for (dir, how) in candidate_dirs(config) {
        if let Some(f) = try_dir(&dir, how, &mut looked) {
            return Ok(f);
        }
        if how == "setting" {
            return Err(looked); // an explicit setting is the only place looked
        }
    }
    for (dir, how) in pip_wheel_dirs() {
        if let Some(f) = try_dir(&dir, how, &mut looked) {
            return Ok(f);
        }
    }
    if looked.iter().all(|l| !l.ends_with("(pip wheel)")) {
        looked.push(if NVIDIA_DIRS.get().is_some() {
            "the nvidia-cuda-nvrtc wheel of this Python and of python3 (not installed)".into()
        } else {
            "the nvidia-cuda-nvrtc wheel of python3 (not installed)".into()
        });
    }
    for (dir, how) in system_dirs() {
        if let Some(f) = try_dir(&dir, how, &mut looked) {
            return Ok(f);
        }
    }
    Err(looked)
}

fn missing(looked: &[String]) -> Error {
    Error::NoCompiler {
        compiler: "libnvrtc".into(),
        message: format!(
            "not found; looked in {}. Fix: {INSTALL_HINT}; or use nvcc for the CUDA templates (cuda_compiler=nvcc)",
            looked.join(", ")
        ),
    }
}

// --- The library -------------------------------------------------------------------

type Program = *mut c_void;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type Callback = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
type FlowFn = unsafe extern "C" fn(Program, Callback, *mut c_void) -> c_int;

/// libnvrtc, loaded.
struct Library {
    _lib: libloading::Library,
    error_string: ErrorStringFn,
    version: VersionFn,
    create: CreateFn,
    destroy: DestroyFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    flow: Option<FlowFn>,
}

// SAFETY: NVRTC's entry points are thread-safe (programs are not shared between threads
// here: each compile creates and destroys its own).
unsafe impl Send for Library {}
// SAFETY: as above.
unsafe impl Sync for Library {}

impl Library {
    fn open(path: &Path) -> std::result::Result<Library, String> {
        // SAFETY: loading libnvrtc runs its initialisers, as any program using NVRTC
        // does; each symbol is read with NVRTC's documented signature.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("{} lacks {}: {e}", path.display(), $name))?
                };
            }
            Ok(Library {
                error_string: sym!("nvrtcGetErrorString"),
                version: sym!("nvrtcVersion"),
                create: sym!("nvrtcCreateProgram"),
                destroy: sym!("nvrtcDestroyProgram"),
                compile: sym!("nvrtcCompileProgram"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                cubin_size: sym!("nvrtcGetCUBINSize"),
                cubin: sym!("nvrtcGetCUBIN"),
                ptx_size: sym!("nvrtcGetPTXSize"),
                ptx: sym!("nvrtcGetPTX"),
                flow: lib
                    .get::<FlowFn>(b"nvrtcSetFlowCallback\0")
                    .ok()
                    .map(|s| *s),
                _lib: lib,
            })
        }
    }

    fn error_name(&self, code: c_int) -> String {
        // SAFETY: returns a static string for any code.
        unsafe { CStr::from_ptr((self.error_string)(code)) }
            .to_string_lossy()
            .into_owned()
    }

    fn version(&self) -> (i32, i32) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: valid out-pointers.
        unsafe { (self.version)(&mut major, &mut minor) };
        (major, minor)
    }
}

/// Loaded libraries by path: loaded once per process, never unloaded (NVRTC keeps
/// global state, and loading it again would cost its start-up again).
fn load(path: &Path) -> std::result::Result<Arc<Library>, String> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Library>>>> = OnceLock::new();
    let map = LOADED.get_or_init(Default::default);
    if let Some(l) = map.lock().unwrap().get(path) {
        return Ok(Arc::clone(l));
    }
    // libnvrtc opens its builtins library by name when it first compiles; some
    // releases look only on the loader's path, so the one beside it is loaded first
    // (a second dlopen by that name then finds it loaded). Never unloaded.
    if let Some(b) = builtins_beside(path) {
        // SAFETY: NVRTC's own builtins library, loaded as libnvrtc would load it.
        if let Ok(l) = unsafe { libloading::Library::new(&b) } {
            std::mem::forget(l);
        }
    }
    let lib = Arc::new(Library::open(path)?);
    Ok(Arc::clone(
        map.lock().unwrap().entry(path.to_path_buf()).or_insert(lib),
    ))
}

/// One program: destroyed on drop.
struct Prog<'l> {
    lib: &'l Library,
    p: Program,
}

impl Drop for Prog<'_> {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed once.
        unsafe { (self.lib.destroy)(&mut self.p) };
    }
}

impl Prog<'_> {
    fn bytes(&self, size: SizeFn, get: GetFn) -> Vec<u8> {
        let mut n = 0usize;
        // SAFETY: a valid program and out-pointer; the buffer has the size NVRTC gave.
        unsafe {
            if size(self.p, &mut n) != 0 || n == 0 {
                return Vec::new();
            }
            let mut buf = vec![0u8; n];
            if get(self.p, buf.as_mut_ptr().cast()) != 0 {
                return Vec::new();
            }
            buf
        }
    }

    fn log(&self) -> String {
        let mut b = self.bytes(self.lib.log_size, self.lib.log);
        while b.last() == Some(&0) {
            b.pop();
        }
        String::from_utf8_lossy(&b).into_owned()
    }
}

/// What a successful compile gives.
#[derive(Debug)]
pub struct Compiled {
    /// The cubin, or the PTX text (NUL-terminated, as the driver takes it).
    pub image: Vec<u8>,
    /// What NVRTC printed (warnings).
    pub log: String,
    /// The headers it read: absolute paths, from its own report.
    pub headers: Vec<PathBuf>,
    /// How long `nvrtcCompileProgram` ran.
    pub elapsed: Duration,
}

/// The payload of the flow callback: when to cancel.
struct Deadline {
    until: Instant,
}

unsafe extern "C" fn past_deadline(payload: *mut c_void, _reserved: *mut c_void) -> c_int {
    // SAFETY: the payload is the `Deadline` that outlives the compile call.
    let d = unsafe { &*(payload as *const Deadline) };
    (Instant::now() >= d.until) as c_int
}

/// True when `source` (or an option) can make NVRTC read a file: an `#include`
/// directive (continuation lines joined) outside the branches NVRTC never compiles
/// (`#ifndef __CUDACC_RTC__`, the `#else` of `#ifdef __CUDACC_RTC__`), `__has_include`,
/// or a pre-include option.
pub fn may_include(source: &[u8], options: &[String]) -> bool {
    let text = String::from_utf8_lossy(source)
        .replace("\\\r\n", "")
        .replace("\\\n", "");
    // Per open conditional: Some(true) when its current branch is dead under NVRTC,
    // Some(false) when live, None when it depends on anything else (taken as live).
    let mut stack: Vec<Option<bool>> = Vec::new();
    for l in text.lines() {
        let Some(d) = l.trim_start().strip_prefix('#') else {
            continue;
        };
        let d = d.trim_start();
        let word = |w: &str| d.strip_prefix(w).map(str::trim);
        if let Some(rest) = word("ifndef") {
            stack.push((rest == "__CUDACC_RTC__").then_some(true));
        } else if let Some(rest) = word("ifdef") {
            stack.push((rest == "__CUDACC_RTC__").then_some(false));
        } else if let Some(rest) = word("if") {
            let rest = rest.replace(' ', "");
            stack.push(match rest.as_str() {
                "!defined(__CUDACC_RTC__)" => Some(true),
                "defined(__CUDACC_RTC__)" => Some(false),
                _ => None,
            });
        } else if word("elif").is_some() {
            if let Some(top) = stack.last_mut() {
                *top = None;
            }
        } else if word("else").is_some() {
            if let Some(top) = stack.last_mut() {
                *top = top.map(|dead| !dead);
            }
        } else if word("endif").is_some() {
            stack.pop();
        } else if (word("include").is_some() || word("import").is_some())
            && !stack.contains(&Some(true))
        {
            return true;
        }
    }
    text.contains("__has_include")
        || options
            .iter()
            .any(|o| o.starts_with("-include") || o.starts_with("--pre-include"))
}

/// The headers named by "Processing Header File" events of an NVRTC time trace,
/// absolute ones only (the built-in header and in-memory extra inputs have bare names),
/// in order, without duplicates.
pub fn trace_headers(trace: &[u8]) -> std::result::Result<Vec<PathBuf>, String> {
    let v: serde_json::Value = serde_json::from_slice(trace).map_err(|e| e.to_string())?;
    let events = match &v {
        serde_json::Value::Object(o) => o.get("traceEvents").and_then(|e| e.as_array()),
        serde_json::Value::Array(a) => Some(a),
        _ => None,
    }
    .ok_or("no traceEvents")?;
    let mut out: Vec<PathBuf> = Vec::new();
    for e in events {
        if e.get("name").and_then(|n| n.as_str()) != Some("Processing Header File") {
            continue;
        }
        let Some(d) = e.pointer("/args/detail").and_then(|d| d.as_str()) else {
            continue;
        };
        let p = PathBuf::from(d);
        if p.is_absolute() && !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

static COMPILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many programs NVRTC compiled in this process (probes included): a warm hit must
/// leave it at zero.
pub fn compiles() -> u64 {
    COMPILES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Loads libnvrtc (and its builtins) on a background thread, once per process, when
/// the compiledir's record already names it: NVRTC's loading, a few tens of
/// milliseconds, then overlaps whatever the program does before its first compile
/// (CuPy loads NVRTC at import for the same reason). Nothing is compiled: a process
/// that only hits never calls into it.
pub fn preload_in_background(config: Config, store: Store) {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("xcache-nvrtc-preload".into())
        .spawn(move || {
            let inputs = resolution_inputs(&config);
            let name = format!("nvrtc-{inputs}.json");
            if let Some(tool) = read_record(&store, &name, &inputs, &config) {
                let _ = load(&tool.library);
            }
        });
}

/// The trace file's name in the staging directory (NVRTC appends `.json`); removed
/// before the entry is sealed.
pub const TRACE_FILE: &str = "xcache-nvrtc-trace";

impl NvrtcTool {
    /// Compiles `source` (named `source_file`, as the log names it) with `options`
    /// (from [`NvrtcTool::options`]); `extra` are headers handed over in memory by name.
    /// `dir` is the staging directory, where the source is kept and the header trace is
    /// written. A compile running past `timeout` is cancelled (where NVRTC can be).
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        &self,
        dir: &Path,
        source_file: &str,
        source: &[u8],
        extra: &[(String, Vec<u8>)],
        options: &[String],
        output: Output,
        timeout: Duration,
    ) -> Result<Compiled> {
        let lib = load(&self.library).map_err(|message| Error::NoCompiler {
            compiler: self.library.display().to_string(),
            message,
        })?;
        let trace = dir.join(TRACE_FILE);
        let trace_json = dir.join(format!("{TRACE_FILE}.json"));
        let mut opts: Vec<String> = options.to_vec();
        let traced = self.time_trace;
        if traced {
            opts.push(format!("--fdevice-time-trace={}", trace.display()));
        } else if may_include(source, options) {
            return Err(Error::InvalidRequest(format!(
                "NVRTC {} cannot report the headers a program reads (its --fdevice-time-trace is missing), so a source that includes headers cannot be cached soundly with it. Fix: use NVRTC 12.8 or later ({INSTALL_HINT}), or compile this source with nvcc",
                self.version_text()
            )));
        }
        let command = || {
            format!(
                "NVRTC {} ({}): {} {}",
                self.version_text(),
                self.library.display(),
                host::shell_line(Path::new(source_file), []),
                opts.iter()
                    .filter(|o| !o.starts_with("--fdevice-time-trace"))
                    .map(|o| host::shell_line(Path::new(o), []))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let cstr = |s: &[u8], what: &str| {
            CString::new(s.to_vec()).map_err(|_| {
                Error::InvalidRequest(format!("{what} holds a NUL byte, which NVRTC cannot take"))
            })
        };
        let src = cstr(source, "the source")?;
        let name = cstr(source_file.as_bytes(), "the source name")?;
        let header_srcs = extra
            .iter()
            .map(|(n, b)| Ok((cstr(n.as_bytes(), "an extra input's name")?, cstr(b, n)?)))
            .collect::<Result<Vec<_>>>()?;
        let copts = opts
            .iter()
            .map(|o| cstr(o.as_bytes(), "an option"))
            .collect::<Result<Vec<_>>>()?;
        let hdr_ptrs: Vec<*const c_char> = header_srcs.iter().map(|(_, b)| b.as_ptr()).collect();
        let hdr_names: Vec<*const c_char> = header_srcs.iter().map(|(n, _)| n.as_ptr()).collect();
        let opt_ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();

        let mut p: Program = std::ptr::null_mut();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; the
        // header arrays have `extra.len()` entries.
        let rc = unsafe {
            (lib.create)(
                &mut p,
                src.as_ptr(),
                name.as_ptr(),
                extra.len() as c_int,
                if extra.is_empty() {
                    std::ptr::null()
                } else {
                    hdr_ptrs.as_ptr()
                },
                if extra.is_empty() {
                    std::ptr::null()
                } else {
                    hdr_names.as_ptr()
                },
            )
        };
        if rc != 0 {
            return Err(Error::NoCompiler {
                compiler: self.library.display().to_string(),
                message: format!("nvrtcCreateProgram failed: {}", lib.error_name(rc)),
            });
        }
        let prog = Prog { lib: &lib, p };
        let deadline = Deadline {
            until: Instant::now() + timeout,
        };
        if let Some(flow) = lib.flow {
            // SAFETY: the callback only reads the deadline, which outlives the compile.
            unsafe {
                flow(
                    prog.p,
                    past_deadline,
                    &deadline as *const Deadline as *mut c_void,
                )
            };
        }
        COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = Instant::now();
        // SAFETY: a valid program and `opts.len()` NUL-terminated options.
        let rc = unsafe { (lib.compile)(prog.p, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let elapsed = start.elapsed();
        let log = prog.log();
        let trace_bytes = std::fs::read(&trace_json);
        let _ = std::fs::remove_file(&trace_json);
        if rc != 0 {
            let mut output = log;
            if rc == 16 {
                output.push_str(&format!(
                    "\nxcache: NVRTC ran longer than compile_timeout ({}) and was cancelled. Fix: raise compile_timeout (XCACHE_FLAGS=compile_timeout=30m)",
                    crate::config::format_duration(timeout)
                ));
            }
            if !output.ends_with('\n') && !output.is_empty() {
                output.push('\n');
            }
            output.push_str(&format!(
                "nvrtcCompileProgram: {} ({rc})\n",
                lib.error_name(rc)
            ));
            return Err(CompileError {
                command: command(),
                workdir: dir.to_path_buf(),
                status: Some(rc),
                output,
                kept_source: dir.join(source_file),
            }
            .into());
        }
        let image = match output {
            Output::Cubin => prog.bytes(lib.cubin_size, lib.cubin),
            // The PTX comes NUL-terminated, as cuModuleLoadData takes it.
            Output::Ptx => prog.bytes(lib.ptx_size, lib.ptx),
        };
        if image.is_empty() {
            return Err(CompileError {
                command: command(),
                workdir: dir.to_path_buf(),
                status: Some(0),
                output: format!("{log}\nxcache: NVRTC succeeded but gave no {output:?}\n"),
                kept_source: dir.join(source_file),
            }
            .into());
        }
        let headers = if traced {
            let bytes = trace_bytes
                .map_err(|e| Error::io("reading NVRTC's header trace", &trace_json, e))?;
            trace_headers(&bytes).map_err(|why| {
                Error::InvalidRequest(format!(
                    "NVRTC's header trace {} cannot be read ({why}): the headers it read are unknown, so the result is not cached",
                    trace_json.display()
                ))
            })?
        } else {
            Vec::new()
        };
        Ok(Compiled {
            image,
            log,
            headers,
            elapsed,
        })
    }
}

// --- Resolution, recorded ----------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    inputs: String,
    tool: NvrtcTool,
    size: u64,
    mtime_ns: i128,
    builtins: Option<(u64, i128)>,
}

fn stat(p: &Path) -> Option<(u64, i128)> {
    let md = std::fs::metadata(p).ok()?;
    Some((
        md.len(),
        md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    ))
}

fn resolution_inputs(config: &Config) -> String {
    let mut h = blake3::Hasher::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put("nvrtc-v2");
    put(config.nvrtc.as_deref().unwrap_or(""));
    put(match config.compiler_check {
        CompilerCheck::Mtime => "mtime",
        CompilerCheck::Content => "content",
    });
    for var in ["CUDA_HOME", "CUDA_PATH", "PATH", "LD_LIBRARY_PATH"] {
        put(var);
        put(&std::env::var(var).unwrap_or_default());
    }
    // Another interpreter may find another wheel.
    put(INTERPRETER.get().map(String::as_str).unwrap_or(""));
    h.finalize().to_hex()[..32].to_string()
}

/// The builtins library beside `lib` (`libnvrtc-builtins.so.13.0` for
/// `libnvrtc.so.13`), the one libnvrtc loads.
fn builtins_beside(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect();
    found.sort();
    // The most specific name (the versioned file the others link to).
    found.pop().map(|p| p.canonicalize().unwrap_or(p))
}

/// Resolves libnvrtc: from the store's record while both libraries are unchanged, else
/// afresh (which loads it), recording the result when a store is given.
pub fn resolve(config: &Config, records: Option<&Store>) -> Result<NvrtcTool> {
    let inputs = resolution_inputs(config);
    let name = format!("nvrtc-{inputs}.json");
    if let Some(store) = records {
        if let Some(tool) = read_record(store, &name, &inputs, config) {
            return Ok(tool);
        }
    }
    let tool = resolve_fresh(config)?;
    if let (Some(store), Some((size, mtime_ns))) = (records, stat(&tool.library)) {
        let rec = Record {
            inputs,
            builtins: tool.builtins.as_deref().and_then(stat),
            tool: tool.clone(),
            size,
            mtime_ns,
        };
        let json = serde_json::to_vec_pretty(&rec).expect("serialises");
        if let Err(e) = store.write_toolchain_record(&name, &json) {
            log::debug!("not caching the NVRTC resolution: {e}");
        }
    }
    Ok(tool)
}

fn read_record(store: &Store, name: &str, inputs: &str, config: &Config) -> Option<NvrtcTool> {
    let bytes = store.read_toolchain_record(name)?;
    let rec: Record = serde_json::from_slice(&bytes).ok()?;
    if rec.inputs != inputs || stat(&rec.tool.library) != Some((rec.size, rec.mtime_ns)) {
        return None;
    }
    if rec.tool.builtins.as_deref().and_then(stat) != rec.builtins {
        return None;
    }
    let mut tool = rec.tool;
    if config.compiler_check == CompilerCheck::Content {
        tool.toolchain.binary = binary_ids(&tool.library, tool.builtins.as_deref(), config).ok()?;
    }
    Some(tool)
}

fn binary_ids(lib: &Path, builtins: Option<&Path>, config: &Config) -> std::io::Result<String> {
    let mut id = host::binary_id(lib, config.compiler_check)?;
    if let Some(b) = builtins {
        id.push_str(&format!(
            "; builtins {}",
            host::binary_id(b, config.compiler_check)?
        ));
    }
    Ok(id)
}

/// Finds, loads and probes libnvrtc.
pub fn resolve_fresh(config: &Config) -> Result<NvrtcTool> {
    let found = discover(config).map_err(|looked| missing(&looked))?;
    let fail = |message: String| Error::NoCompiler {
        compiler: found.path.display().to_string(),
        message: format!("{message}. Fix: {INSTALL_HINT}"),
    };
    let library = found.path.canonicalize().map_err(|e| fail(e.to_string()))?;
    let lib = load(&library).map_err(fail)?;
    let version = lib.version();
    let builtins = builtins_beside(&library);
    let include_dir = library
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("include"))
        .filter(|d| d.join("cuda_fp16.h").is_file() || d.join("cuda_runtime.h").is_file())
        .map(|d| d.canonicalize().unwrap_or(d));
    let binary =
        binary_ids(&library, builtins.as_deref(), config).map_err(|e| fail(e.to_string()))?;
    // What this NVRTC accepts, tried once on an empty kernel.
    let probe_dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let mut probe = NvrtcTool {
        library: library.clone(),
        how: found.how.to_string(),
        version,
        builtins: builtins.clone(),
        include_dir,
        minimal: false,
        time_trace: false,
        fast_compile: false,
        toolchain: Toolchain {
            path: library.display().to_string(),
            version: format!(
                "NVRTC {}.{}{}",
                version.0,
                version.1,
                builtins
                    .as_ref()
                    .map(|b| format!(", builtins {}", b.display()))
                    .unwrap_or_default()
            ),
            binary,
        },
    };
    let try_compile = |tool: &NvrtcTool, opts: &[&str], i: usize| {
        let mut all = vec![format!("--gpu-architecture={DEFAULT_PTX_ARCH}")];
        all.extend(opts.iter().map(|o| o.to_string()));
        // Each probe in a directory of its own (a failed one keeps its source there).
        let dir = probe_dir.path().join(i.to_string());
        crate::error::IoContext::ctx(std::fs::create_dir_all(&dir), "creating", &dir)?;
        tool.compile(
            &dir,
            "probe.cu",
            b"extern \"C\" __global__ void xc_probe() {}\n",
            &[],
            &all,
            Output::Ptx,
            Duration::from_secs(60),
        )
    };
    let trace = format!(
        "--fdevice-time-trace={}",
        probe_dir.path().join("t").display()
    );
    // Every option at once first: an NVRTC that takes them all (12.8 and later) answers
    // with one compile, and a `-minimal` one, the cheapest there is (a brand-new cache
    // pays for one small compile before its first kernel, not five full ones).
    let all: [&str; 4] = [
        "-minimal",
        "--Ofast-compile=min",
        &trace,
        "-no-source-include",
    ];
    if try_compile(&probe, &all, 0).is_ok() {
        probe.minimal = true;
        probe.fast_compile = true;
        probe.time_trace = true;
        return Ok(probe);
    }
    // Else the empty kernel, plain and with each option, compiled at once on threads
    // (NVRTC is thread-safe). It must compile at all (its builtins library found, ...)
    // for the options' answers to mean anything.
    let options: [&[&str]; 5] = [
        &[],
        &["-minimal"],
        &["--Ofast-compile=min"],
        &[&trace],
        &["-no-source-include"],
    ];
    let results: Vec<Result<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = options
            .iter()
            .enumerate()
            .map(|(i, opts)| {
                let probe = &probe;
                let try_compile = &try_compile;
                s.spawn(move || try_compile(probe, opts, i + 1).map(|_| ()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an NVRTC probe thread panicked"))
            .collect()
    });
    if let Err(e) = &results[0] {
        return Err(fail(format!(
            "NVRTC {}.{} cannot compile an empty kernel: {e}",
            version.0, version.1
        )));
    }
    probe.minimal = results[1].is_ok();
    probe.fast_compile = results[2].is_ok();
    probe.time_trace = results[3].is_ok();
    if results[4].is_err() {
        return Err(fail(format!(
            "NVRTC {}.{} does not take -no-source-include, which xcache needs to know every directory it searches",
            version.0, version.1
        )));
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_are_seen_through_continuations() {
        let o: Vec<String> = Vec::new();
        assert!(may_include(b"#include \"a.h\"\n", &o));
        assert!(may_include(b"  #  include <b>\n", &o));
        assert!(may_include(b"#\\\ninclude <b>\n", &o));
        assert!(may_include(b"#if __has_include(<x>)\n#endif\n", &o));
        assert!(!may_include(b"__global__ void k() {}\n// include\n", &o));
        assert!(may_include(b"", &["-include".into(), "/x.h".into()]));
        // What NVRTC never compiles does not count.
        let host =
            b"#ifndef __CUDACC_RTC__\n#include <cuda_runtime.h>\n#endif\n__global__ void k() {}\n";
        assert!(!may_include(host, &o));
        let both =
            b"#ifdef __CUDACC_RTC__\ntypedef long int64_t;\n#else\n#include <stdint.h>\n#endif\n";
        assert!(!may_include(both, &o));
        let live = b"#ifndef __CUDACC_RTC__\n#else\n#include \"a.h\"\n#endif\n";
        assert!(may_include(live, &o));
        let other = b"#ifndef X\n#include \"a.h\"\n#endif\n";
        assert!(may_include(other, &o));
    }

    #[test]
    fn headers_come_from_the_trace() {
        let t = br#"{"traceEvents":[
            {"name":"CUDA C++ Front-End","args":{"detail":"source.cu"}},
            {"name":"Processing Header File","args":{"detail":"__nv_nvrtc_builtin_header.h"}},
            {"name":"Processing Header File","args":{"detail":"/abs/inc/h.h"}},
            {"name":"Processing Header File","args":{"detail":"defs.h"}},
            {"name":"Processing Header File","args":{"detail":"/abs/inc/sub/s.h"}},
            {"name":"Processing Header File","args":{"detail":"/abs/inc/h.h"}}
        ]}"#;
        assert_eq!(
            trace_headers(t).unwrap(),
            [
                PathBuf::from("/abs/inc/h.h"),
                PathBuf::from("/abs/inc/sub/s.h")
            ]
        );
        assert!(trace_headers(b"not json").is_err());
    }

    #[test]
    fn the_newest_library_in_a_directory_wins() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "libnvrtc.so.12",
            "libnvrtc.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc.so.13.0.88",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let got = library_in(d.path()).unwrap();
        assert!(
            got.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("libnvrtc.so.13"),
            "{got:?}"
        );
        assert!(library_in(&d.path().join("none")).is_none());
    }

    #[test]
    fn a_missing_library_says_where_it_looked_and_how_to_install_it() {
        let mut c = Config::defaults();
        c.set("nvrtc", "/nonexistent/libnvrtc.so.13").unwrap();
        let e = resolve_fresh(&c).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/libnvrtc.so.13 (setting)"), "{e}");
        assert!(e.contains("pip install nvidia-cuda-nvrtc"), "{e}");
        assert!(e.contains("cuda_compiler=nvcc"), "{e}");
    }
}
