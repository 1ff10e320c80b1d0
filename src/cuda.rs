//! Running the CUDA templates from Rust, without a CUDA crate: device memory and
//! synchronisation come from the `cuda/support` template, compiled through the cache
//! like any other (its static CUDA runtime needs only the driver at run time).
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

use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;

use crate::compile::TemplateRequest;
use crate::error::{Error, Result};
use crate::kernels::Element;
use crate::runtime::{Compiled, Jit, Symbol};

type MallocFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CopyFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int;
type SyncFn = unsafe extern "C" fn() -> c_int;
type DeviceFn =
    unsafe extern "C" fn(*mut c_int, *mut c_int, *mut c_int, *mut c_char, c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

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

struct Support {
    _lib: Compiled,
    malloc: Symbol<MallocFn>,
    free: Symbol<FreeFn>,
    copy: Symbol<CopyFn>,
    sync: Symbol<SyncFn>,
    device: Symbol<DeviceFn>,
    error_string: Symbol<ErrorStringFn>,
}

impl Support {
    fn check(&self, code: c_int, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(code)) }
            .to_string_lossy()
            .into_owned();
        Err(Error::Cuda {
            what: what.to_string(),
            code,
            message: msg,
        })
    }
}

/// The GPU the CUDA runtime uses.
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

/// A handle on the CUDA runtime through the `cuda/support` template.
#[derive(Clone)]
pub struct Cuda {
    support: Arc<Support>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cuda")
    }
}

impl Jit {
    /// Compiles (once) the CUDA support library and checks that a GPU is usable: an
    /// error says why not (no nvcc, no driver, no device).
    pub fn cuda(&self) -> Result<Cuda> {
        if let Err(why) = crate::gpu::probe() {
            return Err(Error::Cuda {
                what: "looking for a GPU".into(),
                code: 100,
                message: format!(
                    "{why}. Fix: run on a machine with an NVIDIA GPU and its driver, or use the C templates (--device cpu)"
                ),
            });
        }
        let lib = self.compile_template(&TemplateRequest::new("cuda/support"))?;
        // SAFETY: the support template exports these with these signatures.
        let support = unsafe {
            Support {
                malloc: lib.symbol("xc_cuda_malloc")?,
                free: lib.symbol("xc_cuda_free")?,
                copy: lib.symbol("xc_cuda_copy")?,
                sync: lib.symbol("xc_cuda_sync")?,
                device: lib.symbol("xc_cuda_device")?,
                error_string: lib.symbol("xc_cuda_error_string")?,
                _lib: lib,
            }
        };
        let cuda = Cuda {
            support: Arc::new(support),
        };
        cuda.device()?;
        Ok(cuda)
    }
}

impl Cuda {
    /// The current device.
    pub fn device(&self) -> Result<DeviceInfo> {
        let (mut major, mut minor, mut sms) = (0, 0, 0);
        let mut name = [0 as c_char; 256];
        // SAFETY: valid out-pointers and buffer length.
        let rc = unsafe {
            (self.support.device)(&mut major, &mut minor, &mut sms, name.as_mut_ptr(), 256)
        };
        self.support.check(rc, "querying the GPU")?;
        Ok(DeviceInfo {
            // SAFETY: NUL-terminated by the support library.
            name: unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
            major,
            minor,
            sms,
        })
    }

