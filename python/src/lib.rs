//! `xcache._native`: the Python package's native module, thin over the Rust library
//! (conversion and error mapping only). The public API is `python/xcache/__init__.py`,
//! which re-exports these classes and adds the pure-Python parts; the stubs in
//! `python/xcache/_native.pyi` document every signature.
//!
//! - The GIL is released while compiling, hashing, waiting for locks and walking the
//!   cache ([`Python::detach`]); many threads asking for one key cost one compile (the
//!   library's single flight).
//! - A [`Library`] holds a [`HeldLibrary`]: the library stays loaded and its file in
//!   place (a pin: a shared lock on the entry) while the Python object lives.
//! - Arrays come in through the buffer protocol (numpy, array.array, memoryview...)
//!   and, for the CUDA templates, through `__cuda_array_interface__` (CuPy, PyTorch,
//!   Numba).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use xcache::embed::HeldLibrary;
use xcache::kernels::{ElemwiseFn, GemmBiasFn, ReduceFn};
use xcache::store::lock::with_wait_limit;
use xcache::{Config, Jit, Language, SourceRequest, TemplateRequest};

pyo3::create_exception!(
    xcache,
    Error,
    PyException,
    "Every error xcache raises. `.kind` is the CLI's word for it (`compile`, `template`, `untrusted`, `lock-timeout`, `io`, `config`, `no-compiler`, `load`, `missing-symbol`, `cuda`, `invalid-request`)."
);
pyo3::create_exception!(
    xcache,
    CompileError,
    Error,
    "The compiler failed. `.command` (shell-quoted, re-runnable from `.workdir`), `.output` (what it printed), `.kept_source` (the source as compiled, kept for inspection), `.status` (exit status or None)."
);
pyo3::create_exception!(
    xcache,
    TemplateError,
    Error,
    "A template is unknown or was given a bad parameter. `.template`, `.parameter` (the offending parameter, when one is), `.offset` (byte offset in an expression, when the expression is at fault), `.message`."
);
pyo3::create_exception!(
    xcache,
    UntrustedCacheError,
    Error,
    "The cache directory fails the trust checks (owner, mode): xcache would load code others could plant. `.path`, `.reason`, `.fix`."
);
pyo3::create_exception!(
    xcache,
    RefusedFlagError,
    Error,
    "A compiler flag xcache will not pass on: it runs other programs, writes files elsewhere, or takes over the output or the dependency file (`-B`, `-fplugin=`, `-save-temps`, `-o`, `-MMD`, ...). `.kind` is `invalid-request`; `.flag` (as written), `.reason`, `.fix`."
);
pyo3::create_exception!(
    xcache,
    LockTimeout,
    Error,
    "A lock wait reached the cache's `lock_timeout`. `.path` (the lock file), `.waited` (seconds), `.holder` (`pid=N host=H`, or None)."
);

/// Converts a library error to the exception of its kind, with its fields.
fn to_py(e: xcache::Error) -> PyErr {
    Python::attach(|py| {
        let message = e.to_string();
        let err = match &e {
            xcache::Error::Compile(_) => CompileError::new_err(message.clone()),
            xcache::Error::Template { .. } => TemplateError::new_err(message.clone()),
            xcache::Error::Untrusted { .. } => UntrustedCacheError::new_err(message.clone()),
            xcache::Error::LockTimeout { .. } => LockTimeout::new_err(message.clone()),
            xcache::Error::RefusedFlag { .. } => RefusedFlagError::new_err(message.clone()),
            _ => Error::new_err(message.clone()),
        };
        let v = err.value(py);
        let set = |k: &str, val: Py<PyAny>| {
            let _ = v.setattr(k, val);
        };
        set(
            "kind",
            e.kind().into_pyobject(py).unwrap().into_any().unbind(),
        );
        let s = |x: &str| PyString::new(py, x).into_any().unbind();
        let p = |x: &std::path::Path| s(&x.to_string_lossy());
        match &e {
            xcache::Error::Compile(ce) => {
                set("command", s(&ce.command));
                set("output", s(&ce.output));
                set("kept_source", p(&ce.kept_source));
                set("workdir", p(&ce.workdir));
                set(
                    "status",
                    ce.status.into_pyobject(py).unwrap().into_any().unbind(),
                );
            }
            xcache::Error::Template { template, message } => {
                let (param, offset) = match e.template_parameter() {
                    Some((p, o)) => (Some(p.to_string()), o),
                    None => (None, None),
                };
                set("template", s(template));
                set("message", s(message));
                set(
                    "parameter",
                    param.into_pyobject(py).unwrap().into_any().unbind(),
                );
                set(
                    "offset",
                    offset.into_pyobject(py).unwrap().into_any().unbind(),
                );
            }
            xcache::Error::Untrusted { path, reason, fix } => {
                set("path", p(path));
                set("reason", s(reason));
                set("fix", s(fix));
            }
            xcache::Error::RefusedFlag { flag, reason, fix } => {
                set("flag", s(flag));
                set("reason", s(reason));
                set("fix", s(fix));
            }
            xcache::Error::LockTimeout {
                path,
                waited,
                holder,
            } => {
                set("path", p(path));
                set(
                    "waited",
                    waited
                        .as_secs_f64()
                        .into_pyobject(py)
                        .unwrap()
                        .into_any()
                        .unbind(),
                );
                set(
                    "holder",
                    holder
                        .clone()
                        .into_pyobject(py)
                        .unwrap()
                        .into_any()
                        .unbind(),
                );
            }
            _ => {}
        }
        err
    })
}

trait OrPy<T> {
    fn or_py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for xcache::Result<T> {
    fn or_py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

// ---------------------------------------------------------------------------------
// Buffers. Py_buffer joined the limited API in 3.11, with the layout it has had since
// 3.3 (PEP 3118); the abi3-py38 wheel declares it here so that it takes buffers on
// 3.8-3.10 too. Every CPython 3 exports these two functions.

#[repr(C)]
struct PyBufferRaw {
    buf: *mut c_void,
    obj: *mut pyo3::ffi::PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

extern "C" {
    fn PyObject_GetBuffer(
        obj: *mut pyo3::ffi::PyObject,
        view: *mut PyBufferRaw,
        flags: c_int,
    ) -> c_int;
    fn PyBuffer_Release(view: *mut PyBufferRaw);
}

const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;

/// A held buffer (released on drop, under the GIL: drops happen in methods that hold it).
struct Buffer {
    raw: PyBufferRaw,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: obtained by PyObject_GetBuffer, released once; the GIL is held (every
        // Buffer lives inside a method called with it, and is dropped before detaching
        // or after re-attaching).
        unsafe { PyBuffer_Release(&mut self.raw) }
    }
}

impl Buffer {
    fn get(obj: &Bound<'_, PyAny>, writable: bool, what: &str) -> PyResult<Buffer> {
        let mut raw = std::mem::MaybeUninit::<PyBufferRaw>::zeroed();
        let flags = PYBUF_STRIDES | PYBUF_FORMAT | if writable { PYBUF_WRITABLE } else { 0 };
        // SAFETY: a valid object and an out-struct of Py_buffer's layout.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), raw.as_mut_ptr(), flags) };
        if rc != 0 {
            let cause = PyErr::take(obj.py());
            let msg =
                format!(
                "{what} must be a{} array supporting the buffer protocol (a numpy array), got {}",
                if writable { " writable" } else { "n" },
                obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            );
            let err = PyTypeError::new_err(msg);
            if let Some(c) = cause {
                err.set_cause(obj.py(), Some(c));
            }
            return Err(err);
        }
        // SAFETY: initialised by a successful PyObject_GetBuffer.
        Ok(Buffer {
            raw: unsafe { raw.assume_init() },
        })
    }

    fn shape(&self) -> Vec<usize> {
        (0..self.raw.ndim as usize)
            // SAFETY: PYBUF_ND asks for `ndim` shape entries.
            .map(|i| unsafe { *self.raw.shape.add(i) } as usize)
            .collect()
    }

    fn c_contiguous(&self) -> bool {
        if self.raw.strides.is_null() {
            return true;
        }
        let shape = self.shape();
        let mut want = self.raw.itemsize;
        for i in (0..shape.len()).rev() {
            // SAFETY: PYBUF_STRIDES asks for `ndim` strides.
            let s = unsafe { *self.raw.strides.add(i) };
            if shape[i] > 1 && s != want {
                return false;
            }
            want *= shape[i] as isize;
        }
        true
    }

    /// The element type as a template dtype, from the buffer's struct format.
    fn dtype(&self) -> Option<&'static str> {
        if self.raw.format.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated format string (PYBUF_FORMAT).
        let f = unsafe { CStr::from_ptr(self.raw.format) }.to_bytes();
        let f = match f {
            [b'@' | b'=' | b'<', rest @ ..] if cfg!(target_endian = "little") => rest,
            f => f,
        };
        match (f, self.raw.itemsize) {
            (b"f", 4) => Some("float32"),
            (b"d", 8) => Some("float64"),
            (b"i" | b"l" | b"q", 4) => Some("int32"),
            (b"i" | b"l" | b"q", 8) => Some("int64"),
            _ => None,
        }
    }

    fn ptr(&self) -> *mut c_void {
        self.raw.buf
    }

    fn bytes(&self) -> usize {
        self.raw.len as usize
    }
}

/// One array argument, checked: dtype, C-contiguity.
fn host_array(obj: &Bound<'_, PyAny>, writable: bool, dtype: &str, what: &str) -> PyResult<Buffer> {
    let b = Buffer::get(obj, writable, what)?;
    match b.dtype() {
        Some(d) if d == dtype => {}
        d => {
            return Err(PyTypeError::new_err(format!(
                "{what} has dtype {}, the kernel was compiled for {dtype}",
                d.unwrap_or("(unsupported)")
            )))
        }
    }
    if !b.c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} is not C-contiguous. Fix: pass numpy.ascontiguousarray({what})"
        )));
    }
    Ok(b)
}

fn shape_str(s: &[usize]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    if s.len() == 1 {
        format!("({},)", inner[0])
    } else {
        format!("({})", inner.join(", "))
    }
}

/// Partial overlap between two byte ranges (identity is allowed: in place).
fn partially_overlap(a: (*mut c_void, usize), b: (*mut c_void, usize)) -> bool {
    let (a0, a1) = (a.0 as usize, a.0 as usize + a.1);
    let (b0, b1) = (b.0 as usize, b.0 as usize + b.1);
    a0 < b1 && b0 < a1 && !(a0 == b0 && a1 == b1)
}

/// numpy.empty(shape, dtype): the output when the caller gives none.
fn numpy_empty<'py>(py: Python<'py>, shape: &[usize], dtype: &str) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy").map_err(|e| {
        let err = PyTypeError::new_err("no `out=` given and numpy is not installed: pass `out=`");
        err.set_cause(py, Some(e));
        err
    })?;
    np.call_method1("empty", (PyTuple::new(py, shape)?, dtype))
}

