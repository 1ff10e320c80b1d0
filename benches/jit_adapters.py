#!/usr/bin/env python3
"""Numba's and PyTensor's caches through xcache's adapters, each against the compiler's
own cache, in fresh processes; every figure from one run (medians).

1. Numba (`xcache.integrations.numba`): the functions of python/tests/numba_funcs.py
   (scalar, array loop, parallel, one calling two others), each one's first call in a
   fresh process (compile or cache load included): cold (empty caches) and warm (Numba:
   its NUMBA_CACHE_DIR warm; adapter: an empty NUMBA_CACHE_DIR and a warm xcache).
   Also the whole process (interpreter, imports, install, decoration, first calls).
2. PyTensor's default mode (its Numba backend, through `xcache.integrations.pytensor`):
   `pytensor.function()` plus the first call (where Numba compiles or loads) of the
   graphs of python/tests/pytensor_graphs.py, cold and warm (PyTensor: its
   base_compiledir warm; adapter: an empty base_compiledir and a warm xcache). Floor:
   the same graphs with PyTensor's Python linker (same rewrites, nothing compiled).
3. PyTensor's C backend (mode CVM): `pytensor.function()` warm, adapter against
   PyTensor's own, the same floor. With --restamp-headers, also the first adapter
   process after numpy's and PyTensor's headers were touched (mtime only, contents
   unchanged: what a restored or reinstalled environment looks like to the manifests),
   where every header's hash is read again.

Usage: python benches/jit_adapters.py [--repeats 9] [--cold-repeats 3] [--restamp-headers]
       [--write docs/BENCHMARKS.md]
Needs the package installed (`pip install ./python`), numpy, numba and pytensor.
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
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import machine, write_section  # noqa: E402

TESTS = os.path.join(os.path.dirname(HERE), "python", "tests")
NUMBA_RUN = os.path.join(TESTS, "numba_run.py")
GRAPHS = os.path.join(TESTS, "pytensor_graphs.py")
FUNCS = ["scalar", "array_loop", "parallel", "caller"]
GRAPH_NAMES = ["elemwise", "reductions", "mlp_grad"]
HEADING = "## Numba and PyTensor adapters against their own caches"
NOTES = """Notes. The first call of a Numba process pays Numba's own start-up (its target
context, LLVM), about 200 ms, in both columns (the `scalar` row). A warm load through
the adapter replaces Numba's index and data files by one store hit (the group's
manifest, the entry's lock, `entry.json` and `verified` record, a pin) and one read of
the group's file: 0.2–0.3 ms per function (0.7 ms for the first of a process). Cold, the
adapter publishes each compiled function durably (staged, hashed, about 5 fsyncs: 17–25
ms on this shared disk) on a thread of its own while the program goes on, and the
process waits for what is left at exit; Numba writes its two files in the call, without
syncing them. Publishing inside the call (`install(write_behind=False)`, as before)
measured 1.20× Numba's cold first calls in all (up to 2× for `array_loop`, whose
compile takes 60 ms). PyTensor's default mode
loads one Numba function per graph (the graph's, with its ops compiled in), so a warm
`function()` differs by one group hit per graph. The C backend's adapter finds a
module whose PyTensor key is versioned by that key (a `pytensor-module` group: the
module's name and source, no code generation), then compiles it through xcache as any
request (the flags computed again, every header of its manifest checked); a header one
`Cache` found unchanged is believed by it for a second without another `stat`
(`RECHECK_AFTER`), so the ~330 headers each module shares are stat'ed about once per
graph, not once per module. What is left per module is the key's pickle and group hit,
the manifest read (~85 KB of JSON per module here), the entry check and the load, where
PyTensor's own warm path finds its key among the key files it unpickled. A
header's hash is read once per process and stat signature (`VerifiedHashes`): the
steady warm path never hashed (every signature vouched); "restamped" (`--restamp-headers`) is the first
process after numpy's and PyTensor's headers were touched (contents unchanged, as after
restoring or reinstalling an environment), whose manifests all have stale signatures:
each header is hashed once in that process instead of once per module, and each
manifest is written back (the next process is the steady one again)."""


def run_json(args: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    t = time.perf_counter()
    p = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{args} failed:\n{p.stderr[-3000:]}")
    r: Dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall"] = wall
    return r


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cold-repeats", type=int, default=3, help="PyTensor default mode, cold")
    ap.add_argument("--restamp-headers", action="store_true")
    ap.add_argument("--write")
    args = ap.parse_args()
    import numba
    import numpy as np
    import pytensor

    n = args.repeats
    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="xcache-jitbench-")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XCACHE_", "NUMBA_"))}
    base["PYTHONWARNINGS"] = "ignore"
    path = lambda *p: os.path.join(tmp, *p)  # noqa: E731
    counter = iter(range(1_000_000))

    def fresh_dir(tag: str) -> str:
        return path(f"{tag}-{next(counter)}")

    # 1. Numba.
    src = path("src")
    os.makedirs(src)
    shutil.copy(os.path.join(TESTS, "numba_funcs.py"), src)

    def numba_proc(numba_dir: str, xc_dir: str, adapter: bool) -> Dict[str, Any]:
        env = dict(base, NUMBA_CACHE_DIR=numba_dir, XCACHE_DIR=xc_dir)
        out = path("numba-out.npz")
        extra = ["--adapter"] if adapter else []
        return run_json([sys.executable, NUMBA_RUN, src, out, *FUNCS, *extra], env)

    warm_numba_dir, warm_xc_dir = path("numba-warm"), path("xc-numba-warm")
    numba_proc(warm_numba_dir, path("unused"), False)
    numba_proc(fresh_dir("numba"), warm_xc_dir, True)
    nb: Dict[str, List[Dict[str, Any]]] = {k: [] for k in ("cold", "cold_xc", "warm", "warm_xc")}
    for _ in range(n):  # interleaved, so that the machine's load falls on all alike
        nb["cold"].append(numba_proc(fresh_dir("numba"), path("unused"), False))
        nb["cold_xc"].append(numba_proc(fresh_dir("numba"), fresh_dir("xc"), True))
        nb["warm"].append(numba_proc(warm_numba_dir, path("unused"), False))
        nb["warm_xc"].append(numba_proc(fresh_dir("numba"), warm_xc_dir, True))
    for r in nb["warm_xc"]:
        assert all(r["stats"][f]["misses"] == 0 for f in FUNCS), r["stats"]
    for r in nb["cold_xc"]:
        assert all(r["stats"][f]["misses"] >= 1 for f in FUNCS), r["stats"]

    def first(kind: str, f: str) -> float:
        return med([r["first_call_s"][f] for r in nb[kind]])

    def all_first(kind: str) -> float:
        return med([sum(r["first_call_s"].values()) for r in nb[kind]])

    def key(kind: str, k: str) -> float:
        return med([r[k] for r in nb[kind]])

    # 2. and 3. PyTensor.
    def graphs_proc(
        pt_dir: str, xc_dir: str, adapter: bool, mode: str, py_linker: bool = False
    ) -> Dict[str, Any]:
        env = dict(base, PYTENSOR_FLAGS=f"base_compiledir={pt_dir}", XCACHE_DIR=xc_dir)
        if mode == "default":
            env["XC_GRAPHS_MODE"] = "default"
        if py_linker:
            env["XC_BENCH_PY_LINKER"] = "1"
        argv = [sys.executable, GRAPHS, path("graphs-out.npz"), *GRAPH_NAMES]
        return run_json(argv + (["--adapter"] if adapter else []), env)

    def fn_and_call(r: Dict[str, Any], g: str) -> float:
        return float(r["function_s"][g] + r["first_call_s"][g])

    pt: Dict[str, List[Dict[str, Any]]] = {}
    pt["floor"] = [graphs_proc(fresh_dir("pt"), path("unused"), False, "", True) for _ in range(n)]
    # Default mode: cold runs compile everything (about 35 s each here): fewer of them.
    cold_n = max(1, min(n, args.cold_repeats))
    pt_warm_dir, xc_warm_dir = path("pt-warm"), path("xc-pt-warm")
    graphs_proc(pt_warm_dir, path("unused"), False, "default")
    graphs_proc(fresh_dir("pt"), xc_warm_dir, True, "default")
    for k in ("d_cold", "d_cold_xc", "d_warm", "d_warm_xc"):
        pt[k] = []
    for i in range(n):
        if i < cold_n:
            pt["d_cold"].append(graphs_proc(fresh_dir("pt"), path("unused"), False, "default"))
            pt["d_cold_xc"].append(graphs_proc(fresh_dir("pt"), fresh_dir("xc"), True, "default"))
        pt["d_warm"].append(graphs_proc(pt_warm_dir, path("unused"), False, "default"))
        pt["d_warm_xc"].append(graphs_proc(fresh_dir("pt"), xc_warm_dir, True, "default"))
    for r in pt["d_warm_xc"]:
        assert r["numba_compiles"] == 0, r

    # C backend, warm.
    c_pt_dir, c_xc_dir = path("c-pt-warm"), path("c-xc-warm")
    graphs_proc(c_pt_dir, path("unused"), False, "cvm")
    graphs_proc(fresh_dir("pt"), c_xc_dir, True, "cvm")
    pt["c_warm"], pt["c_warm_xc"], pt["c_restamped_xc"] = [], [], []
    for _ in range(n):
        pt["c_warm"].append(graphs_proc(c_pt_dir, path("unused"), False, "cvm"))
        pt["c_warm_xc"].append(graphs_proc(fresh_dir("pt"), c_xc_dir, True, "cvm"))
    if args.restamp_headers:
        import numpy

        dirs = [numpy.get_include(), os.path.join(os.path.dirname(pytensor.__file__), "link")]
        for _ in range(n):
            now = time.time() - 5
            for d in dirs:
                for root, _sub, files in os.walk(d):
                    for f in files:
                        if f.endswith((".h", ".hpp", ".c")):
                            os.utime(os.path.join(root, f), (now, now))
            pt["c_restamped_xc"].append(graphs_proc(fresh_dir("pt"), c_xc_dir, True, "cvm"))
    load_after = os.getloadavg()

    def gmed(kind: str, g: str, f: Callable[[Dict[str, Any], str], float]) -> float:
        return med([f(r, g) for r in pt[kind]])

    def fn_only(r: Dict[str, Any], g: str) -> float:
        return float(r["function_s"][g])

    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"numba {numba.__version__}, pytensor {pytensor.__version__}. Load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (the machine is shared). "
        f"Fresh processes, medians of {n} (cold PyTensor default mode: {cold_n}), all from "
        "one run. Reproduce: `pip install ./python numpy numba pytensor && python "
        "benches/jit_adapters.py`.",
        "",
        "Numba (`cache=True`), first call of each function in a fresh process (compile or "
        "cache load included). Numba warm: its NUMBA_CACHE_DIR holds the function; adapter "
        "warm: an **empty** NUMBA_CACHE_DIR and a warm xcache.",
        "",
        "| function | Numba cold | adapter cold | ratio (goal ≤ 1.05×) | Numba warm | "
        "adapter warm | ratio (goal ≤ 1.1×) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in FUNCS:
        c, cx, w, wx = (first(k, f) for k in ("cold", "cold_xc", "warm", "warm_xc"))
        lines.append(
            f"| {f} | {ms(c)} | {ms(cx)} | {ratio(cx, c)} | {ms(w)} | {ms(wx)} | "
            f"**{ratio(wx, w)}** |"
        )
    c, cx, w, wx = (all_first(k) for k in ("cold", "cold_xc", "warm", "warm_xc"))
    lines.append(
        f"| all four | {ms(c)} | {ms(cx)} | {ratio(cx, c)} | {ms(w)} | {ms(wx)} | "
        f"**{ratio(wx, w)}** |"
    )
    ic, icx, iw, iwx = (key(k, "import_s") for k in ("cold", "cold_xc", "warm", "warm_xc"))
    wc, wcx, ww, wwx = (key(k, "wall") for k in ("cold", "cold_xc", "warm", "warm_xc"))
    lines += [
        "",
        f"Imports (numpy, numba, the adapter's `install()`, the module's decorations): "
        f"Numba {ms(iw)} warm, adapter {ms(iwx)} ({ratio(iwx, iw)}); cold {ms(ic)} and "
        f"{ms(icx)}. Whole processes: warm {ms(ww)} and {ms(wwx)} "
        f"(**{ratio(wwx, ww)}**), cold {ms(wc)} and {ms(wcx)} ({ratio(wcx, wc)}).",
        "",
        "PyTensor's default mode (Numba backend): `pytensor.function()` plus the first "
        "call, per graph. PyTensor warm: its base_compiledir holds the functions; adapter "
        "warm: an **empty** base_compiledir and a warm xcache (Numba compiled nothing in "
        "any of those processes). Floor: PyTensor's Python linker.",
        "",
        "| graph | floor (py linker) | PyTensor cold | adapter cold | ratio | PyTensor warm "
        "| adapter warm | ratio (goal ≤ 1.0×) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in GRAPH_NAMES:
        fl = gmed("floor", g, fn_and_call)
        c, cx = gmed("d_cold", g, fn_and_call), gmed("d_cold_xc", g, fn_and_call)
        w, wx = gmed("d_warm", g, fn_and_call), gmed("d_warm_xc", g, fn_and_call)
        lines.append(
            f"| {g} | {ms(fl)} | {ms(c)} | {ms(cx)} | {ratio(cx, c)} | {ms(w)} | {ms(wx)} "
            f"| **{ratio(wx, w)}** |"
        )
    tot = lambda kind: med([sum(fn_and_call(r, g) for g in GRAPH_NAMES) for r in pt[kind]])  # noqa: E731
    lines += [
        f"| all three | {ms(tot('floor'))} | {ms(tot('d_cold'))} | {ms(tot('d_cold_xc'))} | "
        f"{ratio(tot('d_cold_xc'), tot('d_cold'))} | {ms(tot('d_warm'))} | "
        f"{ms(tot('d_warm_xc'))} | **{ratio(tot('d_warm_xc'), tot('d_warm'))}** |",
        "",
        "PyTensor's C backend (mode CVM), warm `pytensor.function()` per graph (the C "
        "adapter: each module found by PyTensor's key where it is versioned, then an "
        "xcache hit with the headers of its manifest checked).",
        "",
        "| graph | floor (py linker) | PyTensor warm | adapter warm | ratio (goal ≤ 1.0×) |"
        + (" adapter, headers restamped |" if args.restamp_headers else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if args.restamp_headers else ""),
    ]
    for g in GRAPH_NAMES:
        fl = gmed("floor", g, fn_only)
        w, wx = gmed("c_warm", g, fn_only), gmed("c_warm_xc", g, fn_only)
        row = f"| {g} | {ms(fl)} | {ms(w)} | {ms(wx)} | **{ratio(wx, w)}** |"
        if args.restamp_headers:
            row += f" {ms(gmed('c_restamped_xc', g, fn_only))} |"
        lines.append(row)
    lines += ["", *NOTES.splitlines(), ""]
    section = "\n".join(lines)
    print(section)
    print(json.dumps({k: v for k, v in {**nb, **pt}.items()}), file=sys.stderr)
    if args.write:
        write_section(args.write, HEADING, section)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
