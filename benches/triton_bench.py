#!/usr/bin/env python3
"""Triton through xcache's cache manager against Triton's own file cache, same run.

Each figure is a fresh process compiling kernels for GPUTarget("cuda", 90, 32) (no GPU
needed): `triton.compile()` of the first kernel of the process, and of each kernel after
it, with

- Triton's own cache (FileCacheManager in TRITON_CACHE_DIR): the floor;
- xcache's (TRITON_CACHE_MANAGER=xcache.integrations.triton:CacheManager, XCACHE_DIR),
  with an empty TRITON_CACHE_DIR.

Warm: the cache holds the kernels (written by an earlier process). Cold: both caches
empty. The two configurations alternate, round by round, so that the machine's drift
falls on both. Also the time spent inside the cache manager's methods (what each cache
itself costs) and the whole process (spawn to exit).

Usage: python benches/triton_bench.py [--rounds 7] [--write docs/BENCHMARKS.md]
Needs the package installed (`pip install ./python`) and triton (`pip install triton`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import machine, write_section  # noqa: E402

HEADING = "## Triton adapter"

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = a_ptr + rm[:, None] * sam + rk[None, :] * sak
    b = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        acc += tl.dot(tl.load(a, mask=rk[None, :] < K - k * BK, other=0.0),
                      tl.load(b, mask=rk[:, None] < K - k * BK, other=0.0))
        a += BK * sak
        b += BK * sbk
    c = c_ptr + rm[:, None] * scm + rn[None, :] * scn
    tl.store(c, acc.to(tl.float16), mask=(rm[:, None] < M) & (rn[None, :] < N))
'''

WORKER = '''
import json, sys, time
t_start = time.perf_counter()
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import cache as tcache
import kernels
t_import = time.perf_counter()

in_manager = [0.0]
def timed(cls, name):
    f = getattr(cls, name)
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            in_manager[0] += time.perf_counter() - t
    setattr(cls, name, g)
cls = triton.knobs.cache.manager_class or tcache.FileCacheManager
for name in ("__init__", "get_group", "put", "put_group", "get_file"):
    timed(cls, name)

seen = []
triton.knobs.compilation.listener = lambda **kw: seen.append(kw["cache_hit"])
ptr = "*fp32"
JOBS = [
    (kernels.add_kernel, {"x_ptr": ptr, "y_ptr": ptr, "out_ptr": ptr, "n": "i32",
                          "BLOCK": "constexpr"}, {"BLOCK": 1024}),
    (kernels.matmul_kernel, {**{p: "*fp16" for p in ("a_ptr", "b_ptr", "c_ptr")},
                             **{p: "i32" for p in ("M", "N", "K", "sam", "sak", "sbk", "sbn",
                                                   "scm", "scn")},
                             "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
     {"BM": 128, "BN": 128, "BK": 64}),
]
times = []
for fn, sig, consts in JOBS:
    t = time.perf_counter()
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32))
    times.append(time.perf_counter() - t)
print(json.dumps({"import": t_import - t_start, "compiles": times, "hits": seen,
                  "in_manager": in_manager[0]}))
'''


def run(work, env):
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, os.path.join(work, "worker.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(p.stderr)
    r = json.loads(p.stdout)
    r["wall"] = wall
    return r


def med(rows, f):
    return statistics.median(f(r) for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write")
    args = ap.parse_args()
    import triton

    import xcache

    work = tempfile.mkdtemp(prefix="xcache-triton-bench-")
    open(os.path.join(work, "kernels.py"), "w").write(KERNELS)
    open(os.path.join(work, "worker.py"), "w").write(WORKER)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XCACHE_", "TRITON_"))}
    base.update(PYTHONPATH=work, TRITON_DEFAULT_FP_FUSION="1")
    base["XCACHE_CONFIG"] = os.path.join(work, "config.toml")
    open(base["XCACHE_CONFIG"], "w").write("")
    os.environ["XCACHE_CONFIG"] = base["XCACHE_CONFIG"]
    first_open = []

    def env_for(mode, tdir, xdir):
        e = dict(base, TRITON_CACHE_DIR=tdir, XCACHE_DIR=xdir)
        if mode == "xcache":
            e["TRITON_CACHE_MANAGER"] = "xcache.integrations.triton:CacheManager"
        return e

    load = [os.getloadavg()[0]]
    results = {("triton", "warm"): [], ("xcache", "warm"): []}
    results.update({("triton", "cold"): [], ("xcache", "cold"): []})
    warm_dirs = {m: (tempfile.mkdtemp(dir=work), tempfile.mkdtemp(dir=work)) for m in results}
    for mode in ("triton", "xcache"):  # fill the warm caches
        tdir, xdir = warm_dirs[(mode, "warm")]
        run(work, env_for(mode, tdir, xdir))
    for i in range(args.rounds):
        for mode in (("triton", "xcache") if i % 2 == 0 else ("xcache", "triton")):
            tdir, xdir = warm_dirs[(mode, "warm")]
            if mode == "xcache":
                tdir = tempfile.mkdtemp(dir=work)  # an empty TRITON_CACHE_DIR each time
            r = run(work, env_for(mode, tdir, xdir))
            assert r["hits"] == [True, True], r
            results[(mode, "warm")].append(r)
            # Cold: the kernels are in neither cache, but the caches exist (xcache's
            # first open of a base dir, once per machine, is measured apart).
            cold = tempfile.mkdtemp(dir=work)
            tdir, xdir = os.path.join(cold, "t"), os.path.join(cold, "x")
            os.mkdir(tdir)
            t = time.perf_counter()
            xcache.Cache(base_dir=xdir, runtime_tag=f"triton-{triton.__version__}")
            first_open.append(time.perf_counter() - t)
            r = run(work, env_for(mode, tdir, xdir))
            assert r["hits"] == [False, False], r
            results[(mode, "cold")].append(r)
            shutil.rmtree(cold)
    load.append(os.getloadavg()[0])

    rows = []
    for what, f in (
        ("first kernel of the process (`add_kernel`)", lambda r: r["compiles"][0]),
        ("second kernel (`matmul_kernel`, 128×128×64 fp16 `tl.dot`)", lambda r: r["compiles"][1]),
        ("both, inside the cache manager's methods", lambda r: r["in_manager"]),
        ("whole process (spawn, import, both, exit)", lambda r: r["wall"]),
    ):
        cells = []
        for temp in ("warm", "cold"):
            t = med(results[("triton", temp)], f)
            x = med(results[("xcache", temp)], f)
            cells.append((t, x))
        rows.append((what, cells))

    def ms(s):
        return f"{s * 1e3:.1f} ms"

    def ratio(t, x):
        return f"**{x / t:.2f}×**" if t > 0.005 else f"{x / t:.2f}×"

    table = [
        "| per fresh process | Triton's cache, warm (floor) | xcache, warm | ratio |"
        " Triton's cache, cold (floor) | xcache, cold | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, ((tw, xw), (tc, xc)) in rows:
        table.append(
            f"| {what} | {ms(tw)} | {ms(xw)} | {ratio(tw, xw)} | {ms(tc)} | {ms(xc)} |"
            f" {ratio(tc, xc)} |"
        )
    first_w = rows[0][1][0]
    first_c = rows[0][1][1]
    both_c = [med(results[(m, "cold")], lambda r: sum(r["compiles"])) for m in ("triton", "xcache")]
    both_w = [med(results[(m, "warm")], lambda r: sum(r["compiles"])) for m in ("triton", "xcache")]
    def met(ok):
        return "met" if ok else "NOT met"

    section = f"""{HEADING}

