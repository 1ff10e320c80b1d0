"""Runs the functions of numba_funcs.py in a fresh process, for the Numba adapter's
tests and benchmark.

``python numba_run.py MODULE_DIR OUT.npz NAME... [--adapter]`` imports ``numba_funcs``
from MODULE_DIR (after ``xcache.integrations.numba.install()`` with ``--adapter``),
calls each function named on fixed inputs, saves the results to OUT.npz, and prints
a JSON line: per function its first call's time (compile or cache load included) and
its dispatcher's cache hits and misses; the time to import numba and the module.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, List


def main(argv: List[str]) -> None:
    t0 = time.perf_counter()
    import numpy as np

    if "--adapter" in argv:
        import xcache.integrations.numba as xn

        xn.install()
    import numba  # noqa: F401

    module_dir, out_path = argv[0], argv[1]
    names = [a for a in argv[2:] if not a.startswith("--")]
    sys.path.insert(0, module_dir)
    import numba_funcs as m

    import_s = time.perf_counter() - t0
    a = np.linspace(-3.0, 7.0, 4001)
    calls: Dict[str, Any] = {
        "scalar": lambda: m.scalar(1.75),
        "array_loop": lambda: m.array_loop(a),
        "parallel": lambda: m.parallel(a),
        "caller": lambda: m.caller(a),
    }
    saved: Dict[str, Any] = {}
    first_call: Dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        saved[name] = np.asarray(calls[name]())
        first_call[name] = time.perf_counter() - t
    stats = {}
    for name in names:
        s = getattr(m, name).stats
        stats[name] = {
            "hits": sum(s.cache_hits.values()),
            "misses": sum(s.cache_misses.values()),
            "cache_path": s.cache_path,
        }
    np.savez(out_path, **saved)
    print(json.dumps({"import_s": import_s, "first_call_s": first_call, "stats": stats}))


if __name__ == "__main__":
    main(sys.argv[1:])
