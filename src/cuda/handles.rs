//! Running the CUDA templates from Rust, without a CUDA crate: device memory, contexts
//! and launches go through the driver API ([`crate::cuda::driver`], `libcuda.so.1` loaded at
//! run time), and each template's kernels are built one of two ways, per the
//! `cuda_compiler` setting:
//!
//! - `nvrtc` (the default): the template's kernels alone, compiled in-process by NVRTC
//!   to a cubin ([`crate::cuda::module`]), loaded with `cuModuleLoadData` and launched by
//!   xcache's launcher ([`crate::cuda::launch`]), which makes the template's launch
//!   decisions (kernel, grid, shared memory, workspace) in Rust. No host compiler runs.
//! - `nvcc`: the template with its own host launcher (`xc_elemwise`, ...), compiled by
//!   nvcc into a shared object and called through its C ABI.
//!
//! Both give the same results (the same kernels, the same grids) and the same API.
//!
//! ```no_run
//! # fn main() -> xcache::Result<()> {
//! let jit = xcache::Jit::from_env()?;
//! let cuda = jit.cuda()?;                                   // fails cleanly without a GPU
//! let f = cuda.elemwise::<f32>(&jit, "a * exp(b) + c", 3)?;
//! let (a, b, c) = (cuda.upload(&[1.0f32; 4])?, cuda.upload(&[0.0f32; 4])?, cuda.upload(&[2.0f32; 4])?);
//! let mut out = cuda.alloc::<f32>(4)?;
//! f.launch(&[&a, &b, &c], &mut out)?;
//! assert_eq!(out.download()?, vec![3.0; 4]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::compile::TemplateRequest;
use crate::config::CudaCompiler;
use arrayvec::ArrayVec;

use crate::cuda::driver::{Context, Driver, Function, MemPool, Stream};
use crate::cuda::launch::{Arg, Args, ElemwisePlan, GemmPlan, Launch, Launches, ReducePlan};
use crate::cuda::module::CudaModule;
use crate::error::{Error, Result};
use crate::kernels::Element;
use crate::runtime::{Compiled, Jit, Symbol};
use crate::store::key::Key;

/// `int xc_elemwise(int64_t n, const void *const *inputs, void *out, void *stream)`
pub type CudaElemwiseFn =
    unsafe extern "C" fn(i64, *const *const c_void, *mut c_void, *mut c_void) -> i32;
/// `int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream)`
pub type CudaReduceFn =
    unsafe extern "C" fn(i64, i64, *const c_void, *mut c_void, *mut c_void) -> i32;
/// `int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream)`
pub type CudaGemmFn = unsafe extern "C" fn(
    i64,
    i64,
    i64,
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut c_void,
) -> i32;
/// `int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias, void *c, void *stream)`
pub type CudaGemmBiasFn = unsafe extern "C" fn(
    i64,
    i64,
    i64,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut c_void,
) -> i32;

/// Element types a [`DeviceBuffer`] can hold: the templates' element types, and `u16`
/// for the bits of bf16 or fp16 GEMM inputs ([`GemmPrecision::Bf16`], [`GemmPrecision::Fp16`]).
pub trait DeviceElement: Copy + Send + Sync + 'static {}
impl<T: Element> DeviceElement for T {}
impl DeviceElement for u16 {}

/// How `cuda/gemm` multiplies (its `precision` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPrecision {
    /// The element type's own multiply-add on the SIMT units (float32 or float64).
    Ieee,
    /// float32 A and B rounded to TF32 on the tensor cores, float32 accumulation.
    Tf32,
    /// A and B hold bf16 bits (`u16`); tensor cores, float32 accumulation and C.
    Bf16,
    /// A and B hold IEEE half bits (`u16`); tensor cores, float32 accumulation and C.
    Fp16,
}

impl GemmPrecision {
    /// The template's parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            GemmPrecision::Ieee => "ieee",
            GemmPrecision::Tf32 => "tf32",
            GemmPrecision::Bf16 => "bf16",
            GemmPrecision::Fp16 => "fp16",
        }
    }

    /// True when A and B are 16-bit (`u16` buffers).
    pub fn half_inputs(self) -> bool {
        matches!(self, GemmPrecision::Bf16 | GemmPrecision::Fp16)
    }
}

/// The GPU the handle uses.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// Marketing name.
    pub name: String,
    /// Compute capability.
    pub major: i32,
    /// Compute capability.
    pub minor: i32,
    /// Multiprocessors.
    pub sms: i32,
}

struct Inner {
    driver: &'static Driver,
    /// The device's primary context (retained for the life of the process).
    ctx: usize,
    device: i32,
    info: DeviceInfo,
}

impl Inner {
    /// The context to work in: the current one, else ours made current.
    fn enter(&self) -> Result<Context> {
        self.driver.enter(self.ctx as Context)
    }
}

/// A handle on a GPU through the driver API.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({})", self.inner.info.name)
    }
}