Machine: {machine()}; Python {sys.version.split()[0]}, triton {triton.__version__},
xcache {xcache.__version__}.
Load average {load[0]:.2f} before, {load[1]:.2f} after (the machine is shared).
Every process fresh; medians of {args.rounds} processes per cell, the two caches
alternating round by round. Kernels compiled for `GPUTarget("cuda", 90, 32)` on this CPU
machine (Triton's ptxas; no GPU). Warm: the cache holds both kernels (xcache's process
also has an empty `TRITON_CACHE_DIR`); cold: neither cache holds them.
Reproduce: `pip install ./python triton && python benches/triton_bench.py`.

{chr(10).join(table)}

| goal | measured | |
|---|---|---|
| warm first compile in a fresh process ≤ 1.1× Triton's own warm cache | {first_w[1] / first_w[0]:.2f}× (both kernels {both_w[1] / both_w[0]:.2f}×) | {met(first_w[1] <= 1.1 * first_w[0])} |
| cold ≤ 1.05× Triton's own cold compile | {first_c[1] / first_c[0]:.2f}× the first kernel, {both_c[1] / both_c[0]:.2f}× both | {met(both_c[1] <= 1.05 * both_c[0])} |

The cold rows start from an opened cache that does not hold the kernels; opening an
empty base dir for the first time (once per machine: directories, trust checks, the
compiler record) took {statistics.median(first_open) * 1e3:.1f} ms more.

Notes. A warm `triton.compile()` is mostly Triton's own work before it asks its cache:
the first one of a process hashes Triton's sources and `libtriton.so` (`triton_key()`)
and runs `ptxas --version` (the backend's hash), then builds the `CompiledKernel`; the
cache manager's share is the row "inside the cache manager's methods". xcache's hit
there is the store's hit protocol (the lease's lookup: manifest, entry lock,
`entry.json`, the files' `verified` records, the pin), plus opening the cache once per
process; Triton's is an `exists` and a JSON read per kernel. Cold, xcache adds the
lease, the scratch copy and a publish of about 7 files (staging, hashes, fsyncs,
rename, manifest) per kernel, against Triton's per-file `os.replace`. That share is
the stable figure: under load (3.7 to 4.8 on these 2 cores) the same script measured
1.00× warm but 1.23× cold for the first kernel and 0.99× for both, the spread between
processes being larger than the manager's few milliseconds.
"""
    print(section)
    if args.write:
        write_section(args.write, HEADING, section)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
