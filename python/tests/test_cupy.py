"""CuPy's kernel binaries through xcache (``xcache.integrations.cupy.install()``).

The GPU test drives the real CuPy (14.1 or later) and NVRTC: a kernel compiled in one
process comes from xcache in the next, whose CUPY_CACHE_DIR is empty. Where CuPy or a
GPU is missing it is skipped; the hook's contract (``load``/``save``) and the error on a
CuPy without the hook are checked here against stand-ins for ``cupy.cuda.compiler``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

import xcache
from xcache.integrations import cupy as xc


def _fake_cupy(monkeypatch: pytest.MonkeyPatch, version: str, hook: bool) -> types.ModuleType:
    """Stand-ins for ``cupy`` and ``cupy.cuda.compiler`` (with CuPy 14.1's hook, or
    without it as before)."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = version  # type: ignore[attr-defined]
    cuda = types.ModuleType("cupy.cuda")
    compiler = types.ModuleType("cupy.cuda.compiler")
    compiler._kernel_cache_backend = "cupy's disk backend"  # type: ignore[attr-defined]
    if hook:

        def _set_kernel_cache_backend(backend: Any) -> None:
            compiler._kernel_cache_backend = backend  # type: ignore[attr-defined]

        compiler._set_kernel_cache_backend = _set_kernel_cache_backend  # type: ignore[attr-defined]
    cuda.compiler = compiler  # type: ignore[attr-defined]
    cupy.cuda = cuda  # type: ignore[attr-defined]
    for name, mod in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.compiler", compiler)):
        monkeypatch.setitem(sys.modules, name, mod)
    return compiler


def test_a_cupy_without_the_hook_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_cupy(monkeypatch, "13.6.0", hook=False)
    with pytest.raises(RuntimeError, match=r"CuPy 13\.6\.0 has no kernel cache backend hook"):
        xc.install()
    assert not xc.installed()


def test_without_cupy_install_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(RuntimeError, match="CuPy is not importable"):
        xc.install()


def test_the_backend_keeps_cupys_binaries_and_gives_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiler = _fake_cupy(monkeypatch, "14.2.0", hook=True)
    cache = xc.install()
    try:
        assert "cupy-14.2.0" in str(cache.compiledir)
        backend = compiler._kernel_cache_backend
        assert isinstance(backend, xc.KernelCacheBackend)
        name = "0123456789abcdef0123456789abcdef01234567.cubin"
        assert backend.load(name) is None
        src = 'extern "C" __global__ void double_it(const float* x, float* y) {}'
        backend.save(name, b"\x7fELF cubin", src)
        assert backend.load(name) == b"\x7fELF cubin"
        # Another process (another Cache on the base dir) finds it too.
        other = xcache.Cache(runtime_tag="cupy-14.2.0")
        assert xc.KernelCacheBackend(other).load(name) == b"\x7fELF cubin"
        (entry,) = other.list()
        assert (entry.source, entry.language) == ("double_it", "cupy")
        # Saved twice (two processes raced): the first one stays.
        backend.save(name, b"\x7fELF other", src)
        assert backend.load(name) == b"\x7fELF cubin"
        # Another CuPy version has a compiledir of its own.
        assert xc.KernelCacheBackend(xcache.Cache(runtime_tag="cupy-14.3.0")).load(name) is None
    finally:
        xc.uninstall()
    assert compiler._kernel_cache_backend == "cupy's disk backend"
    assert not xc.installed()


def test_the_source_is_kept_when_cupy_would_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPY_CACHE_SAVE_CUDA_SOURCE", "1")
    backend = xc.KernelCacheBackend(xcache.Cache(runtime_tag="cupy-14.2.0"))
    backend.save("ab.cubin", b"bin", "__global__ void k() {}")
    g = backend.cache.get_group("cupy", "ab.cubin")
    assert g is not None and g.read("ab.cubin.cu") == b"__global__ void k() {}"


WORKER = """
import json, sys
import numpy as np
import cupy as cp
import xcache.integrations.cupy as xc

xc.install()
backend = cp.cuda.compiler._kernel_cache_backend
calls = []
load, save = backend.load, backend.save


def logged_load(name):
    got = load(name)
    calls.append(("load", name, got is not None))
    return got


def logged_save(name, binary, source):
    calls.append(("save", name, True))
    save(name, binary, source)


backend.load, backend.save = logged_load, logged_save
k = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * y + 1.5f",
                         "xcache_test_fma")
x = np.arange(1000, dtype=np.float32)
y = np.linspace(0, 1, 1000, dtype=np.float32)
z = k(cp.asarray(x), cp.asarray(y))
# The GPU fuses x * y + 1.5f into one FMA (one rounding); numpy rounds twice.
exact = x.astype(np.float64) * y + 1.5
assert np.allclose(cp.asnumpy(z), exact, rtol=2e-7, atol=0), abs(cp.asnumpy(z) - exact).max()
print(json.dumps(calls))
"""


def _gpu_cupy() -> Optional[str]:
    try:
        import cupy

        if not hasattr(cupy.cuda.compiler, "_set_kernel_cache_backend"):
            return f"CuPy {cupy.__version__} has no kernel cache backend hook (14.1+)"
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU here"
    except ImportError:
        return "CuPy is not installed"
    except Exception as e:  # no driver, no device
        return f"no CUDA GPU here ({type(e).__name__})"
    return None


@pytest.mark.skipif(_gpu_cupy() is not None, reason=f"GPU test: {_gpu_cupy()}")
def test_gpu_a_second_process_gets_the_kernel_from_xcache(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)

    def run(cupy_dir: Path) -> Any:
        cupy_dir.mkdir()
        env: Dict[str, str] = {
            **os.environ,
            "XCACHE_DIR": str(tmp_path / "xcache"),
            "CUPY_CACHE_DIR": str(cupy_dir),
        }
        p = subprocess.run(
            [sys.executable, str(tmp_path / "worker.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    first = run(tmp_path / "cupy-1")
    # The kernel (and any CuPy compiled for itself) missed, then was saved.
    assert ["load", first[0][1], False] in first and any(c[0] == "save" for c in first)
    second = run(tmp_path / "cupy-2")
    assert second and all(c[0] == "load" and c[2] for c in second), second
    assert {c[1] for c in second} <= {c[1] for c in first}
    assert list((tmp_path / "cupy-1").iterdir()) == []
    assert list((tmp_path / "cupy-2").iterdir()) == []