impl Jit {
    /// A handle on the GPU of the current CUDA context (else the first GPU, through its
    /// primary context, which the CUDA runtime shares). An error says why there is none
    /// (no driver, no device). Compiles nothing; with `cuda_compiler=nvrtc`, starts
    /// loading libnvrtc in the background ([`crate::compile::nvrtc::preload_in_background`]).
    pub fn cuda(&self) -> Result<Cuda> {
        let no_gpu = |why: String| {
            Error::Cuda {
            what: "looking for a GPU".into(),
            code: 100,
            message: format!(
                "{why}. Fix: run on a machine with an NVIDIA GPU and its driver, or use the C templates (--device cpu)"
            ),
        }
        };
        let driver = Driver::get().map_err(no_gpu)?;
        if self.config().cuda_compiler == CudaCompiler::Nvrtc {
            crate::compile::nvrtc::preload_in_background(
                self.config().clone(),
                self.store().clone(),
            );
        }
        let (device, ctx) = driver.primary_context(0)?;
        driver.enter(ctx)?;
        let info = DeviceInfo {
            name: driver.device_name(device)?,
            major: driver.attribute(device, crate::cuda::driver::ATTR_CC_MAJOR)?,
            minor: driver.attribute(device, crate::cuda::driver::ATTR_CC_MINOR)?,
            sms: driver.attribute(device, crate::cuda::driver::ATTR_MULTIPROCESSOR_COUNT)?,
        };
        Ok(Cuda {
            inner: Arc::new(Inner {
                driver,
                ctx: ctx as usize,
                device,
                info,
            }),
        })
    }
}

impl Jit {
    /// The process's handle on its GPU: made by the first call (as [`Jit::cuda`] makes
    /// one, through this Jit's settings), then shared by every caller. What embedders
    /// that launch from many places want (the Python package, the C ABI): one context
    /// and one set of per-context module loads.
    pub fn shared_cuda(&self) -> Result<Cuda> {
        static SHARED: Mutex<Option<Cuda>> = Mutex::new(None);
        let mut g = SHARED.lock().unwrap();
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let c = self.cuda()?;
        *g = Some(c.clone());
        Ok(c)
    }
}

/// What a kernel handle was built from: the entry, whether this request compiled it,
/// and by which compiler.
#[derive(Debug, Clone)]
pub struct CudaBuild {
    /// The key.
    pub key: Key,
    /// The artifact in the cache: a cubin (NVRTC) or a shared object (nvcc).
    pub path: PathBuf,
    /// True when no compiler ran for this request.
    pub hit: bool,
    /// How long the compile took when the entry was built (what a hit saved), in ms.
    pub compile_ms: u64,
    /// Wall time of this request, the module's load through the driver included.
    pub elapsed: Duration,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    /// What the compiler printed although it succeeded (only when it ran now).
    pub compiler_output: String,
    /// Cache faults repaired while serving it.
    pub warnings: Vec<String>,
    /// Which compiler built it.
    pub compiler: CudaCompiler,
}

impl CudaBuild {
    fn nvcc(c: &Compiled) -> CudaBuild {
        CudaBuild {
            key: c.key,
            path: c.path.clone(),
            hit: c.hit,
            compile_ms: c.compile_ms,
            elapsed: c.elapsed,
            lock_wait: c.lock_wait,
            compiler_output: c.compiler_output.clone(),
            warnings: c.warnings.clone(),
            compiler: CudaCompiler::Nvcc,
        }
    }

    fn nvrtc(m: &CudaModule, elapsed: Duration) -> CudaBuild {
        CudaBuild {
            key: m.key,
            path: m.path.clone(),
            hit: m.hit,
            compile_ms: m.compile_ms,
            elapsed,
            lock_wait: m.lock_wait,
            compiler_output: m.compiler_output.clone(),
            warnings: m.warnings.clone(),
            compiler: CudaCompiler::Nvrtc,
        }
    }
}

/// A kernel function of a loaded module, per context, with what the launcher asked of
/// it (occupancies, a raised shared-memory limit).
struct FuncState {
    f: Function,
    smem_limit: u32,
    occupancy: Vec<((u32, u32), Option<i32>)>,
}

/// A module loaded through the driver, and its kernels found by name.
pub struct CudaKernels {
    module: CudaModule,
    cuda: Cuda,
    /// Per context, the kernels found by name.
    funcs: Mutex<HashMap<usize, HashMap<String, FuncState>>>,
}

// SAFETY: function handles are usable from any thread of their context's process; the
// map is behind a mutex.
unsafe impl Send for CudaKernels {}
// SAFETY: as above.
unsafe impl Sync for CudaKernels {}

impl std::fmt::Debug for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaKernels({:?})", self.module.path)
    }
}

/// Stream-ordered pools for launch workspaces, one per device, kept for the life of the
/// process (as the nvcc launchers keep theirs).
fn pool(d: &Driver, dev: i32) -> Option<MemPool> {
    static POOLS: OnceLock<Mutex<HashMap<i32, Option<usize>>>> = OnceLock::new();
    let mut m = POOLS.get_or_init(Default::default).lock().unwrap();
    m.entry(dev)
        .or_insert_with(|| d.create_pool(dev).map(|p| p as usize))
        .map(|p| p as MemPool)
}

impl CudaKernels {
    fn with_func<R>(
        &self,
        ctx: Context,
        name: &str,
        f: impl FnOnce(&Driver, &mut FuncState) -> Result<R>,
    ) -> Result<R> {
        let d = self.cuda.inner.driver;
        let mut funcs = self.funcs.lock().unwrap();
        let in_ctx = funcs.entry(ctx as usize).or_default();
        // Found by `&str`: a launch of a kernel seen before allocates nothing.
        if !in_ctx.contains_key(name) {
            let m = self.module.image.module_in(d, ctx)?;
            let func = d.function(m, name)?;
            in_ctx.insert(
                name.to_string(),
                FuncState {
                    f: func,
                    smem_limit: 48 * 1024,
                    occupancy: Vec::new(),
                },
            );
        }
        f(d, in_ctx.get_mut(name).expect("inserted"))
    }

