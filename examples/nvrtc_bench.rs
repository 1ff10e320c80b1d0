//! The NVRTC path's figures, on a machine with an NVIDIA GPU (benches/nvrtc_bench.py
//! runs it next to CuPy and writes docs/BENCHMARKS.md's section):
//!
//! - cold: in a process that has already used CUDA (context made, buffers allocated),
//!   the wall time from asking for a fused `a*exp(b)+c` kernel to the end of its first
//!   launch (render, key, NVRTC, publish, cuModuleLoadData, launch, synchronise); the
//!   first kernel of the process (NVRTC's own loading included) and 10 more, each new;
//!   in a brand-new cache and in one that has met NVRTC before; nvcc for comparison;
//! - warm: a fresh process asking for a kernel in the cache, to a launchable kernel;
//! - speed: the same kernels built by NVRTC and by nvcc, timed alternately.
//!
//! Usage: `nvrtc_bench [--quick] [--dir D] [--speed-only] > report.json` (children:
//! `--cold DIR TAG`, `--warm DIR TAG`; `--cubin OUT minimal|plain TEMPLATE k=v...` writes
//! NVRTC's module of a template).

use std::process::Command;
use std::time::Instant;

use xcache::cuda::{Cuda, GemmPrecision};
use xcache::{Config, Jit};

fn jit(dir: &str, compiler: &str) -> Jit {
    let mut c = Config::load().unwrap();
    c.set_base_dir(dir);
    c.set("cuda_compiler", compiler).unwrap();
    Jit::new(c).unwrap()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn nvrtc_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("libnvrtc"))
}

/// The fused kernel, made new by `tag` (a different constant, so a different key).
fn expr(tag: usize) -> String {
    format!("a*exp(b)+c+{}", tag as f64 / 1024.0)
}

struct Inputs {
    a: xcache::cuda::DeviceBuffer<f32>,
    out: xcache::cuda::DeviceBuffer<f32>,
}

fn inputs(cuda: &Cuda, n: usize) -> Inputs {
    let host: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 / 1000.0).collect();
    let r = Inputs {
        a: cuda.upload(&host).unwrap(),
        out: cuda.alloc::<f32>(n).unwrap(),
    };
    cuda.sync().unwrap();
    r
}

/// One cold request to the end of its first launch; (ms, NVRTC's compile ms, hit).
fn cold_one(jit: &Jit, cuda: &Cuda, x: &mut Inputs, tag: usize) -> (f64, u64, bool) {
    let t = Instant::now();
    let k = cuda.elemwise::<f32>(jit, &expr(tag), 3).unwrap();
    k.launch(&[&x.a, &x.a, &x.a], &mut x.out).unwrap();
    cuda.sync().unwrap();
    (ms(t), k.compiled().compile_ms, k.compiled().hit)
}

fn child_cold(dir: &str, tag: usize, compiler: &str, more: usize) {
    let t = Instant::now();
    let jit = jit(dir, compiler);
    let cuda = jit.cuda().unwrap();
    let mut x = inputs(&cuda, 1 << 20);
    let setup = ms(t);
    let before = nvrtc_loaded();
    let (first, first_compile, hit) = cold_one(&jit, &cuda, &mut x, tag);
    assert!(!hit, "the first kernel must be new");
    let rest: Vec<(f64, u64)> = (1..=more)
        .map(|i| {
            let (t, c, hit) = cold_one(&jit, &cuda, &mut x, tag + i);
            assert!(!hit);
            (t, c)
        })
        .collect();
    let j = serde_json::json!({
        "setup_ms": setup,
        "nvrtc_loaded_before": before,
        "first_ms": first,
        "first_compile_ms": first_compile,
        "next_ms": rest.iter().map(|r| r.0).collect::<Vec<_>>(),
        "next_compile_ms": rest.iter().map(|r| r.1).collect::<Vec<_>>(),
    });
    println!("{j}");
}

fn child_warm(dir: &str, tag: usize) {
    let t = Instant::now();
    let jit = jit(dir, "nvrtc");
    let jit_ms = ms(t);
    let t = Instant::now();
    let cuda = jit.cuda().unwrap();
    let mut x = inputs(&cuda, 1 << 20);
    let context_ms = ms(t);
    let t = Instant::now();
    let k = cuda.elemwise::<f32>(&jit, &expr(tag), 3).unwrap();
    let launchable_ms = ms(t);
    assert!(k.compiled().hit, "the kernel of tag {tag} is in the cache");
    let t = Instant::now();
    k.launch(&[&x.a, &x.a, &x.a], &mut x.out).unwrap();
    cuda.sync().unwrap();
    let launch_ms = ms(t);
    println!(
        "{}",
        serde_json::json!({
            "jit_ms": jit_ms,
            "context_ms": context_ms,
            "launchable_ms": launchable_ms,
            "first_launch_ms": launch_ms,
            "nvrtc_loaded": nvrtc_loaded(),
        })
    );
}