/// Elements above which a kernel call releases the GIL (below, releasing costs more
/// than it lets other threads do).
const DETACH_ELEMENTS: usize = 1 << 15;

// ---------------------------------------------------------------------------------
// CUDA arrays, through __cuda_array_interface__ (version 2 and 3).

struct DeviceArray {
    ptr: usize,
    shape: Vec<usize>,
    stream: Option<usize>,
}

/// CuPy's array type and what the fast path compares with, once CuPy is imported (by
/// the caller: xcache never imports it for this).
struct CupyTypes {
    ndarray: Py<pyo3::types::PyType>,
    /// numpy's dtype objects (singletons) of float32, float64, int32, int64.
    dtypes: [Py<PyAny>; 4],
    get_current_stream: Py<PyAny>,
}

static CUPY: PyOnceLock<CupyTypes> = PyOnceLock::new();

fn cupy_types(py: Python<'_>) -> Option<&CupyTypes> {
    if let Some(t) = CUPY.get(py) {
        return Some(t);
    }
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    let cp = modules.get_item("cupy").ok()?;
    let np = py.import("numpy").ok()?;
    let dt = |n: &str| np.call_method1("dtype", (n,)).map(Bound::unbind);
    let t = CupyTypes {
        ndarray: cp.getattr("ndarray").ok()?.cast_into().ok()?.unbind(),
        dtypes: [
            dt("float32").ok()?,
            dt("float64").ok()?,
            dt("int32").ok()?,
            dt("int64").ok()?,
        ],
        get_current_stream: cp
            .getattr("cuda")
            .ok()?
            .getattr("get_current_stream")
            .ok()?
            .unbind(),
    };
    let _ = CUPY.set(py, t);
    CUPY.get(py)
}

fn dtype_index(dtype: &str) -> usize {
    match dtype {
        "float32" => 0,
        "float64" => 1,
        "int32" => 2,
        _ => 3,
    }
}

/// A CuPy array read through its own attributes (a third of the cost of building its
/// `__cuda_array_interface__` dict); `None` for anything else.
fn cupy_array(obj: &Bound<'_, PyAny>, dtype: &str, what: &str) -> Option<PyResult<DeviceArray>> {
    let py = obj.py();
    let t = cupy_types(py)?;
    if !obj.get_type().is(t.ndarray.bind(py)) {
        return None;
    }
    Some((|| {
        let dt = obj.getattr(pyo3::intern!(py, "dtype"))?;
        if !dt.is(t.dtypes[dtype_index(dtype)].bind(py)) {
            return Err(PyTypeError::new_err(format!(
                "{what} has dtype {}, the kernel was compiled for {dtype}",
                dt.str()?
            )));
        }
        if !obj
            .getattr(pyo3::intern!(py, "_c_contiguous"))?
            .is_truthy()?
        {
            return Err(PyValueError::new_err(format!(
                "{what} is not C-contiguous. Fix: make a contiguous copy"
            )));
        }
        let ptr: usize = obj
            .getattr(pyo3::intern!(py, "data"))?
            .getattr(pyo3::intern!(py, "ptr"))?
            .extract()?;
        let shape: Vec<usize> = obj.getattr(pyo3::intern!(py, "shape"))?.extract()?;
        Ok(DeviceArray {
            ptr,
            shape,
            stream: None,
        })
    })())
}

/// CuPy's current stream, where `obj` is a CuPy array.
fn cupy_current_stream(obj: &Bound<'_, PyAny>) -> Option<PyResult<usize>> {
    let py = obj.py();
    let t = CUPY.get(py)?;
    if !obj.get_type().is(t.ndarray.bind(py)) {
        return None;
    }
    Some(
        t.get_current_stream
            .bind(py)
            .call0()
            .and_then(|s| s.getattr(pyo3::intern!(py, "ptr")))
            .and_then(|p| p.extract()),
    )
}

fn device_array(obj: &Bound<'_, PyAny>, dtype: &str, what: &str) -> PyResult<DeviceArray> {
    if let Some(a) = cupy_array(obj, dtype, what) {
        return a;
    }
    let iface = obj.getattr("__cuda_array_interface__").map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a GPU array with __cuda_array_interface__ (CuPy, PyTorch on cuda, Numba), got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    let shape: Vec<usize> = iface.get_item("shape")?.extract()?;
    let typestr: String = iface.get_item("typestr")?.extract()?;
    let (ptr, _readonly): (usize, bool) = iface.get_item("data")?.extract()?;
    let dt = match typestr.as_str() {
        "<f4" => "float32",
        "<f8" => "float64",
        "<i4" => "int32",
        "<i8" => "int64",
        _ => "(unsupported)",
    };
    if dt != dtype {
        return Err(PyTypeError::new_err(format!(
            "{what} has dtype {dt} ({typestr}), the kernel was compiled for {dtype}"
        )));
    }
    let itemsize = if dtype.ends_with("32") { 4 } else { 8 };
    if let Ok(strides) = iface.get_item("strides") {
        if !strides.is_none() {
            let strides: Vec<usize> = strides.extract()?;
            let mut want = itemsize;
            for i in (0..shape.len()).rev() {
                if shape[i] > 1 && strides[i] != want {
                    return Err(PyValueError::new_err(format!(
                        "{what} is not C-contiguous. Fix: make a contiguous copy"
                    )));
                }
                want *= shape[i];
            }
        }
    }
    let stream = match iface.get_item("stream") {
        Ok(s) if !s.is_none() => Some(s.extract::<usize>()?),
        _ => None,
    };
    Ok(DeviceArray { ptr, shape, stream })
}

fn cupy_empty<'py>(py: Python<'py>, shape: &[usize], dtype: &str) -> PyResult<Bound<'py, PyAny>> {
    let cp = py.import("cupy").map_err(|e| {
        let err = PyTypeError::new_err("no `out=` given and CuPy is not installed: pass `out=`");
        err.set_cause(py, Some(e));
        err
    })?;
    cp.call_method1("empty", (PyTuple::new(py, shape)?, dtype))
}

fn cuda_status(kernel: &str, code: i32) -> PyResult<()> {
    match code {
        0 => Ok(()),
        -1 => Err(PyValueError::new_err(format!(
            "{kernel}: a size is negative or too large"
        ))),
        -2 => Err(PyValueError::new_err(format!(
            "{kernel}: a NULL device pointer"
        ))),
        -3 => Err(PyValueError::new_err(format!(
            "{kernel}: no GEMM configuration for this shape"
        ))),
        c => {
            let err = Error::new_err(format!(
                "{kernel}: the CUDA launch failed with cudaError_t {c}"
            ));
            Python::attach(|py| {
                let _ = err.value(py).setattr("kind", "cuda");
            });
            Err(err)
        }
    }
}

fn host_status(kernel: &str, code: i32) -> PyResult<()> {
    match code {
        0 => Ok(()),
        c => Err(PyValueError::new_err(format!(
            "{kernel} returned error code {c} (1: a negative size, 2: a null pointer)"
        ))),
    }
}

// ---------------------------------------------------------------------------------
// CUDA through NVRTC and xcache's launcher, as Rust's `xcache::cuda` handles do.

/// The process's GPU handle (shared with the C ABI and every `Cache`).
fn gpu(jit: &Jit) -> xcache::Result<xcache::cuda::Cuda> {
    jit.shared_cuda()
}

/// The stream a launch goes on: `stream=` when given (an int handle, a CuPy `Stream`
/// (`.ptr`) or a PyTorch `Stream` (`.cuda_stream`)); else the stream the array's
/// `__cuda_array_interface__` names, or CuPy's current stream for a CuPy array (what
/// its interface would name); else, for a PyTorch
/// tensor (whose interface names none), PyTorch's current stream on its device; else
/// NULL, the legacy default stream.
fn resolve_stream(
    explicit: Option<&Bound<'_, PyAny>>,
    named: Option<usize>,
    array: Option<&Bound<'_, PyAny>>,
) -> PyResult<usize> {
    if let Some(s) = explicit {
        if s.is_none() {
        } else if let Ok(v) = s.extract::<usize>() {
            return Ok(v);
        } else if let Ok(p) = s.getattr("ptr") {
            return p.extract();
        } else if let Ok(p) = s.getattr("cuda_stream") {
            return p.extract();
        } else {
            return Err(PyTypeError::new_err(
                "stream must be an int handle, a cupy.cuda.Stream or a torch.cuda.Stream",
            ));
        }
    }
    if let Some(s) = named {
        return Ok(s);
    }
    if let Some(a) = array {
        if let Some(s) = cupy_current_stream(a) {
            return s;
        }
        if is_torch_tensor(a) {
            let torch = a.py().import("torch")?;
            let s = torch
                .getattr("cuda")?
                .call_method1("current_stream", (a.getattr("device")?,))?;
            return s.getattr("cuda_stream")?.extract();
        }
    }
    Ok(0)
}

fn is_torch_tensor(a: &Bound<'_, PyAny>) -> bool {
    a.get_type()
        .module()
        .is_ok_and(|m| m.to_cow().is_ok_and(|m| m == "torch"))
}

/// A CUDA module compiled by NVRTC through the cache (a cubin, or PTX for a virtual
/// arch), loaded on the GPU at its first launch. `get_function(name)` gives a kernel.
#[pyclass(module = "xcache", name = "CudaModule", frozen)]
struct PyCudaModule {
    module: xcache::cuda::CudaModule,
    jit: Arc<Jit>,
    loaded: std::sync::OnceLock<(xcache::cuda::Cuda, xcache::cuda::CudaKernels)>,
}

impl PyCudaModule {
    fn new(jit: &Arc<Jit>, module: xcache::cuda::CudaModule) -> PyCudaModule {
        PyCudaModule {
            module,
            jit: Arc::clone(jit),
            loaded: std::sync::OnceLock::new(),
        }
    }

    /// The module on the GPU (loaded into the current context at first use).
    fn kernels(&self) -> PyResult<&(xcache::cuda::Cuda, xcache::cuda::CudaKernels)> {
        if let Some(k) = self.loaded.get() {
            return Ok(k);
        }
        let cuda = gpu(&self.jit).or_py()?;
        let k = cuda.load(&self.module).or_py()?;
        let _ = self.loaded.set((cuda, k));
        Ok(self.loaded.get().expect("set"))
    }
}

#[pymethods]
impl PyCudaModule {
    /// The entry's key (hex).
    #[getter]
    fn key(&self) -> String {
        self.module.key.hex()
    }

    /// The cubin (or PTX) in the cache.
    #[getter]
    fn path(&self) -> String {
        self.module.path.to_string_lossy().into_owned()
    }

    /// The arch it was built for: `sm_90`, or `compute_80` for PTX.
    #[getter]
    fn arch(&self) -> String {
        self.module.arch.clone()
    }

