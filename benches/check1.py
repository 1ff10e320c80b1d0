#!/usr/bin/env python3
"""The seed workload and element-wise bandwidth, xcache against numpy in one run.

1. Theano's check1: exp over 10*30*768 float32 values, looped 1000 times, through
   xcache's `elemwise` template (called via ctypes, as an embedding Python program
   would) against numpy's np.exp on the same array (allocating, as check1's f() did,
   and with out=).
2. a*exp(b)+c over 2^24 float32 values, as a fraction of this machine's memory
   bandwidth measured in the same run by a copy loop (the faster of xcache's
   elemwise `a` and numpy's copyto).

Usage: benches/check1.py [--write docs/BENCHMARKS.md]
Installs numpy into target/bench-venv with pip on first use.
"""
import argparse, ctypes, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import XCACHE, machine, median_of, reexec_in_venv, write_section  # noqa: E402



def kernel(env, expr, arity, dtype="float32"):
    out = subprocess.run(
        [XCACHE, "compile", "--template", "elemwise", "-p", f"dtype={dtype}",
         "-p", f"arity={arity}", "-p", f"expr={expr}", "--json"],
        env=env, check=True, capture_output=True, text=True).stdout
    lib = ctypes.CDLL(json.loads(out)["path"])
    f = lib.xc_elemwise
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    return f


def bind(f, inputs, out):
    """A zero-argument call with the pointer array built once."""
    ptrs = (ctypes.c_void_p * len(inputs))(*[x.ctypes.data for x in inputs])
    n, o = len(out), out.ctypes.data

    def call():
        rc = f(n, ptrs, o)
        assert rc == 0, rc
    return call


def main():
    reexec_in_venv(__file__, ["numpy"])
    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")
    # OPENBLAS_* settings slow numpy on some machines here; exp and copy use no BLAS.
    env = dict(os.environ, XCACHE_DIR=tempfile.mkdtemp(prefix="xcache-bench-"))
    env.pop("XCACHE_FLAGS", None)

    # 1. check1.
    vlen, iters = 10 * 30 * 768, 1000
    rng = np.random.default_rng(0)
    x = rng.random(vlen, dtype=np.float32)
    out = np.empty_like(x)
    call = bind(kernel(env, "exp(a)", 1), [x], out)

    def loop_xcache():
        for _ in range(iters):
            call()

    def loop_numpy_alloc():
        for _ in range(iters):
            np.exp(x)

    def loop_numpy_out():
        for _ in range(iters):
            np.exp(x, out=out)

    t_x = median_of(loop_xcache, args.repeats)
    err = float(np.max(np.abs(out.astype(np.float64) - np.exp(x.astype(np.float64))) / np.exp(x.astype(np.float64))))
    t_na = median_of(loop_numpy_alloc, args.repeats)
    t_no = median_of(loop_numpy_out, args.repeats)
    demo = json.loads(subprocess.run([XCACHE, "demo", "--json"], env=env, check=True,
                                     capture_output=True, text=True).stdout)

    # 2. a*exp(b)+c against the copy bandwidth.
    n = 1 << 24
    a, b, c = (rng.random(n, dtype=np.float32) for _ in range(3))
    o = np.empty_like(a)
    fused = bind(kernel(env, "a*exp(b)+c", 3), [a, b, c], o)
    copy = bind(kernel(env, "a", 1), [a], o)
    reps = max(args.repeats, 9)
    t_fused = median_of(fused, reps)
    ref = a.astype(np.float64) * np.exp(b.astype(np.float64)) + c
    fused_err = float(np.max(np.abs(o - ref) / np.abs(ref)))
    t_copy_x = median_of(copy, reps)
    t_copy_np = median_of(lambda: np.copyto(o, a), reps)
    t_np_fused = median_of(lambda: a * np.exp(b) + c, reps)
    t_copy = min(t_copy_x, t_copy_np)
    copy_bw = 2 * n * 4 / t_copy          # read + write
    fused_bw = 4 * n * 4 / t_fused        # 3 reads + 1 write
    fraction = fused_bw / copy_bw

    ms = lambda t: f"{t * 1e3:.1f} ms"  # noqa: E731
    lines = [
        "## Check1 and element-wise bandwidth (CPU)",
        "",
        f"Machine: {machine()}; numpy {np.__version__}. One thread. Median of {args.repeats} loops "
        f"(check1) or {reps} calls (2^24); all measured in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/check1.py`.",
        "",
        f"Check1: exp over {vlen} float32 values, {iters} times.",
        "",
        "| what | time | ratio |",
        "|---|---:|---|",
        f"| numpy `np.exp(x)` (allocates, as check1's `f()`) | {ms(t_na)} | 1.00× (baseline) |",
        f"| numpy `np.exp(x, out=out)` | {ms(t_no)} | {t_no / t_na:.2f}× |",
        f"| xcache `elemwise` exp(a), called through ctypes | {ms(t_x)} | **{t_x / t_na:.2f}×** numpy's time ({t_x / t_no:.2f}× `out=`) |",
        f"| xcache `elemwise`, the `xcache demo` loop in Rust | {ms(demo['loop_s'])} | {demo['loop_s'] / t_na:.2f}× |",
        "",
        f"Target ≤ 1.0× numpy's time: {'met' if t_x <= t_na else 'NOT met'}. Max relative error "
        f"against float64 exp: {err:.1e}.",
        "",
        f"`a*exp(b)+c` over 2^24 float32 values (3 reads and 1 write of 64 MiB each):",
        "",
        "| what | time | bandwidth |",
        "|---|---:|---:|",
        f"| copy loop, xcache `elemwise` `a` | {ms(t_copy_x)} | {2 * n * 4 / t_copy_x / 1e9:.1f} GB/s |",
        f"| copy loop, numpy `copyto` | {ms(t_copy_np)} | {2 * n * 4 / t_copy_np / 1e9:.1f} GB/s |",
        f"| xcache `elemwise` `a*exp(b)+c`, one fused loop | {ms(t_fused)} | {fused_bw / 1e9:.1f} GB/s = **{fraction:.0%}** of the copy bandwidth |",
        f"| numpy `a*np.exp(b)+c` (three passes, temporaries) | {ms(t_np_fused)} | {t_np_fused / t_fused:.2f}× xcache's time |",
        "",
        f"Max relative error of the fused kernel against float64: {fused_err:.1e}.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Check1 and element-wise bandwidth (CPU)", section)


if __name__ == "__main__":
    main()