fn run_child(args: &[&str]) -> serde_json::Value {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median per-launch time of `f`, in ms: `reps` rounds of enough launches to take
/// about 20 ms, synchronised, after a warm-up.
fn time_launches(cuda: &Cuda, reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    let mut warm = 0;
    while warm < 3 || (ms(t) < 50.0 && warm < 200) {
        f();
        cuda.sync().unwrap();
        warm += 1;
    }
    let one = ms(t) / warm as f64;
    let inner = ((20.0 / one.max(1e-3)) as usize).clamp(1, 200);
    let v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            cuda.sync().unwrap();
            ms(t) / inner as f64
        })
        .collect();
    median(v)
}

/// NVRTC's and nvcc's builds of the same kernels, timed alternately (two rounds each).
fn speed(dir: &str, quick: bool) -> serde_json::Value {
    let nv = jit(dir, "nvrtc");
    let cc = jit(dir, "nvcc");
    let cuda = nv.cuda().unwrap();
    let reps = if quick { 5 } else { 15 };
    let mut rows = Vec::new();
    // Build every nvcc kernel in parallel first (each is a nvcc process).
    std::thread::scope(|s| {
        s.spawn(|| cuda.elemwise::<f32>(&cc, "a*exp(b)+c", 3).unwrap());
        s.spawn(|| cuda.reduce_axis::<f32>(&cc, "sum", "x", 1).unwrap());
        s.spawn(|| cuda.reduce_axis::<f32>(&cc, "sum", "x", 0).unwrap());
        s.spawn(|| cuda.gemm::<f32>(&cc, false).unwrap());
        s.spawn(|| {
            cuda.gemm_with::<f32>(&cc, false, GemmPrecision::Bf16)
                .unwrap()
        });
    });
    let n = 1usize << 28;
    {
        let x: Vec<f32> = (0..n).map(|i| (i % 977) as f32 / 977.0).collect();
        let (a, b, c) = (
            cuda.upload(&x).unwrap(),
            cuda.upload(&x).unwrap(),
            cuda.upload(&x).unwrap(),
        );
        let mut o = cuda.alloc::<f32>(n).unwrap();
        let kn = cuda.elemwise::<f32>(&nv, "a*exp(b)+c", 3).unwrap();
        let kc = cuda.elemwise::<f32>(&cc, "a*exp(b)+c", 3).unwrap();
        let mut t = (Vec::new(), Vec::new());
        for _ in 0..2 {
            t.0.push(time_launches(&cuda, reps, || {
                kn.launch(&[&a, &b, &c], &mut o).unwrap()
            }));
            t.1.push(time_launches(&cuda, reps, || {
                kc.launch(&[&a, &b, &c], &mut o).unwrap()
            }));
        }
        rows.push(serde_json::json!({"kernel": "cuda/elemwise a*exp(b)+c, 2^28 float32", "nvrtc_ms": t.0, "nvcc_ms": t.1, "bytes": 16 * n}));
        for (axis, rows_, cols) in [(1usize, 4096usize, 65536usize), (0, 65536, 4096), (1, 1, n)] {
            let rn = cuda.reduce_axis::<f32>(&nv, "sum", "x", axis).unwrap();
            let rc = cuda.reduce_axis::<f32>(&cc, "sum", "x", axis).unwrap();
            let mut out = cuda
                .alloc::<f32>(if axis == 1 { rows_ } else { cols })
                .unwrap();
            let mut t = (Vec::new(), Vec::new());
            for _ in 0..2 {
                t.0.push(time_launches(&cuda, reps, || {
                    rn.launch(&a, cols, &mut out).unwrap()
                }));
                t.1.push(time_launches(&cuda, reps, || {
                    rc.launch(&a, cols, &mut out).unwrap()
                }));
            }
            rows.push(serde_json::json!({"kernel": format!("cuda/reduce sum axis={axis}, {rows_}x{cols} float32"), "nvrtc_ms": t.0, "nvcc_ms": t.1, "bytes": 4 * n}));
        }
    }
    let m = 4096usize;
    let x: Vec<f32> = (0..m * m)
        .map(|i| ((i % 513) as f32 - 256.0) / 256.0)
        .collect();
    let x16: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let (a, b) = (cuda.upload(&x).unwrap(), cuda.upload(&x).unwrap());
    let (a16, b16) = (cuda.upload(&x16).unwrap(), cuda.upload(&x16).unwrap());
    let mut c = cuda.alloc::<f32>(m * m).unwrap();
    for prec in [GemmPrecision::Ieee, GemmPrecision::Bf16] {
        let gn = cuda.gemm_with::<f32>(&nv, false, prec).unwrap();
        let gc = cuda.gemm_with::<f32>(&cc, false, prec).unwrap();
        let mut t = (Vec::new(), Vec::new());
        for _ in 0..2 {
            if prec.half_inputs() {
                t.0.push(time_launches(&cuda, reps, || {
                    gn.launch_half((m, m, m), &a16, &b16, None, &mut c).unwrap()
                }));
                t.1.push(time_launches(&cuda, reps, || {
                    gc.launch_half((m, m, m), &a16, &b16, None, &mut c).unwrap()
                }));
            } else {
                t.0.push(time_launches(&cuda, reps, || {
                    gn.launch((m, m, m), &a, &b, &mut c).unwrap()
                }));
                t.1.push(time_launches(&cuda, reps, || {
                    gc.launch((m, m, m), &a, &b, &mut c).unwrap()
                }));
            }
        }
        rows.push(serde_json::json!({"kernel": format!("cuda/gemm {} 4096^3", prec.as_str()), "nvrtc_ms": t.0, "nvcc_ms": t.1, "flops": 2 * m * m * m}));
    }
    serde_json::Value::Array(rows)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--cold") => {
            let compiler = args.get(4).map(String::as_str).unwrap_or("nvrtc");
            let more = args.get(5).and_then(|m| m.parse().ok()).unwrap_or(20);
            return child_cold(&args[2], args[3].parse().unwrap(), compiler, more);
        }
        Some("--cubin") => {
            // --cubin OUT minimal|plain TEMPLATE k=v...: NVRTC's module for a template.
            let dir = tempfile::tempdir().unwrap();
            let j = jit(dir.path().to_str().unwrap(), "nvrtc");
            let mut r = xcache::TemplateRequest::new(&args[4]);
            for p in &args[5..] {
                let (k, v) = p.split_once('=').unwrap();
                r = r.param(k, v);
            }
            let mut src = j.render(&r).unwrap();
            if args[3] == "minimal" {
                src.flags.push("-minimal".into());
            }
            let m = j.cuda_module(&src).unwrap();
            std::fs::write(&args[2], m.image()).unwrap();
            return println!("{} ms", m.compile_ms);
        }
        Some("--warm") => return child_warm(&args[2], args[3].parse().unwrap()),
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let base = tempfile::tempdir().unwrap();
    // `--dir D`: a cache to use (and keep), e.g. for a second run with `--speed-only`.
    let dir = match args.iter().position(|a| a == "--dir") {
        Some(i) => args[i + 1].clone(),
        None => base.path().to_str().unwrap().to_string(),
    };
    if args.iter().any(|a| a == "--speed-only") {
        let j = jit(&dir, "nvrtc");
        let tool = j.nvrtc().unwrap();
        let cold = run_child(&["--cold", &dir, "50000", "nvrtc", "10"]);
        return println!(
            "{}",
            serde_json::json!({"nvrtc": tool.version_text(), "nvrtc_library": tool.library, "cold": cold, "speed": speed(&dir, quick)})
        );
    }
    let more = if quick { "5" } else { "10" };
    // A brand-new cache (NVRTC is probed and recorded there), then one that has met
    // NVRTC before; each child a fresh process with new kernels.
    let fresh_cache = run_child(&["--cold", &dir, "1000", "nvrtc", more]);
    let mut cold = Vec::new();
    for i in 0..if quick { 2 } else { 3 } {
        cold.push(run_child(&[
            "--cold",
            &dir,
            &(2000 + 100 * i).to_string(),
            "nvrtc",
            more,
        ]));
    }
    let nvcc = run_child(&["--cold", &dir, "9000", "nvcc", "1"]);
    let warm: Vec<serde_json::Value> = (0..if quick { 2 } else { 5 })
        .map(|_| run_child(&["--warm", &dir, "1000"]))
        .collect();
    let speed = if args.iter().any(|a| a == "--no-speed") {
        serde_json::Value::Null
    } else {
        speed(&dir, quick)
    };
    let jit = jit(&dir, "nvrtc");
    let cuda = jit.cuda().unwrap();
    let d = cuda.device().unwrap();
    let tool = jit.nvrtc().unwrap();
    println!(
        "{}",
        serde_json::json!({
            "device": d.name, "sm": format!("sm_{}{}", d.major, d.minor), "sms": d.sms,
            "nvrtc": tool.version_text(), "nvrtc_library": tool.library, "minimal": tool.minimal,
            "cold_fresh_cache": fresh_cache, "cold": cold, "cold_nvcc": nvcc, "warm": warm,
            "speed": speed,
        })
    );
}
