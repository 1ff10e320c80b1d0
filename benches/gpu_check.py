#!/usr/bin/env python3
"""Checks and times the CUDA reduce and GEMM variants on a GPU, in one run.

Input: a directory of rendered template sources (`scripts/render_gpu_variants.sh DIR`
writes them on any machine); this script compiles them with the local nvcc (in
parallel), then

1. checks every variant against float64 references on the GPU: reductions over both
   axes at sizes 0, 1, odd, not a multiple of a vector or a block, large, misaligned
   base pointers, NaN propagation as numpy's; every GEMM tile configuration (forced
   through `xc_gemm_config`) and the automatic choice, with and without bias, at
   sizes 1, odd, not a multiple of the tile, large, misaligned, NaN rows;
2. times the reduction shapes of issue #16 against CuPy (`cupy.sum`) and the copy
   bandwidth, and every GEMM configuration at several sizes against cuBLAS in the
   same precision (CuPy / PyTorch), so that the size classes can be chosen from data.

Usage: python3 benches/gpu_check.py SRC_DIR OUT_DIR [--build DIR] [--quick] [--skip STEP,...]
Writes OUT_DIR/results.json (objects and build logs go to --build, default /tmp/xc_gpu_build)
and prints a summary; exit status 1 if a check failed.
"""
import argparse, concurrent.futures, ctypes, json, os, statistics, subprocess, sys, time, traceback

import numpy as np
import cupy as cp

FAILURES = []
RESULTS = {"checks": [], "reduce": [], "gemm": [], "gemm_baseline": [], "info": {}}


def log(*a):
    print(*a, flush=True)


def fail(msg):
    FAILURES.append(msg)
    log("FAIL", msg)


# ------------------------------------------------------------------ building

def build_all(src, out, arch):
    names = sorted(f[:-3] for f in os.listdir(src) if f.endswith(".cu"))

    def one(n):
        so = os.path.join(out, n + ".so")
        cmd = ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}",
               "-Xptxas", "-v", os.path.join(src, n + ".cu"), "-o", so]
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        return n, r.returncode, r.stdout + r.stderr, time.time() - t

    libs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
        for n, rc, text, secs in ex.map(one, names):
            open(os.path.join(out, n + ".build.log"), "w").write(text)
            if rc != 0:
                fail(f"nvcc {n}: {text[-2000:]}")
                continue
            libs[n] = os.path.join(out, n + ".so")
            log(f"built {n} in {secs:.1f} s")
    return libs


def load_reduce(path):
    lib = ctypes.CDLL(path)
    f = lib.xc_reduce
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return f


def load_gemm(path):
    lib = ctypes.CDLL(path)
    g = lib.xc_gemm_config
    g.restype = ctypes.c_int
    g.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 5
    lib.xc_gemm_configs.restype = ctypes.c_int
    plain = lib.xc_gemm
    plain.restype = ctypes.c_int
    plain.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4
    return g, lib.xc_gemm_configs(), plain


def stream():
    return cp.cuda.get_current_stream().ptr


def time_ms(fn, reps=20, warmup_ms=30.0, min_ms=1.0):
    """Median per-call time: after >= warmup_ms of calls (with a 3-call warm-up, the first
    timing of a section once ran up to 15% slower than the same kernel timed right after
    it), CUDA events around enough back-to-back calls to take min_ms."""
    s, e = cp.cuda.Event(), cp.cuda.Event()
    spent, calls = 0.0, 0
    while calls < 3 or (spent < warmup_ms and calls < 500):
        s.record()
        fn()
        e.record()
        e.synchronize()
        last = cp.cuda.get_elapsed_time(s, e)
        spent, calls = spent + last, calls + 1
    inner = max(1, min(200, int(min_ms / max(last, 1e-3))))
    times = []
    for _ in range(reps):
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e) / inner)
    return statistics.median(times)


# ------------------------------------------------------------------ reductions

DT = {"f32": cp.float32, "f64": cp.float64, "i32": cp.int32, "i64": cp.int64}