    /// "cubin" or "ptx".
    #[getter]
    fn kind(&self) -> &'static str {
        if self.module.arch.starts_with("compute_") {
            "ptx"
        } else {
            "cubin"
        }
    }

    /// True when no compiler ran for this request.
    #[getter]
    fn hit(&self) -> bool {
        self.module.hit
    }

    /// How long NVRTC took when the entry was built, in ms.
    #[getter]
    fn compile_ms(&self) -> u64 {
        self.module.compile_ms
    }

    /// Seconds this request waited on other processes' locks.
    #[getter]
    fn lock_wait(&self) -> f64 {
        self.module.lock_wait.as_secs_f64()
    }

    /// What NVRTC printed although it succeeded (only when it ran for this request).
    #[getter]
    fn compiler_output(&self) -> String {
        self.module.compiler_output.clone()
    }

    /// Cache faults repaired while serving it.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.module.warnings.clone()
    }

    /// The header that kept this fresh compile out of its manifest (it changed at or
    /// after the compile started, "file too new"), so the next process compiles again;
    /// `None` otherwise.
    #[getter]
    fn unrecorded(&self) -> Option<String> {
        self.module.unrecorded.clone()
    }

    /// The names of its kernels (read from the cubin's sections or the PTX's entries).
    #[getter]
    fn kernel_names(&self) -> Vec<String> {
        let image = self.module.image();
        if image.starts_with(b"\x7fELF") {
            return xcache::cuda::driver::cubin_kernels(image);
        }
        String::from_utf8_lossy(image)
            .lines()
            .filter_map(|l| {
                let rest = l.trim().split_once(".entry")?.1.trim();
                Some(rest.split(['(', ' ']).next()?.to_string())
            })
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The module's bytes, as loaded (a cubin, or NUL-terminated PTX).
    fn image<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.module.image())
    }

    /// The kernel `name` (an `extern "C" __global__` function), loading the module on
    /// the GPU first. Raises when the module has no such kernel or there is no GPU.
    fn get_function(slf: &Bound<'_, Self>, name: &str) -> PyResult<CudaKernel> {
        let (_, k) = slf.get().kernels()?;
        k.find(&[name]).or_py()?;
        Ok(CudaKernel {
            module: slf.clone().unbind(),
            name: name.to_string(),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<xcache.CudaModule {} {} {}>",
            self.module.arch,
            &self.module.key.hex()[..12],
            if self.module.hit { "hit" } else { "compiled" }
        )
    }
}

/// A kernel of a [`PyCudaModule`], called as CuPy's `RawKernel` is:
/// `k(grid, block, args, *, shared_mem=0, stream=None)`.
#[pyclass(module = "xcache", name = "CudaKernel", frozen)]
struct CudaKernel {
    module: Py<PyCudaModule>,
    name: String,
}

fn dim3(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(u32, u32, u32)> {
    let bad = || {
        PyValueError::new_err(format!(
            "{what} must be a positive int or a tuple of 1 to 3 positive ints"
        ))
    };
    let v: Vec<u32> = if let Ok(x) = obj.extract::<u32>() {
        vec![x]
    } else {
        obj.extract().map_err(|_| bad())?
    };
    if v.is_empty() || v.len() > 3 || v.contains(&0) {
        return Err(bad());
    }
    Ok((v[0], *v.get(1).unwrap_or(&1), *v.get(2).unwrap_or(&1)))
}

/// One kernel argument, as CuPy's `RawKernel` maps it: a GPU array (its
/// `__cuda_array_interface__`) is its device pointer; Python `int`, `float` and `bool`
/// are `long long`, `double` and `bool`; a NumPy scalar keeps its dtype.
fn kernel_arg(
    x: &Bound<'_, PyAny>,
    i: usize,
    stream: &mut Option<usize>,
    first_array: &mut Option<usize>,
) -> PyResult<xcache::cuda::launch::Arg> {
    use xcache::cuda::launch::Arg;
    if let Some(t) = cupy_types(x.py()) {
        if x.get_type().is(t.ndarray.bind(x.py())) {
            let ptr: usize = x.getattr("data")?.getattr("ptr")?.extract()?;
            first_array.get_or_insert(i);
            return Ok(Arg::Ptr(ptr as u64));
        }
    }
    if let Ok(iface) = x.getattr("__cuda_array_interface__") {
        let (ptr, _): (usize, bool) = iface.get_item("data")?.extract()?;
        if stream.is_none() {
            if let Ok(s) = iface.get_item("stream") {
                if !s.is_none() {
                    *stream = Some(s.extract()?);
                }
            }
        }
        first_array.get_or_insert(i);
        return Ok(Arg::Ptr(ptr as u64));
    }
    if x.is_instance_of::<pyo3::types::PyBool>() {
        return Ok(Arg::I32(x.extract::<bool>()? as i32));
    }
    if x.is_instance_of::<pyo3::types::PyInt>() {
        return Ok(Arg::I64(x.extract()?));
    }
    if x.is_instance_of::<pyo3::types::PyFloat>() {
        return Ok(Arg::F64(x.extract()?));
    }
    if let Ok(dt) = x.getattr("dtype") {
        let name: String = dt.getattr("name")?.extract()?;
        return Ok(match name.as_str() {
            "float32" => Arg::F32(x.call_method0("item")?.extract::<f64>()? as f32),
            "float64" => Arg::F64(x.call_method0("item")?.extract()?),
            "int64" | "uint64" => Arg::I64(x.call_method0("item")?.extract::<i128>()? as i64),
            "int32" | "uint32" | "int16" | "uint16" | "int8" | "uint8" | "bool" => {
                Arg::I32(x.call_method0("item")?.extract::<i64>()? as i32)
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "argument {i}: a NumPy scalar of dtype {other} cannot be passed (use float32/64, an int type or bool)"
                )))
            }
        });
    }
    Err(PyTypeError::new_err(format!(
        "argument {i}: {} cannot be passed to a kernel: give a GPU array (__cuda_array_interface__), an int, a float, a bool or a NumPy scalar",
        x.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    )))
}

#[pymethods]
impl CudaKernel {
    /// Queues the kernel with `grid` and `block` (ints or tuples of up to 3),
    /// `shared_mem` bytes of dynamic shared memory, on `stream` (else the first array's
    /// stream, as the templates' handles choose it). Returns None; the launch is
    /// asynchronous, as CUDA's.
    #[pyo3(signature = (grid, block, args, *, shared_mem=0, stream=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        grid: &Bound<'_, PyAny>,
        block: &Bound<'_, PyAny>,
        args: &Bound<'_, PyAny>,
        shared_mem: u32,
        stream: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let grid = dim3(grid, "grid")?;
        let block = dim3(block, "block")?;
        let mut named = None;
        let mut first = None;
        let mut list = xcache::cuda::launch::Args::new();
        let seq = args.cast::<PyTuple>().map(|t| t.to_list()).or_else(|_| {
            args.cast::<PyList>()
                .cloned()
                .map_err(|_| PyTypeError::new_err("args must be a tuple or a list"))
        })?;
        if seq.len() > list.capacity() {
            return Err(PyValueError::new_err(format!(
                "{} arguments; a launch takes at most {}",
                seq.len(),
                list.capacity()
            )));
        }
        for (i, x) in seq.iter().enumerate() {
            list.push(kernel_arg(&x, i, &mut named, &mut first)?);
        }
        let arr = first.map(|i| seq.get_item(i)).transpose()?;
        let s = resolve_stream(stream, named, arr.as_ref())?;
        let (_, k) = self.module.get().kernels()?;
        // SAFETY: what CuPy's RawKernel trusts too: the caller's arguments match the
        // kernel's parameters, and its arrays are where the kernel reads and writes.
        unsafe { k.launch(&self.name, grid, block, shared_mem, s as _, &list) }.or_py()?;
        let _ = py;
        Ok(())
    }

    /// The kernel's name.
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The module it belongs to.
    #[getter]
    fn module(&self, py: Python<'_>) -> Py<PyCudaModule> {
        self.module.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("<xcache.CudaKernel {}>", self.name)
    }
}

// ---------------------------------------------------------------------------------

/// A compiled, loaded library. It stays loaded, and its file (`path`) in place, while
/// this object lives.
#[pyclass(module = "xcache", name = "Library", frozen)]
struct Library {
    held: HeldLibrary,
    // Made on first use: most hits never read them.
    path: PyOnceLock<Py<PyString>>,
    key: PyOnceLock<Py<PyString>>,
}

#[pymethods]
impl Library {
    /// The shared object's path; valid while this object lives.
    #[getter]
    fn path(&self, py: Python<'_>) -> Py<PyString> {
        self.path
            .get_or_init(py, || {
                PyString::new(py, &self.held.path.to_string_lossy()).unbind()
            })
            .clone_ref(py)
    }

    /// The request's key (64 hex digits).
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyString> {
        self.key
            .get_or_init(py, || {
                PyString::new(py, &self.held.compiled.key.hex()).unbind()
            })
            .clone_ref(py)
    }

    /// True when no compiler ran for this request.
    #[getter]
    fn hit(&self) -> bool {
        self.held.compiled.hit
    }

