#!/usr/bin/env python3
"""The C `reduce` and `gemm` templates against numpy, in one run.

1. `reduce` sum over 2^24 float32 in short-row, square and long-row shapes, over the
   rows (axis=1) and the leading axis (axis=0), against `numpy.sum(axis=...)`.
2. `gemm` float32 and float64 at several sizes against numpy's BLAS (`numpy.matmul`),
   both on one thread (OPENBLAS_NUM_THREADS=1 and the like are set before numpy loads)
   and, for the record, numpy with every core (xcache's kernel is single-threaded).

Usage: benches/cpu_kernels.py [--write docs/BENCHMARKS.md]
Installs numpy into target/bench-venv with pip on first use.
"""
import argparse, ctypes, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import XCACHE, machine, median_of, reexec_in_venv, write_section  # noqa: E402

THREAD_VARS = ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]


def compile_lib(env, template, **params):
    cmd = [XCACHE, "compile", "--template", template, "--json"]
    for k, v in params.items():
        cmd += ["-p", f"{k}={v}"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return ctypes.CDLL(json.loads(out)["path"])


def numpy_all_cores_ms(m, n, k, dtype, repeats):
    """numpy.matmul with the BLAS's default threads, in a child process (this one is pinned to one)."""
    code = (
        "import numpy as np, time, statistics\n"
        f"a = np.random.rand({m}, {k}).astype('{dtype}'); b = np.random.rand({k}, {n}).astype('{dtype}')\n"
        "c = a @ b\n"
        "ts = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); np.matmul(a, b, out=c); ts.append(time.perf_counter() - t)\n"
        "print(statistics.median(ts) * 1e3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    return float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                text=True).stdout)


def main():
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        for v in THREAD_VARS:
            os.environ[v] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    reexec_in_venv(__file__, ["numpy"])
    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")
    env = dict(os.environ, XCACHE_DIR=tempfile.mkdtemp(prefix="xcache-bench-"))
    env.pop("XCACHE_FLAGS", None)
    rng = np.random.default_rng(0)
    ms = lambda t: f"{t * 1e3:.2f} ms"  # noqa: E731

    # 1. Reductions.
    n = 1 << 24
    x = rng.random(n, dtype=np.float32) - 0.5
    red = []
    for axis in (1, 0):
        f = compile_lib(env, "reduce", dtype="float32", op="sum", axis=axis).xc_reduce
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        for rows, cols in [(1 << 20, 16), (1 << 16, 256), (4096, 4096), (256, 1 << 16), (16, 1 << 20)]:
            v = x.reshape(rows, cols)
            out = np.empty(rows if axis == 1 else cols, np.float32)
            t_x = median_of(lambda: f(rows, cols, v.ctypes.data, out.ctypes.data), args.repeats)
            ref = v.astype(np.float64).sum(axis=axis)
            err = float(np.max(np.abs(out - ref) / np.abs(v).astype(np.float64).sum(axis=axis)))
            t_n = median_of(lambda: np.sum(v, axis=axis, out=out), args.repeats)
            red.append((axis, rows, cols, t_x, t_n, err))

    # 2. GEMM.
    gem = []
    for dtype in ("float32", "float64"):
        g = compile_lib(env, "gemm", dtype=dtype).xc_gemm
        g.restype = ctypes.c_int
        g.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3
        for (m, nn, k) in [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (1000, 3000, 700)]:
            if dtype == "float64" and m > 1024:
                continue
            a = (rng.random((m, k)) - 0.5).astype(dtype)
            b = (rng.random((k, nn)) - 0.5).astype(dtype)
            c = np.empty((m, nn), dtype)
            reps = 3 if m * nn * k >= 2048 ** 3 else args.repeats
            t_x = median_of(lambda: g(m, nn, k, a.ctypes.data, b.ctypes.data, c.ctypes.data), reps)
            r = a.astype(np.float64) @ b.astype(np.float64)
            err = float(np.max(np.abs(c - r)) / np.max(np.abs(r)))
            t_n = median_of(lambda: np.matmul(a, b, out=c), reps)
            t_all = numpy_all_cores_ms(m, nn, k, dtype, reps) / 1e3
            gem.append((dtype, m, nn, k, t_x, t_n, t_all, err))

    blas = "numpy's BLAS"
    try:
        cfg = np.show_config(mode="dicts")
        blas = f"{cfg['Build Dependencies']['blas']['name']} {cfg['Build Dependencies']['blas']['version']}"
    except Exception:  # noqa: BLE001 - older numpy
        pass
    lines = [
        "## C reduce and GEMM against numpy (CPU)",
        "",
        f"Machine: {machine()}; numpy {np.__version__} with {blas}. xcache's kernels run on one thread; "
        f"numpy is pinned to one thread too (its all-cores time is given for the record). Median of "
        f"{args.repeats} calls (3 from 2048³); all measured in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/cpu_kernels.py`.",
        "",
        "`reduce` sum over 2^24 float32 (64 MiB); ratio is numpy's time over xcache's:",
        "",
        "| axis | rows × cols | xcache | bandwidth | `numpy.sum` | vs numpy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for axis, rows, cols, t_x, t_n, _ in red:
        lines.append(f"| {axis} | {rows} × {cols} | {ms(t_x)} | {n * 4 / t_x / 1e9:.1f} GB/s | {ms(t_n)} | **{t_n / t_x:.2f}×** |")
    lines += [
        "",
        f"Max error of the sums relative to the sum of |x|: {max(e for *_, e in red):.1e}.",
        "",
        "`gemm` (packed panels, register-blocked micro-kernel vectorised by the compiler); ratio is "
        "numpy's one-thread time over xcache's:",
        "",
        "| dtype | m × n × k | xcache | GFLOP/s | numpy, 1 thread | vs numpy | numpy, all cores | error |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for dtype, m, nn, k, t_x, t_n, t_all, err in gem:
        fl = 2 * m * nn * k
        lines.append(f"| {dtype} | {m} × {nn} × {k} | {ms(t_x)} | {fl / t_x / 1e9:.1f} | {ms(t_n)} | "
                     f"**{t_n / t_x:.2f}×** | {ms(t_all)} | {err:.1e} |")
    lines.append("")
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## C reduce and GEMM against numpy (CPU)", section)


if __name__ == "__main__":
    sys.exit(main())