def reduce_ref(x, op, pre, axis):
    """float64 (or int64) reference; pre is computed in the input dtype, as the kernel does."""
    if pre == "x*x":
        x = x * x
    if x.dtype.kind == "f":
        y = x.astype(cp.float64)
        n = y.shape[axis]
        if op == "sum":
            return y.sum(axis=axis)
        if op == "mean":
            return y.sum(axis=axis) / n if n else cp.full(y.shape[1 - axis], cp.nan)
        if n == 0:
            return cp.full(y.shape[1 - axis], -cp.inf if op == "max" else cp.inf)
        return y.max(axis=axis) if op == "max" else y.min(axis=axis)
    y = x.astype(cp.int64)
    n = y.shape[axis]
    if op == "sum":
        return y.sum(axis=axis).astype(x.dtype)  # wraps like the kernel
    if op == "mean":  # C division: truncated toward zero
        t = y.sum(axis=axis)
        q = cp.where(t < 0, -((-t) // max(n, 1)), t // max(n, 1)) if n else cp.zeros(y.shape[1 - axis], cp.int64)
        return q.astype(x.dtype)
    info = np.iinfo(x.dtype)
    if n == 0:
        return cp.full(y.shape[1 - axis], info.min if op == "max" else info.max, x.dtype)
    return (y.max(axis=axis) if op == "max" else y.min(axis=axis)).astype(x.dtype)


def check_reduce(name, f, dt, op, pre, axis, rows, cols, offset=0, nan_rows=()):
    xp = DT[dt]
    if cp.dtype(xp).kind == "f":
        base = cp.random.uniform(-1, 1, rows * cols + offset).astype(xp)
    else:
        base = cp.random.randint(-1000, 1000, rows * cols + offset).astype(xp)
    x = base[offset:].reshape(rows, cols)
    for r in nan_rows:
        if axis == 1 and r < rows and cols:
            x[r, cols // 2] = cp.nan
        if axis == 0 and r < cols and rows:
            x[rows // 2, r] = cp.nan
    nout = rows if axis == 1 else cols
    out = cp.empty(nout + 1, xp)
    poison = cp.nan if cp.dtype(xp).kind == "f" else 0x5eadbeef
    out.fill(poison)
    rc = f(rows, cols, x.data.ptr if x.size else base.data.ptr, out.data.ptr, stream())
    cp.cuda.Device().synchronize()
    what = f"{name} {rows}x{cols} off={offset} nan={list(nan_rows)}"
    if rc != 0:
        fail(f"{what}: rc={rc}")
        return
    got = out[:nout]
    if cp.dtype(xp).kind == "f" and out[nout:].size and not bool(cp.isnan(out[nout])):
        fail(f"{what}: wrote past the end")
    ref = reduce_ref(x, op, pre, axis)
    if cp.dtype(xp).kind == "f":
        g = got.astype(cp.float64)
        both_nan = cp.isnan(g) & cp.isnan(ref)
        same_inf = cp.isinf(ref) & (g == ref)
        if op in ("max", "min"):
            ok = (g == ref.astype(xp).astype(cp.float64)) | both_nan
        else:
            terms = x.astype(cp.float64)
            if pre == "x*x":
                terms = terms * terms
            scale = cp.abs(terms).sum(axis=axis) if x.size else cp.zeros(nout)
            if op == "mean":
                scale = scale / max(x.shape[axis], 1)
            # Output rounding, rounding of pre(x) in the dtype, double accumulation.
            eps = 1.2e-7 if dt == "f32" else 2.3e-16
            n = max(x.shape[axis], 1)
            tol = eps * cp.abs(ref) + (eps * scale if pre != "x" else 0) + n * 2.3e-16 * scale + 1e-300
            ok = (cp.abs(g - ref) <= tol) | both_nan | same_inf
        bad = int((~ok).sum())
        if bad:
            i = int(cp.argmin(ok))
            fail(f"{what}: {bad} wrong, e.g. [{i}] got {float(g[i])} want {float(ref[i])}")
        else:
            RESULTS["checks"].append(what)
    else:
        bad = int((got != ref).sum())
        if bad:
            i = int(cp.argmax(got != ref))
            fail(f"{what}: {bad} wrong, e.g. [{i}] got {int(got[i])} want {int(ref[i])}")
        else:
            RESULTS["checks"].append(what)


REDUCE_SHAPES = [(0, 5), (5, 0), (1, 1), (1, 7), (3, 1000), (7, 100003), (1, (1 << 22) + 3), (100003, 3),
                 (4097, 16), (1000, 257), (33, 4096), (2, 1 << 20), (5000, 1), (1, 5000), (300, 3000),
                 (65, 65536)]


def reduce_checks(libs, quick):
    for name, path in sorted(libs.items()):
        if not name.startswith("r"):
            continue
        kind, dt, ax = name.split("_")
        axis = int(ax[1])
        op = {"rsum": "sum", "rsq": "sum", "rmax": "max", "rmin": "min", "rmean": "mean"}[kind]
        pre = "x*x" if kind == "rsq" else "x"
        f = load_reduce(path)
        for rows, cols in REDUCE_SHAPES:
            try:
                check_reduce(name, f, dt, op, pre, axis, rows, cols)
                if rows * cols > 1 and not quick:
                    check_reduce(name, f, dt, op, pre, axis, rows, cols, offset=1)
                if dt.startswith("f") and rows * cols > 1:
                    check_reduce(name, f, dt, op, pre, axis, rows, cols, nan_rows=(0, 2))
            except Exception:
                fail(f"{name} {rows}x{cols}: {traceback.format_exc()}")
        # Negative sizes and NULL pointers.
        if f(-1, 3, 0, 0, 0) != -1 or f(2, 3, 0, 0, 0) != -2:
            fail(f"{name}: argument errors")


def reduce_bench(libs, copy_tbps):
    n = 1 << 28
    base = cp.random.uniform(-1, 1, n).astype(cp.float32)
    shapes = [(4096, 65536), (65536, 4096), (1 << 20, 256), (1 << 24, 16), (64, 1 << 22), (1, 1 << 28)]
    rows_out = []
    for axis in (1, 0):
        fs = load_reduce(libs[f"rsum_f32_a{axis}"])
        fq = load_reduce(libs[f"rsq_f32_a{axis}"])
        for rows, cols in shapes:
            x = base.reshape(rows, cols)
            out = cp.empty(rows if axis == 1 else cols, cp.float32)
            t_x = time_ms(lambda: fs(rows, cols, x.data.ptr, out.data.ptr, stream()))
            ref = x.astype(cp.float64).sum(axis=axis)
            err = float(cp.max(cp.abs(out - ref) / (cp.abs(x).astype(cp.float64).sum(axis=axis) + 1e-30)))
            reps = 5 if (axis == 1 and rows == 1) or (axis == 0 and cols == 1) else 20
            t_c = time_ms(lambda: cp.sum(x, axis=axis, out=out), reps=reps)
            t_q = time_ms(lambda: fq(rows, cols, x.data.ptr, out.data.ptr, stream()))
            t_cq = time_ms(lambda: cp.sum(x * x, axis=axis, out=out), reps=reps)
            r = {"axis": axis, "rows": rows, "cols": cols, "xcache_ms": t_x, "cupy_ms": t_c,
                 "tbps": n * 4 / t_x / 1e9, "vs_cupy": t_c / t_x, "of_copy": n * 4 / t_x / 1e9 / copy_tbps,
                 "sq_ms": t_q, "cupy_sq_ms": t_cq, "sq_vs_cupy": t_cq / t_q, "max_rel_err": err}
            RESULTS["reduce"].append(r)
            log(f"reduce axis={axis} {rows}x{cols}: {t_x:.3f} ms {r['tbps']:.2f} TB/s = {r['of_copy']:.0%} copy, "
                f"{r['vs_cupy']:.2f}x cupy ({t_c:.3f} ms); x*x {t_q:.3f} ms {r['sq_vs_cupy']:.2f}x cupy ({t_cq:.3f}); err {err:.1e}")
            rows_out.append(r)
    del base
    cp.get_default_memory_pool().free_all_blocks()
    return rows_out


# ------------------------------------------------------------------ GEMM

def bf16_round(x32):
    u = x32.view(cp.uint32)
    r = (u + cp.uint32(0x7FFF) + ((u >> 16) & cp.uint32(1))) >> 16
    return r.astype(cp.uint16)


def bf16_to_f32(b16):
    return (b16.astype(cp.uint32) << 16).view(cp.float32)


def tf32_round(x32):
    u = x32.view(cp.uint32)
    return ((u + cp.uint32(0x1000)) & cp.uint32(0xFFFFE000)).view(cp.float32)


def gemm_inputs(prec, m, n, k, offset=0):
    """(device A, device B, float64 A, float64 B as the kernel sees them, fp32 originals)."""
    a32 = cp.random.uniform(-1, 1, m * k + offset).astype(cp.float32)
    b32 = cp.random.uniform(-1, 1, k * n + offset).astype(cp.float32)
    if prec == "bf16":
        a, b = bf16_round(a32), bf16_round(b32)
        a64, b64 = bf16_to_f32(a).astype(cp.float64), bf16_to_f32(b).astype(cp.float64)
    elif prec == "fp16":
        a, b = a32.astype(cp.float16), b32.astype(cp.float16)
        a64, b64 = a.astype(cp.float64), b.astype(cp.float64)
    elif prec == "f64":
        a, b = a32.astype(cp.float64), b32.astype(cp.float64)
        a64, b64 = a, b
    elif prec == "tf32":
        a, b = a32, b32
        a64, b64 = tf32_round(a32).astype(cp.float64), tf32_round(b32).astype(cp.float64)
    else:
        a, b = a32, b32
        a64, b64 = a32.astype(cp.float64), b32.astype(cp.float64)
    sl = lambda v, r, c: v[offset:].reshape(r, c)
    return sl(a, m, k), sl(b, k, n), sl(a64, m, k), sl(b64, k, n), sl(a32, m, k), sl(b32, k, n)


GEMM_SHAPES = [(1, 1, 1), (3, 5, 7), (67, 129, 65), (257, 300, 129), (129, 257, 1000), (64, 64, 64),
               (2, 3, 0), (1000, 1000, 1000), (1536, 512, 768)]


def check_gemm(name, g, config, prec, relu, m, n, k, offset=0, bias=True, nan=False):
    a, b, a64, b64, _, _ = gemm_inputs(prec, m, n, k, offset)
    ct = cp.float64 if prec == "f64" else cp.float32
    if nan and m > 2 and k > 3:
        if prec in ("bf16",):
            a[1, 2] = cp.uint16(0x7FC0)
        else:
            a[1, 2] = cp.nan
        a64 = a64.copy()
        a64[1, 2] = cp.nan
    bv = cp.random.uniform(-1, 1, n + offset).astype(ct)[offset:] if bias else None
    c = cp.full(m * n + offset + 1, cp.nan, ct)[offset:]
    rc = g(config, m, n, k, a.data.ptr if a.size else 0, b.data.ptr if b.size else 0,
           bv.data.ptr if bias else 0, c.data.ptr, stream())
    cp.cuda.Device().synchronize()
    what = f"{name} cfg={config} {m}x{n}x{k} off={offset} bias={bias} nan={nan}"
    if rc != 0:
        fail(f"{what}: rc={rc}")
        return None
    if not bool(cp.isnan(c[m * n])):
        fail(f"{what}: wrote past the end")
    got = c[: m * n].reshape(m, n).astype(cp.float64)
    ref = a64 @ b64 if k else cp.zeros((m, n))
    if bias:
        ref = ref + bv.astype(cp.float64)[None, :]
    if relu:
        ref = cp.where(ref < 0, 0, ref)
    nanmask = cp.isnan(ref)
    if bool(cp.any(cp.isnan(got) != nanmask)):
        fail(f"{what}: NaN pattern differs ({int(cp.isnan(got).sum())} NaN vs {int(nanmask.sum())} expected)")
        return None
    refz, gotz = cp.where(nanmask, 0, ref), cp.where(nanmask, 0, got)
    # Error bound scale: sum_p |a||b| (+ |bias|) per element.
    mags = cp.abs(cp.where(cp.isnan(a64), 0, a64)) @ cp.abs(b64) if k else cp.zeros((m, n))
    if bias:
        mags = mags + cp.abs(bv.astype(cp.float64))[None, :]
    scale = max(float(cp.max(mags)), 1e-30)
    err = float(cp.max(cp.abs(gotz - refz))) / max(scale, 1e-30)
    tol = 1e-12 if prec == "f64" else 2e-6
    if not err <= tol:
        fail(f"{what}: max error {err:.2e} of sum|a||b| (tol {tol:.0e})")
        return None
    RESULTS["checks"].append(what)
    return err


def gemm_checks(libs, quick):
    for name in ["g_f32", "g_f32r", "g_f64r", "g_tf32", "g_tf32r", "g_bf16", "g_fp16r"]:
        if name not in libs:
            continue
        prec = {"g_f32": "f32", "g_f32r": "f32", "g_f64r": "f64", "g_tf32": "tf32", "g_tf32r": "tf32",
                "g_bf16": "bf16", "g_fp16r": "fp16"}[name]
        relu = name.endswith("r")
        g, nconf, plain = load_gemm(libs[name])
        for config in [-1] + list(range(nconf)):
            shapes = GEMM_SHAPES if config == -1 or not quick else GEMM_SHAPES[:6]
            for (m, n, k) in shapes:
                try:
                    check_gemm(name, g, config, prec, relu, m, n, k)
                    if m * n * k > 1 and (config == -1 or (m, n, k) == (257, 300, 129)):
                        check_gemm(name, g, config, prec, relu, m, n, k, offset=1, bias=False)
                        check_gemm(name, g, config, prec, relu, m, n, k, nan=True)
                except Exception:
                    fail(f"{name} cfg={config} {m}x{n}x{k}: {traceback.format_exc()}")
        if g(nconf, 1, 1, 1, 0, 0, 0, 0, 0) != -3 or plain(-1, 1, 1, 0, 0, 0, 0) != -1 or plain(1, 1, 1, 0, 0, 0, 0) != -2:
            fail(f"{name}: argument errors")


def cublas_gemmex(prec, m, n, k, a, b, c):
    """cuBLAS GEMM with float32 output: row-major C = A B as column-major C^T = B^T A^T."""
    from cupy_backends.cuda.libs import cublas
    h = cp.cuda.device.get_cublas_handle()
    cublas.setStream(h, stream())
    one, zero = np.array(1, np.float32), np.array(0, np.float32)
    dtype = {"f32": 0, "tf32": 0, "fp16": 2, "bf16": 14}[prec]
    compute = 77 if prec == "tf32" else 68  # CUBLAS_COMPUTE_32F_FAST_TF32 / CUBLAS_COMPUTE_32F
    cublas.setPointerMode(h, 0)
    cublas.gemmEx(h, 0, 0, n, m, k, one.ctypes.data, b.data.ptr, dtype, n, a.data.ptr, dtype, k,
                  zero.ctypes.data, c.data.ptr, 0, n, compute, -1)


def gemm_bench(libs, quick):
    import torch
    sizes = [(4096, 4096, 4096), (1024, 1024, 1024), (2048, 2048, 2048), (8192, 1024, 4096), (1000, 3000, 2000)]
    if not quick:
        sizes.append((8192, 8192, 8192))
    for name, prec in [("g_f32", "f32"), ("g_tf32", "tf32"), ("g_bf16", "bf16"), ("g_fp16r", "fp16")]:
        if name not in libs:
            continue
        g, nconf, _ = load_gemm(libs[name])
        for (m, n, k) in sizes:
            if prec == "f32" and m * n * k > 4096 ** 3:
                continue
            a, b, _, _, a32, b32 = gemm_inputs(prec, m, n, k)
            c = cp.empty((m, n), cp.float32)
            flops = 2 * m * n * k
            reps = 10 if flops > 1e11 else 30
            # Baselines in the same precision.
            base = {}
            try:
                t = time_ms(lambda: cublas_gemmex(prec, m, n, k, a, b, c), reps=reps)
                base["cublas_gemmex"] = t
            except Exception as e:
                base["cublas_gemmex_error"] = str(e)[:200]
            try:
                ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
                if prec == "bf16":
                    ta, tb = ta.view(torch.bfloat16), tb.view(torch.bfloat16)
                torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
                tc = torch.empty((m, n), dtype=ta.dtype, device="cuda")
                torch.cuda.synchronize()
                base["torch"] = time_ms(lambda: torch.matmul(ta, tb, out=tc), reps=reps)
                torch.backends.cuda.matmul.allow_tf32 = False
            except Exception as e:
                base["torch_error"] = str(e)[:200]
            if prec == "f32":
                base["cupy_matmul"] = time_ms(lambda: cp.matmul(a, b, out=c), reps=reps)
            RESULTS["gemm_baseline"].append({"prec": prec, "m": m, "n": n, "k": k, **base})
            ref_ms = base.get("cublas_gemmex") or base.get("torch") or base.get("cupy_matmul")
            line = [f"gemm {prec} {m}x{n}x{k}: cuBLAS {ref_ms:.3f} ms {flops / ref_ms / 1e9:.1f} TF ({base})"]
            for config in [-1] + list(range(nconf)):
                rc = g(config, m, n, k, a.data.ptr, b.data.ptr, 0, c.data.ptr, stream())
                if rc != 0:
                    RESULTS["gemm"].append({"prec": prec, "config": config, "m": m, "n": n, "k": k, "rc": rc})
                    line.append(f"  cfg {config}: rc {rc}")
                    continue
                t = time_ms(lambda: g(config, m, n, k, a.data.ptr, b.data.ptr, 0, c.data.ptr, stream()), reps=reps)
                RESULTS["gemm"].append({"prec": prec, "config": config, "m": m, "n": n, "k": k, "ms": t,
                                        "tflops": flops / t / 1e9, "vs_cublas": ref_ms / t})
                line.append(f"  cfg {config:2d}: {t:.3f} ms {flops / t / 1e9:6.1f} TF {ref_ms / t:.2f}x")
            log("\n".join(line))
            del a, b, c, a32, b32
            cp.get_default_memory_pool().free_all_blocks()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", default="/tmp/xc_gpu_build", help="where objects and build logs go")
    ap.add_argument("--steps", default="build,rcheck,gcheck,rbench,gbench",
                    help="comma list of build,rcheck,gcheck,rbench,gbench (run them in separate processes "
                         "so that a crashed kernel cannot take the others' context down)")
    args = ap.parse_args()
    steps = args.steps.split(",")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.build, exist_ok=True)
    props = cp.cuda.runtime.getDeviceProperties(0)
    arch = f"{props['major']}{props['minor']}"
    RESULTS["info"] = {"device": props["name"].decode(), "sms": props["multiProcessorCount"], "arch": arch,
                       "cupy": cp.__version__, "runtime": cp.cuda.runtime.runtimeGetVersion(),
                       "driver": cp.cuda.runtime.driverGetVersion()}
    log(RESULTS["info"])
    if "build" in steps:
        t0 = time.time()
        libs = build_all(args.src, args.build, arch)
        log(f"build: {time.time() - t0:.1f} s")
    else:
        libs = {f[:-3]: os.path.join(args.build, f) for f in os.listdir(args.build) if f.endswith(".so")}
    path = os.path.join(args.out, "results_" + "_".join(steps) + ".json")

    def save():
        RESULTS["failures"] = FAILURES
        json.dump(RESULTS, open(path, "w"), indent=1)

    copy_tbps = None
    if "rbench" in steps:
        n = 1 << 28
        x = cp.random.uniform(-1, 1, n).astype(cp.float32)
        y = cp.empty_like(x)
        t_copy = time_ms(lambda: cp.cuda.runtime.memcpyAsync(y.data.ptr, x.data.ptr, n * 4, 3, stream()))
        copy_tbps = 2 * n * 4 / t_copy / 1e9
        RESULTS["info"]["copy_tbps"] = copy_tbps
        log(f"copy: {t_copy:.3f} ms = {copy_tbps:.2f} TB/s (read + write)")
        del x, y
        cp.get_default_memory_pool().free_all_blocks()

    for step, fn in [("rcheck", lambda: reduce_checks(libs, args.quick)),
                     ("gcheck", lambda: gemm_checks(libs, args.quick)),
                     ("rbench", lambda: reduce_bench(libs, copy_tbps)),
                     ("gbench", lambda: gemm_bench(libs, args.quick))]:
        if step not in steps:
            continue
        t = time.time()
        try:
            fn()
        except Exception:
            fail(f"{step}: {traceback.format_exc()}")
        log(f"== {step}: {time.time() - t:.1f} s, {len(RESULTS['checks'])} checks passed, {len(FAILURES)} failures")
        save()
    save()
    for f in FAILURES[:30]:
        log("  ", f[:400])
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
