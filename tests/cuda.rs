//! The CUDA path. Everywhere nvcc is found (CI installs it from PyPI): every CUDA
//! template compiles through the cache into a loadable shared object exporting its
//! entry points, the arch is in the key, nvcc's errors come back whole, and without a
//! GPU launches fail with a clear error. Where a GPU is present: every template runs on
//! random data and matches a CPU reference.
//!
//! Every test here is `#[ignore]`d with the reason, so that `cargo test` counts them
//! as ignored rather than passed where they cannot run; `scripts/test.sh` (the
//! README's test command) runs those this machine can (`--ignored`, after asking
//! `xcache doctor` for nvcc and the GPU) and names those it skipped.

mod common;

use common::{close, within_ulps, Num, RefFloat, Rng, TestCache, FLOAT_CASES};
use xcache::cuda::{Cuda, CudaElemwiseFn, GemmPrecision};

use xcache::{Error, Jit, Language, SourceRequest, TemplateRequest};

/// Why a test is ignored unless asked for: `scripts/test.sh` asks where this machine has
/// what it needs (nvcc, a GPU), and says which it skipped.
const NEEDS_NVCC: &str = "needs nvcc: scripts/test.sh runs it where nvcc is found";

/// A Jit building for sm_80 with nvcc. These tests are `#[ignore]`d unless asked for,
/// and asked for only where nvcc is: a missing nvcc then is a failure, not a skip.
fn jit_with_nvcc(tc: &TestCache) -> Jit {
    let mut c = tc.config();
    c.set("cuda_arch", "sm_80").unwrap();
    let jit = Jit::new(c).unwrap();
    if let Err(e) = jit.host_tool(Language::Cuda) {
        panic!("{NEEDS_NVCC}; none here: {e}");
    }
    jit
}

/// A Jit for the local GPU's own arch (no override) with each CUDA compiler, and a
/// GPU handle: every GPU test runs the templates through NVRTC (xcache's launcher) and
/// through nvcc (the templates' own launchers), against the same references. As above,
/// a test asked for where nvcc, NVRTC or a GPU is missing fails.
fn gpu_jits(tc: &TestCache) -> Vec<(Jit, Cuda)> {
    // XC_GPU_COMPILERS=nvrtc (or nvcc) runs one of them, for a quick check.
    let wanted = std::env::var("XC_GPU_COMPILERS").unwrap_or_else(|_| "nvrtc,nvcc".into());
    ["nvrtc", "nvcc"]
        .into_iter()
        .filter(|c| wanted.split(',').any(|w| w.trim() == *c))
        .map(|compiler| {
            let mut c = tc.config();
            c.set("cuda_compiler", compiler).unwrap();
            let jit = Jit::new(c).unwrap();
            if let Err(e) = jit.host_tool(Language::Cuda) {
                panic!("{NEEDS_NVCC}; none here: {e}");
            }
            if let Err(e) = jit.nvrtc() {
                panic!(
                    "needs libnvrtc (scripts/test.sh runs it where it is found); none here: {e}"
                );
            }
            match jit.cuda() {
                Ok(cuda) => (jit, cuda),
                Err(e) => panic!(
                    "needs an NVIDIA GPU (scripts/test.sh runs it where one is); none here: {e}"
                ),
            }
        })
        .collect()
}

/// Compiles `reqs` in parallel (the GPU tests need dozens of variants; serially their
/// compiles would dominate), with the Jit's CUDA compiler, so that the handles' own
/// requests are hits.
fn warm(jit: &Jit, reqs: Vec<TemplateRequest>) {
    if jit.config().cuda_compiler == xcache::config::CudaCompiler::Nvrtc {
        std::thread::scope(|s| {
            for chunk in reqs.chunks(reqs.len().div_ceil(8).max(1)) {
                s.spawn(move || {
                    for r in chunk {
                        jit.nvrtc_template(r).unwrap();
                    }
                });
            }
        });
        return;
    }
    let reqs: Vec<xcache::Request> = reqs.into_iter().map(Into::into).collect();
    for r in jit.compile_many(&reqs, 8) {
        r.unwrap();
    }
}

fn req(name: &str, params: &[(&str, &str)]) -> TemplateRequest {
    params
        .iter()
        .fold(TemplateRequest::new(name), |r, (k, v)| r.param(*k, *v))
}

/// Every function the grammar took from numpy and scipy, in one expression.
const NUMPY_FUNCTIONS: &str =
    "floor(a) + ceil(b) - round(a*b) + log1p(abs(a)) * expm1(b) - sigmoid(a) / erf(b)";

