//! CUDA device code compiled by NVRTC through the cache: [`Jit::cuda_module`] derives the
//! key, finds the cubin (or builds it, in-process), checks its hash and keeps its bytes;
//! [`crate::cuda::Cuda::load`] loads it through the driver, once per context. No host
//! compiler runs and no shared object is made: a template instance costs one NVRTC
//! compile, ever, and one `cuModuleLoadData` per process.
//!
//! The key is made as for any request ([`crate::store::key`]): the source, the NVRTC
//! library's fingerprint (path, version, `libnvrtc` and `libnvrtc-builtins` identities),
//! the NVRTC options in order (the arch first), the arch as the target, extra inputs,
//! the template and the runtime tag. Entries are tracked requests: the headers NVRTC
//! reports having read ([`crate::compile::nvrtc`]) enter the manifest, so an edited
//! header is a miss, as with nvcc. The entry's artifact is `kernel.cubin` (or
//! `kernel.ptx` for a virtual arch), published, locked, hashed, trusted and pruned like
//! any other.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::compile::nvrtc::{self, NvrtcTool, Output};
use crate::compile::{diagnostics, Language, SourceRequest};
use crate::cuda::driver::{Context, Driver, Module, ATTR_CC_MAJOR, ATTR_CC_MINOR};
use crate::error::{Error, IoContext, Result};
use crate::platform::LAYOUT_VERSION;
use crate::runtime::{CacheOutcome, Jit};
use crate::store::key::{ExtraInput, Key, KeyMaterial, KEY_ENCODING};
use crate::store::{Built, Fetched};

/// The bytes of a compiled module, and where it is loaded.
pub(crate) struct Image {
    pub(crate) bytes: Vec<u8>,
    /// The arch it was built for (`sm_90`, `compute_80`), for the load error.
    arch: String,
    /// (context, module) pairs: a module is loaded once per context it is used in.
    loaded: Mutex<Vec<(usize, Module)>>,
}

// SAFETY: modules are driver handles, usable from any thread of their context's process.
unsafe impl Send for Image {}
// SAFETY: the list is behind a mutex.
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        if let Ok(d) = Driver::get() {
            for (ctx, m) in self.loaded.get_mut().unwrap().drain(..) {
                d.unload_module(ctx as Context, m);
            }
        }
    }
}

impl Image {
    /// The module in `ctx`, loading it there the first time.
    pub(crate) fn module_in(&self, d: &Driver, ctx: Context) -> Result<Module> {
        let mut loaded = self.loaded.lock().unwrap();
        if let Some((_, m)) = loaded.iter().find(|(c, _)| *c == ctx as usize) {
            return Ok(*m);
        }
        let m = d.load_module(&self.bytes).map_err(|e| {
            let gpu = d
                .current_device()
                .and_then(|dev| {
                    Ok((
                        d.attribute(dev, ATTR_CC_MAJOR)?,
                        d.attribute(dev, ATTR_CC_MINOR)?,
                    ))
                })
                .ok();
            explain_load_error(e, &self.arch, gpu)
        })?;
        loaded.push((ctx as usize, m));
        Ok(m)
    }
}

/// `CUDA_ERROR_NO_BINARY_FOR_GPU`: a cubin for another GPU.
const NO_BINARY_FOR_GPU: i32 = 209;
/// `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`: PTX newer than the driver.
const UNSUPPORTED_PTX_VERSION: i32 = 222;