    /// Loads the module into the current context and finds `names` there, so that
    /// errors (a missing kernel, a module this GPU cannot run) show at once.
    pub fn find(&self, names: &[&str]) -> Result<()> {
        let ctx = self.cuda.inner.enter()?;
        for n in names {
            self.with_func(ctx, n, |_, _| Ok(()))?;
        }
        Ok(())
    }

    /// Queues `launches` on `stream` (NULL: the legacy default stream). Allocates
    /// nothing: the arguments go from the plan's inline slots to the driver.
    fn run(&self, ctx: Context, launches: &[Launch], stream: Stream) -> Result<()> {
        for l in launches {
            self.with_func(ctx, &l.kernel, |d, fs| {
                if l.smem > fs.smem_limit {
                    d.set_max_dynamic_shared(fs.f, l.smem as i32)?;
                    fs.smem_limit = l.smem;
                }
                let mut slots = [0u64; 12];
                let mut params = [std::ptr::null_mut::<c_void>(); 12];
                for (slot, a) in slots.iter_mut().zip(l.args.iter()) {
                    *slot = a.slot();
                }
                for (p, s) in params.iter_mut().zip(slots.iter_mut()) {
                    *p = s as *mut u64 as *mut c_void;
                }
                // SAFETY: the plan's arguments have the kernel's parameter types (the
                // templates' signatures, mirrored by `cuda::launch`); each slot holds one.
                let rc = unsafe {
                    d.launch(
                        fs.f,
                        l.grid,
                        l.block,
                        l.smem,
                        stream,
                        &mut params[..l.args.len()],
                    )
                };
                d.check(rc, || format!("launching {}", l.kernel))
            })?;
        }
        Ok(())
    }

    /// Plans with `plan` (asking this module's kernels' occupancy and the pool's
    /// workspace), queues the launches on `stream`, then frees the workspace in that
    /// stream's order.
    fn plan_and_run(
        &self,
        stream: Stream,
        plan: impl FnOnce(&mut dyn crate::cuda::launch::Device) -> Result<Launches>,
    ) -> Result<()> {
        let ctx = self.cuda.inner.enter()?;
        let mut dev = Planner {
            kernels: self,
            ctx,
            dev: None,
            stream,
            taken: ArrayVec::new(),
        };
        let launches = plan(&mut dev);
        let r = launches.and_then(|l| self.run(ctx, &l, stream));
        let d = self.cuda.inner.driver;
        for p in dev.taken {
            d.free_async(p, stream);
        }
        r
    }

    /// Queues what `plan` gives (a template's plan from [`crate::cuda::launch`], asking
    /// this module's kernels' occupancy and stream-ordered workspace) on `stream`, then
    /// frees the workspace in that stream's order. Allocates nothing on the host once
    /// the plan's kernels have been found.
    ///
    /// # Safety
    /// The launches must name kernels of this module with their parameters' types, the
    /// pointers must address what the kernels touch, and `stream` must be NULL (the
    /// legacy default stream) or a live stream of the current context.
    pub unsafe fn run_plan(
        &self,
        stream: Stream,
        plan: impl FnOnce(&mut dyn crate::cuda::launch::Device) -> Result<Launches>,
    ) -> Result<()> {
        self.plan_and_run(stream, plan)
    }

    /// The kernel `name`'s `CUfunction` in the current context (the module loaded there
    /// first), for a caller that launches it itself (`cuLaunchKernel`).
    pub fn function(&self, name: &str) -> Result<Function> {
        let ctx = self.cuda.inner.enter()?;
        self.with_func(ctx, name, |_, fs| Ok(fs.f))
    }

    /// Queues the kernel `name` with CUDA's own argument array: `params[i]` points at
    /// the i-th argument's value (as `cuLaunchKernel`'s `kernelParams`), whatever its
    /// type. Raises the kernel's dynamic shared memory limit when `smem` needs it.
    ///
    /// # Safety
    /// `params` must hold one pointer per kernel parameter, each to a value of that
    /// parameter's type; the values' pointers must address what the kernel touches;
    /// `stream` must be NULL or a live stream of the current context.
    pub unsafe fn launch_params(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        stream: Stream,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let ctx = self.cuda.inner.enter()?;
        self.with_func(ctx, name, |d, fs| {
            if smem > fs.smem_limit {
                d.set_max_dynamic_shared(fs.f, smem as i32)?;
                fs.smem_limit = smem;
            }
            // SAFETY: as this function's contract says.
            let rc = unsafe { d.launch(fs.f, grid, block, smem, stream, params) };
            d.check(rc, || format!("launching {name}"))
        })
    }

    /// The module these kernels come from.
    pub fn module(&self) -> &CudaModule {
        &self.module
    }