#[test]
#[ignore = "needs nvcc: scripts/test.sh runs it where nvcc is found"]
fn every_cuda_template_compiles_and_exports_its_entry_points() {
    let tc = TestCache::new();
    let jit = jit_with_nvcc(&tc);
    let cases: Vec<(TemplateRequest, &[&str])> = vec![
        (
            req(
                "cuda/elemwise",
                &[("dtype", "float32"), ("arity", "3"), ("expr", "a*exp(b)+c")],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[
                    ("dtype", "float64"),
                    ("arity", "8"),
                    ("expr", "a+b+c+d+e+f+g+h"),
                ],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[("dtype", "int32"), ("arity", "2"), ("expr", "a/b - abs(a)")],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[
                    ("dtype", "int64"),
                    ("arity", "1"),
                    ("expr", "where(a > 0, a, -a)"),
                ],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[
                    ("dtype", "float32"),
                    ("arity", "2"),
                    ("expr", NUMPY_FUNCTIONS),
                ],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[
                    ("dtype", "float64"),
                    ("arity", "2"),
                    ("expr", NUMPY_FUNCTIONS),
                ],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/elemwise",
                &[
                    ("dtype", "int64"),
                    ("arity", "1"),
                    ("expr", "floor(a) + ceil(a) - round(a)"),
                ],
            ),
            &["xc_elemwise"],
        ),
        (
            req(
                "cuda/reduce",
                &[("dtype", "float32"), ("op", "sum"), ("pre", "x*x")],
            ),
            &["xc_reduce"],
        ),
        (
            req(
                "cuda/reduce",
                &[
                    ("dtype", "float64"),
                    ("op", "max"),
                    ("pre", "sigmoid(x) - erf(x)"),
                ],
            ),
            &["xc_reduce"],
        ),
        (
            req("cuda/reduce", &[("dtype", "int64"), ("op", "max")]),
            &["xc_reduce"],
        ),
        (
            req("cuda/reduce", &[("dtype", "float64"), ("op", "mean")]),
            &["xc_reduce"],
        ),
        (
            req("cuda/gemm", &[("dtype", "float32"), ("relu", "true")]),
            &["xc_gemm"],
        ),
        (req("cuda/gemm", &[("dtype", "float64")]), &["xc_gemm"]),
        (
            req(
                "cuda/reduce",
                &[("dtype", "float32"), ("op", "sum"), ("axis", "0")],
            ),
            &["xc_reduce"],
        ),
        (
            req(
                "cuda/reduce",
                &[
                    ("dtype", "int32"),
                    ("op", "min"),
                    ("axis", "0"),
                    ("pre", "x*x"),
                ],
            ),
            &["xc_reduce"],
        ),
        (
            req(
                "cuda/gemm",
                &[
                    ("dtype", "float32"),
                    ("precision", "tf32"),
                    ("relu", "true"),
                ],
            ),
            &[
                "xc_gemm",
                "xc_gemm_bias",
                "xc_gemm_config",
                "xc_gemm_configs",
            ],
        ),
        (
            req("cuda/gemm", &[("dtype", "float32"), ("precision", "bf16")]),
            &[
                "xc_gemm",
                "xc_gemm_bias",
                "xc_gemm_config",
                "xc_gemm_configs",
            ],
        ),
        (
            req("cuda/gemm", &[("dtype", "float32"), ("precision", "fp16")]),
            &[
                "xc_gemm",
                "xc_gemm_bias",
                "xc_gemm_config",
                "xc_gemm_configs",
            ],
        ),
        (
            req("cuda/gemm", &[("dtype", "float64"), ("relu", "true")]),
            &["xc_gemm_bias", "xc_gemm_config"],
        ),
        (
            req("cuda/support", &[]),
            &[
                "xc_cuda_malloc",
                "xc_cuda_free",
                "xc_cuda_copy",
                "xc_cuda_sync",
                "xc_cuda_device",
                "xc_cuda_error_string",
            ],
        ),
    ];
    let reqs: Vec<xcache::Request> = cases.iter().map(|(r, _)| r.clone().into()).collect();
    let results = jit.compile_many(&reqs, 2);
    for ((r, symbols), c) in cases.iter().zip(results) {
        let c = c.unwrap_or_else(|e| panic!("{}: {e}", r.name));
        for s in *symbols {
            unsafe { c.symbol::<*const std::ffi::c_void>(s) }
                .unwrap_or_else(|e| panic!("{}: {e}", r.name));
        }
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(c.path.parent().unwrap().join("entry.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["key_material"]["target"]["triple"], "sm_80",
            "the arch is in the key"
        );
        assert_eq!(meta["key_material"]["language"], "cuda");
        let flags = meta["key_material"]["flags"].to_string();
        assert!(
            flags.contains("code=sm_80") && flags.contains("code=compute_80"),
            "SASS and PTX: {flags}"
        );
        assert!(meta["key_material"]["toolchain"]["version"]
            .as_str()
            .unwrap()
            .contains("host compiler"));
    }
    // Another arch is another key.
    let mut c90 = tc.config();
    c90.set("cuda_arch", "sm_90").unwrap();
    let jit90 = Jit::new(c90).unwrap();
    let src = jit.render(&cases[0].0).unwrap();
    assert_ne!(jit.key_for(&src).unwrap().0, jit90.key_for(&src).unwrap().0);
}

/// A CUDA source including a header beside it, and the toolkit's own headers: every
/// header nvcc read is tracked, so a changed header is a miss and its name shows.
#[test]
#[ignore = "needs nvcc: scripts/test.sh runs it where nvcc is found"]
fn cuda_headers_beside_the_source_and_of_the_toolkit_are_tracked() {
    let tc = TestCache::new();
    let jit = jit_with_nvcc(&tc);
    let dir = tc.dir.path().join("kern");
    std::fs::create_dir_all(&dir).unwrap();
    let h = dir.join("defs.cuh");
    let settle = |p: &std::path::Path, text: &str| {
        std::fs::write(p, text).unwrap();
    };
    settle(&h, "#define SCALE 2.0f\n");
    let k = dir.join("scale.cu");
    std::fs::write(
        &k,
        "#include <cuda_runtime.h>\n#include \"defs.cuh\"\n__global__ void scale(float *x) { x[threadIdx.x] *= SCALE; }\n",
    )
    .unwrap();
    let req = || SourceRequest::from_file(&k).unwrap();
    let first = jit.build(&req()).unwrap();
    let paths: Vec<&str> = first.meta.headers.iter().map(|h| h.path.as_str()).collect();
    assert!(paths.contains(&h.to_str().unwrap()), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.ends_with("/cuda_runtime.h")),
        "the toolkit's headers are tracked: {paths:?}"
    );
    let fresh = || Jit::new(jit.config().clone()).unwrap();
    if let Some(racy) = &first.unrecorded {
        assert_eq!(racy, h.to_str().unwrap());
    }
    common::settled_hit(&first, || fresh().build(&req()).unwrap());
    settle(&h, "#define SCALE 3.0f\n");
    let why = fresh().explain(&req()).unwrap().to_string();
    assert!(why.contains("defs.cuh changed"), "{why}");
    let second = fresh().build(&req()).unwrap();
    assert!(!second.hit);
    assert_ne!(second.key, first.key);
    // An error in the header names it.
    settle(&h, "#define SCALE (2.0f +\n");
    let Err(Error::Compile(ce)) = fresh().build(&req()) else {
        panic!("a broken header must fail the compile")
    };
    assert!(ce.output.contains("scale.cu"), "{}", ce.output);
}

