"""Triton's kernels through xcache (TRITON_CACHE_MANAGER=xcache.integrations.triton:
CacheManager), with the real Triton from PyPI compiling for GPUTarget("cuda", 90, 32)
and ("cuda", 80, 32) on this machine, which needs no GPU. Each process is a fresh
interpreter with its own, empty TRITON_CACHE_DIR; what a process compiled is told by
Triton itself (its compilation listener's cache_hit) and by counting ptxas runs
(CUDABackend.make_cubin)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import xcache

triton = pytest.importorskip("triton", reason="triton is not installed (.ci/run installs it)")

KERNELS = """
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    x = tl.load(in_ptr + row * stride + offs, mask=offs < n_cols, other=-float("inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(out_ptr + row * stride + offs, e / tl.sum(e, axis=0), mask=offs < n_cols)
"""

# Compiles the kernels named for the targets named (argv: a JSON request) and prints
# what it got: whether Triton's listener saw a cache hit, how often ptxas ran, the
# cubin's hash and SM, the group's files and where they are.
WORKER = """
import hashlib, json, os, sys, time
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
import kernels

req = json.loads(sys.argv[1])
ptxas_runs = []
make_cubin = CUDABackend.make_cubin
def counted(self, *a, **k):
    ptxas_runs.append(1)
    if req.get("die_in_ptxas"):
        os.kill(os.getpid(), 9)
    if req.get("barrier"):  # compile on only once every racer has asked for the kernel
        deadline = time.monotonic() + 120
        while len(os.listdir(req["barrier"])) < req["parties"] and time.monotonic() < deadline:
            time.sleep(0.01)
    return make_cubin(self, *a, **k)
CUDABackend.make_cubin = counted

seen = []
triton.knobs.compilation.listener = lambda **kw: seen.append(kw["cache_hit"])
SIGS = {
    "add_kernel": ({"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                    "BLOCK": "constexpr"}, {"BLOCK": 1024}),
    "softmax_kernel": ({"out_ptr": "*fp32", "in_ptr": "*fp32", "stride": "i32",
                        "n_cols": "i32", "BLOCK": "constexpr"}, {"BLOCK": 256}),
}
if req.get("barrier"):
    open(os.path.join(req["barrier"], str(os.getpid())), "w").close()
out = []
for name, arch in req["compile"]:
    sig, consts = SIGS[name]
    before = len(ptxas_runs)
    k = triton.compile(ASTSource(fn=getattr(kernels, name), signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", arch, 32))
    cubin = k.asm["cubin"]
    out.append({
        "name": name, "arch": arch, "hash": k.hash, "hit": seen[-1],
        "ptxas_runs": len(ptxas_runs) - before,
        "cubin_sha": hashlib.sha256(cubin).hexdigest(),
        "cubin_hex": cubin.hex(),
        "metadata_arch": k.metadata.target.arch,
        "files": sorted(k.metadata_group),
        "paths": sorted(k.metadata_group.values()),
        "paths_exist": all(os.path.exists(p) for p in k.metadata_group.values()),
    })
print(json.dumps(out))
"""


def _triton_compiles_for_cuda() -> Optional[str]:
    """Why Triton cannot compile for a CUDA target here, or None."""
    try:
        from triton.backends import backends

        if "nvidia" not in backends:
            return "Triton has no NVIDIA backend here"
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            get_ptxas(90)  # Triton 3.5 and later: by arch
        except TypeError:
            get_ptxas()
    except Exception as e:  # pragma: no cover - depends on the installed Triton
        return f"Triton cannot compile for CUDA here: {e}"
    return None


_why_not = _triton_compiles_for_cuda()
compiles = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


def cubin_sm(cubin: bytes) -> int:
    """The SM a CUDA ELF is for (e_flags: low byte before ELF ABI 8, next byte after)."""
    assert cubin[:4] == b"\x7fELF"
    flags = struct.unpack_from("<I", cubin, 0x30)[0]
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "kernels.py").write_text(KERNELS)
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


def _env(work: Path, base: Path, triton_dir: Path, **extra: str) -> Dict[str, str]:
    triton_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "XCACHE_DIR": str(base),
        "TRITON_CACHE_DIR": str(triton_dir),
        "TRITON_CACHE_MANAGER": "xcache.integrations.triton:CacheManager",
        "PYTHONPATH": str(work),
        # Triton 3.9 warns when this is unset; its value is part of Triton's key.
        "TRITON_DEFAULT_FP_FUSION": "1",
    }
    env.update(extra)
    return env


def _start(work: Path, env: Dict[str, str], compile: List[Any], **req: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(work / "worker.py"), json.dumps({"compile": compile, **req})],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen) -> List[Dict[str, Any]]:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return list(json.loads(out))


def _compile(work: Path, env: Dict[str, str], compile: List[Any]) -> List[Dict[str, Any]]:
    return _finish(_start(work, env, compile))


BOTH = [["add_kernel", 90], ["add_kernel", 80], ["softmax_kernel", 90]]


@compiles
def test_a_second_process_gets_byte_identical_cubins_without_compiling(work: Path) -> None:
    base = work / "xcache"
    first = _compile(work, _env(work, base, work / "triton-1"), BOTH)
    assert [(k["hit"], k["ptxas_runs"]) for k in first] == [(False, 1)] * 3
    second = _compile(work, _env(work, base, work / "triton-2"), BOTH)
    assert [(k["hit"], k["ptxas_runs"]) for k in second] == [(True, 0)] * 3
    for a, b in zip(first, second):
        assert a["hash"] == b["hash"]
        assert a["cubin_hex"] == b["cubin_hex"]
        assert cubin_sm(bytes.fromhex(b["cubin_hex"])) == b["arch"] == b["metadata_arch"]
        # The whole group, from the store: what CompiledKernel and later readers see.
        assert b["files"] == a["files"]
        assert {Path(f).suffix for f in b["files"]} >= {".cubin", ".ptx", ".json", ".ttgir"}
        assert b["paths_exist"] and all(p.startswith(str(base)) for p in a["paths"] + b["paths"])
    # Triton's own cache directory was never written.
    assert list((work / "triton-1").iterdir()) == []
    assert list((work / "triton-2").iterdir()) == []
    # xcache manages them: one group per kernel and target, producer triton.
    c = xcache.Cache(base_dir=base, runtime_tag=f"triton-{triton.__version__}")
    names = sorted(e.source for e in c.list())
    assert names == ["add_kernel", "add_kernel", "softmax_kernel"]
    assert all(e.language == "triton" for e in c.list())


@compiles
def test_an_sm80_kernel_is_never_served_for_sm90(work: Path) -> None:
    base = work / "xcache"
    (sm80,) = _compile(work, _env(work, base, work / "t1"), [["add_kernel", 80]])
    (sm90,) = _compile(work, _env(work, base, work / "t2"), [["add_kernel", 90]])
    # Triton's key holds the target (its backend's hash: ptxas version and arch), so
    # the sm_90 request is a miss although an sm_80 kernel of the same source is there.
    assert sm80["hash"] != sm90["hash"]
    assert (sm90["hit"], sm90["ptxas_runs"]) == (False, 1)
    assert cubin_sm(bytes.fromhex(sm80["cubin_hex"])) == 80
    assert cubin_sm(bytes.fromhex(sm90["cubin_hex"])) == 90
    # Both cached now; each target gets its own.
    got = _compile(work, _env(work, base, work / "t3"), [["add_kernel", 90], ["add_kernel", 80]])
    assert [(k["hit"], cubin_sm(bytes.fromhex(k["cubin_hex"]))) for k in got] == [
        (True, 90),
        (True, 80),
    ]


@compiles
def test_racing_processes_compile_once_and_see_whole_groups_only(work: Path) -> None:
    base = work / "xcache"
    barrier = work / "barrier"
    barrier.mkdir()
    procs = [
        _start(
            work,
            _env(work, base, work / f"t{i}"),
            [["softmax_kernel", 90]],
            barrier=str(barrier),
            parties=8,
        )
        for i in range(8)
    ]
    results = [_finish(p)[0] for p in procs]
    # One process compiled (it held the kernel's lease); the others waited, then hit.
    assert sorted(r["hit"] for r in results) == [False] + [True] * 7
    assert sum(r["ptxas_runs"] for r in results) == 1
    # Every process got the whole group, the same one.
    assert len({r["cubin_sha"] for r in results}) == 1
    assert len({tuple(r["files"]) for r in results}) == 1
    assert all(r["paths_exist"] for r in results)
    # The compiler went on only once all 8 had asked: the 7 waited for its lease.
    tag = f"triton-{triton.__version__}"
    stats = next(s for s in xcache.Cache(base_dir=base, runtime_tag=tag).stats() if s.current)
    assert (stats.compiles, stats.hits) == (1, 7), stats
    for i in range(8):
        assert list((work / f"t{i}").iterdir()) == []


@compiles
def test_a_process_killed_mid_compile_publishes_nothing(work: Path) -> None:
    """Killed in ptxas, after Triton put the IRs and PTX: no half group is ever
    visible, and the kernel's lease (a lock the kernel frees) does not hold up the
    next process."""
    base = work / "xcache"
    p = _start(work, _env(work, base, work / "t1"), [["add_kernel", 90]], die_in_ptxas=True)
    p.communicate(timeout=300)
    assert p.returncode == -9
    c = xcache.Cache(base_dir=base, runtime_tag=f"triton-{triton.__version__}")
    assert c.list() == []
    (k,) = _compile(work, _env(work, base, work / "t2"), [["add_kernel", 90]])
    assert (k["hit"], k["ptxas_runs"]) == (False, 1)
    assert len(k["files"]) >= 5 and k["paths_exist"]


@compiles
def test_a_corrupt_cubin_is_never_served_and_is_compiled_again(work: Path) -> None:
    base = work / "xcache"
    (first,) = _compile(work, _env(work, base, work / "t1"), [["add_kernel", 90]])
    (cubin,) = [p for p in first["paths"] if p.endswith(".cubin")]
    data = bytearray(Path(cubin).read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(cubin, 0o644)
    Path(cubin).write_bytes(bytes(data))
    (second,) = _compile(work, _env(work, base, work / "t2"), [["add_kernel", 90]])
    assert (second["hit"], second["ptxas_runs"]) == (False, 1)
    assert second["cubin_hex"] == first["cubin_hex"]
    (third,) = _compile(work, _env(work, base, work / "t3"), [["add_kernel", 90]])
    assert (third["hit"], third["cubin_hex"]) == (True, first["cubin_hex"])


@compiles
def test_always_compile_recompiles_and_keeps_the_published_kernel(work: Path) -> None:
    """TRITON_ALWAYS_COMPILE: Triton compiles although get_group found the kernel, then
    calls put_group; the kernel already published stays, and is what Triton reads."""
    base = work / "xcache"
    (first,) = _compile(work, _env(work, base, work / "t1"), [["add_kernel", 90]])
    env = _env(work, base, work / "t2", TRITON_ALWAYS_COMPILE="1")
    (again,) = _compile(work, env, [["add_kernel", 90]])
    assert (again["hit"], again["ptxas_runs"]) == (False, 1)
    assert again["paths"] == first["paths"] and again["paths_exist"]
    assert again["cubin_hex"] == first["cubin_hex"]
    assert list((work / "t2").iterdir()) == []


@compiles
def test_two_machines_share_kernels_through_redis(work: Path, redis_url: str) -> None:
    flags = f"remote={redis_url}"
    a, b = work / "a", work / "b"
    first = _compile(work, _env(work, a, work / "t1", XCACHE_FLAGS=flags), BOTH[:2])
    assert [k["hit"] for k in first] == [False, False]
    second = _compile(work, _env(work, b, work / "t2", XCACHE_FLAGS=flags), BOTH[:2])
    assert [(k["hit"], k["ptxas_runs"]) for k in second] == [(True, 0), (True, 0)]
    assert [k["cubin_hex"] for k in first] == [k["cubin_hex"] for k in second]
    assert all(p.startswith(str(b)) for k in second for p in k["paths"])
    tag = f"triton-{triton.__version__}"
    stats_b = next(s for s in xcache.Cache(base_dir=b, runtime_tag=tag).stats() if s.current)
    assert (stats_b.remote_hits, stats_b.compiles) == (2, 0), stats_b
    stats_a = next(s for s in xcache.Cache(base_dir=a, runtime_tag=tag).stats() if s.current)
    assert stats_a.remote_uploads == 2, stats_a
    assert list((work / "t1").iterdir()) == [] and list((work / "t2").iterdir()) == []


def test_files_put_on_their_own_and_files_of_a_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Triton's launcher build (runtime/build.py) and autotuner do: get_file, and
    on a miss put one file with no group. And get_file on a published kernel's file."""
    from xcache.integrations.triton import CacheManager

    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "xcache"))
    m = CacheManager("KEYONE")
    assert m.get_file("launcher.cpython.so") is None  # takes the file's lease
    path = m.put(b"\x7fELF launcher", "launcher.cpython.so")
    assert Path(path).read_bytes() == b"\x7fELF launcher"
    assert m.get_file("launcher.cpython.so") == path
    del m
    fresh = CacheManager("KEYONE")
    p = fresh.get_file("launcher.cpython.so")
    assert p is not None and Path(p).read_bytes() == b"\x7fELF launcher"
    assert CacheManager("KEYTWO").get_file("launcher.cpython.so") is None

    # A kernel's group: published whole by put_group, its dict pointed at the store.
    k = CacheManager("KEYK")
    assert k.get_group("k.json") is None
    group = {"k.cubin": k.put(b"cubin", "k.cubin"), "k.json": k.put("{}", "k.json", binary=False)}
    staged = dict(group)
    k.put_group("k.json", group)
    assert group != staged and all(Path(p).exists() for p in group.values())
    assert Path(group["k.cubin"]).read_bytes() == b"cubin"
    got = CacheManager("KEYK").get_group("k.json")
    assert got is not None and set(got) == {"k.cubin", "k.json"}
    p = CacheManager("KEYK").get_file("k.cubin")
    assert p is not None and Path(p).read_bytes() == b"cubin"


def test_a_lease_is_given_back_when_the_manager_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xcache.integrations.triton import CacheManager

    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "xcache"))
    m = CacheManager("KEYL")
    assert m.get_group("k.json") is None
    m.put(b"half", "k.ttir")
    del m  # Triton failed between get_group and put_group
    again = CacheManager("KEYL")
    assert again.get_group("k.json") is None  # no wait, and nothing half-published
    again.put_group("k.json", {"k.json": again.put("{}", "k.json")})
    assert set(CacheManager("KEYL").get_group("k.json") or {}) == {"k.json"}


def test_a_lingering_managers_lease_does_not_hold_up_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compile that failed leaves its manager alive in a traceback (IPython keeps the
    last one): asking again on the same thread takes the kernel over at once instead of
    waiting on itself; another thread still waits for a live lease (single flight)."""
    import threading

    from xcache.integrations.triton import CacheManager

    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "xcache"))
    monkeypatch.setenv("XCACHE_FLAGS", "lock_timeout=20s")
    lingering = CacheManager("KEYI")
    assert lingering.get_group("k.json") is None
    lingering.put(b"half", "k.ttir")
    retry = CacheManager("KEYI")
    assert retry.get_group("k.json") is None  # at once: the lingering lease was given up
    got: Dict[str, Any] = {}

    def other_thread() -> None:
        got["group"] = CacheManager("KEYI").get_group("k.json")

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # waits for retry's lease
    retry.put_group("k.json", {"k.json": retry.put("{}", "k.json")})
    t.join(20)
    assert set(got["group"]) == {"k.json"}
    del lingering  # its lease, given up, frees nothing twice
    assert set(CacheManager("KEYI").get_group("k.json") or {}) == {"k.json"}


@compiles
def test_a_compile_interrupted_in_this_process_can_be_retried_at_once(work: Path) -> None:
    code = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
import kernels

make_cubin = CUDABackend.make_cubin
def interrupted(self, *a, **k):
    CUDABackend.make_cubin = make_cubin
    raise KeyboardInterrupt
CUDABackend.make_cubin = interrupted
src = ASTSource(fn=kernels.add_kernel, signature={"x_ptr": "*fp32", "y_ptr": "*fp32",
                "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, constexprs={"BLOCK": 64})
try:
    triton.compile(src, target=GPUTarget("cuda", 90, 32))
except KeyboardInterrupt:
    kept = sys.exc_info()  # as IPython keeps the last traceback, and with it the manager
k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
print(sorted(k.metadata_group))
"""
    env = _env(work, work / "xcache", work / "t1", XCACHE_FLAGS="lock_timeout=30s")
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert "add_kernel.cubin" in p.stdout


def test_dump_managers_are_tritons_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triton.runtime.cache import FileCacheManager

    from xcache.integrations.triton import CacheManager

    monkeypatch.setenv("TRITON_DUMP_DIR", str(tmp_path / "dump"))
    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "xcache"))
    m = CacheManager("KEYD", dump=True)
    path = m.put("ttir text", "k.ttir")
    assert path == FileCacheManager("KEYD", dump=True).get_file("k.ttir")
    assert path.startswith(str(tmp_path / "dump"))
    assert not (tmp_path / "xcache").exists()