    /// Where it came from: `"local"` (this machine's cache, or this request's compile)
    /// or `"remote"` (fetched from the remote tier on a local miss, checked, published
    /// here).
    #[getter]
    fn tier(&self) -> &'static str {
        match self.held.compiled.tier {
            xcache::store::remote::Tier::Local => "local",
            xcache::store::remote::Tier::Remote => "remote",
        }
    }

    /// The header that kept this fresh compile out of the cache's manifest: it changed
    /// at or after the compile started ("file too new"), so the next process compiles
    /// again. `None` otherwise.
    #[getter]
    fn unrecorded(&self) -> Option<String> {
        self.held.compiled.unrecorded.clone()
    }

    /// How long the compile took when the entry was built (what a hit saved), in ms; 0
    /// for a library this process had loaded already.
    #[getter]
    fn compile_ms(&self) -> u64 {
        self.held.compiled.compile_ms
    }

    /// Wall time of this request, in seconds.
    #[getter]
    fn elapsed(&self) -> f64 {
        self.held.compiled.elapsed.as_secs_f64()
    }

    /// Time spent waiting for other processes' locks, in seconds.
    #[getter]
    fn lock_wait(&self) -> f64 {
        self.held.compiled.lock_wait.as_secs_f64()
    }

    /// What the compiler printed although it succeeded (only when it ran now).
    #[getter]
    fn compiler_output(&self) -> &str {
        &self.held.compiled.compiler_output
    }

    /// Cache faults repaired while serving the request.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.held.compiled.warnings.clone()
    }

    /// Whether the file is pinned (always, but for a private build in a cache that
    /// could not be written: then its path stays for the hand-out grace only).
    #[getter]
    fn pinned(&self) -> bool {
        self.held.pin().is_some()
    }

    /// A name that opens exactly the file this library was loaded from (checked to be
    /// it: same device and inode), for a loader of its own: `Cache.compile_extension`
    /// imports through it, so that nothing swapped in at `path` since can be loaded
    /// instead. Close it when the load is done.
    fn _checked_load_name(&self) -> PyResult<CheckedLoadName> {
        let file = self.held.compiled.library().reopen_checked().or_py()?;
        let name = xcache::store::private::LoadName::new(&file).or_py()?;
        Ok(CheckedLoadName {
            inner: Mutex::new(Some((name, file))),
        })
    }

    /// The address of the exported symbol `name`, as an int (for ctypes, cffi, numba).
    /// Valid while this object lives.
    fn symbol(&self, name: &str) -> PyResult<usize> {
        // SAFETY: looked up as an opaque address; the caller gives it a type.
        let sym = unsafe { self.held.compiled.symbol::<*mut c_void>(name) }.or_py()?;
        Ok(*sym as usize)
    }

    /// A ctypes function for the symbol `name` with the given result and argument
    /// types. The function keeps this library alive.
    #[pyo3(signature = (name, restype, argtypes))]
    fn ctypes_function<'py>(
        slf: &Bound<'py, Self>,
        name: &str,
        restype: &Bound<'py, PyAny>,
        argtypes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let addr = slf.get().symbol(name)?;
        let ctypes = py.import("ctypes")?;
        let mut proto_args = vec![restype.clone()];
        for a in argtypes.try_iter()? {
            proto_args.push(a?);
        }
        let proto = ctypes.call_method1("CFUNCTYPE", PyTuple::new(py, proto_args)?)?;
        let f = proto.call1((addr,))?;
        f.setattr("_xcache_library", slf)?;
        f.setattr("__name__", name)?;
        Ok(f)
    }

    fn __repr__(&self) -> String {
        format!(
            "<xcache.Library {} key={} {}>",
            self.held.path.display(),
            &self.held.compiled.key.hex()[..12],
            if self.held.compiled.hit {
                "hit"
            } else {
                "compiled"
            }
        )
    }
}

fn library(py: Python<'_>, held: HeldLibrary) -> PyResult<Py<Library>> {
    Py::new(
        py,
        Library {
            held,
            path: PyOnceLock::new(),
            key: PyOnceLock::new(),
        },
    )
}

/// A load name of a checked file (see `Library._checked_load_name`).
#[pyclass(module = "xcache", name = "_CheckedLoadName", frozen)]
struct CheckedLoadName {
    inner: Mutex<Option<(xcache::store::private::LoadName, std::fs::File)>>,
}

#[pymethods]
impl CheckedLoadName {
    /// The name to open; `None` once closed.
    #[getter]
    fn path(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap()
            .as_ref()
            .map(|(n, _)| n.path().to_string_lossy().into_owned())
    }

    /// Removes the name and closes the file.
    fn close(&self) {
        self.inner.lock().unwrap().take();
    }
}

/// Files that another compiler built (a Numba function, a Triton kernel, a CuPy
/// cubin), kept by xcache's store: found or published, and pinned while this lives.
#[pyclass(module = "xcache", name = "Group", frozen)]
struct Group {
    held: xcache::store::group::HeldGroup,
}

#[pymethods]
impl Group {
    /// The entry's key (64 hex digits).
    #[getter]
    fn key(&self) -> String {
        self.held.key.hex()
    }

    /// True when it was in the cache (here or on the remote tier).
    #[getter]
    fn hit(&self) -> bool {
        self.held.hit
    }

    /// `"local"` or `"remote"`.
    #[getter]
    fn tier(&self) -> &'static str {
        match self.held.tier {
            xcache::store::remote::Tier::Local => "local",
            xcache::store::remote::Tier::Remote => "remote",
        }
    }

    /// Who made it (`numba`, `triton`, `cupy`, `pytensor`).
    #[getter]
    fn producer(&self) -> String {
        self.held.producer.clone()
    }

    /// What `xcache list` calls it.
    #[getter]
    fn name(&self) -> String {
        self.held.name.clone()
    }

    /// How long its producer took to build it, in ms.
    #[getter]
    fn compile_ms(&self) -> u64 {
        self.held.compile_ms
    }

    /// Cache faults repaired on the way.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.held.warnings.clone()
    }

    /// Its files: name → path, valid while this object lives.
    #[getter]
    fn files(&self) -> HashMap<String, String> {
        self.held
            .files
            .iter()
            .map(|(n, p)| (n.clone(), p.to_string_lossy().into_owned()))
            .collect()
    }

    /// The path of the file `name` (valid while this object lives); KeyError when the
    /// group has no such file.
    fn path(&self, name: &str) -> PyResult<String> {
        self.held
            .files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name.to_string()))
    }

    /// The bytes of the file `name`.
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let path = self.path(name)?;
        let bytes = py
            .detach(|| std::fs::read(&path))
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("reading {path}: {e}")))?;
        Ok(pyo3::types::PyBytes::new(py, &bytes))
    }

    fn __repr__(&self) -> String {
        format!(
            "<xcache.Group {} {} key={} {}>",
            self.held.producer,
            self.held.name,
            &self.held.key.hex()[..12],
            if self.held.hit { "hit" } else { "built" }
        )
    }
}

/// The right to publish a group nobody has yet (`Cache.lease_group`): other processes
/// asking for it wait until it is published or abandoned. Add its files, then publish;
/// used as a context manager, it is abandoned when the block is left unpublished.
#[pyclass(module = "xcache", name = "GroupLease", frozen)]
struct PyGroupLease {
    inner: Mutex<Option<Box<xcache::store::group::GroupLease>>>,
    jit: Arc<Jit>,
    lock_timeout: Option<Duration>,
}

impl PyGroupLease {
    fn take(&self) -> PyResult<Box<xcache::store::group::GroupLease>> {
        self.inner.lock().unwrap().take().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err("this lease was published or abandoned already")
        })
    }
}

#[pymethods]
impl PyGroupLease {
    /// Adds the file `name` (a plain file name) with `data` (bytes, or str written as
    /// UTF-8); returns where it is staged, valid until the lease ends.
    fn add(&self, py: Python<'_>, name: &str, data: &Bound<'_, PyAny>) -> PyResult<String> {
        let bytes: Vec<u8> = if data.is_instance_of::<PyString>() {
            data.extract::<String>()?.into_bytes()
        } else {
            data.extract::<Vec<u8>>()?
        };
        let mut guard = self.inner.lock().unwrap();
        let lease = guard.as_mut().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err("this lease was published or abandoned already")
        })?;
        let path = py.detach(|| lease.add(name, &bytes)).or_py()?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Publishes the files added and returns the group. `compile_seconds`: how long
    /// the producer took (default: since the lease was taken).
    #[pyo3(signature = (compile_seconds=None))]
    fn publish(&self, py: Python<'_>, compile_seconds: Option<f64>) -> PyResult<Group> {
        let lease = self.take()?;
        let t = Duration::from_secs_f64(compile_seconds.unwrap_or(0.0).max(0.0));
        let limit = self.lock_timeout;
        let held = py
            .detach(|| with_wait_limit(limit, || lease.publish_held(t)))
            .or_py()?;
        self.jit.stats().miss(held.compile_ms, held.lock_wait);
        Ok(Group { held })
    }

    /// Gives the lease up: nothing is published, and the next asker builds.
    fn abandon(&self) {
        self.inner.lock().unwrap().take();
    }

    /// The group's request key (64 hex digits).
    #[getter]
    fn key(&self) -> PyResult<String> {
        self.inner
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.key().hex())
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err("this lease is over"))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.abandon();
        false
    }
}

#[pyclass(module = "xcache", name = "Cache", frozen, subclass)]
struct Cache {
    jit: Arc<Jit>,
    lock_timeout: Option<Duration>,
    /// Template requests rendered by this cache: rendering is a pure function of the
    /// request for one `Jit` (which parses each template once), and kernel constructors
    /// get called in loops.
    rendered: Mutex<HashMap<TemplateRequest, Arc<SourceRequest>>>,
    /// The same for CUDA templates rendered as NVRTC compiles them.
    nvrtc_rendered: Mutex<HashMap<TemplateRequest, Arc<SourceRequest>>>,
}

impl Cache {
    /// `compile_held`, without releasing the GIL when the request is loaded and pinned
    /// already (a map lookup: releasing and taking back the GIL would cost more).
    fn held(&self, py: Python<'_>, req: &SourceRequest) -> PyResult<HeldLibrary> {
        if let Some(h) = self.jit.held_if_loaded(req) {
            return Ok(h);
        }
        self.run(py, |jit| jit.compile_held(req))
    }

    fn render_memo(&self, py: Python<'_>, req: TemplateRequest) -> PyResult<Arc<SourceRequest>> {
        if let Some(src) = self.rendered.lock().unwrap().get(&req) {
            return Ok(Arc::clone(src));
        }
        let key = req.clone();
        let src = Arc::new(self.run(py, move |jit| jit.render(&req))?);
        self.rendered.lock().unwrap().insert(key, Arc::clone(&src));
        Ok(src)
    }

    /// Runs `f` without the GIL, with this cache's lock wait limit.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Jit) -> xcache::Result<T> + Send,
    ) -> PyResult<T> {
        let jit = &self.jit;
        let limit = self.lock_timeout;
        py.detach(|| with_wait_limit(limit, || f(jit))).or_py()
    }

    fn template_request(
        name: &str,
        params: &[(String, String)],
        flags: Vec<String>,
    ) -> TemplateRequest {
        let mut req = TemplateRequest::new(name);
        for (k, v) in params {
            req = req.param(k.as_str(), v.as_str());
        }
        req.flags = flags;
        req
    }

    fn compile_template_held(&self, py: Python<'_>, req: TemplateRequest) -> PyResult<HeldLibrary> {
        let src = self.render_memo(py, req)?;
        self.held(py, &src)
    }

    /// True when this cache builds the CUDA templates with NVRTC (`cuda_compiler`).
    fn nvrtc(&self) -> bool {
        self.jit.config().cuda_compiler == xcache::config::CudaCompiler::Nvrtc
    }

    /// A CUDA template's kernels built by NVRTC through the cache, and the rendered
    /// source (whose `xcache-launch` line is the launch data). Starts the GPU first
    /// (where there is one: its context is made while NVRTC loads in the background),
    /// and loads the module there, checking `kernel`, so that errors show at once.
    fn nvrtc_template(
        &self,
        py: Python<'_>,
        req: TemplateRequest,
        kernel: &str,
    ) -> PyResult<(Py<PyCudaModule>, Arc<SourceRequest>)> {
        let have_gpu = py.detach(|| gpu(&self.jit)).is_ok();
        let memo = self.nvrtc_rendered.lock().unwrap().get(&req).cloned();
        let src = match memo {
            Some(s) => s,
            None => {
                let key = req.clone();
                let src = Arc::new(self.run(py, move |jit| jit.nvrtc_source(&req))?);
                self.nvrtc_rendered
                    .lock()
                    .unwrap()
                    .insert(key, Arc::clone(&src));
                src
            }
        };
        let s2 = Arc::clone(&src);
        let module = self.run(py, move |jit| jit.cuda_module(&s2))?;
        let m = Py::new(py, PyCudaModule::new(&self.jit, module))?;
        if have_gpu {
            let (_, k) = m.get().kernels()?;
            k.find(&[kernel]).or_py()?;
        }
        Ok((m, src))
    }
}

