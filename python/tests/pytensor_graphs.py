"""PyTensor graphs compiled through C thunks, for the adapter's tests and benchmark.

Run as a script: ``python pytensor_graphs.py OUT.npz GRAPH... [--adapter]`` compiles
each graph with ``mode="CVM"`` (every node a C thunk; with ``XC_GRAPHS_MODE=default``,
PyTensor's default mode, its Numba backend), runs it on fixed inputs, and saves the
outputs to OUT.npz; it prints a JSON line with each graph's ``pytensor.function()``
time, the adapter's counters and, in the default mode, how many functions Numba
compiled.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

Graph = Tuple[Callable[[], Any], Callable[[Any], List[Any]]]


def mode() -> Any:
    """CVM (every node a C thunk); with XC_GRAPHS_MODE=default, PyTensor's default mode
    (its Numba backend); with XC_BENCH_PY_LINKER=1, the same rewrites with PyTensor's
    Python linker (nothing compiled: the benchmark's floor)."""
    import os

    if os.environ.get("XC_BENCH_PY_LINKER") == "1":
        from pytensor.compile.mode import Mode

        return Mode(linker="py", optimizer="fast_run")
    if os.environ.get("XC_GRAPHS_MODE") == "default":
        return None
    return "CVM"


def count_numba_compiles() -> Dict[str, int]:
    """Counts every function Numba compiles in this process from now on (a cache hit
    compiles nothing)."""
    from numba.core import event

    counts = {"compiles": 0}

    class Listener(event.Listener):  # type: ignore[misc]
        def on_start(self, ev: Any) -> None:
            counts["compiles"] += 1

        def on_end(self, ev: Any) -> None:
            pass

    event.register("numba:compile", Listener())
    return counts


def elemwise() -> Graph:
    import pytensor
    import pytensor.tensor as pt

    x, y, z = pt.matrices("x", "y", "z")
    out = pt.exp(x) * pt.tanh(y) + pt.sqrt(pt.abs(z)) / (1 + x * x)

    def build() -> Any:
        return pytensor.function([x, y, z], out, mode=mode())

    rng = np.random.default_rng(1)
    args = [rng.standard_normal((64, 33)).astype(pytensor.config.floatX) for _ in range(3)]
    return build, lambda f: [f(*args)]


def reductions() -> Graph:
    import pytensor
    import pytensor.tensor as pt

    x = pt.matrix("x")
    outs = [x.sum(axis=0), x.max(axis=1), pt.mean(x * x), pt.argmax(x, axis=1), pt.prod(x, axis=0)]

    def build() -> Any:
        return pytensor.function([x], outs, mode=mode())

    rng = np.random.default_rng(2)
    arg = rng.standard_normal((50, 20)).astype(pytensor.config.floatX)
    return build, lambda f: list(f(arg))


def mlp_grad() -> Graph:
    import pytensor
    import pytensor.tensor as pt

    rng = np.random.default_rng(3)
    fx = pytensor.config.floatX
    X = pt.matrix("X")
    Y = pt.matrix("Y")  # one-hot targets
    W1 = pytensor.shared(rng.standard_normal((20, 16)).astype(fx) * 0.1, name="W1")
    b1 = pytensor.shared(np.zeros(16, fx), name="b1")
    W2 = pytensor.shared(rng.standard_normal((16, 5)).astype(fx) * 0.1, name="W2")
    b2 = pytensor.shared(np.zeros(5, fx), name="b2")
    h = pt.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    # log-softmax written out: PyTensor's Softmax ops have no C code (they would run
    # through another backend), and every node here should be a C thunk.
    z = z - z.max(axis=1, keepdims=True)
    logp = z - pt.log(pt.exp(z).sum(axis=1, keepdims=True))
    loss = -pt.mean(pt.sum(Y * logp, axis=1))
    grads = pytensor.grad(loss, [W1, b1, W2, b2])

    def build() -> Any:
        return pytensor.function([X, Y], [loss, *grads], mode=mode())

    xs = rng.standard_normal((32, 20)).astype(fx)
    ys = np.eye(5, dtype=fx)[rng.integers(0, 5, size=32)]
    return build, lambda f: list(f(xs, ys))


def _scale_op() -> Any:
    """The class of `own_header`'s op, made once, at module level (PyTensor keeps only
    keys it can pickle, and a class defined inside a function cannot be)."""
    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply
    from pytensor.link.c.op import COp

    class Scale(COp):  # type: ignore[misc]
        __props__ = ()

        def make_node(self, x: Any) -> Apply:
            x = pt.as_tensor_variable(x)
            return Apply(self, [x], [x.type()])

        def perform(self, node: Any, inputs: Any, outputs: Any) -> None:
            raise NotImplementedError("C only: XC_SCALE is in a header")

        def c_header_dirs(self, **kwargs: Any) -> List[str]:
            return [os.environ["XC_OWN_HEADER_DIR"]]

        def c_headers(self, **kwargs: Any) -> List[str]:
            return ["xc_scale.h"]

        def c_code_cache_version(self) -> Tuple[int, ...]:
            return () if os.environ.get("XC_OWN_UNVERSIONED") == "1" else (1,)

        def c_code(self, node: Any, name: str, inp: Any, out: Any, sub: Any) -> str:
            (x,), (z,), fail = inp, out, sub["fail"]
            return f"""
            Py_XDECREF({z});
            {z} = (PyArrayObject*)PyArray_NewCopy({x}, NPY_CORDER);
            if (!{z}) {{ {fail} }}
            {{
                npy_intp n = PyArray_SIZE({z});
                dtype_{z}* p = (dtype_{z}*)PyArray_DATA({z});
                for (npy_intp i = 0; i < n; ++i) p[i] *= XC_SCALE;
            }}
            """

    Scale.__qualname__ = "Scale"
    globals()["Scale"] = Scale
    return Scale


def own_header() -> Graph:
    """One C op of the test's own, whose code reads ``XC_SCALE`` from ``xc_scale.h`` in
    the directory ``XC_OWN_HEADER_DIR`` names: a header the test may edit between
    processes. Its C code is versioned unless ``XC_OWN_UNVERSIONED=1`` (then PyTensor's
    key for it is unversioned)."""
    import pytensor
    import pytensor.tensor as pt

    x = pt.vector("x")
    out = _scale_op()()(x)

    def build() -> Any:
        return pytensor.function([x], out, mode=mode())

    arg = np.arange(5).astype(pytensor.config.floatX)
    return build, lambda f: [f(arg)]


GRAPHS: Dict[str, Callable[[], Graph]] = {
    "elemwise": elemwise,
    "reductions": reductions,
    "mlp_grad": mlp_grad,
    "own_header": own_header,
}


def main(argv: List[str]) -> None:
    t0 = time.perf_counter()
    import pytensor  # noqa: F401

    import xcache.integrations.pytensor as xp

    if "--adapter" in argv:
        xp.install()
    numba = count_numba_compiles() if os.environ.get("XC_GRAPHS_MODE") == "default" else None
    import_s = time.perf_counter() - t0
    out_path, names = argv[0], [a for a in argv[1:] if not a.startswith("--")]
    saved: Dict[str, Any] = {}
    timings: Dict[str, float] = {}
    # The first call: where a JIT backend (Numba) compiles, or loads from its cache.
    first_call: Dict[str, float] = {}
    for name in names:
        build, run = GRAPHS[name]()
        t = time.perf_counter()
        f = build()
        timings[name] = time.perf_counter() - t
        nodes = f.maker.fgraph.toposort()
        saved[f"{name}__c_thunks"] = np.array(
            sum(1 for n in nodes if hasattr(n.op, "c_code")), dtype=np.int64
        )
        t = time.perf_counter()
        outputs = run(f)
        first_call[name] = time.perf_counter() - t
        for i, v in enumerate(outputs):
            saved[f"{name}__{i}"] = np.asarray(v)
    report = {
        "import_s": import_s,
        "function_s": timings,
        "first_call_s": first_call,
        "counters": xp.counters(),
    }
    if numba is not None:
        report["numba_compiles"] = numba["compiles"]
    np.savez(out_path, **saved)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
