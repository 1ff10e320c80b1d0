#!/usr/bin/env python3
"""Issue #17's figures, on a machine with an NVIDIA GPU and CuPy, all in one run:

1. cold: a fused a*exp(b)+c kernel, from the request to the end of its first launch,
   in a process that has already used CUDA: xcache through NVRTC (the first kernel of
   the process, NVRTC's loading included, then new kernels once it is loaded; in a
   cache that has met NVRTC before, and in a brand-new one), xcache through nvcc, and
   CuPy's ElementwiseKernel (first call of the process, then new kernels), each in
   fresh processes with empty kernel caches;
2. warm: a fresh process asking for a kernel already in the cache, to a launchable
   kernel (xcache: key, disk hit, hash check, cuModuleLoadData; CuPy: its first call
   with the kernel in its disk cache, launch included);
3. speed: the same kernels built by NVRTC and by nvcc, timed alternately.

Usage: XCACHE_NVRTC_BENCH=target/release/examples/nvrtc_bench python3 benches/nvrtc_bench.py
       [--quick] [--out section.md] [--json raw.json]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

BIN = os.environ.get("XCACHE_NVRTC_BENCH", "target/release/examples/nvrtc_bench")

CUPY_COLD = r"""
import json, sys, time
import cupy as cp
tag, more = int(sys.argv[1]), int(sys.argv[2])
n = 1 << 20
a = cp.ones(n, cp.float32) * 0.5
out = cp.empty_like(a)
cp.cuda.Device().synchronize()
loaded = "libnvrtc" in open("/proc/self/maps").read()
def one(t):
    k = cp.ElementwiseKernel("float32 a, float32 b, float32 c", "float32 o",
                             "o = a * expf(b) + c + %rf" % (t / 1024.0), "xc_bench_%d" % t)
    s = time.perf_counter()
    k(a, a, a, out)
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - s) * 1e3
first = one(tag)
nxt = [one(tag + i) for i in range(1, more + 1)]
print(json.dumps({"nvrtc_loaded_before": loaded, "first_ms": first, "next_ms": nxt}))
"""


def cupy(args, cache):
    env = dict(os.environ, CUPY_CACHE_DIR=cache)
    r = subprocess.run([sys.executable, "-c", CUPY_COLD] + [str(a) for a in args],
                       capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout)


def med(v):
    return statistics.median(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--json")
    args = ap.parse_args()
    more = 5 if args.quick else 10
    procs = 2 if args.quick else 3

    # CuPy first, then xcache, then CuPy again: both measured twice around the other.
    cupy_cold, cupy_warm = [], []
    for round_ in range(2):
        for i in range(procs):
            with tempfile.TemporaryDirectory() as cache:
                tag = 10000 * (round_ + 1) + 100 * i
                cupy_cold.append(cupy([tag, more], cache))
                cupy_warm.append(cupy([tag, 0], cache)["first_ms"])  # in its disk cache now
        if round_ == 0:
            extra = os.environ.get("XCACHE_NVRTC_BENCH_ARGS", "").split()
            r = subprocess.run([BIN] + extra + (["--quick"] if args.quick else []), capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{BIN} failed ({r.returncode}):\n{r.stderr}")
            xc = json.loads(r.stdout)
    raw = {"xcache": xc, "cupy_cold": cupy_cold, "cupy_warm_ms": cupy_warm}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)

    import cupy as cp
    cuda_rt = cp.cuda.runtime.runtimeGetVersion()
    driver = cp.cuda.runtime.driverGetVersion()
    x_first = [c["first_ms"] for c in xc["cold"]]
    x_next = [t for c in xc["cold"] for t in c["next_ms"]]
    x_next_nvrtc = [t for c in xc["cold"] for t in c["next_compile_ms"]]
    c_first = [c["first_ms"] for c in cupy_cold]
    c_next = [t for c in cupy_cold for t in c["next_ms"]]
    warm = [w["launchable_ms"] for w in xc["warm"]]
    warm_launch = [w["first_launch_ms"] for w in xc["warm"]]
    lines = [
        "## NVRTC: cold compiles and warm hits (GPU)",
        "",
        f"Device: {xc['device']} ({xc['sm']}, {xc['sms']} SMs); NVRTC {xc['nvrtc']} "
        f"({xc['nvrtc_library']}, `-minimal`: {xc['minimal']}); CuPy {cp.__version__}, "
        f"CUDA runtime {cuda_rt}, driver {driver}; all measured in one run "
        "(`benches/nvrtc_bench.py`, which runs `examples/nvrtc_bench.rs`). Each cold figure "
        "is the wall time from asking for a new fused `a*exp(b)+c` float32 kernel to the end "
        "of its first launch (synchronised), in a process that has already used CUDA "
        "(context made, buffers allocated); fresh processes and empty caches for each. "
        f"Medians; min–max in brackets; {procs} processes of each kind, {more} new kernels "
        "after the first in each.",
        "",
        "| path | first kernel of the process | each new kernel after it | warm, fresh process |",
        "|---|---|---|---|",
    ]

    def rng(v):
        return f"{med(v):.1f} ms [{min(v):.1f}–{max(v):.1f}]"

    lines.append(f"| xcache, NVRTC (cache that has met NVRTC before) | {rng(x_first)} | {rng(x_next)} "
                 f"(NVRTC itself {med(x_next_nvrtc):.0f} ms) | {rng(warm)} to a launchable kernel; "
                 f"first launch {med(warm_launch):.2f} ms more |")
    fc = xc["cold_fresh_cache"]
    lines.append(f"| xcache, NVRTC, brand-new cache (NVRTC found, probed, recorded) | "
                 f"{fc['first_ms']:.1f} ms | {med(fc['next_ms']):.1f} ms | — |")
    lines.append(f"| xcache, nvcc (`cuda_compiler=nvcc`) | {xc['cold_nvcc']['first_ms']:.0f} ms | "
                 f"{med(xc['cold_nvcc']['next_ms']):.0f} ms | — |")
    lines.append(f"| CuPy `ElementwiseKernel` | {rng(c_first)} | {rng(c_next)} | {rng(cupy_warm)} "
                 "(first call, kernel in its disk cache, launch included) |")
    loaded = {c["nvrtc_loaded_before"] for c in cupy_cold}
    xloaded = {c["nvrtc_loaded_before"] for c in xc["cold"]}
    lines += [
        "",
        f"libnvrtc already loaded before the first kernel: CuPy {sorted(loaded)}, xcache "
        f"{sorted(xloaded)}. Ratio of first kernels: xcache / CuPy = "
        f"{med(x_first) / med(c_first):.2f}×; of new kernels: {med(x_next) / med(c_next):.2f}×.",
        "",
    ]
    if xc.get("speed"):
        lines += [
            "Kernel speed, NVRTC's build against nvcc's of the same template (median per "
            "launch, two alternating rounds each):",
            "",
            "| kernel | NVRTC | nvcc | NVRTC / nvcc |",
            "|---|---|---|---|",
        ]
        for r in xc["speed"]:
            a, b = med(r["nvrtc_ms"]), med(r["nvcc_ms"])
            lines.append(f"| {r['kernel']} | {a:.3f} ms ({', '.join(f'{x:.3f}' for x in r['nvrtc_ms'])}) "
                         f"| {b:.3f} ms ({', '.join(f'{x:.3f}' for x in r['nvcc_ms'])}) | {a / b:.3f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