/// A load error in words that say what to change: the driver's own message names
/// neither the module's arch nor the GPU's. `gpu` is the current GPU's compute capability
/// when it could be read.
fn explain_load_error(e: Error, arch: &str, gpu: Option<(i32, i32)>) -> Error {
    let Error::Cuda {
        what,
        code,
        message,
    } = e
    else {
        return e;
    };
    let gpu_arch = gpu.map(|(major, minor)| format!("sm_{major}{minor}"));
    let what = match (code, gpu_arch) {
        (NO_BINARY_FOR_GPU, Some(g)) => format!(
            "{what}: the module is built for {arch} and this GPU is {g}; \
             set cuda_arch={g} (or leave cuda_arch unset to build for the GPU present), \
             or a virtual arch such as compute_{} for PTX the driver compiles for newer GPUs",
            arch.trim_start_matches(|c: char| !c.is_ascii_digit())
        ),
        (NO_BINARY_FOR_GPU, None) => format!(
            "{what}: the module is built for {arch}, which this GPU does not run; \
             set cuda_arch to the GPU's arch (or leave it unset to build for the GPU present)"
        ),
        (UNSUPPORTED_PTX_VERSION, _) => format!(
            "{what}: the {arch} PTX comes from an NVRTC newer than this driver supports; \
             update the driver, point nvrtc= at an NVRTC no newer than the driver, \
             or build a cubin (cuda_arch=sm_XX)"
        ),
        _ => what,
    };
    Error::Cuda {
        what,
        code,
        message,
    }
}

/// A module built by NVRTC (or found in the cache), its bytes checked against the
/// entry's hash. Load it with [`crate::cuda::Cuda::load`].
#[derive(Clone)]
pub struct CudaModule {
    /// The key.
    pub key: Key,
    /// The cubin (or PTX) in the cache.
    pub path: PathBuf,
    /// True when NVRTC did not run for this request.
    pub hit: bool,
    /// How long NVRTC ran when the entry was built, in ms.
    pub compile_ms: u64,
    /// Wall time of this request (not counting a load through the driver).
    pub elapsed: Duration,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    /// What NVRTC printed although it succeeded (only when it ran now).
    pub compiler_output: String,
    /// Cache faults repaired while serving it.
    pub warnings: Vec<String>,
    /// The header that kept this fresh compile out of its manifest (see
    /// [`crate::Compiled::unrecorded`]).
    pub unrecorded: Option<String>,
    /// Cubin or PTX.
    pub output: Output,
    /// The arch it was built for (`sm_90`, or `compute_80` for PTX).
    pub arch: String,
    pub(crate) image: Arc<Image>,
}

impl std::fmt::Debug for CudaModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModule")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("hit", &self.hit)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

impl CudaModule {
    /// The cubin (or NUL-terminated PTX) bytes, as loaded.
    pub fn image(&self) -> &[u8] {
        &self.image.bytes
    }
}

/// A template's name, text hash and canonical parameters.
type TemplateId = (String, String, Vec<(String, String)>);

/// What of a request the memo compares (the Jit's config and NVRTC are fixed).
#[derive(PartialEq, Eq, Hash)]
struct Fingerprint {
    source: Vec<u8>,
    flags: Vec<String>,
    extra_inputs: Vec<(String, Vec<u8>)>,
    template: Option<TemplateId>,
    origin: Option<PathBuf>,
}

impl Fingerprint {
    fn of(r: &SourceRequest) -> Fingerprint {
        Fingerprint {
            source: r.source.clone(),
            flags: r.flags.clone(),
            extra_inputs: r.extra_inputs.clone(),
            template: r
                .template
                .as_ref()
                .map(|t| (t.name.clone(), t.blake3.clone(), t.params.clone())),
            origin: r.origin.clone(),
        }
    }
}

struct Memoised {
    fp: Fingerprint,
    module: CudaModule,
}

/// A [`Jit`]'s NVRTC state: the resolved library and the modules this Jit has built or
/// found (served again from memory, as [`Jit::compile`] serves loaded libraries).
#[derive(Default)]
pub struct JitModules {
    nvrtc: Mutex<Option<Arc<NvrtcTool>>>,
    memo: Mutex<HashMap<u64, Vec<Memoised>>>,
}

impl crate::runtime::Jit {
    /// This Jit's NVRTC library and modules, kept in the runtime's extension slot.
    pub(crate) fn cuda_modules(&self) -> &JitModules {
        self.extension::<JitModules>()
    }
}

impl std::fmt::Debug for JitModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JitModules")
    }
}