fn strings(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Vec<String>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of strings, not one string"
        )));
    }
    let mut out = Vec::new();
    for x in obj.try_iter()? {
        let x = x?;
        let s = if x.is_instance_of::<PyString>() {
            x.extract::<String>()?
        } else {
            // os.PathLike
            x.call_method0("__fspath__")
                .and_then(|p| p.extract::<String>())
                .map_err(|_| PyTypeError::new_err(format!("{what} must hold strings")))?
        };
        out.push(s);
    }
    Ok(out)
}

fn text_or_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!("{what} must be str or bytes")))
}

/// Headers: a mapping name → content, or a sequence of paths (read now, named by
/// their file name) or (name, content) pairs.
fn headers(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, Vec<u8>)>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if let Ok(d) = obj.cast::<PyDict>() {
        for (k, v) in d.iter() {
            out.push((
                k.extract::<String>()?,
                text_or_bytes(&v, "a header's content")?,
            ));
        }
        return Ok(out);
    }
    let os = py.import("os")?;
    for item in obj.try_iter()? {
        let item = item?;
        if let Ok(t) = item.cast::<PyTuple>() {
            let (name, content): (String, Bound<'_, PyAny>) = t.extract()?;
            out.push((name, text_or_bytes(&content, "a header's content")?));
            continue;
        }
        let path: String = os.call_method1("fspath", (&item,))?.extract()?;
        let bytes = std::fs::read(&path).map_err(PyErr::from)?;
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, bytes));
    }
    Ok(out)
}

fn language(lang: &str) -> PyResult<Language> {
    match lang {
        "c" => Ok(Language::C),
        "c++" | "cxx" | "cpp" => Ok(Language::Cxx),
        "cuda" | "cu" => Ok(Language::Cuda),
        _ => Err(PyValueError::new_err(format!(
            "unknown language {lang:?}: use \"c\", \"c++\" or \"cuda\""
        ))),
    }
}

fn device_templates(device: &str) -> PyResult<&'static str> {
    match device {
        "cpu" => Ok(""),
        "cuda" | "gpu" => Ok("cuda/"),
        _ => Err(PyValueError::new_err(format!(
            "unknown device {device:?}: use \"cpu\" or \"cuda\""
        ))),
    }
}

#[pymethods]
impl Cache {
    /// Opens a cache. Settings come from XCACHE_DIR, XCACHE_FLAGS and the config file,
    /// as for the `xcache` command; the arguments override them. `flags` is a dict of
    /// settings (`{"max_size": "5GiB"}`) or an XCACHE_FLAGS-style string. `lock_timeout`
    /// (seconds) bounds every lock wait of this cache's calls (None: wait as long as the
    /// holder needs: a compile is bounded by the `compile_timeout` setting).
    /// `_settings_of`: start from that cache's settings instead of loading them
    /// (`Cache.with_runtime_tag`).
    #[new]
    #[pyo3(signature = (base_dir=None, *, runtime_tag=None, flags=None, lock_timeout=None, _settings_of=None))]
    fn new(
        py: Python<'_>,
        base_dir: Option<PathBuf>,
        runtime_tag: Option<String>,
        flags: Option<&Bound<'_, PyAny>>,
        lock_timeout: Option<f64>,
        _settings_of: Option<PyRef<'_, Cache>>,
    ) -> PyResult<Cache> {
        let mut config = match &_settings_of {
            Some(other) => other.jit.config().clone(),
            None => Config::load().or_py()?,
        };
        if let Some(f) = flags {
            if let Ok(s) = f.cast::<PyString>() {
                config.apply_flags(&s.to_cow()?).or_py()?;
            } else if let Ok(d) = f.cast::<PyDict>() {
                for (k, v) in d.iter() {
                    let k: String = k.extract()?;
                    let v: String = if v.is_instance_of::<PyString>() {
                        v.extract()?
                    } else if let Ok(b) = v.extract::<bool>() {
                        b.to_string()
                    } else {
                        v.str()?.extract()?
                    };
                    config.set(&k, &v).or_py()?;
                }
            } else {
                return Err(PyTypeError::new_err(
                    "flags must be a dict of settings or a \"k=v,k=v\" string",
                ));
            }
        }
        if let Some(t) = runtime_tag {
            config.set("runtime_tag", &t).or_py()?;
        }
        if let Some(d) = base_dir {
            config.set_base_dir(d);
        }
        let lock_timeout = match lock_timeout {
            Some(s) if !(s.is_finite() && s >= 0.0) => {
                return Err(PyValueError::new_err(
                    "lock_timeout must be a number of seconds >= 0",
                ))
            }
            s => s.map(Duration::from_secs_f64),
        };
        let jit = py
            .detach(|| with_wait_limit(lock_timeout, || Jit::new(config)))
            .or_py()?;
        Ok(Cache {
            jit: Arc::new(jit),
            lock_timeout,
            rendered: Mutex::new(HashMap::new()),
            nvrtc_rendered: Mutex::new(HashMap::new()),
        })
    }

    /// The base dir (holds every compiledir).
    #[getter]
    fn base_dir(&self) -> PathBuf {
        self.jit.store().base_dir().to_path_buf()
    }

    /// The compiledir this cache compiles into.
    #[getter]
    fn compiledir(&self) -> PathBuf {
        self.jit.store().compiledir().to_path_buf()
    }

    /// The runtime tag (part of the compiledir's name), "" when none.
    #[getter]
    fn runtime_tag(&self) -> String {
        self.jit.config().runtime_tag.clone()
    }

    /// The lock wait limit in seconds, or None.
    #[getter]
    fn lock_timeout(&self) -> Option<f64> {
        self.lock_timeout.map(|d| d.as_secs_f64())
    }

    /// The group `producer` keeps under `material` (its own key material, text), if
    /// the cache has it; None otherwise. Never waits for a producer building it.
    #[pyo3(signature = (producer, material, name=""))]
    fn get_group(
        &self,
        py: Python<'_>,
        producer: &str,
        material: &str,
        name: &str,
    ) -> PyResult<Option<Group>> {
        let spec = xcache::store::group::GroupSpec::new(producer, material, name).or_py()?;
        let held = self.run(py, |jit| jit.store().get_group_held(&spec))?;
        if let Some(h) = &held {
            self.jit.stats().hit(h.compile_ms, h.lock_wait);
        }
        Ok(held.map(|held| Group { held }))
    }

    /// The group `producer` keeps under `material`: a `Group` when the cache (or its
    /// remote tier) has it, else a `GroupLease` to build and publish it (other
    /// processes asking for it wait for the lease, within the lock timeout).
    #[pyo3(signature = (producer, material, name=""))]
    fn lease_group(
        &self,
        py: Python<'_>,
        producer: &str,
        material: &str,
        name: &str,
    ) -> PyResult<Py<PyAny>> {
        use xcache::store::group::HeldLeased;
        let spec = xcache::store::group::GroupSpec::new(producer, material, name).or_py()?;
        match self.run(py, |jit| jit.store().lease_group_held(&spec))? {
            HeldLeased::Found(held) => {
                self.jit.stats().hit(held.compile_ms, held.lock_wait);
                Ok(Py::new(py, Group { held })?.into_any())
            }
            HeldLeased::Lease(lease) => Ok(Py::new(
                py,
                PyGroupLease {
                    inner: Mutex::new(Some(lease)),
                    jit: Arc::clone(&self.jit),
                    lock_timeout: self.lock_timeout,
                },
            )?
            .into_any()),
        }
    }