    /// Queues the kernel `name` (an extern "C" `__global__` function of the module) on
    /// `stream` (NULL: the legacy default stream; a `CUstream`/`cudaStream_t` of this
    /// context otherwise, such as CuPy's or torch's current stream).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type, every pointer
    /// must address what the kernel will touch, and `stream` must be NULL or a live
    /// stream of the current context.
    pub unsafe fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        stream: Stream,
        args: &[Arg],
    ) -> Result<()> {
        if args.len() > Args::new().capacity() {
            return Err(Error::InvalidRequest(format!(
                "{name}: {} arguments; a launch takes at most {}",
                args.len(),
                Args::new().capacity()
            )));
        }
        let kernel = crate::cuda::launch::KernelName::from(name).map_err(|_| {
            Error::InvalidRequest(format!(
                "{name}: a kernel name of at most {} bytes",
                crate::cuda::launch::KernelName::new().capacity()
            ))
        })?;
        let ctx = self.cuda.inner.enter()?;
        self.run(
            ctx,
            &[Launch {
                kernel,
                grid,
                block,
                smem,
                args: args.iter().copied().collect(),
            }],
            stream,
        )
    }
}

/// The device as a plan sees it.
struct Planner<'k> {
    kernels: &'k CudaKernels,
    ctx: Context,
    /// The current device, asked for when a workspace is (most launches need none).
    dev: Option<i32>,
    stream: Stream,
    taken: ArrayVec<u64, 4>,
}

impl crate::cuda::launch::Device for Planner<'_> {
    fn sms(&self) -> i64 {
        self.kernels.cuda.inner.info.sms as i64
    }

    fn per_sm(&mut self, kernel: &str, threads: u32, smem: u32) -> Option<i32> {
        self.kernels
            .with_func(self.ctx, kernel, |d, fs| {
                if let Some((_, n)) = fs.occupancy.iter().find(|(k, _)| *k == (threads, smem)) {
                    return Ok(*n);
                }
                if smem > fs.smem_limit {
                    // As the C launcher: raise the limit, then ask (a failure is 0).
                    if d.set_max_dynamic_shared(fs.f, smem as i32).is_ok() {
                        fs.smem_limit = smem;
                    }
                }
                let n = d.occupancy(fs.f, threads as i32, smem as usize).ok();
                fs.occupancy.push(((threads, smem), n));
                Ok(n)
            })
            .ok()
            .flatten()
    }

    fn workspace(&mut self, bytes: usize) -> Option<u64> {
        let d = self.kernels.cuda.inner.driver;
        if self.taken.is_full() {
            return None;
        }
        let inner = &self.kernels.cuda.inner;
        let dev = *self
            .dev
            .get_or_insert_with(|| d.current_device().unwrap_or(inner.device));
        let p = d.alloc_async(pool(d, dev)?, bytes, self.stream)?;
        self.taken.push(p);
        Some(p)
    }
}

impl Cuda {
    /// The GPU.
    pub fn device(&self) -> Result<DeviceInfo> {
        Ok(self.inner.info.clone())
    }

    /// The GPU's multiprocessors (what the launch plans size grids by).
    pub fn sms(&self) -> i64 {
        self.inner.info.sms as i64
    }

