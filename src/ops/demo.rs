//! `xcache demo`: the seed workload, Theano's check1 — `exp` over 10*30*768 float32
//! values, looped 1000 times — through the JIT, on the CPU or the GPU: cold compile,
//! warm hit, loop time, device, and a check against a float64 reference.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::runtime::Jit;

/// Elements per call: 10 x #cores x #threads per core, as check1 wrote it.
pub const VLEN: usize = 10 * 30 * 768;
/// The largest relative error accepted against the float64 reference (a few ulp of
/// float32).
pub const MAX_REL_ERR: f64 = 1e-6;

/// What the demo measured. `xcache demo --json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// What ran.
    pub workload: String,
    /// Elements per call.
    pub n: usize,
    /// Calls.
    pub iters: usize,
    /// The compiledir used.
    pub compiledir: PathBuf,
    /// The kernel, as a template instance.
    pub kernel: String,
    /// Its key.
    pub key: String,
    /// Whether the first request found the kernel already in the cache.
    pub cold_was_cached: bool,
    /// Wall time of the first request (compile + load, or disk hit + load; on the GPU
    /// also the first launch, synchronised), ms: everything the first run compiles.
    pub cold_ms: f64,
    /// What the first request compiled or found in the cache, kernel by kernel.
    pub cold_builds: Vec<ColdBuild>,
    /// On the GPU: setting up the CUDA context before the first request (`cuInit`, the
    /// primary context), ms; no compiler runs there.
    pub context_ms: Option<f64>,
    /// How the artifact is loaded: `dlopen` (a shared object) or `cuModuleLoadData` (a
    /// cubin).
    pub load: &'static str,
    /// How long compiling the kernel took when it was compiled, ms.
    pub compile_ms: u64,
    /// Wall time of a request from a fresh runtime (disk hit, hash check, load), ms.
    pub warm_ms: f64,
    /// Whether that request was a hit.
    pub warm_hit: bool,
    /// Time of the loop of `iters` calls, seconds.
    pub loop_s: f64,
    /// Throughput, elements per second.
    pub elements_per_s: f64,
    /// Where it ran.
    pub device: String,
    /// Largest relative error of the last result against float64 `exp`.
    pub max_rel_err: f64,
    /// The first values of the result, as check1 printed them.
    pub result_head: Vec<f32>,
    /// Whether the check passed.
    pub ok: bool,
    /// `cpu` or `gpu`, as check1's last line said.
    pub used: &'static str,
}

/// One kernel the first request needed.
#[derive(Debug, Clone, Serialize)]
pub struct ColdBuild {
    /// The kernel, as a template instance.
    pub kernel: String,
    /// Who compiled it: `cc`, `nvcc` or `nvrtc`.
    pub compiler: &'static str,
    /// Whether it was found in the cache.
    pub cached: bool,
    /// How long its compile took (now, or when it was compiled), ms.
    pub compile_ms: u64,
}

/// Deterministic uniform values in [0, 1) (splitmix64), so every run checks the same data.
pub fn uniform_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Where check1 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, through the `elemwise` C template.
    Cpu,
    /// The GPU, through the `cuda/elemwise` template.
    Cuda,
}

fn max_rel_err(x: &[f32], r: &[f32]) -> f64 {
    x.iter()
        .zip(r)
        .map(|(&xi, &ri)| {
            let want = (xi as f64).exp();
            ((ri as f64 - want) / want).abs()
        })
        .fold(0f64, f64::max)
}

/// What one device's run measured, before the check.
struct Run {
    kernel: &'static str,
    key: crate::Key,
    hit: bool,
    compile_ms: u64,
    compiler: &'static str,
    context_ms: Option<f64>,
    load: &'static str,
    cold_ms: f64,
    warm_ms: f64,
    warm_hit: bool,
    loop_s: f64,
    device: String,
    used: &'static str,
}

