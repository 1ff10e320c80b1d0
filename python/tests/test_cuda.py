"""The CUDA templates from Python, with CuPy and PyTorch arrays through
__cuda_array_interface__. Runs where a GPU, nvcc and CuPy (or PyTorch) are; skipped,
with the reason, elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_python

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


def test_handles_are_built_by_nvrtc_and_launch_on_cupys_current_stream(
    cache: xcache.Cache,
) -> None:
    """CuPy's current stream (named by the arrays' interface) is the one launched on: a
    non-blocking stream does not wait for the legacy default stream, so a launch there
    would race the check below."""
    f = cache.elemwise("a*exp(b)+c", 3, dtype="float32", device="cuda")
    assert isinstance(f.library, xcache.CudaModule) and f.library.kind == "cubin"
    rng = np.random.default_rng(2)
    host = [rng.standard_normal(1 << 22).astype(np.float32) for _ in range(3)]
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        a, b, c = (cp.asarray(h) for h in host)
        out = cp.empty_like(a)
        for _ in range(4):
            f(a, b, c, out=out)
        got = cp.asnumpy(out, stream=s)
    s.synchronize()
    want = host[0].astype(np.float64) * np.exp(host[1].astype(np.float64)) + host[2]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    # An explicit stream object, and reductions and a GEMM on it.
    r = cache.reduce("sum", "x*x", axis=0, dtype="float64", device="cuda")
    x = cp.asarray(rng.standard_normal((4097, 33)))
    y = r(x, stream=s)
    s.synchronize()
    np.testing.assert_allclose(cp.asnumpy(y), (cp.asnumpy(x) ** 2).sum(axis=0), rtol=1e-12)
    g = cache.gemm(dtype="float64", device="cuda")
    a64 = cp.asarray(rng.standard_normal((70, 50)))
    b64 = cp.asarray(rng.standard_normal((50, 90)))
    with s:
        o = g(a64, b64)
        got = cp.asnumpy(o, stream=s)
    s.synchronize()
    np.testing.assert_allclose(got, cp.asnumpy(a64) @ cp.asnumpy(b64), rtol=1e-12, atol=1e-12)


def test_torch_tensors_on_a_torch_stream(cache: xcache.Cache) -> None:
    """A torch tensor's interface names no stream: torch's current stream is used."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():  # pragma: no cover
        pytest.skip("PyTorch sees no GPU")
    f = cache.elemwise("a*b+1", 2, dtype="float64", device="cuda")
    r = cache.reduce("max", axis=1, dtype="float32", device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        a = torch.linspace(-3, 3, 1 << 20, dtype=torch.float64, device="cuda")
        out = torch.empty_like(a)
        f(a, a, out=out)
        m = torch.randn(513, 1000, device="cuda")
        mx = r(m, out=torch.empty(513, device="cuda"))
    s.synchronize()
    ref = a.cpu().numpy()
    np.testing.assert_allclose(out.cpu().numpy(), ref * ref + 1, rtol=1e-15)
    np.testing.assert_array_equal(mx.cpu().numpy(), m.cpu().numpy().max(axis=1))


def test_a_user_kernel_through_cuda_module(cache: xcache.Cache) -> None:
    src = r"""
    extern "C" __global__ void saxpy(long long n, float a, const float *x, float *y,
                                     double off) {
      long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
      if (i < n) y[i] = a * x[i] + y[i] + (float)off;
    }
    """
    m = cache.cuda_module(src, name="saxpy.cu")
    assert m.kind == "cubin" and "saxpy" in m.kernel_names
    k = m.get_function("saxpy")
    n = 1_000_003
    rng = np.random.default_rng(3)
    xh = rng.standard_normal(n).astype(np.float32)
    yh = rng.standard_normal(n).astype(np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        x, y = cp.asarray(xh), cp.asarray(yh)
        k(((n + 255) // 256,), (256,), (n, np.float32(2.5), x, y, 0.25))
        got = cp.asnumpy(y, stream=s)
    s.synchronize()
    want = 2.5 * xh.astype(np.float64) + yh + 0.25
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(xcache.Error):
        m.get_function("nothere")
    with pytest.raises(TypeError, match="argument 1"):
        k((1,), (1,), (n, "2.5", x, y, 0.0))
    # A second Cache on the same base dir is a hit; so is a fresh process.
    again = xcache.Cache(base_dir=cache.base_dir).cuda_module(src, name="saxpy.cu")
    assert again.hit and again.key == m.key


def test_a_warm_cache_made_without_a_gpu_serves_a_fresh_process(
    cache: xcache.Cache, tmp_path: Path
) -> None:
    """`xcache warm --arch sm_XX` in a process that sees no GPU (as a CI machine) makes
    the cubins that a fresh process on the GPU then loads: it compiles nothing."""
    arch = f"sm_{cp.cuda.Device().compute_capability}"  # "90" on an H100
    manifest = tmp_path / "warm.json"
    manifest.write_text(
        json.dumps(
            {
                "requests": [
                    {
                        "template": "cuda/elemwise",
                        "params": {"dtype": "float32", "arity": "3", "expr": "a*exp(b)+c"},
                    },
                    {
                        "template": "cuda/reduce",
                        "params": {"dtype": "float64", "op": "sum", "pre": "x*x", "axis": "0"},
                    },
                    {"template": "cuda/gemm", "params": {"dtype": "float32", "relu": "true"}},
                ]
            }
        )
    )
    env = {**os.environ, "XCACHE_DIR": str(cache.base_dir), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(
        [sys.executable, "-m", "xcache", "warm", str(manifest), "--arch", arch, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["compiled"] == 3, p.stdout
    out = run_python(
        "import json, numpy as np, cupy as cp, xcache\n"
        f"c = xcache.Cache(base_dir={str(cache.base_dir)!r})\n"
        "def compiles():\n"
        "    return sum(s.compiles + s.misses for s in c.stats() if s.current)\n"
        "before = compiles()\n"
        "f = c.elemwise('a*exp(b)+c', 3, dtype='float32', device='cuda')\n"
        "r = c.reduce('sum', 'x*x', axis=0, dtype='float64', device='cuda')\n"
        "g = c.gemm(dtype='float32', relu=True, device='cuda')\n"
        "x = cp.linspace(-1, 1, 3000, dtype=cp.float32)\n"
        "e = cp.asnumpy(f(x, x, x)).astype(np.float64)\n"
        "xh = cp.asnumpy(x).astype(np.float64)\n"
        "assert np.allclose(e, xh * np.exp(xh) + xh, rtol=2e-6, atol=1e-6)\n"
        "m = cp.arange(12.0).reshape(4, 3)\n"
        "assert np.allclose(cp.asnumpy(r(m)), (cp.asnumpy(m) ** 2).sum(axis=0))\n"
        "a = cp.ones((8, 4), cp.float32); b = -cp.ones((4, 5), cp.float32)\n"
        "assert (cp.asnumpy(g(a, b)) == 0).all()\n"
        "print(json.dumps({'hits': [h.library.hit for h in (f, r, g)],"
        " 'compiles': compiles() - before}))\n",
        {},
    )
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"hits": [True, True, True], "compiles": 0}, out
