#!/usr/bin/env python3
"""Issue #24's Python figures, on a machine with an NVIDIA GPU and CuPy, in one run, each
against CuPy's `ElementwiseKernel` measured in the same run (alternating, fresh
processes):

1. cold: a fresh process with empty caches (xcache's base dir and CuPy's
   CUPY_CACHE_DIR), CUDA already used (arrays made): from asking for a fused
   a*exp(b)+c float32 kernel to the end of its first launch (synchronised). xcache:
   `Cache()` + `cache.elemwise(...)` + the call; CuPy: `ElementwiseKernel(...)` + the call.
2. warm: the same, with the kernel in the cache from an earlier process.
3. host time per small call: 1024 elements, the kernel and its arrays ready, out given;
   `calls` back-to-back calls, timed on the host, synchronised at the end.

Usage: python3 benches/python_cuda_bench.py [--procs N] [--json out.json]
Needs the xcache package (the wheel) and CuPy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

EXPR = "a*exp(b)+c"

XCACHE = r"""
import json, sys, time
import cupy as cp
n = 1 << 20
a = cp.ones(n, cp.float32) * 0.5
out = cp.empty_like(a)
cp.cuda.Device().synchronize()
tag, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
import xcache
t1 = time.perf_counter()
c = xcache.Cache()
t2 = time.perf_counter()
f = c.elemwise("a*exp(b)+c+%s" % tag, 3, dtype="float32", device="cuda")
f(a, a, a, out=out)
cp.cuda.Device().synchronize()
t3 = time.perf_counter()
r = {"import_ms": (t1 - t0) * 1e3, "cache_ms": (t2 - t1) * 1e3,
     "first_ms": (t3 - t2) * 1e3, "with_cache_ms": (t3 - t1) * 1e3,
     "hit": f.library.hit}
if mode == "calls":
    small = [cp.ones(1024, cp.float32) for _ in range(4)]
    for _ in range(2000):
        f(small[0], small[1], small[2], out=small[3])
    cp.cuda.Device().synchronize()
    reps = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(20000):
            f(small[0], small[1], small[2], out=small[3])
        e = time.perf_counter()
        cp.cuda.Device().synchronize()
        reps.append((e - s) / 20000 * 1e6)
    r["per_call_us"] = reps
print(json.dumps(r))
"""

CUPY = r"""
import json, sys, time
import cupy as cp
n = 1 << 20
a = cp.ones(n, cp.float32) * 0.5
out = cp.empty_like(a)
cp.cuda.Device().synchronize()
tag, mode = sys.argv[1], sys.argv[2]
t2 = time.perf_counter()
k = cp.ElementwiseKernel("float32 a, float32 b, float32 c", "float32 o",
                         "o = a * expf(b) + c + %sf" % tag, "xc_bench")
k(a, a, a, out)
cp.cuda.Device().synchronize()
t3 = time.perf_counter()
r = {"first_ms": (t3 - t2) * 1e3}
if mode == "calls":
    small = [cp.ones(1024, cp.float32) for _ in range(4)]
    for _ in range(2000):
        k(small[0], small[1], small[2], small[3])
    cp.cuda.Device().synchronize()
    reps = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(20000):
            k(small[0], small[1], small[2], small[3])
        e = time.perf_counter()
        cp.cuda.Device().synchronize()
        reps.append((e - s) / 20000 * 1e6)
    r["per_call_us"] = reps
print(json.dumps(r))
"""


def run(code: str, tag: str, mode: str, env: dict[str, str]) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", code, tag, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if p.returncode != 0:
        raise SystemExit(p.stdout + p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    res: dict[str, list] = {k: [] for k in ("x_cold", "c_cold", "x_warm", "c_warm")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.procs):
            tag = f"{i + 1}.0"
            xdir, cdir = f"{tmp}/x{i}", f"{tmp}/c{i}"
            xenv = {"XCACHE_DIR": xdir, "CUPY_CACHE_DIR": f"{tmp}/unused{i}"}
            cenv = {"CUPY_CACHE_DIR": cdir}
            # Alternate who goes first.
            order = [("x", XCACHE, xenv), ("c", CUPY, cenv)]
            if i % 2:
                order.reverse()
            for who, code, env in order:
                res[f"{who}_cold"].append(run(code, tag, "first", env))
            for who, code, env in order:
                res[f"{who}_warm"].append(run(code, tag, "calls", env))
    cold_x = [r["first_ms"] for r in res["x_cold"]]
    cold_xc = [r["with_cache_ms"] for r in res["x_cold"]]
    cold_c = [r["first_ms"] for r in res["c_cold"]]
    warm_x = [r["first_ms"] for r in res["x_warm"]]
    warm_xc = [r["with_cache_ms"] for r in res["x_warm"]]
    warm_c = [r["first_ms"] for r in res["c_warm"]]
    call_x = [min(r["per_call_us"]) for r in res["x_warm"]]
    call_c = [min(r["per_call_us"]) for r in res["c_warm"]]
    assert all(not r["hit"] for r in res["x_cold"]) and all(r["hit"] for r in res["x_warm"])
    rows = [
        ("first call, fresh process, empty cache (ms)", cold_x, cold_xc, cold_c),
        ("first call, fresh process, warm cache (ms)", warm_x, warm_xc, warm_c),
        ("host time per call, 1024 elements (µs)", call_x, call_x, call_c),
    ]
    print("| measure | xcache (handle + call) | xcache (Cache() too) | CuPy | ratio |")
    print("|---|---|---|---|---|")
    for name, x, xc, c in rows:
        ratio = statistics.median(x) / statistics.median(c)
        print(f"| {name} | {med(x)} | {med(xc)} | {med(c)} | {ratio:.2f}× |")
    print("import xcache:", med([r["import_ms"] for r in res["x_warm"]]), "ms;",
          "Cache():", med([r["cache_ms"] for r in res["x_warm"]]), "ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
