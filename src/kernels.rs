//! Typed, checked handles for the shipped templates (`elemwise`, `reduce`, `gemm`):
//! what a program embedding xcache calls instead of raw function pointers.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let mut config = xcache::Config::defaults();
//! # config.set_base_dir(dir.path());
//! let jit = xcache::Jit::new(config)?;
//! let f = jit.elemwise::<f32>("a * exp(b) + c", 3)?;   // compiled once, ever
//! let (a, b, c) = ([1.0f32, 2.0], [0.0f32, 1.0], [0.5f32, 0.5]);
//! let mut out = [0.0f32; 2];
//! f.call(&[&a, &b, &c], &mut out)?;
//! assert_eq!(out[0], 1.5);
//! # Ok::<(), xcache::Error>(())
//! ```

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::compile::TemplateRequest;
use crate::error::{Error, Result};
use crate::runtime::{Compiled, Jit, Symbol};

/// `int xc_elemwise(int64_t n, const void *const *inputs, void *out)`
pub type ElemwiseFn = unsafe extern "C" fn(i64, *const *const c_void, *mut c_void) -> i32;
/// `int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out)`
pub type ReduceFn = unsafe extern "C" fn(i64, i64, *const c_void, *mut c_void) -> i32;
/// `int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c)`
pub type GemmFn =
    unsafe extern "C" fn(i64, i64, i64, *const c_void, *const c_void, *mut c_void) -> i32;
/// `int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias, void *c)`
pub type GemmBiasFn = unsafe extern "C" fn(
    i64,
    i64,
    i64,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
) -> i32;

/// An element type the templates support.
pub trait Element: Copy + Send + Sync + 'static {
    /// The template's `dtype` value.
    const DTYPE: &'static str;
}

impl Element for f32 {
    const DTYPE: &'static str = "float32";
}
impl Element for f64 {
    const DTYPE: &'static str = "float64";
}
impl Element for i32 {
    const DTYPE: &'static str = "int32";
}
impl Element for i64 {
    const DTYPE: &'static str = "int64";
}

fn status(kernel: &str, code: i32) -> Result<()> {
    match code {
        0 => Ok(()),
        c => Err(Error::InvalidRequest(format!(
            "{kernel} returned error code {c} (1: a negative size, 2: a null pointer)"
        ))),
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).expect("slice lengths fit i64")
}

/// A compiled `elemwise` kernel for `T` with a fixed arity.
#[derive(Debug, Clone)]
pub struct Elemwise<T> {
    f: Symbol<ElemwiseFn>,
    arity: usize,
    compiled: Compiled,
    _t: PhantomData<T>,
}

impl<T: Element> Elemwise<T> {
    /// `out[i] = expr(inputs[0][i], inputs[1][i], ...)`. Every slice must have the
    /// length of `out`, and there must be exactly `arity` inputs.
    pub fn call(&self, inputs: &[&[T]], out: &mut [T]) -> Result<()> {
        if inputs.len() != self.arity {
            return Err(Error::InvalidRequest(format!(
                "elemwise was compiled for {} inputs, called with {}",
                self.arity,
                inputs.len()
            )));
        }
        let mut ptrs = [std::ptr::null::<c_void>(); 8];
        for (i, x) in inputs.iter().enumerate() {
            if x.len() != out.len() {
                return Err(Error::InvalidRequest(format!(
                    "elemwise input {i} has {} elements, the output {}",
                    x.len(),
                    out.len()
                )));
            }
            ptrs[i] = x.as_ptr().cast();
        }
        // SAFETY: the symbol has this ABI (the shipped template), `arity` pointers to
        // `out.len()` elements of T each, and `out` is exclusive.
        let code = unsafe { (self.f)(len_i64(out.len()), ptrs.as_ptr(), out.as_mut_ptr().cast()) };
        status("xc_elemwise", code)
    }