/// A request's key and what it is derived from, with the NVRTC options, arch and
/// output.
pub struct NvrtcKey {
    /// The request key.
    pub key: Key,
    /// What it is derived from.
    pub material: KeyMaterial,
    /// The NVRTC options (in the key).
    pub options: Vec<String>,
    /// The arch.
    pub arch: String,
    /// Cubin or PTX.
    pub output: Output,
}

impl Jit {
    /// libnvrtc, resolved once per Jit (from the compiledir's record when it is still
    /// valid: no library is loaded for that).
    pub fn nvrtc(&self) -> Result<Arc<NvrtcTool>> {
        let mut slot = self.cuda_modules().nvrtc.lock().unwrap();
        if let Some(t) = slot.as_ref() {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(nvrtc::resolve(self.config(), Some(self.store()))?);
        *slot = Some(Arc::clone(&t));
        Ok(t)
    }

    /// The key of a request compiled by NVRTC, and what it is derived from.
    pub fn nvrtc_key_for(&self, req: &SourceRequest) -> Result<NvrtcKey> {
        req.validate_for(
            crate::compile::flags::Dialect::Nvrtc,
            &self.config().allowed_flags,
        )?;
        if req.language != Language::Cuda {
            return Err(Error::InvalidRequest(format!(
                "NVRTC compiles CUDA, not {}",
                req.language.name()
            )));
        }
        let tool = self.nvrtc()?;
        let (arch, output) = nvrtc::target(self.config());
        let mut user = req.origin_flags();
        user.extend(req.flags.iter().cloned());
        let options = tool.options(&arch, &user);
        let material = KeyMaterial {
            encoding: KEY_ENCODING,
            layout: LAYOUT_VERSION,
            language: req.language.name().into(),
            source_blake3: blake3::hash(&req.source).to_hex().to_string(),
            toolchain: tool.toolchain.clone(),
            target: NvrtcTool::key_target(&arch),
            flags: options.clone(),
            extra_inputs: req
                .extra_inputs
                .iter()
                .map(|(name, bytes)| ExtraInput {
                    name: name.clone(),
                    blake3: blake3::hash(bytes).to_hex().to_string(),
                })
                .collect(),
            runtime_tag: self.config().runtime_tag.clone(),
            template: req.template.clone(),
        };
        Ok(NvrtcKey {
            key: material.key(),
            material,
            options,
            arch,
            output,
        })
    }

    fn nvrtc_fetch(&self, req: &SourceRequest, k: &NvrtcKey) -> Result<Fetched> {
        if log::log_enabled!(log::Level::Debug) {
            match self.store().explain(&k.key, &k.material, &req.name) {
                Ok(e) => log::debug!("{}: {e}", req.name),
                Err(e) => log::debug!("{}: cannot explain: {e}", req.name),
            }
        }
        let tool = self.nvrtc()?;
        let source_file = req.language.source_file();
        let display = req.display_name();
        let timeout = self.config().compile_timeout;
        // NVRTC searches only what its options name (`-no-source-include`).
        let scope =
            crate::store::manifest::SearchScope::new(crate::compile::include_roots(&k.options));
        let fetched = self
            .store()
            .get_or_build_tracked(&k.key, &scope, &mut |staging| {
                let write = |name: &str, bytes: &[u8]| {
                    let p = staging.join(name);
                    staging
                        .create_file(name, crate::store::trust::file_mode())
                        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
                        .ctx("writing", &p)
                };
                // The source and extra inputs are kept in the entry, as for nvcc; NVRTC
                // takes them from memory.
                write(source_file, &req.source)?;
                for (name, bytes) in &req.extra_inputs {
                    write(name, bytes)?;
                }
                let built = tool
                    .compile(
                        staging.path(),
                        source_file,
                        &req.source,
                        &req.extra_inputs,
                        &k.options,
                        k.output,
                        timeout,
                    )
                    .map_err(|e| match e {
                        Error::Compile(mut ce) => {
                            ce.output = diagnostics::explain(&ce.output, source_file, &display);
                            Error::Compile(ce)
                        }
                        e => e,
                    })?;
                write(k.output.artifact_file(), &built.image)?;
                let headers = built
                    .headers
                    .into_iter()
                    .filter(|p| !p.starts_with(staging.path()))
                    .collect();
                Ok(Built {
                    source_name: req.name.clone(),
                    group: None,
                    source_file: source_file.into(),
                    compile_time: built.elapsed,
                    compiler_output: diagnostics::rename(&built.log, source_file, &display),
                    key_material: k.material.clone(),
                    headers,
                })
            });
        match &fetched {
            Ok(f) if f.hit => self.stats().hit(f.meta.compile_ms, f.lock_wait),
            Ok(f) => {
                self.stats().miss(f.meta.compile_ms, f.lock_wait);
                if !f.is_private() {
                    self.store().auto_prune();
                }
            }
            Err(Error::Compile(_)) => self.stats().failed(),
            Err(_) => {}
        }
        fetched
    }

    /// Renders a CUDA template and compiles its kernels with NVRTC through the cache, as
    /// the [`crate::cuda`] handles do (with `-minimal` where this NVRTC takes it: the
    /// templates use no textures, device runtime or device-side launches; and for
    /// `cuda/elemwise`, `--Ofast-compile=min`). Returns the
    /// module and the rendered request (whose source holds the template's launch data).
    pub fn nvrtc_template(
        &self,
        req: &crate::compile::TemplateRequest,
    ) -> Result<(CudaModule, SourceRequest)> {
        let src = self.nvrtc_source(req)?;
        Ok((self.cuda_module(&src)?, src))
    }

    /// A CUDA template rendered as NVRTC compiles it for the handles: its flags with
    /// `-minimal` where this NVRTC takes it, and, for `cuda/elemwise`,
    /// `--Ofast-compile=min`.
    pub fn nvrtc_source(&self, req: &crate::compile::TemplateRequest) -> Result<SourceRequest> {
        let mut src = self.render(req)?;
        let tool = self.nvrtc()?;
        if tool.minimal {
            src.flags.push("-minimal".into());
        }
        // A fused element-wise kernel is bound by memory: less optimisation effort
        // halves NVRTC's time on it (mostly ptxas's) for the same bandwidth. The other
        // templates are compute-bound or rarely new, and get NVRTC's full effort.
        if tool.fast_compile && req.name.trim_start_matches("cuda/") == "elemwise" {
            src.flags.push("--Ofast-compile=min".into());
        }
        Ok(src)
    }

    /// Builds a CUDA template's module (the cubin the handles load, for the `cuda_arch`
    /// setting, else the local GPU's arch) through the cache without loading it: what
    /// `xcache compile -t cuda/…` and `xcache warm` build, so that a CI job without a
    /// GPU warms what the GPU machines load. Needs no GPU.
    pub fn build_cuda_template(
        &self,
        req: &crate::compile::TemplateRequest,
    ) -> Result<CacheOutcome> {
        let src = self.nvrtc_source(req)?;
        self.build_cuda_module(&src)
    }

    /// Compiles a CUDA source with NVRTC through the cache and returns the artifact's
    /// path, without loading it (what `xcache compile` and warming want).
    pub fn build_cuda_module(&self, req: &SourceRequest) -> Result<CacheOutcome> {
        let start = Instant::now();
        let k = self.nvrtc_key_for(req)?;
        let mut f = self.nvrtc_fetch(req, &k)?;
        let valid_until = f.hand_out();
        Ok(CacheOutcome {
            valid_until,
            key: f.key,
            path: f.artifact_path(),
            hit: f.hit,
            elapsed: start.elapsed(),
            lock_wait: f.lock_wait,
            lock_waits: f.lock_waits.clone(),
            warnings: f.warnings.clone(),
            meta: f.meta.clone(),
            unrecorded: f.unrecorded.clone(),
            tier: f.tier,
        })
    }

    /// Compiles a CUDA source (device code only) with NVRTC through the cache, if
    /// needed, and reads the cubin, checking it against the entry's hash while the
    /// key's lock is held. A request this Jit has served before is served from memory.
    /// Needs no GPU; [`crate::cuda::Cuda::load`] loads the result.
    pub fn cuda_module(&self, req: &SourceRequest) -> Result<CudaModule> {
        let start = Instant::now();
        let fp = Fingerprint::of(req);
        let h = {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            fp.hash(&mut s);
            s.finish()
        };
        if let Some(m) = self
            .cuda_modules()
            .memo
            .lock()
            .unwrap()
            .get(&h)
            .and_then(|v| v.iter().find(|m| m.fp == fp))
        {
            self.stats().memory_hit();
            return Ok(CudaModule {
                hit: true,
                compile_ms: 0,
                elapsed: start.elapsed(),
                lock_wait: Duration::ZERO,
                compiler_output: String::new(),
                warnings: Vec::new(),
                unrecorded: None,
                ..m.module.clone()
            });
        }
        let k = self.nvrtc_key_for(req)?;
        let mut fetched = self.nvrtc_fetch(req, &k)?;
        let path = fetched.artifact_path();
        // Read under the key's lock, through the descriptor that was checked, and check
        // the bytes themselves: what is loaded is exactly what was verified.
        let bytes = fetched.read_artifact()?;
        if blake3::hash(&bytes).to_hex().as_str() != fetched.meta.artifact.blake3 {
            return Err(Error::Load {
                path,
                message: "the module changed after its hash was checked".into(),
            });
        }
        let Fetched {
            key,
            hit,
            meta,
            warnings,
            lock_wait,
            unrecorded,
            ..
        } = fetched; // releases the lock
        let module = CudaModule {
            key,
            path,
            hit,
            compile_ms: meta.compile_ms,
            elapsed: start.elapsed(),
            lock_wait,
            compiler_output: if hit {
                String::new()
            } else {
                meta.compiler_output
            },
            warnings,
            unrecorded,
            output: k.output,
            arch: k.arch.clone(),
            image: Arc::new(Image {
                bytes,
                arch: k.arch,
                loaded: Mutex::new(Vec::new()),
            }),
        };
        let mut memo = self.cuda_modules().memo.lock().unwrap();
        let list = memo.entry(h).or_default();
        match list.iter().find(|m| m.fp == fp) {
            // Another thread got here first: share its image (one load per context).
            Some(m) => Ok(CudaModule {
                image: Arc::clone(&m.module.image),
                ..module
            }),
            None => {
                list.push(Memoised {
                    fp,
                    module: module.clone(),
                });
                Ok(module)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(code: i32) -> Error {
        Error::Cuda {
            what: "loading a CUDA module (cuModuleLoadData)".into(),
            code,
            message: "the driver's words".into(),
        }
    }

    #[test]
    fn a_cubin_for_another_gpu_names_both_archs_and_the_setting() {
        let e = explain_load_error(cuda(NO_BINARY_FOR_GPU), "sm_80", Some((9, 0)));
        let text = e.to_string();
        for part in [
            "built for sm_80",
            "this GPU is sm_90",
            "cuda_arch=sm_90",
            "compute_80",
            "the driver's words",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(e.kind(), "cuda");
        let unknown = explain_load_error(cuda(NO_BINARY_FOR_GPU), "sm_80", None).to_string();
        assert!(unknown.contains("built for sm_80") && unknown.contains("cuda_arch"));
    }

    #[test]
    fn ptx_newer_than_the_driver_says_what_to_change() {
        let text =
            explain_load_error(cuda(UNSUPPORTED_PTX_VERSION), "compute_90", None).to_string();
        assert!(
            text.contains("newer than this driver") && text.contains("nvrtc="),
            "{text}"
        );
    }

    #[test]
    fn other_errors_are_left_as_they_are() {
        let e = explain_load_error(cuda(2), "sm_90", Some((9, 0)));
        assert_eq!(e.to_string(), cuda(2).to_string());
        let io = explain_load_error(Error::InvalidRequest("x".into()), "sm_90", None);
        assert_eq!(io.to_string(), "invalid request: x");
    }
}
