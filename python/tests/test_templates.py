"""The templates from Python against numpy references."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python

import xcache

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elemwise_matches_numpy(cache: xcache.Cache, dtype: str) -> None:
    f = cache.elemwise("a*exp(b)+c", 3, dtype=dtype)
    assert f.arity == 3 and f.dtype == dtype and f.device == "cpu"
    a, b, c = (RNG.random((7, 33)).astype(dtype) for _ in range(3))
    out = np.empty_like(a)
    r = f(a, b, c, out=out)
    assert r is out
    np.testing.assert_allclose(out, a * np.exp(b) + c, rtol=1e-6 if dtype == "float32" else 1e-14)
    # Without out=, a new array of the inputs' shape and dtype.
    r2 = f(a, b, c)
    assert r2.shape == a.shape and r2.dtype == a.dtype
    np.testing.assert_array_equal(r2, out)


def test_elemwise_integers_in_place_and_arity_from_expr(cache: xcache.Cache) -> None:
    f = cache.elemwise("a*b - 3", dtype="int64")
    assert f.arity == 2
    a = np.arange(10, dtype=np.int64)
    b = np.full(10, 4, dtype=np.int64)
    f(a, b, out=a)  # in place
    np.testing.assert_array_equal(a, np.arange(10) * 4 - 3)
    assert cache.elemwise("exp(a) + 1", dtype="float64").arity == 1  # not e of exp
    assert cache.elemwise("select(c, a, b)", dtype="float64").arity == 3
    g = cache.elemwise("where(a > 2, a, -a)", 1, dtype="int32")
    x = np.array([1, 2, 3, 4], dtype=np.int32)
    np.testing.assert_array_equal(g(x), [-1, -2, 3, 4])


def test_elemwise_checks_shapes_dtypes_and_layout(cache: xcache.Cache) -> None:
    f = cache.elemwise("a+b", 2, dtype="float32")
    a = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="takes 2 inputs, got 1"):
        f(a)
    with pytest.raises(TypeError, match="dtype float64"):
        f(a, np.ones(8))
    with pytest.raises(ValueError, match="does not broadcast"):
        f(a, np.ones(4, np.float32), out=np.empty(8, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        f(a, np.ones(16, np.float32)[::2])
    with pytest.raises(TypeError, match="writable"):
        ro = np.empty(8, np.float32)
        ro.setflags(write=False)
        f(a, a, out=ro)
    with pytest.raises(TypeError, match="buffer protocol"):
        f(a, [1.0] * 8)
    big = np.ones(9, np.float32)
    with pytest.raises(ValueError, match="partially overlaps"):
        f(big[:8], big[:8], out=big[1:])
    # Any buffer, not only numpy: array.array.
    import array

    x = array.array("f", [1.0, 2.0])
    y = array.array("f", [0.0, 0.0])
    f(x, x, out=y)
    assert list(y) == [2.0, 4.0]


@pytest.mark.parametrize("op", ["sum", "max", "min", "mean"])
@pytest.mark.parametrize("axis", [0, 1])
def test_reduce_matches_numpy(cache: xcache.Cache, op: str, axis: int) -> None:
    r = cache.reduce(op, "x*x", axis=axis, dtype="float64")
    assert r.axis == axis and r.dtype == "float64"
    x = RNG.standard_normal((37, 129))
    want = getattr(np.square(x), op)(axis=axis)
    np.testing.assert_allclose(r(x), want, rtol=1e-12)
    out = np.empty(want.shape)
    assert r(x, out=out) is out
    with pytest.raises(ValueError, match="out has shape"):
        r(x, out=np.empty(want.shape[0] + 1))
    with pytest.raises(ValueError, match="2-D"):
        r(np.ones(5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_matches_numpy(cache: xcache.Cache, dtype: str) -> None:
    g = cache.gemm(dtype=dtype)
    a = RNG.standard_normal((65, 47)).astype(dtype)
    b = RNG.standard_normal((47, 33)).astype(dtype)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(g(a, b), a @ b, rtol=tol, atol=tol)
    relu = cache.gemm(dtype=dtype, relu=True)
    bias = RNG.standard_normal(33).astype(dtype)
    out = np.empty((65, 33), dtype)
    assert relu(a, b, bias=bias, out=out) is out
    np.testing.assert_allclose(out, np.maximum(a @ b + bias, 0), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match=r"\(m, k\) by b \(k, n\)"):
        g(a, a)
    with pytest.raises(ValueError, match="overlaps"):
        sq = np.ones((4, 4), dtype)
        g(sq, np.ones((4, 4), dtype), out=sq)


def test_generic_templates_and_render(cache: xcache.Cache) -> None:
    src = cache.render("elemwise", {"dtype": "float64", "arity": 1, "expr": "a+1"})
    assert "xc_elemwise" in src
    lib = cache.template("gemm", {"dtype": "float64", "relu": False})
    assert lib.symbol("xc_gemm") != 0


def test_threads_share_kernels_and_release_the_gil(cache: xcache.Cache) -> None:
    f = cache.elemwise("sqrt(a)", 1, dtype="float64")
    x = RNG.random(1 << 17)
    outs = [np.empty_like(x) for _ in range(4)]
    errors: list = []

    def work(i: int) -> None:
        try:
            g = cache.elemwise("sqrt(a)", 1, dtype="float64")  # memory hit
            for _ in range(20):
                g(x, out=outs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for o in outs:
        np.testing.assert_array_equal(o, np.sqrt(x))
    assert f.library.key == cache.elemwise("sqrt(a)", 1, dtype="float64").library.key


def test_cuda_templates_need_a_gpu_array(cache: xcache.Cache) -> None:
    """Without CuPy/PyTorch arrays the CUDA variants refuse host arrays by name; where
    nvcc is missing they fail to compile with an error that says so."""
    try:
        f = cache.elemwise("a+1", 1, dtype="float32", device="cuda")
    except xcache.Error as e:
        assert e.kind in ("no-compiler", "compile", "cuda"), e
        pytest.skip(f"no usable nvcc here: {e.kind}")
    assert f.device == "cuda"
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        f(np.ones(4, np.float32))


def test_a_fresh_process_reads_the_rendered_source_back_never_a_stale_or_damaged_one(
    tmp_path: Path,
) -> None:
    """What a process rendered is kept in the compiledir (toolchains/render-*.json) and
    read back by the next; an edited template (template_path) renders again, and a
    damaged memo is not used."""
    # The shipped template's text (the repository's copy is what is embedded).
    text = (Path(__file__).resolve().parents[2] / "templates" / "c" / "elemwise.c").read_text()
    tpl = tmp_path / "tpl" / "c" / "elemwise.c"
    tpl.parent.mkdir(parents=True)
    tpl.write_text(text)
    base = tmp_path / "cache"
    code = (
        "import xcache\n"
        f"flags = {{'template_path': {str(tpl.parent.parent)!r}}}\n"
        f"c = xcache.Cache(base_dir={str(base)!r}, flags=flags)\n"
        "print(c.render('c/elemwise', {'dtype': 'float32', 'arity': 1, 'expr': 'a+1'}))\n"
    )
    first = run_python(code, {})
    (memo,) = base.glob("compiledir_*/toolchains/render-*.json")
    assert run_python(code, {}) == first
    memo.write_text('{"format": 1, "source": "int x;"}')
    assert run_python(code, {}) == first
    tpl.write_text(text + "\n/* edited */\n")
    edited = run_python(code, {})
    assert "/* edited */" in edited and "/* edited */" not in first
    assert len(list(base.glob("compiledir_*/toolchains/render-*.json"))) == 2