    /// Publishes `files` (name → bytes) as the group `producer` keeps under
    /// `material`, and returns it (the one already there, if another process was first).
    #[pyo3(signature = (producer, material, files, name=""))]
    fn put_group(
        &self,
        py: Python<'_>,
        producer: &str,
        material: &str,
        files: &Bound<'_, PyAny>,
        name: &str,
    ) -> PyResult<Group> {
        use xcache::store::group::HeldLeased;
        let spec = xcache::store::group::GroupSpec::new(producer, material, name).or_py()?;
        let mut list: Vec<(String, Vec<u8>)> = Vec::new();
        for item in files.call_method0("items")?.try_iter()? {
            let (k, v): (String, Bound<'_, PyAny>) = item?.extract()?;
            let bytes = if v.is_instance_of::<PyString>() {
                v.extract::<String>()?.into_bytes()
            } else {
                v.extract::<Vec<u8>>()?
            };
            list.push((k, bytes));
        }
        let held = self.run(py, |jit| match jit.store().lease_group_held(&spec)? {
            HeldLeased::Found(h) => Ok(h),
            HeldLeased::Lease(mut lease) => {
                for (n, b) in &list {
                    lease.add(n, b)?;
                }
                lease.publish_held(Duration::ZERO)
            }
        })?;
        if held.hit {
            self.jit.stats().hit(held.compile_ms, held.lock_wait);
        } else {
            self.jit.stats().miss(held.compile_ms, held.lock_wait);
        }
        Ok(Group { held })
    }

    /// Compiles `source` through the cache (once, ever, per key) and loads it. See the
    /// package documentation for the arguments.
    #[pyo3(signature = (source, *, lang="c", flags=None, name=None, include_dirs=None, headers=None))]
    #[allow(clippy::too_many_arguments)]
    fn compile(
        &self,
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        lang: &str,
        flags: Option<&Bound<'_, PyAny>>,
        name: Option<String>,
        include_dirs: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Library>> {
        let mut req = SourceRequest::new(language(lang)?, text_or_bytes(source, "source")?);
        if let Some(n) = name {
            req = req.named(n);
        }
        for dir in strings(include_dirs, "include_dirs")? {
            let abs = std::path::absolute(&dir).map_err(PyErr::from)?;
            req = req.flag(format!("-I{}", abs.display()));
        }
        req.flags.extend(strings(flags, "flags")?);
        req.extra_inputs = self::headers(py, headers)?;
        let held = self.held(py, &req)?;
        library(py, held)
    }

    /// Compiles CUDA `source` (device code: `extern "C" __global__` kernels) with NVRTC
    /// through the cache, for the `cuda_arch` setting (else this machine's GPU), and
    /// returns the module; `get_function(name)` gives kernels to launch as CuPy's
    /// `RawKernel`s are. `options` are NVRTC options (`-D...`, `--use_fast_math`, ...);
    /// `include_dirs` are searched for `#include "..."`; `headers` are extra inputs
    /// given in memory (a dict of name to text, or paths). Needs no GPU to compile.
    #[pyo3(signature = (source, *, options=None, name=None, include_dirs=None, headers=None))]
    fn cuda_module(
        &self,
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyAny>>,
        name: Option<String>,
        include_dirs: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyCudaModule>> {
        let mut req = SourceRequest::new(Language::Cuda, text_or_bytes(source, "source")?);
        if let Some(n) = name {
            req = req.named(n);
        }
        for dir in strings(include_dirs, "include_dirs")? {
            let abs = std::path::absolute(&dir).map_err(PyErr::from)?;
            req = req.flag(format!("-I{}", abs.display()));
        }
        req.flags.extend(strings(options, "options")?);
        req.extra_inputs = self::headers(py, headers)?;
        // Start the GPU (where there is one) while NVRTC loads in the background.
        let _ = py.detach(|| gpu(&self.jit));
        let module = self.run(py, move |jit| jit.cuda_module(&req))?;
        Py::new(py, PyCudaModule::new(&self.jit, module))
    }

    /// Renders the template `name` (`elemwise`, `c/reduce`, `cuda/gemm`, or one of
    /// yours on `template_path`) with `params`, compiles and loads it.
    #[pyo3(signature = (name, params=None, *, flags=None))]
    fn template(
        &self,
        py: Python<'_>,
        name: &str,
        params: Option<&Bound<'_, PyDict>>,
        flags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Library>> {
        let mut ps = Vec::new();
        if let Some(d) = params {
            for (k, v) in d.iter() {
                let v: String = if let Ok(b) = v.extract::<bool>() {
                    b.to_string()
                } else {
                    v.str()?.extract()?
                };
                ps.push((k.extract::<String>()?, v));
            }
        }
        let req = Cache::template_request(name, &ps, strings(flags, "flags")?);
        let held = self.compile_template_held(py, req)?;
        library(py, held)
    }

    /// The source `template` renders to with `params`, without compiling it.
    #[pyo3(signature = (name, params=None))]
    fn render(
        &self,
        py: Python<'_>,
        name: &str,
        params: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let mut ps = Vec::new();
        if let Some(d) = params {
            for (k, v) in d.iter() {
                ps.push((k.extract::<String>()?, v.str()?.extract::<String>()?));
            }
        }
        let req = Cache::template_request(name, &ps, Vec::new());
        let r = self.run(py, move |jit| jit.render(&req))?;
        Ok(String::from_utf8_lossy(&r.source).into_owned())
    }

    /// An element-wise kernel: `expr` over inputs a, b, c, ... (`arity` of them).
    /// Call it as `f(a, b, c, out=out)`.
    #[pyo3(signature = (expr, arity=None, *, dtype="float32", device="cpu"))]
    fn elemwise(
        &self,
        py: Python<'_>,
        expr: &str,
        arity: Option<usize>,
        dtype: &str,
        device: &str,
    ) -> PyResult<Elemwise> {
        let arity = arity.unwrap_or_else(|| inputs_named(expr));
        let prefix = device_templates(device)?;
        let req = TemplateRequest::new(format!("{prefix}elemwise"))
            .param("dtype", dtype)
            .param("arity", arity)
            .param("expr", expr);
        if !prefix.is_empty() && self.nvrtc() {
            let (m, src) = self.nvrtc_template(py, req, "xc_scalar")?;
            let plan =
                xcache::cuda::launch::ElemwisePlan::parse(&String::from_utf8_lossy(&src.source))
                    .or_py()?;
            return Ok(Elemwise {
                f: 0,
                arity,
                dtype: static_dtype(dtype),
                cuda: true,
                nvrtc: Some((m.clone_ref(py), plan)),
                lib: m.into_any(),
            });
        }
        let held = self.compile_template_held(py, req)?;
        // SAFETY: the shipped templates export xc_elemwise with these ABIs.
        let f = unsafe { held.compiled.symbol::<*mut c_void>("xc_elemwise") }.or_py()?;
        Ok(Elemwise {
            f: *f as usize,
            arity,
            dtype: static_dtype(dtype),
            cuda: !prefix.is_empty(),
            nvrtc: None,
            lib: library(py, held)?.into_any(),
        })
    }

    /// A reduction: `op` (sum, max, min, mean) over `pre(x)` along `axis` of a 2-D
    /// array (1: each row; 0: each column). Call it as `r(x, out=out)`.
    #[pyo3(signature = (op="sum", pre="x", *, axis=1, dtype="float32", device="cpu"))]
    fn reduce(
        &self,
        py: Python<'_>,
        op: &str,
        pre: &str,
        axis: usize,
        dtype: &str,
        device: &str,
    ) -> PyResult<Reduce> {
        let prefix = device_templates(device)?;
        let req = TemplateRequest::new(format!("{prefix}reduce"))
            .param("dtype", dtype)
            .param("op", op)
            .param("pre", pre)
            .param("axis", axis);
        if !prefix.is_empty() && self.nvrtc() {
            let first = if axis == 1 {
                "xc_rows_finish"
            } else {
                "xc_cols_finish"
            };
            let (m, src) = self.nvrtc_template(py, req, first)?;
            let plan =
                xcache::cuda::launch::ReducePlan::parse(&String::from_utf8_lossy(&src.source))
                    .or_py()?;
            return Ok(Reduce {
                f: 0,
                axis,
                dtype: static_dtype(dtype),
                cuda: true,
                nvrtc: Some((m.clone_ref(py), plan)),
                lib: m.into_any(),
            });
        }
        let held = self.compile_template_held(py, req)?;
        // SAFETY: the shipped templates export xc_reduce with these ABIs.
        let f = unsafe { held.compiled.symbol::<*mut c_void>("xc_reduce") }.or_py()?;
        Ok(Reduce {
            f: *f as usize,
            axis,
            dtype: static_dtype(dtype),
            cuda: !prefix.is_empty(),
            nvrtc: None,
            lib: library(py, held)?.into_any(),
        })
    }

    /// A matrix product `out = a @ b (+ bias) (relu)`, row-major. Call it as
    /// `g(a, b, bias=None, out=out)`. `precision` (CUDA only): ieee, tf32, bf16, fp16.
    #[pyo3(signature = (*, dtype="float32", relu=false, device="cpu", precision=None))]
    fn gemm(
        &self,
        py: Python<'_>,
        dtype: &str,
        relu: bool,
        device: &str,
        precision: Option<&str>,
    ) -> PyResult<Gemm> {
        let prefix = device_templates(device)?;
        let mut req = TemplateRequest::new(format!("{prefix}gemm"))
            .param("dtype", dtype)
            .param("relu", relu);
        if let Some(p) = precision {
            req = req.param("precision", p);
        }
        let half = matches!(precision, Some("bf16") | Some("fp16"));
        if !prefix.is_empty() && self.nvrtc() {
            let (m, src) = self.nvrtc_template(py, req, "xc_gemm_c0_v")?;
            let plan = xcache::cuda::launch::GemmPlan::parse(&String::from_utf8_lossy(&src.source))
                .or_py()?;
            return Ok(Gemm {
                f: 0,
                dtype: static_dtype(dtype),
                half_inputs: half,
                cuda: true,
                nvrtc: Some((m.clone_ref(py), plan)),
                lib: m.into_any(),
            });
        }
        let held = self.compile_template_held(py, req)?;
        // SAFETY: the shipped templates export xc_gemm_bias with these ABIs.
        let f = unsafe { held.compiled.symbol::<*mut c_void>("xc_gemm_bias") }.or_py()?;
        Ok(Gemm {
            f: *f as usize,
            dtype: static_dtype(dtype),
            half_inputs: half,
            cuda: !prefix.is_empty(),
            nvrtc: None,
            lib: library(py, held)?.into_any(),
        })
    }

    /// `xcache list --json` of this cache: the entries of the current compiledir (or of
    /// all, with `all`), as JSON text.
    #[pyo3(signature = (all=false, sort="name"))]
    fn _list_json(&self, py: Python<'_>, all: bool, sort: &str) -> PyResult<String> {
        let by: xcache::ops::list::SortBy = sort.parse().map_err(PyValueError::new_err)?;
        let rows = self.run(py, move |jit| xcache::ops::list::list(jit.store(), all, by))?;
        Ok(serde_json::to_string(&rows).expect("rows serialise"))
    }

    /// `xcache stats --json`, as JSON text.
    #[pyo3(signature = (zero=false))]
    fn _stats_json(&self, py: Python<'_>, zero: bool) -> PyResult<String> {
        let rows = self.run(py, move |jit| xcache::ops::stats::stats(jit.store(), zero))?;
        Ok(serde_json::to_string(&rows).expect("rows serialise"))
    }

    /// `xcache prune --json`, as JSON text. Sizes and ages as the CLI takes them.
    #[pyo3(signature = (max_size=None, older_than=None, stale=false, dry_run=false))]
    fn _prune_json(
        &self,
        py: Python<'_>,
        max_size: Option<&Bound<'_, PyAny>>,
        older_than: Option<&Bound<'_, PyAny>>,
        stale: bool,
        dry_run: bool,
    ) -> PyResult<String> {
        let max_size = match max_size {
            None => None,
            Some(v) if v.is_instance_of::<PyString>() => Some(
                xcache::config::parse_size(&v.extract::<String>()?)
                    .map_err(PyValueError::new_err)?,
            ),
            Some(v) => Some(v.extract::<u64>()?),
        };
        let older_than = match older_than {
            None => None,
            Some(v) if v.is_instance_of::<PyString>() => Some(
                xcache::config::parse_duration(&v.extract::<String>()?)
                    .map_err(PyValueError::new_err)?,
            ),
            Some(v) => {
                let secs: f64 = v
                    .call_method0("total_seconds")
                    .and_then(|s| s.extract())
                    .or_else(|_| v.extract())?;
                Some(Duration::from_secs_f64(secs.max(0.0)))
            }
        };
        let opts = xcache::ops::clean::PruneOptions {
            max_size,
            older_than,
            stale,
            force: false,
            dry_run,
        };
        let r = self.run(py, move |jit| xcache::ops::clean::prune(jit.store(), &opts))?;
        Ok(serde_json::to_string(&r).expect("report serialises"))
    }

    /// `xcache clear --json`, as JSON text.
    #[pyo3(signature = (force=false, dry_run=false))]
    fn _clear_json(&self, py: Python<'_>, force: bool, dry_run: bool) -> PyResult<String> {
        let r = self.run(py, move |jit| {
            xcache::ops::clean::clear(jit.store(), force, dry_run)
        })?;
        Ok(serde_json::to_string(&r).expect("report serialises"))
    }

    fn __repr__(&self) -> String {
        format!("<xcache.Cache {}>", self.jit.store().compiledir().display())
    }
}

/// The arity an expression implies: one past its last input (a..h) named as a whole
/// identifier (`exp(a)` has one input, not five), at least 1.
fn inputs_named(expr: &str) -> usize {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|word| match word.as_bytes() {
            [c @ b'a'..=b'h'] => Some((c - b'a') as usize + 1),
            _ => None,
        })
        .max()
        .unwrap_or(1)
}

fn static_dtype(d: &str) -> &'static str {
    match d {
        "float32" => "float32",
        "float64" => "float64",
        "int32" => "int32",
        _ => "int64",
    }
}

/// A compiled `elemwise` kernel. `f(a, b, ..., out=None)`: numpy arrays (or any
/// buffer) of one shape and the kernel's dtype, C-contiguous; `out` may be one of the
/// inputs (in place). Returns `out` (allocated when not given). CUDA kernels take
/// arrays with `__cuda_array_interface__` and an optional `stream=` (an int handle).
#[pyclass(module = "xcache", name = "Elemwise", frozen)]
struct Elemwise {
    f: usize,
    arity: usize,
    dtype: &'static str,
    cuda: bool,
    /// Built by NVRTC: the module and the template's launch data.
    nvrtc: Option<(Py<PyCudaModule>, xcache::cuda::launch::ElemwisePlan)>,
    /// A `Library` (a shared object) or a `CudaModule` (NVRTC).
    lib: Py<PyAny>,
}

#[pymethods]
impl Elemwise {
    #[pyo3(signature = (*inputs, out=None, stream=None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyTuple>,
        out: Option<Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if inputs.len() != self.arity {
            return Err(PyTypeError::new_err(format!(
                "this elemwise kernel takes {} input{}, got {}",
                self.arity,
                if self.arity == 1 { "" } else { "s" },
                inputs.len()
            )));
        }
        if self.cuda {
            return self.call_cuda(py, inputs, out, stream);
        }
        let mut bufs = Vec::with_capacity(self.arity);
        for (i, x) in inputs.iter().enumerate() {
            bufs.push(host_array(&x, false, self.dtype, &format!("input {i}"))?);
        }
        let out = match out {
            Some(o) => o,
            None => numpy_empty(py, &bufs[0].shape(), self.dtype)?,
        };
        let ob = host_array(&out, true, self.dtype, "out")?;
        let shape = ob.shape();
        let mut ptrs = [std::ptr::null::<c_void>(); 8];
        for (i, b) in bufs.iter().enumerate() {
            if b.shape() != shape {
                return Err(PyValueError::new_err(format!(
                    "input {i} has shape {}, out {}: elemwise does not broadcast",
                    shape_str(&b.shape()),
                    shape_str(&shape)
                )));
            }
            if partially_overlap((b.ptr(), b.bytes()), (ob.ptr(), ob.bytes())) {
                return Err(PyValueError::new_err(format!(
                    "input {i} partially overlaps out (in place is fine; a shifted view is not)"
                )));
            }
            ptrs[i] = b.ptr();
        }
        let n: usize = shape.iter().product();
        // SAFETY: the template's ABI; `arity` pointers to `n` elements of the dtype
        // each, `out` writable with `n` elements, checked above. The buffers stay held
        // (and the arrays alive) across the call.
        let f: ElemwiseFn = unsafe { std::mem::transmute(self.f) };
        let (p, o) = (ptrs.as_ptr() as usize, ob.ptr() as usize);
        let code = if n >= DETACH_ELEMENTS {
            py.detach(|| unsafe { f(n as i64, p as *const *const c_void, o as *mut c_void) })
        } else {
            unsafe { f(n as i64, ptrs.as_ptr(), ob.ptr()) }
        };
        drop(bufs);
        drop(ob);
        host_status("xc_elemwise", code)?;
        Ok(out)
    }

    /// The compiled library (key, path, hit).
    #[getter]
    fn library(&self, py: Python<'_>) -> Py<PyAny> {
        self.lib.clone_ref(py)
    }

    /// The launch data xcache's launcher reads from the template (kernels built by
    /// NVRTC), as a dict; None for nvcc's host launcher or the CPU.
    #[getter]
    fn launch_data<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((_, p)) = &self.nvrtc else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("template", "cuda/elemwise")?;
        d.set_item("kernels", ("xc_vector", "xc_scalar"))?;
        d.set_item("lanes", p.lanes)?;
        d.set_item("threads", p.threads)?;
        d.set_item("blocks_per_sm", p.blocks_per_sm)?;
        Ok(Some(d))
    }

