"""The CUDA templates from Python, with CuPy and PyTorch arrays through
__cuda_array_interface__. Runs where a GPU, nvcc and CuPy (or PyTorch) are; skipped,
with the reason, elsewhere."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xcache

cp: Any = pytest.importorskip("cupy", reason="CuPy is not installed (GPU tests)")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:  # pragma: no cover - depends on the host
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception as e:  # pragma: no cover - no driver
    pytest.skip(f"no usable CUDA device: {e}", allow_module_level=True)


def test_elemwise_on_cupy_arrays(cache: xcache.Cache) -> None:
    f = cache.elemwise("a*exp(b)+c", 3, dtype="float32", device="cuda")
    assert f.device == "cuda"
    rng = np.random.default_rng(0)
    a, b, c = (cp.asarray(rng.random((1000, 37), dtype=np.float32)) for _ in range(3))
    out = cp.empty_like(a)
    assert f(a, b, c, out=out) is out
    cp.cuda.Stream.null.synchronize()
    np.testing.assert_allclose(cp.asnumpy(out), cp.asnumpy(a * cp.exp(b) + c), rtol=2e-6)
    r = f(a, b, c)  # allocated with CuPy
    assert isinstance(r, cp.ndarray) and r.shape == a.shape
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        f(cp.asnumpy(a), b, c)
    with pytest.raises(TypeError, match="float64"):
        f(a.astype(cp.float64), b, c, out=out)


def test_elemwise_on_a_stream(cache: xcache.Cache) -> None:
    f = cache.elemwise("a+1", 1, dtype="float64", device="cuda")
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        x = cp.arange(1 << 20, dtype=cp.float64)
        y = cp.empty_like(x)
    f(x, out=y, stream=s.ptr)
    s.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(y), np.arange(1 << 20) + 1.0)


def test_reduce_and_gemm_on_cupy_arrays(cache: xcache.Cache) -> None:
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.standard_normal((300, 513)))
    for axis in (0, 1):
        r = cache.reduce("sum", "x*x", axis=axis, dtype="float64", device="cuda")
        got = r(x)
        np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy((x * x).sum(axis=axis)), rtol=1e-10)
    g = cache.gemm(dtype="float32", relu=True, device="cuda")
    a = cp.asarray(rng.standard_normal((128, 64)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((64, 96)).astype(np.float32))
    bias = cp.asarray(rng.standard_normal(96).astype(np.float32))
    out = g(a, b, bias=bias)
    want = np.maximum(cp.asnumpy(a) @ cp.asnumpy(b) + cp.asnumpy(bias), 0)
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=1e-4, atol=1e-4)


def test_torch_tensors(cache: xcache.Cache) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():  # pragma: no cover
        pytest.skip("PyTorch sees no GPU")
    f = cache.elemwise("a*b", 2, dtype="float32", device="cuda")
    a = torch.arange(64, dtype=torch.float32, device="cuda")
    out = torch.empty_like(a)
    f(a, a, out=out)
    torch.cuda.synchronize()
    assert torch.equal(out, a * a)