    /// The GPU's compute capability, (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        (self.inner.info.major, self.inner.info.minor)
    }

    /// Waits for every queued kernel; reports the first asynchronous error.
    pub fn sync(&self) -> Result<()> {
        self.inner.enter()?;
        self.inner.driver.synchronize()
    }

    /// A stream of the GPU's context that does not synchronise with the legacy default
    /// stream; destroyed on drop. Launches take its [`CudaStream::handle`].
    pub fn stream(&self) -> Result<CudaStream> {
        self.inner.enter()?;
        let s = self.inner.driver.create_stream()?;
        Ok(CudaStream {
            stream: s as usize,
            inner: Arc::clone(&self.inner),
        })
    }

    /// `n` uninitialised elements on the device.
    pub fn alloc<T: DeviceElement>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::InvalidRequest(format!("{n} elements do not fit in memory")))?;
        self.inner.enter()?;
        let p = self.inner.driver.alloc(bytes.max(1))?;
        Ok(DeviceBuffer {
            ptr: p as usize as *mut c_void,
            len: n,
            inner: Arc::clone(&self.inner),
            _t: PhantomData,
        })
    }

    /// A device copy of `host`.
    pub fn upload<T: DeviceElement>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc::<T>(host.len())?;
        // SAFETY: both ranges hold `host.len()` elements.
        unsafe {
            self.inner.driver.copy_to_device(
                buf.ptr as u64,
                host.as_ptr().cast(),
                std::mem::size_of_val(host),
            )?
        };
        Ok(buf)
    }

    /// Loads a module built by NVRTC ([`Jit::cuda_module`]) into the current context;
    /// its kernels are then found by name ([`CudaKernels::launch`]).
    pub fn load(&self, module: &CudaModule) -> Result<CudaKernels> {
        let k = CudaKernels {
            module: module.clone(),
            cuda: self.clone(),
            funcs: Mutex::new(HashMap::new()),
        };
        let ctx = self.inner.enter()?;
        module.image.module_in(self.inner.driver, ctx)?;
        Ok(k)
    }

    /// Renders, compiles with NVRTC (through the cache) and loads `req`, checking that
    /// `kernels` are there.
    fn nvrtc_kernels(
        &self,
        jit: &Jit,
        req: &TemplateRequest,
        kernels: &[&str],
    ) -> Result<(CudaKernels, String, CudaBuild)> {
        let start = std::time::Instant::now();
        let (module, src) = jit.nvrtc_template(req)?;
        let k = self.load(&module)?;
        k.find(kernels)?;
        let build = CudaBuild::nvrtc(&module, start.elapsed());
        Ok((k, String::from_utf8_lossy(&src.source).into_owned(), build))
    }

    /// Compiles (once) and loads the `cuda/elemwise` template for `T`.
    pub fn elemwise<T: Element>(
        &self,
        jit: &Jit,
        expr: &str,
        arity: usize,
    ) -> Result<CudaElemwise<T>> {
        let req = TemplateRequest::new("cuda/elemwise")
            .param("dtype", T::DTYPE)
            .param("arity", arity)
            .param("expr", expr);
        let (launcher, build) = match jit.config().cuda_compiler {
            CudaCompiler::Nvcc => {
                let compiled = jit.compile_template(&req)?;
                // SAFETY: the template exports xc_elemwise with this ABI.
                let f = unsafe { compiled.symbol::<CudaElemwiseFn>("xc_elemwise")? };
                (Backend::Nvcc(f), CudaBuild::nvcc(&compiled))
            }
            CudaCompiler::Nvrtc => {
                let (k, src, build) = self.nvrtc_kernels(jit, &req, &["xc_vector", "xc_scalar"])?;
                (
                    Backend::Nvrtc(Box::new(k), ElemwisePlan::parse(&src)?),
                    build,
                )
            }
        };
        Ok(CudaElemwise {
            launcher,
            arity,
            build,
            cuda: self.clone(),
            _t: PhantomData,
        })
    }

    /// Compiles (once) and loads the `cuda/reduce` template for `T`, reducing each row.
    pub fn reduce<T: Element>(&self, jit: &Jit, op: &str, pre: &str) -> Result<CudaReduce<T>> {
        self.reduce_axis(jit, op, pre, 1)
    }

    /// Compiles (once) and loads the `cuda/reduce` template for `T` over `axis`: 1
    /// reduces each row (one result per row), 0 the leading axis (one per column).
    pub fn reduce_axis<T: Element>(
        &self,
        jit: &Jit,
        op: &str,
        pre: &str,
        axis: usize,
    ) -> Result<CudaReduce<T>> {
        let req = TemplateRequest::new("cuda/reduce")
            .param("dtype", T::DTYPE)
            .param("op", op)
            .param("pre", pre)
            .param("axis", axis);
        let (launcher, build) = match jit.config().cuda_compiler {
            CudaCompiler::Nvcc => {
                let compiled = jit.compile_template(&req)?;
                // SAFETY: the template exports xc_reduce with this ABI.
                let f = unsafe { compiled.symbol::<CudaReduceFn>("xc_reduce")? };
                (Backend::Nvcc(f), CudaBuild::nvcc(&compiled))
            }
            CudaCompiler::Nvrtc => {
                let first = if axis == 1 {
                    "xc_rows_finish"
                } else {
                    "xc_cols_finish"
                };
                let (k, src, build) = self.nvrtc_kernels(jit, &req, &[first])?;
                (Backend::Nvrtc(Box::new(k), ReducePlan::parse(&src)?), build)
            }
        };
        Ok(CudaReduce {
            launcher,
            axis,
            build,
            cuda: self.clone(),
            _t: PhantomData,
        })
    }

    /// Compiles (once) and loads the `cuda/gemm` template for `T` (f32 or f64), in
    /// `T`'s own arithmetic.
    pub fn gemm<T: Element>(&self, jit: &Jit, relu: bool) -> Result<CudaGemm<T>> {
        self.gemm_with(jit, relu, GemmPrecision::Ieee)
    }

    /// Compiles (once) and loads the `cuda/gemm` template for C of type `T` with the
    /// given precision (the tensor-core ones need `T = f32` and a GPU of compute
    /// capability 8.0 or later).
    pub fn gemm_with<T: Element>(
        &self,
        jit: &Jit,
        relu: bool,
        precision: GemmPrecision,
    ) -> Result<CudaGemm<T>> {
        let req = TemplateRequest::new("cuda/gemm")
            .param("dtype", T::DTYPE)
            .param("relu", relu)
            .param("precision", precision.as_str());
        let (launcher, build) = match jit.config().cuda_compiler {
            CudaCompiler::Nvcc => {
                let compiled = jit.compile_template(&req)?;
                // SAFETY: the template exports xc_gemm_bias with this ABI.
                let f = unsafe { compiled.symbol::<CudaGemmBiasFn>("xc_gemm_bias")? };
                (Backend::Nvcc(f), CudaBuild::nvcc(&compiled))
            }
            CudaCompiler::Nvrtc => {
                let (k, src, build) = self.nvrtc_kernels(jit, &req, &["xc_gemm_c0_v"])?;
                (Backend::Nvrtc(Box::new(k), GemmPlan::parse(&src)?), build)
            }
        };
        Ok(CudaGemm {
            launcher,
            precision,
            build,
            cuda: self.clone(),
            _t: PhantomData,
        })
    }

    /// Maps an nvcc launcher's return code: its own refusals are negative, a CUDA
    /// runtime error positive (a `cudaError_t`).
    fn launched(&self, code: i32, kernel: &str) -> Result<()> {
        match code {
            0 => Ok(()),
            -1 => Err(Error::InvalidRequest(format!(
                "{kernel}: a size is negative or too large"
            ))),
            -2 => Err(Error::InvalidRequest(format!(
                "{kernel}: a pointer is NULL"
            ))),
            c if c < 0 => Err(Error::InvalidRequest(format!(
                "{kernel}: refused the call (code {c})"
            ))),
            c => Err(Error::Cuda {
                what: format!("launching {kernel}"),
                code: c,
                message: runtime_error_name(c),
            }),
        }
    }
}