    /// Inputs it takes.
    #[getter]
    fn arity(&self) -> usize {
        self.arity
    }

    /// Element type.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// "cpu" or "cuda".
    #[getter]
    fn device(&self) -> &'static str {
        if self.cuda {
            "cuda"
        } else {
            "cpu"
        }
    }
}

impl Elemwise {
    fn call_cuda<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyTuple>,
        out: Option<Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut arrs = Vec::new();
        for (i, x) in inputs.iter().enumerate() {
            arrs.push(device_array(&x, self.dtype, &format!("input {i}"))?);
        }
        let out = match out {
            Some(o) => o,
            None => cupy_empty(py, &arrs[0].shape, self.dtype)?,
        };
        let oa = device_array(&out, self.dtype, "out")?;
        let mut ptrs = [std::ptr::null::<c_void>(); 8];
        for (i, a) in arrs.iter().enumerate() {
            if a.shape != oa.shape {
                return Err(PyValueError::new_err(format!(
                    "input {i} has shape {}, out {}: elemwise does not broadcast",
                    shape_str(&a.shape),
                    shape_str(&oa.shape)
                )));
            }
            ptrs[i] = a.ptr as *const c_void;
        }
        let n: usize = oa.shape.iter().product();
        let s = resolve_stream(stream, oa.stream, Some(&out))?;
        if let Some((m, plan)) = &self.nvrtc {
            let (cuda, k) = m.get().kernels()?;
            let mut ins = [0u64; 8];
            for (p, a) in ins.iter_mut().zip(&arrs) {
                *p = a.ptr as u64;
            }
            let (sms, o) = (cuda.sms(), oa.ptr as u64);
            let ins = &ins[..arrs.len()];
            // SAFETY: the template's kernels with its plan; every array holds n elements
            // of the dtype (checked above) and stays alive across the call.
            unsafe { k.run_plan(s as _, |_| plan.plan(sms, n as i64, ins, o)) }.or_py()?;
            return Ok(out);
        }
        type F = xcache::cuda::CudaElemwiseFn;
        // SAFETY: the CUDA template's ABI: a host array of device pointers, checked.
        let f: F = unsafe { std::mem::transmute(self.f) };
        let code = unsafe {
            f(
                n as i64,
                ptrs.as_ptr(),
                oa.ptr as *mut c_void,
                s as *mut c_void,
            )
        };
        cuda_status("xc_elemwise", code)?;
        Ok(out)
    }
}

/// A compiled `reduce` kernel. `r(x, out=None)`: `x` 2-D C-contiguous; `out` has one
/// element per row (axis 1) or per column (axis 0). Returns `out`.
#[pyclass(module = "xcache", name = "Reduce", frozen)]
struct Reduce {
    f: usize,
    axis: usize,
    dtype: &'static str,
    cuda: bool,
    /// Built by NVRTC: the module and the template's launch data.
    nvrtc: Option<(Py<PyCudaModule>, xcache::cuda::launch::ReducePlan)>,
    /// A `Library` (a shared object) or a `CudaModule` (NVRTC).
    lib: Py<PyAny>,
}

#[pymethods]
impl Reduce {
    #[pyo3(signature = (x, out=None, stream=None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let check = |shape: &[usize]| -> PyResult<(usize, usize)> {
            match shape {
                [r, c] => Ok((*r, *c)),
                s => Err(PyValueError::new_err(format!(
                    "reduce takes a 2-D array (rows, columns), got shape {}",
                    shape_str(s)
                ))),
            }
        };
        let want_out = |rows: usize, cols: usize| if self.axis == 1 { rows } else { cols };
        if self.cuda {
            let xa = device_array(x, self.dtype, "x")?;
            let (rows, cols) = check(&xa.shape)?;
            let out = match out {
                Some(o) => o,
                None => cupy_empty(py, &[want_out(rows, cols)], self.dtype)?,
            };
            let oa = device_array(&out, self.dtype, "out")?;
            if oa.shape.iter().product::<usize>() != want_out(rows, cols) {
                return Err(PyValueError::new_err(format!(
                    "out has shape {}, reducing {} over axis {} gives ({},)",
                    shape_str(&oa.shape),
                    shape_str(&xa.shape),
                    self.axis,
                    want_out(rows, cols)
                )));
            }
            let s = resolve_stream(stream, oa.stream, Some(&out))?;
            if let Some((m, plan)) = &self.nvrtc {
                let (_, k) = m.get().kernels()?;
                let (xp, op) = (xa.ptr as u64, oa.ptr as u64);
                let (r, c) = (rows as i64, cols as i64);
                // SAFETY: the template's kernels with its plan; sizes checked above.
                unsafe { k.run_plan(s as _, |d| plan.plan(d, r, c, xp, op)) }.or_py()?;
                return Ok(out);
            }
            // SAFETY: the CUDA template's ABI; sizes checked.
            let f: xcache::cuda::CudaReduceFn = unsafe { std::mem::transmute(self.f) };
            let code = unsafe {
                f(
                    rows as i64,
                    cols as i64,
                    xa.ptr as *const c_void,
                    oa.ptr as *mut c_void,
                    s as *mut c_void,
                )
            };
            cuda_status("xc_reduce", code)?;
            return Ok(out);
        }
        let xb = host_array(x, false, self.dtype, "x")?;
        let (rows, cols) = check(&xb.shape())?;
        let out = match out {
            Some(o) => o,
            None => numpy_empty(py, &[want_out(rows, cols)], self.dtype)?,
        };
        let ob = host_array(&out, true, self.dtype, "out")?;
        if ob.shape().iter().product::<usize>() != want_out(rows, cols) {
            return Err(PyValueError::new_err(format!(
                "out has shape {}, reducing {} over axis {} gives ({},)",
                shape_str(&ob.shape()),
                shape_str(&xb.shape()),
                self.axis,
                want_out(rows, cols)
            )));
        }
        if partially_overlap((xb.ptr(), xb.bytes()), (ob.ptr(), ob.bytes())) || xb.ptr() == ob.ptr()
        {
            return Err(PyValueError::new_err("out overlaps x"));
        }
        // SAFETY: the template's ABI; sizes checked above.
        let f: ReduceFn = unsafe { std::mem::transmute(self.f) };
        let (xp, op) = (xb.ptr() as usize, ob.ptr() as usize);
        let call = move || unsafe {
            f(
                rows as i64,
                cols as i64,
                xp as *const c_void,
                op as *mut c_void,
            )
        };
        let code = if rows * cols >= DETACH_ELEMENTS {
            py.detach(call)
        } else {
            call()
        };
        drop(xb);
        drop(ob);
        host_status("xc_reduce", code)?;
        Ok(out)
    }

    /// The compiled library.
    #[getter]
    fn library(&self, py: Python<'_>) -> Py<PyAny> {
        self.lib.clone_ref(py)
    }

    /// The launch data xcache's launcher reads from the template (kernels built by
    /// NVRTC), as a dict; None for nvcc's host launcher or the CPU.
    #[getter]
    fn launch_data<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((_, p)) = &self.nvrtc else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("template", "cuda/reduce")?;
        d.set_item("axis", p.axis)?;
        d.set_item("vec", p.vec)?;
        d.set_item("threads", p.threads)?;
        d.set_item("unroll", p.unroll)?;
        d.set_item("acc_bytes", p.acc_bytes)?;
        Ok(Some(d))
    }

    /// The axis reduced.
    #[getter]
    fn axis(&self) -> usize {
        self.axis
    }

    /// Element type.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }
}