#[test]
#[ignore = "needs nvcc: scripts/test.sh runs it where nvcc is found"]
fn nvcc_errors_come_back_whole() {
    let tc = TestCache::new();
    let jit = jit_with_nvcc(&tc);
    let src = "__global__ void k(float *x) { x[0] = undefined_thing; }\n";
    let err = jit
        .build(&SourceRequest::new(Language::Cuda, src))
        .unwrap_err();
    let Error::Compile(ce) = &err else {
        panic!("{err}")
    };
    assert!(ce.output.contains("undefined_thing"), "{}", ce.output);
    assert!(
        ce.command.contains("nvcc") && ce.command.contains("-gencode"),
        "{}",
        ce.command
    );
    assert!(ce.kept_source.to_str().unwrap().ends_with("source.cu"));
    assert_eq!(std::fs::read_to_string(&ce.kept_source).unwrap(), src);
    assert!(tc.entry_dirs().is_empty());
}

#[test]
#[ignore = "needs nvcc: scripts/test.sh runs it where nvcc is found"]
fn a_tensor_core_precision_needs_float32() {
    let tc = TestCache::new();
    let jit = jit_with_nvcc(&tc);
    let err = jit
        .compile_template(&req(
            "cuda/gemm",
            &[("dtype", "float64"), ("precision", "bf16")],
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("precision bf16 needs dtype float32"), "{err}");
}

#[test]
#[ignore = "needs nvcc: scripts/test.sh runs it where nvcc is found"]
fn launches_fail_cleanly_without_a_gpu() {
    assert!(
        xcache::cuda::probe::probe().is_err(),
        "needs a machine without a GPU (scripts/test.sh skips it where there is one, and says so)"
    );
    let tc = TestCache::new();
    let jit = jit_with_nvcc(&tc);
    let e = jit.cuda().unwrap_err().to_string();
    assert!(
        e.contains("no NVIDIA driver") || e.contains("no GPU"),
        "{e}"
    );
    assert!(e.contains("Fix"), "{e}");
    // The launcher itself returns a CUDA error code, not a crash.
    let c = jit
        .compile_template(&req(
            "cuda/elemwise",
            &[("dtype", "float32"), ("arity", "1"), ("expr", "a")],
        ))
        .unwrap();
    let f = unsafe { c.symbol::<CudaElemwiseFn>("xc_elemwise") }.unwrap();
    let fake = [16usize as *const std::ffi::c_void];
    let code = unsafe { f(4, fake.as_ptr(), 32usize as *mut _, std::ptr::null_mut()) };
    assert!(code > 0, "expected a cudaError_t, got {code}");
    assert_eq!(
        unsafe { f(0, fake.as_ptr(), 32usize as *mut _, std::ptr::null_mut()) },
        0
    );
    assert_eq!(
        unsafe { f(-1, fake.as_ptr(), 32usize as *mut _, std::ptr::null_mut()) },
        -1
    );
    let null = [std::ptr::null::<std::ffi::c_void>()];
    assert_eq!(
        unsafe { f(4, null.as_ptr(), 32usize as *mut _, std::ptr::null_mut()) },
        -2
    );
}

fn gpu_elemwise<T: Num>(jit: &Jit, cuda: &Cuda) {
    let mut rng = Rng(11);
    for &(expr, arity, reference) in FLOAT_CASES {
        let k = cuda.elemwise::<T>(jit, expr, arity).unwrap();
        for n in [0usize, 1, 7, 1023, 100_003, (1 << 20) + 3] {
            // One spare element so that a view at offset 1 exercises the unaligned path.
            let host: Vec<Vec<T>> = (0..arity)
                .map(|_| {
                    (0..n + 1)
                        .map(|_| T::from_f64(rng.uniform(-2.0, 2.0)))
                        .collect()
                })
                .collect();
            let bufs: Vec<_> = host.iter().map(|h| cuda.upload(h).unwrap()).collect();
            let out = cuda.alloc::<T>(n + 1).unwrap();
            for offset in [0usize, 1] {
                let ptrs: Vec<_> = bufs.iter().map(|b| b.ptr_at(offset)).collect();
                unsafe { k.launch_raw(n, &ptrs, out.ptr_at(offset) as *mut _) }.unwrap();
                let got = out.download().unwrap();
                for i in 0..n {
                    let args: Vec<f64> = host.iter().map(|h| h[offset + i].to_f64()).collect();
                    let want = reference(&args);
                    let g = got[offset + i].to_f64();
                    assert!(
                        close(g, want, T::TOL * 4.0),
                        "{} {expr} n={n} offset={offset} i={i}: {g} vs {want}",
                        T::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_elemwise_matches_the_cpu_reference() {
    let tc = TestCache::new();
    for (jit, cuda) in gpu_jits(&tc) {
        gpu_elemwise::<f32>(&jit, &cuda);
        gpu_elemwise::<f64>(&jit, &cuda);
        // int32 through the 16-byte vector path (and its scalar tail).
        let k = cuda.elemwise::<i32>(&jit, "a*3 - b", 2).unwrap();
        let a: Vec<i32> = (0..1003).map(|i| i * 7 - 500).collect();
        let b: Vec<i32> = (0..1003).map(|i| 1000 - i).collect();
        let (da, db) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
        let mut out = cuda.alloc::<i32>(a.len()).unwrap();
        k.launch(&[&da, &db], &mut out).unwrap();
        let got = out.download().unwrap();
        for i in 0..a.len() {
            assert_eq!(got[i], a[i] * 3 - b[i], "i={i}");
        }
        // Integers: wrapping and safe division, as on the CPU.
        let k = cuda.elemwise::<i64>(&jit, "a*b - a/b + abs(a)", 2).unwrap();
        let a: Vec<i64> = vec![i64::MAX, 7, -9, i64::MIN, 5, 0];
        let b: Vec<i64> = vec![2, 0, -1, -1, 3, 4];
        let (da, db) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
        let mut out = cuda.alloc::<i64>(a.len()).unwrap();
        k.launch(&[&da, &db], &mut out).unwrap();
        let got = out.download().unwrap();
        for i in 0..a.len() {
            let (x, y) = (a[i], b[i]);
            let div = if y == 0 {
                0
            } else if y == -1 {
                x.wrapping_neg()
            } else {
                x / y
            };
            let abs = if x == i64::MIN { x } else { x.abs() };
            assert_eq!(
                got[i],
                x.wrapping_mul(y).wrapping_sub(div).wrapping_add(abs),
                "i={i}"
            );
        }
    }
}

/// Largest distance from the numpy/scipy reference allowed on the GPU, in ulps: the
/// CUDA Math API's documented maximum errors (single/double: expf 2/1, log1pf 1/1,
/// expm1f 1/1, erff 2/2; floor, ceil and rint exact), plus 1 for the reference, which
/// is within 1 ulp of the correctly rounded value. sigmoid: exp's error, the roundings
/// of 1 + e and of the division, the reference's.
fn gpu_ulp_tolerance(func: &str) -> u64 {
    match func {
        "floor" | "ceil" | "round" => 0,
        "log1p" | "expm1" => 2,
        "erf" => 3,
        "sigmoid" => 4,
        _ => panic!("no tolerance for {func}"),
    }
}

/// The expression functions on the GPU at the edge values of `expr_references.rs`
/// (the CPU twin is in tests/templates.rs), through the vector and the scalar kernels.
fn gpu_functions_at_edge_values<T: RefFloat>(jit: &Jit, cuda: &Cuda) {
    for (func, pairs) in T::reference_tables() {
        let k = cuda.elemwise::<T>(jit, &format!("{func}(a)"), 1).unwrap();
        let tol = gpu_ulp_tolerance(func);
        // One spare element in front: the view at offset 1 takes the unaligned path.
        let host: Vec<T> = std::iter::once(T::from_f64(0.0))
            .chain(pairs.iter().map(|p| p.0))
            .collect();
        let input = cuda.upload(&host).unwrap();
        for offset in [0usize, 1] {
            // A value no function here returns: an element left unwritten shows.
            let out = cuda
                .upload(&vec![T::from_f64(12345.0); host.len()])
                .unwrap();
            let n = host.len() - offset;
            unsafe { k.launch_raw(n, &[input.ptr_at(offset)], out.ptr_at(offset) as *mut _) }
                .unwrap();
            let got = out.download().unwrap();
            for (i, &(x, want)) in pairs.iter().enumerate() {
                let g = got[i + 1];
                assert!(
                    within_ulps(g, want, tol),
                    "{} {func}({x:?}) offset={offset}: got {g:?}, numpy/scipy say {want:?} (tolerance {tol} ulp)",
                    T::DTYPE
                );
            }
        }
    }
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_functions_match_numpy_and_scipy_at_edge_values() {
    let tc = TestCache::new();
    for (jit, cuda) in gpu_jits(&tc) {
        gpu_functions_at_edge_values::<f32>(&jit, &cuda);
        gpu_functions_at_edge_values::<f64>(&jit, &cuda);
    }
}

fn reduce_want(op: &str, v: &[f64]) -> f64 {
    match op {
        "sum" => v.iter().sum(),
        "mean" => v.iter().sum::<f64>() / v.len() as f64,
        "max" => v.iter().copied().fold(f64::NEG_INFINITY, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }),
        _ => v.iter().copied().fold(f64::INFINITY, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }),
    }
}

/// Every strategy of cuda/reduce: a team of lanes per short row (vector and scalar),
/// a block per long row, rows split across blocks (one row: a full reduction), and
/// columns with and without split rows; aligned and one-element-in views; NaN rows.
fn gpu_reduce<T: Num>(jit: &Jit, cuda: &Cuda) {
    let mut rng = Rng(5);
    let shapes = [
        (1, 1),
        (3, 0),
        (0, 4),
        (5, 7),
        (4097, 16),
        (1000, 257),
        (33, 1000),
        (5000, 3),
        (33, 4096),
        (4, 1 << 20),
        (1, (1 << 21) + 3),
        (100_003, 5),
        // narrow rows, few rows, single columns (each aligned and one element in)
        (9, 1),
        (9, 2),
        (100_001, 2),
        (300_007, 1),
        (2, 9),
        (2, 8),
        (4, 100_004),
        (3, 70_001),
        (1, 4096),
    ];
    for axis in [1, 0] {
        for op in ["sum", "max", "min", "mean"] {
            let k = cuda.reduce_axis::<T>(jit, op, "x*x - 0.25", axis).unwrap();
            for (rows, cols) in shapes {
                for offset in [0usize, 1] {
                    let mut host: Vec<T> = (0..rows * cols + 1)
                        .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                        .collect();
                    if rows * cols > 2 && offset == 1 {
                        host[1 + (rows * cols) / 2] = T::from_f64(f64::NAN);
                    }
                    let nout = if axis == 1 { rows } else { cols };
                    let input = cuda.upload(&host).unwrap();
                    let out = cuda.upload(&vec![T::from_f64(f64::NAN); nout + 1]).unwrap();
                    unsafe {
                        k.launch_raw(rows, cols, input.ptr_at(offset), out.ptr_at(1) as *mut _)
                    }
                    .unwrap();
                    let got = out.download().unwrap();
                    assert!(got[0].to_f64().is_nan(), "wrote before the output");
                    for o in 0..nout {
                        let v: Vec<f64> = (0..if axis == 1 { cols } else { rows })
                            .map(|i| {
                                let idx = if axis == 1 {
                                    o * cols + i
                                } else {
                                    i * cols + o
                                };
                                let x = host[offset + idx].to_f64();
                                x * x - 0.25
                            })
                            .collect();
                        let want = reduce_want(op, &v);
                        let g = got[1 + o].to_f64();
                        let ok = if want.is_infinite() || want.is_nan() {
                            g == want || (g.is_nan() && want.is_nan())
                        } else {
                            close(g, want, T::TOL * 10.0)
                        };
                        assert!(
                            ok,
                            "{} {op} axis={axis} {rows}x{cols} offset={offset} [{o}]: {g} vs {want}",
                            T::DTYPE
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_reduce_matches_the_cpu_reference() {
    let tc = TestCache::new();
    for (jit, cuda) in gpu_jits(&tc) {
        let mut reqs = Vec::new();
        for dtype in ["float32", "float64"] {
            for op in ["sum", "max", "min", "mean"] {
                for axis in ["1", "0"] {
                    reqs.push(req(
                        "cuda/reduce",
                        &[
                            ("dtype", dtype),
                            ("op", op),
                            ("pre", "x*x - 0.25"),
                            ("axis", axis),
                        ],
                    ));
                }
            }
        }
        warm(&jit, reqs);
        gpu_reduce::<f32>(&jit, &cuda);
        gpu_reduce::<f64>(&jit, &cuda);
        // Integer sums wrap; both axes.
        for axis in [1, 0] {
            let k = cuda.reduce_axis::<i32>(&jit, "sum", "x", axis).unwrap();
            let (rows, cols) = (3, 1001);
            let host: Vec<i32> = (0..rows * cols).map(|i| i32::MAX - i as i32).collect();
            let input = cuda.upload(&host).unwrap();
            let mut out = cuda
                .alloc::<i32>(if axis == 1 { rows } else { cols })
                .unwrap();
            k.launch(&input, cols, &mut out).unwrap();
            let got = out.download().unwrap();
            for (o, g) in got.iter().enumerate() {
                let want = if axis == 1 {
                    host[o * cols..(o + 1) * cols]
                        .iter()
                        .fold(0i32, |a, &b| a.wrapping_add(b))
                } else {
                    (0..rows).fold(0i32, |a, r| a.wrapping_add(host[r * cols + o]))
                };
                assert_eq!(*g, want, "axis={axis} [{o}]");
            }
        }
    }
}

/// Values k/256 with |k| <= 256: exact in bf16, fp16 and tf32, so every precision's
/// products are exact and only the float32 accumulation differs from float64.
fn exact_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next() % 513) as i32 - 256) as f32 / 256.0)
        .collect()
}

fn to_bf16(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16 // exact for these inputs
}

fn to_fp16(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16 // normal, exact here
}

fn gpu_gemm<T: Num>(jit: &Jit, cuda: &Cuda, relus: &[bool]) {
    let mut rng = Rng(8);
    for &relu in relus {
        let g = cuda.gemm::<T>(jit, relu).unwrap();
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 7),
            (67, 129, 65),
            (257, 300, 129),
            (1024, 1024, 1024),
        ] {
            let a: Vec<T> = (0..m * k)
                .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                .collect();
            let b: Vec<T> = (0..k * n)
                .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                .collect();
            let bias: Vec<T> = (0..n)
                .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                .collect();
            let (da, db, dbias) = (
                cuda.upload(&a).unwrap(),
                cuda.upload(&b).unwrap(),
                cuda.upload(&bias).unwrap(),
            );
            let mut dc = cuda.alloc::<T>(m * n).unwrap();
            for with_bias in [false, true] {
                g.launch_bias((m, n, k), &da, &db, with_bias.then_some(&dbias), &mut dc)
                    .unwrap();
                let c = dc.download().unwrap();
                // Every element for small sizes; a deterministic sample for the large one.
                let step = if m * n > 100_000 { 997 } else { 1 };
                for idx in (0..m * n).step_by(step) {
                    let (i, j) = (idx / n, idx % n);
                    let mut want: f64 = (0..k)
                        .map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64())
                        .sum();
                    if with_bias {
                        want += bias[j].to_f64();
                    }
                    if relu {
                        want = want.max(0.0);
                    }
                    let got = c[idx].to_f64();
                    assert!(
                        (got - want).abs() <= T::TOL * 4.0 * k as f64,
                        "{} relu={relu} bias={with_bias} {m}x{n}x{k} [{i},{j}]: {got} vs {want}",
                        T::DTYPE
                    );
                }
            }
        }
    }
}

/// The tensor-core precisions, on exact inputs; a NaN in A gives a NaN row, relu keeps it.
const TENSOR_CORE_CASES: [(GemmPrecision, bool); 4] = [
    (GemmPrecision::Tf32, true),
    (GemmPrecision::Tf32, false),
    (GemmPrecision::Bf16, false),
    (GemmPrecision::Fp16, true),
];

fn gpu_gemm_tensor_cores(jit: &Jit, cuda: &Cuda) {
    let mut rng = Rng(9);
    for (precision, relu) in TENSOR_CORE_CASES {
        {
            let g = cuda.gemm_with::<f32>(jit, relu, precision).unwrap();
            assert_eq!(g.precision(), precision);
            for (m, n, k) in [
                (1, 1, 1),
                (3, 5, 7),
                (67, 129, 65),
                (257, 300, 136),
                (512, 1024, 768),
            ] {
                let mut a = exact_inputs(&mut rng, m * k);
                let b = exact_inputs(&mut rng, k * n);
                let bias = exact_inputs(&mut rng, n);
                if m > 2 {
                    a[2 * k] = f32::NAN;
                }
                let mut dc = cuda.alloc::<f32>(m * n).unwrap();
                let dbias = cuda.upload(&bias).unwrap();
                if precision.half_inputs() {
                    let conv = if precision == GemmPrecision::Bf16 {
                        to_bf16
                    } else {
                        to_fp16
                    };
                    let nan16 = if precision == GemmPrecision::Bf16 {
                        0x7fc0
                    } else {
                        0x7e00
                    };
                    let a16: Vec<u16> = a
                        .iter()
                        .map(|&x| if x.is_nan() { nan16 } else { conv(x) })
                        .collect();
                    let b16: Vec<u16> = b.iter().map(|&x| conv(x)).collect();
                    let (da, db) = (cuda.upload(&a16).unwrap(), cuda.upload(&b16).unwrap());
                    g.launch_half((m, n, k), &da, &db, Some(&dbias), &mut dc)
                        .unwrap();
                    assert!(g
                        .launch(
                            (m, n, k),
                            &cuda.upload(&a).unwrap(),
                            &cuda.upload(&b).unwrap(),
                            &mut dc
                        )
                        .is_err());
                } else {
                    let (da, db) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
                    g.launch_bias((m, n, k), &da, &db, Some(&dbias), &mut dc)
                        .unwrap();
                }
                let c = dc.download().unwrap();
                let step = if m * n > 100_000 { 991 } else { 1 };
                for idx in (0..m * n).step_by(step) {
                    let (i, j) = (idx / n, idx % n);
                    let mut want: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                        .sum::<f64>()
                        + bias[j] as f64;
                    if relu && want < 0.0 {
                        want = 0.0;
                    }
                    let got = c[idx] as f64;
                    let ok = if want.is_nan() {
                        got.is_nan()
                    } else {
                        (got - want).abs() <= 2e-6 * k as f64
                    };
                    assert!(
                        ok,
                        "{precision:?} relu={relu} {m}x{n}x{k} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_gemm_matches_the_cpu_reference() {
    let tc = TestCache::new();
    for (jit, cuda) in gpu_jits(&tc) {
        let tensor_cores = cuda.device().unwrap().major >= 8;
        let mut reqs = vec![
            req(
                "cuda/gemm",
                &[
                    ("dtype", "float32"),
                    ("relu", "false"),
                    ("precision", "ieee"),
                ],
            ),
            req(
                "cuda/gemm",
                &[
                    ("dtype", "float32"),
                    ("relu", "true"),
                    ("precision", "ieee"),
                ],
            ),
            req(
                "cuda/gemm",
                &[
                    ("dtype", "float64"),
                    ("relu", "true"),
                    ("precision", "ieee"),
                ],
            ),
        ];
        if tensor_cores {
            for (precision, relu) in TENSOR_CORE_CASES {
                reqs.push(req(
                    "cuda/gemm",
                    &[
                        ("dtype", "float32"),
                        ("relu", if relu { "true" } else { "false" }),
                        ("precision", precision.as_str()),
                    ],
                ));
            }
        }
        warm(&jit, reqs);
        gpu_gemm::<f32>(&jit, &cuda, &[false, true]);
        gpu_gemm::<f64>(&jit, &cuda, &[true]);
        if tensor_cores {
            gpu_gemm_tensor_cores(&jit, &cuda);
        } else {
            eprintln!("SKIPPED: tensor-core GEMM needs compute capability 8.0");
        }
    }
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_demo_runs_check1() {
    let tc = TestCache::new();
    for (jit, _cuda) in gpu_jits(&tc) {
        let r = xcache::ops::demo::check1_cuda(&jit, 100).unwrap();
        assert!(r.ok, "{r:?}");
        assert!(r.warm_hit);
        assert_eq!(r.used, "gpu");
        // The cold request counts the kernel's compile, by the compiler configured.
        assert_eq!(r.cold_builds.len(), 1);
        assert_eq!(
            r.cold_builds[0].compiler,
            jit.config().cuda_compiler.as_str()
        );
        assert!(!r.cold_builds[0].cached);
        eprintln!(
            "check1 cold with {}: {:.1} ms (compile {} ms), warm {:.2} ms",
            r.cold_builds[0].compiler, r.cold_ms, r.compile_ms, r.warm_ms
        );
        eprintln!(
            "check1 on {}: {:.3} ms for 100 launches",
            r.device,
            r.loop_s * 1e3
        );
    }
}

/// Runs the fresh-process half of the warm-hit test: this test binary, re-executed.
fn run_worker(base: &std::path::Path) -> String {
    common::rerun_test(
        "gpu_worker_warm_process",
        [
            ("XC_WORKER", std::ffi::OsStr::new("1")),
            ("XC_BASE", base.as_os_str()),
        ],
    )
}

/// The requests of the warm-hit test.
fn warm_process_kernels(jit: &Jit, cuda: &Cuda) -> [xcache::cuda::CudaBuild; 3] {
    [
        cuda.elemwise::<f32>(jit, "a*exp(b)+c", 3)
            .unwrap()
            .compiled()
            .clone(),
        cuda.reduce_axis::<f32>(jit, "sum", "x*x", 1)
            .unwrap()
            .compiled()
            .clone(),
        cuda.gemm::<f32>(jit, true).unwrap().compiled().clone(),
    ]
}

/// A warm hit in a fresh process loads the cubin (cuModuleLoadData) without compiling:
/// NVRTC compiles nothing there, not even its probes (the key's NVRTC fingerprint comes
/// from the compiledir's record of it), and the kernels give the right results.
#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_nvrtc_warm_hits_in_a_fresh_process_load_the_cubin_without_compiling() {
    let tc = TestCache::new();
    let mut c = tc.config();
    c.set("cuda_compiler", "nvrtc").unwrap();
    let jit = Jit::new(c).unwrap();
    let cuda = jit.cuda().unwrap();
    for b in warm_process_kernels(&jit, &cuda) {
        assert!(!b.hit, "{:?}", b.path);
        assert!(b.path.ends_with("kernel.cubin"), "{:?}", b.path);
    }
    let text = run_worker(&tc.base());
    assert!(text.contains("WARM OK"), "{text}");
    eprintln!("{}", text.lines().find(|l| l.contains("WARM OK")).unwrap());
}

#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_worker_warm_process() {
    let Some(base) =
        std::env::var_os("XC_BASE").filter(|_| std::env::var_os("XC_WORKER").is_some())
    else {
        return; // only as the fresh process of the test above
    };
    let t = std::time::Instant::now();
    let mut c = xcache::Config::defaults();
    c.set_base_dir(base);
    c.set("cuda_compiler", "nvrtc").unwrap();
    let jit = Jit::new(c).unwrap();
    let cuda = jit.cuda().unwrap();
    let setup = t.elapsed();
    let t = std::time::Instant::now();
    let builds = warm_process_kernels(&jit, &cuda);
    let requests = t.elapsed();
    for b in &builds {
        assert!(b.hit, "a fresh process must hit: {:?}", b.path);
    }
    // The kernels run, with the right results.
    let k = cuda.elemwise::<f32>(&jit, "a*exp(b)+c", 3).unwrap();
    let n = 1000;
    let x: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
    let d = cuda.upload(&x).unwrap();
    let mut out = cuda.alloc::<f32>(n).unwrap();
    k.launch(&[&d, &d, &d], &mut out).unwrap();
    for (i, g) in out.download().unwrap().iter().enumerate() {
        let v = x[i] as f64;
        assert!(close(*g as f64, v * v.exp() + v, 1e-6), "i={i}: {g}");
    }
    assert_eq!(
        xcache::compile::nvrtc::compiles(),
        0,
        "a warm hit must not compile (not even NVRTC's probes: the compiledir records them)"
    );
    println!(
        "WARM OK: 3 kernels to launchable in {:.2} ms in a fresh process (Jit + CUDA context first: {:.1} ms)",
        requests.as_secs_f64() * 1e3,
        setup.as_secs_f64() * 1e3
    );
}

/// The handles and a user's own kernel on a stream of the caller's (non-blocking: it
/// does not wait for the legacy default stream, so a launch that ignored it would race
/// the checks), built by NVRTC, against float64 references.
#[test]
#[ignore = "needs nvcc and an NVIDIA GPU: scripts/test.sh runs it where they are"]
fn gpu_launches_on_a_callers_stream_and_user_kernels_match_float64() {
    use xcache::cuda::launch::Arg;
    let tc = TestCache::new();
    let mut c = tc.config();
    c.set("cuda_compiler", "nvrtc").unwrap();
    let jit = Jit::new(c).unwrap();
    let cuda = jit.cuda().unwrap();
    let s = cuda.stream().unwrap();
    let mut rng = Rng(7);
    let n = (1 << 20) + 3;
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let y: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0) as f32).collect();
    let (dx, dy) = (cuda.upload(&x).unwrap(), cuda.upload(&y).unwrap());

    // elemwise
    let f = cuda.elemwise::<f32>(&jit, "a*exp(b)+c", 3).unwrap();
    let mut out = cuda.alloc::<f32>(n).unwrap();
    unsafe {
        f.launch_raw_on(
            s.handle(),
            n,
            &[dx.as_ptr(), dy.as_ptr(), dx.as_ptr()],
            out.as_mut_ptr(),
        )
    }
    .unwrap();
    s.synchronize().unwrap();
    for (i, g) in out.download().unwrap().iter().enumerate() {
        let (a, b) = (x[i] as f64, y[i] as f64);
        assert!(
            close(*g as f64, a * b.exp() + a, 2e-6),
            "elemwise i={i}: {g}"
        );
    }

    // reduce, both axes, over a (rows x cols) view of x
    let (rows, cols) = (1024, 1024);
    for axis in [0, 1] {
        let r = cuda.reduce_axis::<f32>(&jit, "sum", "x*x", axis).unwrap();
        let m = if axis == 1 { rows } else { cols };
        let mut o = cuda.alloc::<f32>(m).unwrap();
        unsafe { r.launch_raw_on(s.handle(), rows, cols, dx.as_ptr(), o.as_mut_ptr()) }.unwrap();
        s.synchronize().unwrap();
        let got = o.download().unwrap();
        for (j, g) in got.iter().enumerate() {
            let want: f64 = (0..if axis == 1 { cols } else { rows })
                .map(|t| {
                    let v = if axis == 1 {
                        x[j * cols + t]
                    } else {
                        x[t * cols + j]
                    } as f64;
                    v * v
                })
                .sum();
            assert!(
                close(*g as f64, want, 1e-4),
                "reduce axis {axis} j={j}: {g} vs {want}"
            );
        }
    }

    // gemm with bias
    let (m, k, nn) = (96, 64, 80);
    let g = cuda.gemm::<f32>(&jit, false).unwrap();
    let bias: Vec<f32> = (0..nn).map(|i| i as f32 * 0.01).collect();
    let dbias = cuda.upload(&bias).unwrap();
    let mut dc = cuda.alloc::<f32>(m * nn).unwrap();
    unsafe {
        g.launch_raw_on(
            s.handle(),
            (m, nn, k),
            dx.as_ptr(),
            dy.as_ptr(),
            dbias.as_ptr(),
            dc.as_mut_ptr(),
        )
    }
    .unwrap();
    s.synchronize().unwrap();
    let c = dc.download().unwrap();
    for i in 0..m {
        for j in 0..nn {
            let want: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * y[t * nn + j] as f64)
                .sum::<f64>()
                + bias[j] as f64;
            assert!(close(c[i * nn + j] as f64, want, 1e-4), "gemm ({i},{j})");
        }
    }

    // A user's kernel through Jit::cuda_module, launched with typed arguments.
    let src = "extern \"C\" __global__ void saxpy(long long n, float a, const float *x, float *y, double off) {\n  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n  if (i < n) y[i] = a * x[i] + y[i] + (float)off;\n}\n";
    let module = jit
        .cuda_module(&SourceRequest::new(Language::Cuda, src))
        .unwrap();
    assert!(module.path.ends_with("kernel.cubin"), "{:?}", module.path);
    let kernels = cuda.load(&module).unwrap();
    let mut dy2 = cuda.upload(&y).unwrap();
    let grid = (n as u32).div_ceil(256);
    unsafe {
        kernels.launch(
            "saxpy",
            (grid, 1, 1),
            (256, 1, 1),
            0,
            s.handle(),
            &[
                Arg::I64(n as i64),
                Arg::F32(2.5),
                dx.arg(),
                Arg::Ptr(dy2.as_mut_ptr() as u64),
                Arg::F64(0.25),
            ],
        )
    }
    .unwrap();
    s.synchronize().unwrap();
    for (i, g) in dy2.download().unwrap().iter().enumerate() {
        let want = 2.5 * x[i] as f64 + y[i] as f64 + 0.25;
        assert!(close(*g as f64, want, 1e-6), "saxpy i={i}: {g} vs {want}");
    }
    assert!(kernels.function("saxpy").is_ok());
    assert!(kernels.function("nothere").is_err());
}