/// The names of common `cudaError_t` values (the nvcc launchers return them; xcache
/// loads no CUDA runtime of its own to ask).
pub fn runtime_error_name(code: i32) -> String {
    let name = match code {
        1 => "cudaErrorInvalidValue",
        2 => "cudaErrorMemoryAllocation",
        3 => "cudaErrorInitializationError",
        9 => "cudaErrorInvalidConfiguration",
        35 => "cudaErrorInsufficientDriver",
        98 => "cudaErrorInvalidDeviceFunction",
        100 => "cudaErrorNoDevice",
        101 => "cudaErrorInvalidDevice",
        209 => "cudaErrorNoKernelImageForDevice",
        222 => "cudaErrorUnsupportedPtxVersion",
        400 => "cudaErrorInvalidResourceHandle",
        700 => "cudaErrorIllegalAddress",
        701 => "cudaErrorLaunchOutOfResources",
        719 => "cudaErrorLaunchFailure",
        801 => "cudaErrorNotSupported",
        999 => "cudaErrorUnknown",
        _ => return format!("cudaError_t {code} (see the CUDA runtime's cudaError enum)"),
    };
    format!("{name} ({code})")
}

/// A CUDA stream made by [`Cuda::stream`], destroyed on drop.
pub struct CudaStream {
    stream: usize,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStream({:#x})", self.stream)
    }
}

impl CudaStream {
    /// The `CUstream` (also a `cudaStream_t`), for the `launch_raw_on` functions.
    pub fn handle(&self) -> Stream {
        self.stream as Stream
    }

    /// Waits for the work queued on it; reports the first asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.enter()?;
        self.inner.driver.synchronize_stream(self.handle())
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        if self.inner.enter().is_ok() {
            self.inner.driver.destroy_stream(self.handle());
        }
    }
}

/// Elements of `T` in GPU memory, freed on drop.
pub struct DeviceBuffer<T> {
    ptr: *mut c_void,
    len: usize,
    inner: Arc<Inner>,
    _t: PhantomData<T>,
}

// SAFETY: a device pointer is an address in GPU memory, usable from any host thread.
unsafe impl<T: Send> Send for DeviceBuffer<T> {}
// SAFETY: shared references only read the pointer value.
unsafe impl<T: Sync> Sync for DeviceBuffer<T> {}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:p}, {})", self.ptr, self.len)
    }
}

impl<T: DeviceElement> DeviceBuffer<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address.
    pub fn as_ptr(&self) -> *const c_void {
        self.ptr
    }

    /// The device address, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut c_void {
        self.ptr
    }

    /// The device address as a kernel argument ([`CudaKernels::launch`]).
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.ptr as u64)
    }

    /// A device address `offset` elements in (for misaligned views in tests).
    pub fn ptr_at(&self, offset: usize) -> *const c_void {
        assert!(offset <= self.len);
        // A device address: computed, never dereferenced on the host.
        self.ptr.cast::<T>().wrapping_add(offset).cast()
    }

    /// Copies the buffer back (waits for queued work on the default stream).
    pub fn download(&self) -> Result<Vec<T>> {
        let mut out: Vec<T> = Vec::with_capacity(self.len);
        self.inner.enter()?;
        // SAFETY: `out` has room for len elements; set_len only after the copy succeeded.
        unsafe {
            self.inner.driver.copy_to_host(
                out.as_mut_ptr().cast(),
                self.ptr as u64,
                self.len * std::mem::size_of::<T>(),
            )?;
            out.set_len(self.len);
        }
        Ok(out)
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // A context must be current to free (ours, when the thread has none).
        if self.inner.enter().is_ok() {
            self.inner.driver.free(self.ptr as u64);
        }
    }
}

/// How a handle launches: an nvcc launcher's symbol, or xcache's launcher over NVRTC's
/// kernels with the template's launch data.
enum Backend<F: Copy, P> {
    Nvcc(Symbol<F>),
    Nvrtc(Box<CudaKernels>, P),
}

impl<F: Copy, P> std::fmt::Debug for Backend<F, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Nvcc(_) => f.write_str("nvcc"),
            Backend::Nvrtc(k, _) => write!(f, "nvrtc({k:?})"),
        }
    }
}

/// A compiled `cuda/elemwise` kernel.
#[derive(Debug)]
pub struct CudaElemwise<T> {
    launcher: Backend<CudaElemwiseFn, ElemwisePlan>,
    arity: usize,
    build: CudaBuild,
    cuda: Cuda,
    _t: PhantomData<T>,
}

impl<T: Element> CudaElemwise<T> {
    /// Queues `out = expr(inputs...)` on the default stream.
    pub fn launch(&self, inputs: &[&DeviceBuffer<T>], out: &mut DeviceBuffer<T>) -> Result<()> {
        let ptrs: Vec<*const c_void> = inputs.iter().map(|b| b.ptr as *const c_void).collect();
        if inputs.iter().any(|b| b.len != out.len) {
            return Err(Error::InvalidRequest(
                "elemwise: every buffer must have the output's length".into(),
            ));
        }
        // SAFETY: lengths checked; pointers are device allocations.
        unsafe { self.launch_raw(out.len, &ptrs, out.ptr) }
    }