    /// The compiled library (key, path, whether it was a hit).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}

/// A compiled `reduce` kernel for `T`.
#[derive(Debug, Clone)]
pub struct Reduce<T> {
    f: Symbol<ReduceFn>,
    axis: usize,
    compiled: Compiled,
    _t: PhantomData<T>,
}

impl<T: Element> Reduce<T> {
    /// Reduces the row-major matrix `input` with `cols` columns: for axis 1, one
    /// result per row (`out.len()` rows); for axis 0, one per column (`out.len() ==
    /// cols`, `input.len() / cols` rows).
    pub fn call(&self, input: &[T], cols: usize, out: &mut [T]) -> Result<()> {
        let rows = if self.axis == 1 {
            out.len()
        } else {
            input.len().checked_div(cols).unwrap_or(0)
        };
        if rows.checked_mul(cols) != Some(input.len()) || (self.axis == 0 && out.len() != cols) {
            return Err(Error::InvalidRequest(format!(
                "reduce over axis {}: {} elements in, {} out, {cols} columns do not fit",
                self.axis,
                input.len(),
                out.len()
            )));
        }
        // SAFETY: ABI of the shipped template; sizes checked above.
        let code = unsafe {
            (self.f)(
                len_i64(rows),
                len_i64(cols),
                input.as_ptr().cast(),
                out.as_mut_ptr().cast(),
            )
        };
        status("xc_reduce", code)
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

/// A compiled `gemm` kernel for `T`.
#[derive(Debug, Clone)]
pub struct Gemm<T> {
    f: Symbol<GemmBiasFn>,
    compiled: Compiled,
    _t: PhantomData<T>,
}

impl<T: Element> Gemm<T> {
    /// `c = a · b` with `a` m×k, `b` k×n, `c` m×n, all row-major.
    pub fn call(&self, m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) -> Result<()> {
        self.call_bias(m, n, k, a, b, None, c)
    }

    /// `c = a · b + bias`, the bias broadcast over the rows (one value per column of
    /// c), then relu if the kernel was compiled with it.
    #[allow(clippy::too_many_arguments)]
    pub fn call_bias(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[T],
        b: &[T],
        bias: Option<&[T]>,
        c: &mut [T],
    ) -> Result<()> {
        for (name, got, want) in [
            ("a", a.len(), m.checked_mul(k)),
            ("b", b.len(), k.checked_mul(n)),
            ("c", c.len(), m.checked_mul(n)),
            ("bias", bias.map_or(n, <[T]>::len), Some(n)),
        ] {
            if Some(got) != want {
                return Err(Error::InvalidRequest(format!(
                    "gemm {m}x{n}x{k}: `{name}` has {got} elements"
                )));
            }
        }
        // SAFETY: ABI of the shipped template; sizes checked above; `c` is exclusive.
        let code = unsafe {
            (self.f)(
                len_i64(m),
                len_i64(n),
                len_i64(k),
                a.as_ptr().cast(),
                b.as_ptr().cast(),
                bias.map_or(std::ptr::null(), |v| v.as_ptr().cast()),
                c.as_mut_ptr().cast(),
            )
        };
        status("xc_gemm", code)
    }

    /// The compiled library.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}

impl Jit {
    /// Compiles (once) and loads the `elemwise` template for `T`: `expr` over inputs
    /// named a, b, c, ... (`arity` of them).
    pub fn elemwise<T: Element>(&self, expr: &str, arity: usize) -> Result<Elemwise<T>> {
        let req = TemplateRequest::new("elemwise")
            .param("dtype", T::DTYPE)
            .param("arity", arity)
            .param("expr", expr);
        let compiled = self.compile_template(&req)?;
        // SAFETY: the shipped template exports xc_elemwise with this ABI.
        let f = unsafe { compiled.symbol::<ElemwiseFn>("xc_elemwise")? };
        Ok(Elemwise {
            f,
            arity,
            compiled,
            _t: PhantomData,
        })
    }

    /// Compiles (once) and loads the `reduce` template for `T`: `op` (sum, max, min,
    /// mean) over `pre(x)` for each row.
    pub fn reduce<T: Element>(&self, op: &str, pre: &str) -> Result<Reduce<T>> {
        self.reduce_axis(op, pre, 1)
    }

    /// As [`Jit::reduce`], over `axis`: 1 reduces each row, 0 the leading axis (one
    /// result per column).
    pub fn reduce_axis<T: Element>(&self, op: &str, pre: &str, axis: usize) -> Result<Reduce<T>> {
        let req = TemplateRequest::new("reduce")
            .param("dtype", T::DTYPE)
            .param("op", op)
            .param("pre", pre)
            .param("axis", axis);
        let compiled = self.compile_template(&req)?;
        // SAFETY: the shipped template exports xc_reduce with this ABI.
        let f = unsafe { compiled.symbol::<ReduceFn>("xc_reduce")? };
        Ok(Reduce {
            f,
            axis,
            compiled,
            _t: PhantomData,
        })
    }

    /// Compiles (once) and loads the `gemm` template for `T` (f32 or f64).
    pub fn gemm<T: Element>(&self, relu: bool) -> Result<Gemm<T>> {
        let req = TemplateRequest::new("gemm")
            .param("dtype", T::DTYPE)
            .param("relu", relu);
        let compiled = self.compile_template(&req)?;
        // SAFETY: the shipped template exports xc_gemm_bias with this ABI.
        let f = unsafe { compiled.symbol::<GemmBiasFn>("xc_gemm_bias")? };
        Ok(Gemm {
            f,
            compiled,
            _t: PhantomData,
        })
    }
}