/// A compiled `gemm` kernel. `g(a, b, bias=None, out=None)`: `a` (m, k), `b` (k, n),
/// `bias` (n,), `out` (m, n), row-major (C-contiguous). Returns `out`.
#[pyclass(module = "xcache", name = "Gemm", frozen)]
struct Gemm {
    f: usize,
    dtype: &'static str,
    half_inputs: bool,
    cuda: bool,
    /// Built by NVRTC: the module and the template's launch data.
    nvrtc: Option<(Py<PyCudaModule>, xcache::cuda::launch::GemmPlan)>,
    /// A `Library` (a shared object) or a `CudaModule` (NVRTC).
    lib: Py<PyAny>,
}

fn mnk(a: &[usize], b: &[usize]) -> PyResult<(usize, usize, usize)> {
    match (a, b) {
        ([m, k], [k2, n]) if k == k2 => Ok((*m, *n, *k)),
        _ => Err(PyValueError::new_err(format!(
            "gemm multiplies a (m, k) by b (k, n); got {} and {}",
            shape_str(a),
            shape_str(b)
        ))),
    }
}

#[pymethods]
impl Gemm {
    #[pyo3(signature = (a, b, bias=None, out=None, stream=None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        bias: Option<&Bound<'py, PyAny>>,
        out: Option<Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if self.cuda {
            return self.call_cuda(py, a, b, bias, out, stream);
        }
        let ab = host_array(a, false, self.dtype, "a")?;
        let bb = host_array(b, false, self.dtype, "b")?;
        let (m, n, k) = mnk(&ab.shape(), &bb.shape())?;
        let biasb = bias
            .map(|x| host_array(x, false, self.dtype, "bias"))
            .transpose()?;
        if let Some(bb) = &biasb {
            if bb.shape().iter().product::<usize>() != n {
                return Err(PyValueError::new_err(format!(
                    "bias has shape {}, out has {n} columns",
                    shape_str(&bb.shape())
                )));
            }
        }
        let out = match out {
            Some(o) => o,
            None => numpy_empty(py, &[m, n], self.dtype)?,
        };
        let ob = host_array(&out, true, self.dtype, "out")?;
        if ob.shape() != [m, n] {
            return Err(PyValueError::new_err(format!(
                "out has shape {}, a @ b has ({m}, {n})",
                shape_str(&ob.shape())
            )));
        }
        for (what, x) in [("a", &ab), ("b", &bb)] {
            let (p, l) = (x.ptr() as usize, x.bytes());
            let (q, lo) = (ob.ptr() as usize, ob.bytes());
            if p < q + lo && q < p + l {
                return Err(PyValueError::new_err(format!("out overlaps {what}")));
            }
        }
        // SAFETY: the template's ABI; shapes checked above; out does not overlap.
        let f: GemmBiasFn = unsafe { std::mem::transmute(self.f) };
        let (pa, pb, pbias, po) = (
            ab.ptr() as usize,
            bb.ptr() as usize,
            biasb.as_ref().map_or(0, |x| x.ptr() as usize),
            ob.ptr() as usize,
        );
        let call = move || unsafe {
            f(
                m as i64,
                n as i64,
                k as i64,
                pa as *const c_void,
                pb as *const c_void,
                pbias as *const c_void,
                po as *mut c_void,
            )
        };
        let code = if m * n * k >= DETACH_ELEMENTS {
            py.detach(call)
        } else {
            call()
        };
        drop((ab, bb, biasb, ob));
        host_status("xc_gemm", code)?;
        Ok(out)
    }

    /// The compiled library.
    #[getter]
    fn library(&self, py: Python<'_>) -> Py<PyAny> {
        self.lib.clone_ref(py)
    }

    /// The launch data xcache's launcher reads from the template (kernels built by
    /// NVRTC), as a dict; None for nvcc's host launcher or the CPU.
    #[getter]
    fn launch_data<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((_, p)) = &self.nvrtc else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("template", "cuda/gemm")?;
        d.set_item("tensor_cores", p.tensor_cores)?;
        let configs = PyList::empty(py);
        for c in &p.configs {
            let cd = PyDict::new(py);
            cd.set_item("threads", c.threads)?;
            cd.set_item("smem", c.smem)?;
            cd.set_item("bm", c.bm)?;
            cd.set_item("bn", c.bn)?;
            configs.append(cd)?;
        }
        d.set_item("configs", configs)?;
        d.set_item("pick", p.pick.to_vec())?;
        d.set_item("chunk", p.chunk)?;
        Ok(Some(d))
    }

    /// Element type (of C; A and B are 16-bit for bf16/fp16 precision).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }
}

impl Gemm {
    fn call_cuda<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        bias: Option<&Bound<'py, PyAny>>,
        out: Option<Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // bf16/fp16 inputs hold 16-bit patterns: CuPy float16 ("<f2") or uint16 views.
        let in_dtype = if self.half_inputs {
            None
        } else {
            Some(self.dtype)
        };
        let get_in = |x: &Bound<'py, PyAny>, what: &str| -> PyResult<DeviceArray> {
            match in_dtype {
                Some(d) => device_array(x, d, what),
                None => {
                    let iface = x.getattr("__cuda_array_interface__")?;
                    let t: String = iface.get_item("typestr")?.extract()?;
                    if !matches!(t.as_str(), "<f2" | "<u2" | "<i2" | "<V2") {
                        return Err(PyTypeError::new_err(format!(
                            "{what} must hold 16-bit values (float16 or a uint16 view of bf16) for this precision, got {t}"
                        )));
                    }
                    Ok(DeviceArray {
                        ptr: iface.get_item("data")?.extract::<(usize, bool)>()?.0,
                        shape: iface.get_item("shape")?.extract()?,
                        stream: None,
                    })
                }
            }
        };
        let aa = get_in(a, "a")?;
        let ba = get_in(b, "b")?;
        let (m, n, k) = mnk(&aa.shape, &ba.shape)?;
        let biasa = bias
            .map(|x| device_array(x, self.dtype, "bias"))
            .transpose()?;
        let out = match out {
            Some(o) => o,
            None => cupy_empty(py, &[m, n], self.dtype)?,
        };
        let oa = device_array(&out, self.dtype, "out")?;
        if oa.shape != [m, n] {
            return Err(PyValueError::new_err(format!(
                "out has shape {}, a @ b has ({m}, {n})",
                shape_str(&oa.shape)
            )));
        }
        let s = resolve_stream(stream, oa.stream, Some(&out))?;
        let bias_ptr = biasa.as_ref().map_or(0, |x| x.ptr as u64);
        if let Some((module, plan)) = &self.nvrtc {
            let (cuda, kernels) = module.get().kernels()?;
            let major = cuda.compute_capability().0;
            let dims = (m as i64, n as i64, k as i64);
            let ptrs = (aa.ptr as u64, ba.ptr as u64, bias_ptr, oa.ptr as u64);
            // SAFETY: the template's kernels with its plan; shapes checked above.
            unsafe { kernels.run_plan(s as _, |d| plan.plan(d, major, None, dims, ptrs)) }
                .or_py()?;
            return Ok(out);
        }
        // SAFETY: the CUDA template's ABI; shapes checked.
        let f: xcache::cuda::CudaGemmBiasFn = unsafe { std::mem::transmute(self.f) };
        let code = unsafe {
            f(
                m as i64,
                n as i64,
                k as i64,
                aa.ptr as *const c_void,
                ba.ptr as *const c_void,
                biasa
                    .as_ref()
                    .map_or(std::ptr::null(), |x| x.ptr as *const c_void),
                oa.ptr as *mut c_void,
                s as *mut c_void,
            )
        };
        cuda_status("xc_gemm", code)?;
        Ok(out)
    }
}

/// Runs the `xcache` command line `argv` (argv[0] is the program name) in this
/// process; returns its exit status. What `python -m xcache` calls.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args = argv.into_iter().map(Into::into).collect();
    py.detach(|| xcache_cli::main_with_args(args))
}

/// The CPU's name and widest vector extension, as `xcache demo` prints it.
#[pyfunction]
fn cpu_name() -> String {
    xcache::compile::host::cpu_name()
}

/// The library's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// This interpreter's `nvidia` namespace package directories (NVIDIA's wheels), for
/// finding its NVRTC wheel; `None` where it has none.
fn nvidia_dirs() -> Option<Vec<std::path::PathBuf>> {
    Python::attach(|py| {
        let path = py.import("nvidia").ok()?.getattr("__path__").ok()?;
        let mut dirs = Vec::new();
        for d in path.try_iter().ok()? {
            dirs.push(std::path::PathBuf::from(d.ok()?.extract::<String>().ok()?));
        }
        Some(dirs)
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    xcache_cli::init_logging();
    let py = m.py();
    let prefix: String = py.import("sys")?.getattr("prefix")?.extract()?;
    xcache::compile::nvrtc::set_interpreter(prefix, nvidia_dirs);
    m.add("Error", py.get_type::<Error>())?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add("UntrustedCacheError", py.get_type::<UntrustedCacheError>())?;
    m.add("LockTimeout", py.get_type::<LockTimeout>())?;
    m.add("RefusedFlagError", py.get_type::<RefusedFlagError>())?;
    m.add_class::<Cache>()?;
    m.add_class::<Library>()?;
    m.add_class::<CheckedLoadName>()?;
    m.add_class::<Group>()?;
    m.add_class::<PyGroupLease>()?;
    m.add_class::<Elemwise>()?;
    m.add_class::<Reduce>()?;
    m.add_class::<Gemm>()?;
    m.add_class::<PyCudaModule>()?;
    m.add_class::<CudaKernel>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_name, m)?)?;
    Ok(())
}