/// Checks the result `r` of exp over `x` against float64 and assembles the report.
fn report(jit: &Jit, iters: usize, run: Run, x: &[f32], r: &[f32]) -> DemoReport {
    let err = max_rel_err(x, r);
    DemoReport {
        workload: format!("check1: exp over {VLEN} float32 values, {iters} times"),
        n: VLEN,
        iters,
        compiledir: jit.store().compiledir().to_path_buf(),
        kernel: run.kernel.into(),
        key: run.key.hex(),
        cold_was_cached: run.hit,
        cold_ms: run.cold_ms,
        cold_builds: vec![ColdBuild {
            kernel: run.kernel.into(),
            compiler: run.compiler,
            cached: run.hit,
            compile_ms: run.compile_ms,
        }],
        context_ms: run.context_ms,
        load: run.load,
        compile_ms: run.compile_ms,
        warm_ms: run.warm_ms,
        warm_hit: run.warm_hit,
        loop_s: run.loop_s,
        elements_per_s: (VLEN * iters) as f64 / run.loop_s.max(1e-12),
        device: run.device,
        max_rel_err: err,
        result_head: r.iter().take(4).copied().collect(),
        ok: err <= MAX_REL_ERR && r.iter().all(|v| v.is_finite()),
        used: run.used,
    }
}

/// Runs check1 on the GPU: the input is uploaded once, the kernel launched `iters`
/// times, the device synchronised once at the end (as a GPU program would). The cold
/// time runs from the request to the first launch's end: rendering, compiling (NVRTC or
/// nvcc, per `cuda_compiler`; NVRTC's own loading included), publishing, loading the
/// module, launching. Only the CUDA context is set up before it, and timed apart.
pub fn check1_cuda(jit: &Jit, iters: usize) -> Result<DemoReport> {
    let x = uniform_f32(VLEN, 0x5eed);
    let t = Instant::now();
    let cuda = jit.cuda()?;
    let dev = cuda.device()?;
    let input = cuda.upload(&x)?;
    let mut out = cuda.alloc::<f32>(VLEN)?;
    cuda.sync()?;
    let context_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let kernel = cuda.elemwise::<f32>(jit, "exp(a)", 1)?;
    kernel.launch(&[&input], &mut out)?;
    cuda.sync()?;
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let fresh = Jit::with_clock(jit.config().clone(), jit.store().clock().clone())?;
    let warm = cuda.elemwise::<f32>(&fresh, "exp(a)", 1)?;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    for _ in 0..iters {
        kernel.launch(&[&input], &mut out)?;
    }
    cuda.sync()?;
    let loop_s = t.elapsed().as_secs_f64();
    let r = out.download()?;
    let build = kernel.compiled();
    let nvrtc = build.compiler == crate::config::CudaCompiler::Nvrtc;
    Ok(report(
        jit,
        iters,
        Run {
            kernel: "cuda/elemwise(arity=1, dtype=float32, expr=exp(a))",
            key: build.key,
            hit: build.hit,
            compile_ms: build.compile_ms,
            compiler: build.compiler.as_str(),
            context_ms: Some(context_ms),
            load: if nvrtc { "cuModuleLoadData" } else { "dlopen" },
            cold_ms,
            warm_ms,
            warm_hit: warm.compiled().hit,
            loop_s,
            device: format!(
                "cuda: {} (sm_{}{}, {} SMs)",
                dev.name, dev.major, dev.minor, dev.sms
            ),
            used: "gpu",
        },
        &x,
        &r,
    ))
}

/// Runs check1 on the CPU.
pub fn check1(jit: &Jit, iters: usize) -> Result<DemoReport> {
    let x = uniform_f32(VLEN, 0x5eed);
    let mut r = vec![0f32; VLEN];

    let t = Instant::now();
    let kernel = jit.elemwise::<f32>("exp(a)", 1)?;
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;

    // A fresh runtime: nothing loaded, so this is the path of the next process.
    let t = Instant::now();
    let fresh = Jit::with_clock(jit.config().clone(), jit.store().clock().clone())?;
    let warm = fresh.elemwise::<f32>("exp(a)", 1)?;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;

    kernel.call(&[&x], &mut r)?; // the result checked below, even with --iters 0
    let t = Instant::now();
    for _ in 0..iters {
        kernel.call(&[&x], &mut r)?;
    }
    let loop_s = t.elapsed().as_secs_f64();

    Ok(report(
        jit,
        iters,
        Run {
            kernel: "elemwise(arity=1, dtype=float32, expr=exp(a))",
            key: kernel.compiled().key,
            hit: kernel.compiled().hit,
            compile_ms: kernel.compiled().compile_ms,
            compiler: "cc",
            context_ms: None,
            load: "dlopen",
            cold_ms,
            warm_ms,
            warm_hit: warm.compiled().hit,
            loop_s,
            device: format!("cpu: {}, 1 thread", crate::compile::host::cpu_name()),
            used: "cpu",
        },
        &x,
        &r,
    ))
}