    /// Queues the kernel on raw device pointers (any alignment), on the default stream.
    ///
    /// # Safety
    /// Every pointer must address `n` elements of `T` on the current device.
    pub unsafe fn launch_raw(
        &self,
        n: usize,
        inputs: &[*const c_void],
        out: *mut c_void,
    ) -> Result<()> {
        self.launch_raw_on(std::ptr::null_mut(), n, inputs, out)
    }

    /// Queues the kernel on raw device pointers (any alignment) on `stream`. Allocates
    /// nothing (the launch plan and its arguments are held inline).
    ///
    /// # Safety
    /// Every pointer must address `n` elements of `T` on the current device; `stream`
    /// must be NULL (the legacy default stream) or a live stream of the current context.
    pub unsafe fn launch_raw_on(
        &self,
        stream: Stream,
        n: usize,
        inputs: &[*const c_void],
        out: *mut c_void,
    ) -> Result<()> {
        if inputs.len() != self.arity {
            return Err(Error::InvalidRequest(format!(
                "elemwise was compiled for {} inputs, called with {}",
                self.arity,
                inputs.len()
            )));
        }
        match &self.launcher {
            Backend::Nvcc(f) => {
                let code = f(n as i64, inputs.as_ptr(), out, stream);
                self.cuda.launched(code, "xc_elemwise")
            }
            Backend::Nvrtc(k, plan) => {
                let ins: ArrayVec<u64, 8> = inputs.iter().map(|&p| p as u64).collect();
                let sms = self.cuda.inner.info.sms as i64;
                let n = i64::try_from(n).map_err(|_| {
                    Error::InvalidRequest("xc_elemwise: a size is negative or too large".into())
                })?;
                k.plan_and_run(stream, |_| plan.plan(sms, n, &ins, out as u64))
            }
        }
    }

    /// What the kernel was built from, and how.
    pub fn compiled(&self) -> &CudaBuild {
        &self.build
    }

    /// Inputs it takes.
    pub fn arity(&self) -> usize {
        self.arity
    }

    /// The launch data read from the template (`None` for nvcc's launcher).
    pub fn plan(&self) -> Option<&ElemwisePlan> {
        match &self.launcher {
            Backend::Nvrtc(_, p) => Some(p),
            Backend::Nvcc(_) => None,
        }
    }
}

/// A compiled `cuda/reduce` kernel.
#[derive(Debug)]
pub struct CudaReduce<T> {
    launcher: Backend<CudaReduceFn, ReducePlan>,
    axis: usize,
    build: CudaBuild,
    cuda: Cuda,
    _t: PhantomData<T>,
}

impl<T: Element> CudaReduce<T> {
    /// Queues the reduction of the row-major matrix `input` with `cols` columns: for
    /// axis 1, one result per row (`out.len()` rows); for axis 0, one per column
    /// (`out.len() == cols`, `input.len() / cols` rows).
    pub fn launch(
        &self,
        input: &DeviceBuffer<T>,
        cols: usize,
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let rows = if self.axis == 1 {
            out.len
        } else {
            input.len.checked_div(cols).unwrap_or(0)
        };
        if rows.checked_mul(cols) != Some(input.len) || (self.axis == 0 && out.len != cols) {
            return Err(Error::InvalidRequest(format!(
                "reduce over axis {}: {} elements in, {} out, {cols} columns do not fit",
                self.axis, input.len, out.len
            )));
        }
        // SAFETY: sizes checked; device pointers.
        unsafe { self.launch_raw(rows, cols, input.ptr, out.ptr) }
    }

    /// Queues the reduction of a `rows x cols` matrix at raw device addresses (any
    /// element alignment, e.g. a view one element in), on the default stream.
    ///
    /// # Safety
    /// `input` must address `rows * cols` elements of `T` and `out` the result's
    /// `rows` (axis 1) or `cols` (axis 0) elements, on the current device.
    pub unsafe fn launch_raw(
        &self,
        rows: usize,
        cols: usize,
        input: *const c_void,
        out: *mut c_void,
    ) -> Result<()> {
        self.launch_raw_on(std::ptr::null_mut(), rows, cols, input, out)
    }

    /// As [`CudaReduce::launch_raw`], on `stream`; allocates nothing on the host.
    ///
    /// # Safety
    /// As [`CudaReduce::launch_raw`]; `stream` must be NULL or a live stream of the
    /// current context.
    pub unsafe fn launch_raw_on(
        &self,
        stream: Stream,
        rows: usize,
        cols: usize,
        input: *const c_void,
        out: *mut c_void,
    ) -> Result<()> {
        match &self.launcher {
            Backend::Nvcc(f) => {
                let code = f(rows as i64, cols as i64, input, out, stream);
                self.cuda.launched(code, "xc_reduce")
            }
            Backend::Nvrtc(k, plan) => {
                let size = |x: usize| {
                    i64::try_from(x).map_err(|_| {
                        Error::InvalidRequest("xc_reduce: a size is negative or too large".into())
                    })
                };
                let (rows, cols) = (size(rows)?, size(cols)?);
                k.plan_and_run(stream, |d| {
                    plan.plan(d, rows, cols, input as u64, out as u64)
                })
            }
        }
    }

