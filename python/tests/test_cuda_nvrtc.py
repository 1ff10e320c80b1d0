"""The package's CUDA handles build with NVRTC, as Rust's do: a cubin for the arch asked
(no shared object, no nvcc), and the launch data xcache's launcher reads from the
template. `Cache.cuda_module` compiles user kernels the same way. Needs libnvrtc, not
a GPU (skipped, with the reason, where NVRTC is missing); the launches themselves are in
test_cuda.py, which runs where a GPU is."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Dict

import pytest
from conftest import run_python

import xcache


def cubin_arch(image: bytes) -> str:
    """The sm_XX an ELF cubin was built for (its e_flags, as cuobjdump reads them)."""
    assert image[:4] == b"\x7fELF" and image[4] == 2, image[:8]
    (machine,) = struct.unpack_from("<H", image, 18)
    assert machine == 190, machine  # EM_CUDA
    (flags,) = struct.unpack_from("<I", image, 48)
    sm = (flags >> 8) & 0xFF if image[8] >= 8 else flags & 0xFF
    return f"sm_{sm}"


def nvrtc_cache(base: Path, arch: str = "sm_90") -> xcache.Cache:
    return xcache.Cache(base_dir=base, flags={"cuda_arch": arch})


@pytest.fixture
def cache(tmp_path: Path) -> xcache.Cache:
    c = nvrtc_cache(tmp_path / "cache")
    try:
        c.cuda_module('extern "C" __global__ void probe(float *x) { x[0] = 1.0f; }')
    except xcache.Error as e:
        if e.kind == "no-compiler":
            pytest.skip(f"no libnvrtc here: {e}")
        raise
    return c


def shared_objects(base: Path) -> list[str]:
    return [str(p) for p in base.rglob("*.so")]


def test_template_handles_build_cubins_and_read_their_launch_data(
    cache: xcache.Cache, tmp_path: Path
) -> None:
    f = cache.elemwise("a*exp(b)+c", 3, dtype="float32", device="cuda")
    r0 = cache.reduce("sum", "x*x", axis=0, dtype="float64", device="cuda")
    r1 = cache.reduce("max", axis=1, dtype="float32", device="cuda")
    g = cache.gemm(dtype="float32", relu=True, device="cuda")
    for h, kernels in [
        (f, {"xc_vector", "xc_scalar"}),
        (r0, {"xc_cols_finish"}),
        (r1, {"xc_rows_finish"}),
        (g, {"xc_gemm_c0_v"}),
    ]:
        m = h.library
        assert isinstance(m, xcache.CudaModule), m
        assert (m.kind, m.arch) == ("cubin", "sm_90")
        assert Path(m.path).is_file() and m.path.startswith(str(tmp_path / "cache"))
        assert cubin_arch(m.image()) == "sm_90"
        assert Path(m.path).read_bytes() == m.image()
        assert kernels <= set(m.kernel_names), m.kernel_names
        assert not m.hit
    assert f.device == "cuda"
    data: Dict[str, Any] = f.launch_data or {}
    assert data["template"] == "cuda/elemwise"
    assert data["lanes"] == 4 and data["threads"] > 0 and data["blocks_per_sm"] > 0
    assert (r0.launch_data or {})["axis"] == 0 and (r1.launch_data or {})["axis"] == 1
    gd = g.launch_data or {}
    assert gd["configs"] and not gd["tensor_cores"] and len(gd["pick"]) == 6
    # No shared object and no nvcc: the base dir holds cubins only.
    assert shared_objects(tmp_path / "cache") == []

    # The same handle again is served from memory; a fresh process finds the cubins.
    assert cache.elemwise("a*exp(b)+c", 3, dtype="float32", device="cuda").library.hit
    out = run_python(
        "import xcache\n"
        f"c = xcache.Cache(base_dir={str(tmp_path / 'cache')!r}, flags={{'cuda_arch': 'sm_90'}})\n"
        "m = c.elemwise('a*exp(b)+c', 3, dtype='float32', device='cuda').library\n"
        "print(m.hit, m.key)\n",
        {},
    )
    assert out.split() == ["True", f.library.key]


def test_a_cpu_handle_and_an_nvcc_handle_have_no_launch_data(
    cache: xcache.Cache, tmp_path: Path
) -> None:
    assert cache.elemwise("a+1", 1).launch_data is None
    assert isinstance(cache.elemwise("a+1", 1).library, xcache.Library)


def test_the_arch_is_in_the_key_and_ptx_for_a_virtual_arch(tmp_path: Path) -> None:
    try:
        m90 = nvrtc_cache(tmp_path / "c", "sm_90").elemwise("a+1", 1, device="cuda").library
    except xcache.Error as e:
        if e.kind == "no-compiler":
            pytest.skip(f"no libnvrtc here: {e}")
        raise
    assert cubin_arch(m90.image()) == "sm_90"
    try:
        m80 = nvrtc_cache(tmp_path / "c", "sm_80").elemwise("a+1", 1, device="cuda").library
    except xcache.Error as e:
        # Where a GPU is, the handle is loaded at once; an sm_90 GPU does not run an
        # sm_80 cubin, and the error says which arch to ask for instead.
        assert os.path.exists("/dev/nvidiactl") and e.kind == "cuda", e
        assert "built for sm_80" in str(e) and "cuda_arch=sm_" in str(e), e
    else:
        assert m80.key != m90.key and cubin_arch(m80.image()) == "sm_80"
    ptx = nvrtc_cache(tmp_path / "c", "compute_80").elemwise("a+1", 1, device="cuda").library
    assert ptx.kind == "ptx" and b".entry xc_scalar" in ptx.image()
    assert {"xc_vector", "xc_scalar"} <= set(ptx.kernel_names)


def test_cuda_module_compiles_user_kernels(cache: xcache.Cache, tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "scale.cuh").write_text("#define SCALE 3.0f\n")
    src = (
        '#include "scale.cuh"\n'
        'extern "C" __global__ void axpy(int n, float a, const float *x, float *y) {\n'
        "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "  if (i < n) y[i] = a * SCALE * x[i] + y[i] + OFFSET;\n"
        "}\n"
    )
    m = cache.cuda_module(src, options=["-DOFFSET=1.0f"], include_dirs=[inc], name="axpy.cu")
    assert (m.kind, m.arch, m.hit) == ("cubin", "sm_90", False)
    assert "axpy" in m.kernel_names
    assert cubin_arch(m.image()) == "sm_90"

    def fresh() -> xcache.CudaModule:
        c = xcache.Cache(base_dir=tmp_path / "cache", flags={"cuda_arch": "sm_90"})
        return c.cuda_module(src, options=["-DOFFSET=1.0f"], include_dirs=[inc], name="axpy.cu")

    recorded_key = m.key
    if m.unrecorded:
        # The header was written in the file clock's tick of the compile: the result was
        # handed out but not recorded (a private build), so the next request compiles
        # and records it.
        assert m.unrecorded.endswith("scale.cuh"), m.unrecorded
        recorded = fresh()
        assert not recorded.hit and recorded.unrecorded is None
        recorded_key = recorded.key
    again = fresh()
    assert again.hit and again.key == recorded_key
    # An edited header is a miss (for a new Cache: one Cache serves what it loaded from
    # memory, as Python's import does); other options are another key.
    (inc / "scale.cuh").write_text("#define SCALE 4.0f\n")
    edited = fresh()
    assert not edited.hit and edited.key not in (m.key, recorded_key)
    other = cache.cuda_module(src, options=["-DOFFSET=2.0f"], include_dirs=[inc], name="axpy.cu")
    assert other.key not in (m.key, edited.key)
    # Headers given in memory.
    mem = cache.cuda_module(src, options=["-DOFFSET=0"], headers={"scale.cuh": "#define SCALE 1\n"})
    assert "axpy" in mem.kernel_names

    # A compile error carries NVRTC's log with the user's names, and publishes nothing.
    with pytest.raises(xcache.CompileError) as ei:
        cache.cuda_module('extern "C" __global__ void k() { undefined_thing; }', name="bad.cu")
    assert "undefined_thing" in ei.value.output and "bad.cu" in ei.value.output


def test_without_a_gpu_a_launch_says_so(cache: xcache.Cache) -> None:
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU: test_cuda.py launches")
    f = cache.elemwise("a+1", 1, device="cuda")

    class FakeGpuArray:
        __cuda_array_interface__: ClassVar[Dict[str, Any]] = {
            "shape": (4,),
            "typestr": "<f4",
            "data": (1 << 40, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }

    x = FakeGpuArray()
    with pytest.raises(xcache.Error) as ei:
        f(x, out=x)
    assert ei.value.kind == "cuda" and "GPU" in str(ei.value), ei.value
    m = cache.cuda_module('extern "C" __global__ void k(float *x) { x[0] = 2.0f; }')
    with pytest.raises(xcache.Error, match="GPU"):
        m.get_function("k")


def test_the_nvrtc_wheel_of_the_running_python_is_found_without_python3_on_path(
    tmp_path: Path,
) -> None:
    """An interpreter from a venv that is not activated (no `python3` of its own on
    PATH, no CUDA_HOME) still finds the NVRTC wheel installed in it: the package tells
    xcache where its `nvidia` package lies, and no python3 is started to ask."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("this Python has no nvidia-cuda-nvrtc wheel (.ci/run installs it)")
    wheel_dirs = [Path(d).resolve() for d in nvidia.__path__]
    if not any(
        (d / sub / "lib").glob("libnvrtc.so*") for d in wheel_dirs for sub in ("cu13", "cu12")
    ):
        pytest.skip("this Python's nvidia package has no libnvrtc (pip install nvidia-cuda-nvrtc)")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "PATH", "XCACHE_FLAGS")
    }
    env["PATH"] = str(empty)  # no python3, no nvcc
    base = tmp_path / "c"
    code = (
        "import xcache\n"
        f"c = xcache.Cache(base_dir={str(base)!r}, flags={{'cuda_arch': 'sm_90'}})\n"
        "m = c.cuda_module('extern \"C\" __global__ void k(float *x) { x[0] = 2.0f; }')\n"
        "print(m.kind, m.arch)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["cubin", "sm_90"]
    (record,) = base.glob("compiledir_*/toolchains/nvrtc-*.json")
    tool = json.loads(record.read_text())["tool"]
    assert tool["how"] == "pip wheel", tool
    assert any(Path(tool["library"]).resolve().is_relative_to(d) for d in wheel_dirs), tool
