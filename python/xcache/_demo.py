"""``python -m xcache demo``: Theano's check1 (``exp`` over 10*30*768 float32 values,
looped 1000 times) through the package's ``cache.elemwise``, reported as ``xcache
demo`` reports it, with numpy's ``np.exp(x, out=y)`` loop timed beside it in the same
process."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Optional

VLEN = 10 * 30 * 768
MAX_REL_ERR = 1e-6
KERNEL = "elemwise(arity=1, dtype=float32, expr=exp(a))"


def uniform_f32(n: int, seed: int) -> Any:
    """The Rust demo's inputs (splitmix64), so both check the same values."""
    import numpy as np

    with np.errstate(over="ignore"):
        s = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = s
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


def run(iters: int) -> Dict[str, Any]:
    import numpy as np

    from . import Cache, _native

    x = uniform_f32(VLEN, 0x5EED)
    r = np.empty_like(x)

    t = time.perf_counter()
    cache = Cache()
    kernel = cache.elemwise("exp(a)", 1, dtype="float32")
    cold_ms = (time.perf_counter() - t) * 1e3

    # A fresh runtime: nothing loaded, so this is the path of the next process.
    t = time.perf_counter()
    warm = Cache().elemwise("exp(a)", 1, dtype="float32")
    warm_ms = (time.perf_counter() - t) * 1e3

    kernel(x, out=r)  # checked below, even with --iters 0
    t = time.perf_counter()
    for _ in range(iters):
        kernel(x, out=r)
    loop_s = time.perf_counter() - t

    y = np.empty_like(x)
    np.exp(x, out=y)
    t = time.perf_counter()
    for _ in range(iters):
        np.exp(x, out=y)
    numpy_s = time.perf_counter() - t

    want = np.exp(x.astype(np.float64))
    err = float(np.max(np.abs((r.astype(np.float64) - want) / want)))
    lib = kernel.library
    return {
        "workload": f"check1: exp over {VLEN} float32 values, {iters} times",
        "n": VLEN,
        "iters": iters,
        "compiledir": str(cache.compiledir),
        "kernel": KERNEL,
        "key": lib.key,
        "cold_was_cached": lib.hit,
        "cold_ms": cold_ms,
        "compile_ms": lib.compile_ms,
        "warm_ms": warm_ms,
        "warm_hit": warm.library.hit,
        "loop_s": loop_s,
        "elements_per_s": VLEN * iters / max(loop_s, 1e-12),
        "numpy_s": numpy_s,
        "device": f"cpu: {_native.cpu_name()}, 1 thread",
        "max_rel_err": err,
        "result_head": [float(v) for v in r[:4]],
        "ok": bool(err <= MAX_REL_ERR and np.all(np.isfinite(r))),
        "used": "cpu",
    }


def report(r: Dict[str, Any]) -> str:
    if r["cold_was_cached"]:
        cold = (
            f"{r['cold_ms']:.1f} ms: already in the cache (it compiled in "
            f"{r['compile_ms']} ms once), no compiler run"
        )
    else:
        cold = (
            f"{r['cold_ms']:.1f} ms: rendered, compiled ({r['compile_ms']} ms in the "
            "compiler), published, loaded"
        )
    warm = (
        f"{r['warm_ms']:.2f} ms: {'hit' if r['warm_hit'] else 'MISS'} from a fresh "
        "runtime (hash checked, dlopened)"
    )
    iters = max(r["iters"], 1)
    ratio = r["loop_s"] / r["numpy_s"] if r["numpy_s"] > 0 else float("nan")
    rows = [
        ("kernel", f"{r['kernel']}  key {r['key'][:12]}"),
        ("cache", r["compiledir"]),
        ("cold", cold),
        ("warm", warm),
        (
            "loop",
            f"{r['iters']} calls in {r['loop_s']:.3f} s ({r['loop_s'] * 1e6 / iters:.1f} µs "
            f"per call, {r['elements_per_s'] / 1e9:.2f} G elements/s)",
        ),
        (
            "numpy",
            f"{r['iters']} calls of np.exp(x, out=y) in {r['numpy_s']:.3f} s "
            f"({r['numpy_s'] * 1e6 / iters:.1f} µs per call): xcache takes {ratio:.2f}× "
            "numpy's time",
        ),
        ("device", r["device"]),
        (
            "check",
            f"max relative error vs float64 exp: {r['max_rel_err']:.1e} (limit "
            f"{MAX_REL_ERR:.0e}): {'OK' if r['ok'] else 'FAILED'}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"xcache demo (Python): {r['workload']}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append(f"Looping {r['iters']} times took {r['loop_s']:.6f} seconds")
    head = ", ".join(repr(float(f"{v:.8g}")) for v in r["result_head"])
    lines.append(f"Result is [{head}]...")
    lines.append(f"Used the {r['used']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m xcache demo",
        description="check1 through the Python package, with numpy's loop beside it",
    )
    ap.add_argument("--iters", type=int, default=1000, help="how many times to run the kernel")
    ap.add_argument("--json", action="store_true", help="print a JSON object")
    args = ap.parse_args(argv)
    r = run(args.iters)
    print(json.dumps(r, indent=2) if args.json else report(r))
    return 0 if r["ok"] else 1