    /// The launch data read from the template (`None` for nvcc's launcher).
    pub fn plan(&self) -> Option<&ReducePlan> {
        match &self.launcher {
            Backend::Nvrtc(_, p) => Some(p),
            Backend::Nvcc(_) => None,
        }
    }

    /// The axis reduced: 1 (each row) or 0 (the leading axis).
    pub fn axis(&self) -> usize {
        self.axis
    }

    /// What the kernel was built from, and how.
    pub fn compiled(&self) -> &CudaBuild {
        &self.build
    }
}

/// A compiled `cuda/gemm` kernel.
#[derive(Debug)]
pub struct CudaGemm<T> {
    launcher: Backend<CudaGemmBiasFn, GemmPlan>,
    precision: GemmPrecision,
    build: CudaBuild,
    cuda: Cuda,
    _t: PhantomData<T>,
}

impl<T: Element> CudaGemm<T> {
    /// Queues `c = a · b`, row-major, a m×k, b k×n, c m×n.
    pub fn launch(
        &self,
        dims: (usize, usize, usize),
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        c: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        self.launch_bias(dims, a, b, None, c)
    }

    /// Queues `c = a · b + bias` (bias broadcast over the rows: one value per column
    /// of c), then relu if the kernel was compiled with it.
    pub fn launch_bias(
        &self,
        dims: (usize, usize, usize),
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        bias: Option<&DeviceBuffer<T>>,
        c: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        if self.precision.half_inputs() {
            return Err(Error::InvalidRequest(format!(
                "gemm with precision {}: A and B are 16-bit; use launch_half",
                self.precision.as_str()
            )));
        }
        self.launch_inner(dims, (a.ptr, a.len), (b.ptr, b.len), bias, c)
    }

    /// Queues `c = a · b (+ bias)` for the bf16 and fp16 precisions: `a` and `b` hold
    /// the 16-bit values' bits.
    pub fn launch_half(
        &self,
        dims: (usize, usize, usize),
        a: &DeviceBuffer<u16>,
        b: &DeviceBuffer<u16>,
        bias: Option<&DeviceBuffer<T>>,
        c: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        if !self.precision.half_inputs() {
            return Err(Error::InvalidRequest(format!(
                "gemm with precision {}: A and B are not 16-bit; use launch",
                self.precision.as_str()
            )));
        }
        self.launch_inner(dims, (a.ptr, a.len), (b.ptr, b.len), bias, c)
    }

    fn launch_inner(
        &self,
        (m, n, k): (usize, usize, usize),
        (a, a_len): (*mut c_void, usize),
        (b, b_len): (*mut c_void, usize),
        bias: Option<&DeviceBuffer<T>>,
        c: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let fits = |len: usize, x: usize, y: usize| x.checked_mul(y) == Some(len);
        if !fits(a_len, m, k) || !fits(b_len, k, n) || !fits(c.len, m, n) {
            return Err(Error::InvalidRequest(format!(
                "gemm {m}x{n}x{k}: buffer sizes do not match"
            )));
        }
        if bias.is_some_and(|v| v.len != n) {
            return Err(Error::InvalidRequest(format!(
                "gemm {m}x{n}x{k}: the bias needs {n} elements"
            )));
        }
        let bias = bias.map_or(std::ptr::null(), |v| v.ptr as *const c_void);
        // SAFETY: sizes checked; device allocations.
        unsafe { self.launch_raw_on(std::ptr::null_mut(), (m, n, k), a, b, bias, c.ptr) }
    }

    /// Queues `c = a · b (+ bias)` on raw device addresses, row-major, on `stream`;
    /// allocates nothing on the host. `bias` may be NULL.
    ///
    /// # Safety
    /// `a` must address m·k elements (16-bit for the bf16/fp16 precisions, else `T`),
    /// `b` k·n, `c` m·n of `T`, `bias` NULL or n of `T`, on the current device; `stream`
    /// must be NULL or a live stream of the current context.
    pub unsafe fn launch_raw_on(
        &self,
        stream: Stream,
        (m, n, k): (usize, usize, usize),
        a: *const c_void,
        b: *const c_void,
        bias: *const c_void,
        c: *mut c_void,
    ) -> Result<()> {
        match &self.launcher {
            Backend::Nvcc(f) => {
                let code = f(m as i64, n as i64, k as i64, a, b, bias, c, stream);
                self.cuda.launched(code, "xc_gemm")
            }
            Backend::Nvrtc(kernels, plan) => {
                let major = self.cuda.inner.info.major;
                let size = |x: usize| {
                    i64::try_from(x).map_err(|_| {
                        Error::InvalidRequest("xc_gemm: a size is negative or too large".into())
                    })
                };
                let dims = (size(m)?, size(n)?, size(k)?);
                let ptrs = (a as u64, b as u64, bias as u64, c as u64);
                kernels.plan_and_run(stream, |d| plan.plan(d, major, None, dims, ptrs))
            }
        }
    }

    /// The launch data read from the template (`None` for nvcc's launcher).
    pub fn plan(&self) -> Option<&GemmPlan> {
        match &self.launcher {
            Backend::Nvrtc(_, p) => Some(p),
            Backend::Nvcc(_) => None,
        }
    }

    /// The precision it was compiled for.
    pub fn precision(&self) -> GemmPrecision {
        self.precision
    }

    /// What the kernel was built from, and how.
    pub fn compiled(&self) -> &CudaBuild {
        &self.build
    }
}
