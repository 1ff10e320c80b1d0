#!/usr/bin/env python3
"""Every reduction shape of issue #24 through the Python package's CUDA handles (NVRTC
cubins, xcache's launcher), as a fraction of the device-to-device copy bandwidth
measured in the same run (`cupy.copyto` of the same bytes), with `cupy.sum` beside it.
Bandwidth counts the bytes read plus the bytes written. Median of CUDA-event timings
over enough back-to-back calls to take >= 2 ms.

Usage: python3 benches/reduce_shapes.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import cupy as cp
import numpy as np

import xcache

N = 1 << 28
SHAPES = [
    (4096, 65536),
    (65536, 4096),
    (1, N),
    (N, 1),
    (2, N // 2),
    (N // 2, 2),
]


def time_ms(fn, reps: int = 9) -> float:
    s, e = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(3):
        fn()
    s.record()
    fn()
    e.record()
    e.synchronize()
    one = max(cp.cuda.get_elapsed_time(s, e), 1e-3)
    inner = max(1, min(200, int(2.0 / one)))
    times = []
    for _ in range(reps):
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e) / inner)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    cache = xcache.Cache()
    x = cp.random.standard_normal(N, dtype=cp.float32)
    rows = []
    for shape in SHAPES:
        v = x.reshape(shape)
        for axis in (1, 0):
            r = cache.reduce("sum", axis=axis, dtype="float32", device="cuda")
            out = cp.empty(shape[0] if axis == 1 else shape[1], cp.float32)
            r(v, out=out)
            want = cp.asnumpy(v).astype(np.float64).sum(axis=axis)
            err = float(np.max(np.abs(cp.asnumpy(out) - want) / np.maximum(np.abs(want), 1.0)))
            bytes_moved = v.nbytes + out.nbytes
            copy_src = cp.empty(bytes_moved // 8, cp.float32)
            copy_dst = cp.empty_like(copy_src)
            t_copy = time_ms(lambda: cp.copyto(copy_dst, copy_src))  # noqa: B023
            t_x = time_ms(lambda: r(v, out=out))  # noqa: B023
            t_cp = time_ms(lambda: cp.sum(v, axis=axis, out=out))  # noqa: B023
            row = {
                "shape": list(shape),
                "axis": axis,
                "xcache_ms": t_x,
                "cupy_ms": t_cp,
                "copy_ms": t_copy,
                "of_copy": t_copy / t_x,
                "vs_cupy": t_cp / t_x,
                "max_rel_err": err,
            }
            rows.append(row)
            print(
                f"{shape[0]:>9}x{shape[1]:<9} axis={axis}: xcache {t_x:.3f} ms, "
                f"{row['of_copy'] * 100:.0f}% of copy ({t_copy:.3f} ms), "
                f"{row['vs_cupy']:.2f}x cupy.sum ({t_cp:.3f} ms), err {err:.1e}",
                flush=True,
            )
            del copy_src, copy_dst
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