GPU_WORKER = """
import json, sys
import numpy as np
import torch
import triton
import kernels

seen = []
triton.knobs.compilation.listener = lambda **kw: seen.append(kw["cache_hit"])
n = 100_000
x = np.random.default_rng(int(sys.argv[1])).standard_normal(n, dtype=np.float32)
y = np.random.default_rng(int(sys.argv[1]) + 1).standard_normal(n, dtype=np.float32)
xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
out = torch.empty_like(xt)
kernels.add_kernel[(triton.cdiv(n, 1024),)](xt, yt, out, n, BLOCK=1024)
torch.cuda.synchronize()
assert np.array_equal(out.cpu().numpy(), x + y)
print(json.dumps({"hit": seen[-1]}))
"""


def _gpu() -> Optional[str]:
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU here"
    except ImportError:
        return "no PyTorch here (the GPU test launches through it)"
    return None


@pytest.mark.skipif(_gpu() is not None, reason=f"GPU test: {_gpu()}")
def test_gpu_a_kernel_launched_from_the_cached_group_gives_numpys_result(work: Path) -> None:
    (work / "gpu_worker.py").write_text(GPU_WORKER)
    base = work / "xcache"

    def run(seed: int, triton_dir: Path) -> Dict[str, Any]:
        p = subprocess.run(
            [sys.executable, str(work / "gpu_worker.py"), str(seed)],
            env=_env(work, base, triton_dir),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        return dict(json.loads(p.stdout))

    assert run(1, work / "t1")["hit"] is False
    assert run(2, work / "t2")["hit"] is True  # from xcache: t2 is empty
    # The launcher modules (Triton's own C build) are xcache's too.
    assert list((work / "t1").iterdir()) == [] and list((work / "t2").iterdir()) == []