    /// Waits for every queued kernel; reports the first asynchronous error.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: no arguments.
        self.support
            .check(unsafe { (self.support.sync)() }, "synchronising")
    }

    /// `n` uninitialised elements on the device.
    pub fn alloc<T: DeviceElement>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        let mut ptr = std::ptr::null_mut();
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::InvalidRequest(format!("{n} elements do not fit in memory")))?;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.support.malloc)(&mut ptr, bytes.max(1)) };
        self.support
            .check(rc, &format!("allocating {bytes} bytes on the GPU"))?;
        Ok(DeviceBuffer {
            ptr,
            len: n,
            support: Arc::clone(&self.support),
            _t: PhantomData,
        })
    }

    /// A device copy of `host`.
    pub fn upload<T: DeviceElement>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc::<T>(host.len())?;
        // SAFETY: both ranges hold `host.len()` elements; kind 1 is host to device.
        let rc = unsafe {
            (self.support.copy)(
                buf.ptr,
                host.as_ptr().cast(),
                std::mem::size_of_val(host),
                1,
            )
        };
        self.support.check(rc, "copying to the GPU")?;
        Ok(buf)
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
        let compiled = jit.compile_template(&req)?;
        // SAFETY: the template exports xc_elemwise with this ABI.
        let f = unsafe { compiled.symbol::<CudaElemwiseFn>("xc_elemwise")? };
        Ok(CudaElemwise {
            f,
            arity,
            compiled,
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
        let compiled = jit.compile_template(&req)?;
        // SAFETY: the template exports xc_reduce with this ABI.
        let f = unsafe { compiled.symbol::<CudaReduceFn>("xc_reduce")? };
        Ok(CudaReduce {
            f,
            axis,
            compiled,
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
        let compiled = jit.compile_template(&req)?;
        // SAFETY: the template exports xc_gemm_bias with this ABI.
        let f = unsafe { compiled.symbol::<CudaGemmBiasFn>("xc_gemm_bias")? };
        Ok(CudaGemm {
            f,
            precision,
            compiled,
            cuda: self.clone(),
            _t: PhantomData,
        })
    }

    fn launched(&self, code: i32, kernel: &str) -> Result<()> {
        // The launchers return their own refusals as negative codes, a CUDA error as
        // the (positive) cudaError_t.
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
            c => self.support.check(c, &format!("launching {kernel}")),
        }
    }
}

/// Elements of `T` in GPU memory, freed on drop.
pub struct DeviceBuffer<T> {
    ptr: *mut c_void,
    len: usize,
    support: Arc<Support>,
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

    /// A device address `offset` elements in (for misaligned views in tests).
    pub fn ptr_at(&self, offset: usize) -> *const c_void {
        assert!(offset <= self.len);
        // A device address: computed, never dereferenced on the host.
        self.ptr.cast::<T>().wrapping_add(offset).cast()
    }

    /// Copies the buffer back (waits for queued work on the default stream).
    pub fn download(&self) -> Result<Vec<T>> {
        let mut out: Vec<T> = Vec::with_capacity(self.len);
        // SAFETY: `out` has room for len elements; kind 2 is device to host; set_len
        // only after the copy succeeded.
        unsafe {
            let rc = (self.support.copy)(
                out.as_mut_ptr().cast(),
                self.ptr,
                self.len * std::mem::size_of::<T>(),
                2,
            );
            self.support.check(rc, "copying from the GPU")?;
            out.set_len(self.len);
        }
        Ok(out)
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by xc_cuda_malloc, freed once.
        unsafe { (self.support.free)(self.ptr) };
    }
}

/// A compiled `cuda/elemwise` kernel.
#[derive(Debug)]
pub struct CudaElemwise<T> {
    f: Symbol<CudaElemwiseFn>,
    arity: usize,
    compiled: Compiled,
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

    /// Queues the kernel on raw device pointers (any alignment).
    ///
    /// # Safety
    /// Every pointer must address `n` elements of `T` on the current device.
    pub unsafe fn launch_raw(
        &self,
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
        let code = (self.f)(n as i64, inputs.as_ptr(), out, std::ptr::null_mut());
        self.cuda.launched(code, "xc_elemwise")
    }

    /// The compiled library.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}

/// A compiled `cuda/reduce` kernel.
#[derive(Debug)]
pub struct CudaReduce<T> {
    f: Symbol<CudaReduceFn>,
    axis: usize,
    compiled: Compiled,
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
        let code = unsafe {
            (self.f)(
                rows as i64,
                cols as i64,
                input.ptr,
                out.ptr,
                std::ptr::null_mut(),
            )
        };
        self.cuda.launched(code, "xc_reduce")
    }

    /// Queues the reduction of a `rows x cols` matrix at raw device addresses (any
    /// element alignment, e.g. a view one element in).
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
        let code = (self.f)(rows as i64, cols as i64, input, out, std::ptr::null_mut());
        self.cuda.launched(code, "xc_reduce")
    }

    /// The axis reduced: 1 (each row) or 0 (the leading axis).
    pub fn axis(&self) -> usize {
        self.axis
    }

    /// The compiled library.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}

/// A compiled `cuda/gemm` kernel.
#[derive(Debug)]
pub struct CudaGemm<T> {
    f: Symbol<CudaGemmBiasFn>,
    precision: GemmPrecision,
    compiled: Compiled,
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
        // SAFETY: sizes checked; device pointers.
        let code = unsafe {
            (self.f)(
                m as i64,
                n as i64,
                k as i64,
                a,
                b,
                bias,
                c.ptr,
                std::ptr::null_mut(),
            )
        };
        self.cuda.launched(code, "xc_gemm")
    }

    /// The precision it was compiled for.
    pub fn precision(&self) -> GemmPrecision {
        self.precision
    }

    /// The compiled library.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}
