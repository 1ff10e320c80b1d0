"""PyTensor compiling through xcache (xcache.integrations.pytensor), against the real
pytensor package: identical results, a second process with an empty PyTensor
compiledir compiles nothing, and processes compiling different graphs do not wait for
each other."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import xcache

pytest.importorskip("pytensor", reason="pytensor is not installed (pip install pytensor)")
if shutil.which("g++") is None:  # pragma: no cover - CI installs it
    pytest.skip("no g++: PyTensor's C backend needs it", allow_module_level=True)

GRAPHS_SCRIPT = str(Path(__file__).with_name("pytensor_graphs.py"))
ALL = ["elemwise", "reductions", "mlp_grad"]


def graphs(
    out: Path,
    names: List[str],
    pytensor_dir: Path,
    xcache_dir: Path,
    adapter: bool,
    extra_flags: str = "",
    default_mode: bool = False,
) -> subprocess.Popen:
    flags = f"base_compiledir={pytensor_dir}" + (f",{extra_flags}" if extra_flags else "")
    env = {**os.environ, "PYTENSOR_FLAGS": flags, "XCACHE_DIR": str(xcache_dir)}
    if default_mode:  # PyTensor's default mode: its Numba backend
        env["XC_GRAPHS_MODE"] = "default"
    args = [sys.executable, GRAPHS_SCRIPT, str(out), *names] + (["--adapter"] if adapter else [])
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(p: subprocess.Popen, timeout: float = 600) -> Dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-4000:]
    report: Dict = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, np.ndarray]:
    """The graphs compiled by PyTensor itself (no adapter)."""
    d = tmp_path_factory.mktemp("reference")
    finish(graphs(d / "ref.npz", ALL, d / "pytensor", d / "unused-xcache", adapter=False))
    return dict(np.load(d / "ref.npz"))


def test_results_identical_and_a_second_process_compiles_nothing(
    reference: Dict[str, np.ndarray], tmp_path: Path
) -> None:
    xc = tmp_path / "xcache"
    first = finish(graphs(tmp_path / "a.npz", ALL, tmp_path / "pt1", xc, adapter=True))
    assert first["counters"]["compiles"] > 0
    a = dict(np.load(tmp_path / "a.npz"))
    assert a.keys() == reference.keys()
    for k, want in reference.items():
        assert np.array_equal(a[k], want), k  # bit for bit
    for g in ALL:
        assert int(a[f"{g}__c_thunks"]) > 0, f"{g} ran no C thunk"

    # An empty PyTensor compiledir, the same xcache cache: nothing is compiled, and the
    # graphs' modules are found by PyTensor's keys (no code generation).
    second = finish(graphs(tmp_path / "b.npz", ALL, tmp_path / "pt2", xc, adapter=True))
    assert second["counters"]["compiles"] == 0, second
    assert second["counters"]["hits"] >= first["counters"]["compiles"]
    assert first["counters"]["key_hits"] == 0, first
    assert second["counters"]["key_hits"] > 0, second
    b = dict(np.load(tmp_path / "b.npz"))
    for k, want in reference.items():
        assert np.array_equal(b[k], want), k

    # The store counts each published group (a module's key record) as a compile too.
    cache = xcache.Cache(base_dir=xc, runtime_tag=_tag())
    records = [g for g in cache.list() if g.language == "pytensor-module"]
    assert len(records) >= second["counters"]["key_hits"]
    stats = next(s for s in cache.stats() if s.current)
    assert stats.compiles == first["counters"]["compiles"] + len(records)


def own_header_run(
    tmp_path: Path, tag: str, header: Path, xc: Path, unversioned: bool = False
) -> Dict:
    """The `own_header` graph (a C op of the test's, reading XC_SCALE from `header`) in
    a fresh process with an empty PyTensor compiledir, through the adapter."""
    os.environ["XC_OWN_HEADER_DIR"] = str(header.parent)
    if unversioned:
        os.environ["XC_OWN_UNVERSIONED"] = "1"
    try:
        p = graphs(tmp_path / f"{tag}.npz", ["own_header"], tmp_path / f"pt-{tag}", xc, True)
    finally:
        os.environ.pop("XC_OWN_HEADER_DIR")
        os.environ.pop("XC_OWN_UNVERSIONED", None)
    report = finish(p)
    report["out"] = np.load(tmp_path / f"{tag}.npz")["own_header__0"]
    return report


def test_a_header_edited_between_processes_is_a_miss_when_found_by_key(tmp_path: Path) -> None:
    xc, header = tmp_path / "xcache", tmp_path / "inc" / "xc_scale.h"
    header.parent.mkdir()
    header.write_text("#define XC_SCALE 2\n")
    first = own_header_run(tmp_path, "a", header, xc)
    assert first["counters"]["compiles"] > 0
    assert list(first["out"]) == [0, 2, 4, 6, 8]
    # Same header: found by PyTensor's key, nothing compiled.
    same = own_header_run(tmp_path, "b", header, xc)
    assert same["counters"]["compiles"] == 0 and same["counters"]["key_hits"] > 0, same
    # PyTensor's key for the op is the same (it names the header, not its contents), so
    # the module's source is found by it; the request still checks the header.
    header.write_text("#define XC_SCALE 3\n")
    edited = own_header_run(tmp_path, "c", header, xc)
    assert edited["counters"]["key_hits"] > 0, edited
    assert edited["counters"]["compiles"] == 1, edited
    assert list(edited["out"]) == [0, 3, 6, 9, 12]


def test_an_unversioned_op_is_generated_every_time(tmp_path: Path) -> None:
    xc, header = tmp_path / "xcache", tmp_path / "inc" / "xc_scale.h"
    header.parent.mkdir()
    header.write_text("#define XC_SCALE 5\n")
    first = own_header_run(tmp_path, "a", header, xc, unversioned=True)
    assert first["counters"]["compiles"] > 0
    # Found by content (the source generated again), never by PyTensor's key.
    second = own_header_run(tmp_path, "b", header, xc, unversioned=True)
    assert second["counters"]["compiles"] == 0, second
    assert second["counters"]["hits"] > 0 and second["counters"]["key_hits"] == 0, second
    assert list(second["out"]) == [0, 5, 10, 15, 20]
    groups = xcache.Cache(base_dir=xc, runtime_tag=_tag()).list()
    assert not [g for g in groups if g.language == "pytensor-module"], groups


@pytest.fixture(scope="module")
def reference_default_mode(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, np.ndarray]:
    """The graphs compiled by PyTensor itself in its default mode (Numba)."""
    pytest.importorskip("numba", reason="numba is not installed (pip install numba)")
    d = tmp_path_factory.mktemp("reference-default")
    out = d / "ref.npz"
    finish(graphs(out, ALL, d / "pytensor", d / "unused", adapter=False, default_mode=True))
    return dict(np.load(out))


def test_default_mode_a_second_process_compiles_nothing(
    reference_default_mode: Dict[str, np.ndarray], tmp_path: Path
) -> None:
    xc = tmp_path / "xcache"
    first = finish(graphs(tmp_path / "a.npz", ALL, tmp_path / "pt1", xc, True, default_mode=True))
    assert first["numba_compiles"] > 0
    # An empty PyTensor base_compiledir, the same xcache cache: Numba compiles nothing.
    second = finish(graphs(tmp_path / "b.npz", ALL, tmp_path / "pt2", xc, True, default_mode=True))
    assert second["numba_compiles"] == 0, second
    for out in ("a.npz", "b.npz"):
        got = dict(np.load(tmp_path / out))
        assert got.keys() == reference_default_mode.keys()
        for k, want in reference_default_mode.items():
            assert got[k].dtype == want.dtype and np.array_equal(got[k], want), (out, k)
    # PyTensor's Numba cache directory stays empty: the functions are xcache's groups.
    for pt in ("pt1", "pt2"):
        assert [p for p in (tmp_path / pt).rglob("*") if p.is_file()] == [], pt
    import numba

    groups = xcache.Cache(base_dir=xc, runtime_tag=f"numba-{numba.__version__}").list()
    assert groups and all(g.language == "numba" for g in groups)


def _tag() -> str:
    return f"cpython-{sys.version_info[0]}.{sys.version_info[1]}"


GATE = r"""#!/bin/sh
# A C++ compiler that stops before compiling xcache's first module source, until the
# test releases it: the process running it holds that key's lock meanwhile.
for a in "$@"; do
  case "$a" in
    *source.cpp)
      if mkdir "$XC_GATE/passed" 2>/dev/null; then
        echo started > "$XC_GATE/started"
        cat "$XC_GATE/release" > /dev/null
      fi ;;
  esac
done
exec g++ "$@"
"""


def test_processes_compiling_different_graphs_do_not_wait(tmp_path: Path) -> None:
    xc, pt = tmp_path / "xcache", tmp_path / "pytensor"
    # PyTensor's helper modules (lazylinker_ext, cutils_ext) first, so that neither
    # process below needs them.
    finish(graphs(tmp_path / "w.npz", [], pt, xc, adapter=True))
    gate = tmp_path / "gate"
    gate.mkdir()
    os.mkfifo(gate / "started")
    os.mkfifo(gate / "release")
    cxx = tmp_path / "g++-gate"
    cxx.write_text(GATE)
    cxx.chmod(0o755)
    os.environ["XC_GATE"] = str(gate)
    try:
        a = graphs(tmp_path / "a.npz", ["elemwise"], pt, xc, adapter=True, extra_flags=f"cxx={cxx}")
    finally:
        del os.environ["XC_GATE"]
    try:
        _a_waits_b_does_not(a, gate, tmp_path, pt, xc)
    finally:
        if a.poll() is None:
            a.kill()
            a.communicate()


def _a_waits_b_does_not(
    a: subprocess.Popen, gate: Path, tmp_path: Path, pt: Path, xc: Path
) -> None:
    # Wait until A is inside its compile (holding its key's lock).
    fd = os.open(gate / "started", os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline_s = 300
        buf = b""
        while b"started" not in buf:
            ready, _, _ = select.select([fd], [], [], deadline_s)
            assert ready, "process A never reached its compile"
            chunk = os.read(fd, 64)
            if not chunk and a.poll() is not None:
                pytest.fail(f"process A ended early: {a.communicate()[1][-3000:]}")
            buf += chunk
    finally:
        os.close(fd)
    # B compiles another graph to the end while A is stopped mid-compile.
    b = finish(graphs(tmp_path / "b.npz", ["reductions"], pt, xc, adapter=True), timeout=600)
    assert b["counters"]["compiles"] > 0
    assert a.poll() is None, "A finished before it was released"
    with open(gate / "release", "w") as f:
        f.write("go\n")
    ra = finish(a)
    assert ra["counters"]["compiles"] > 0


def test_install_and_uninstall() -> None:
    from pytensor.link.c import cmodule
    from pytensor.link.numba.linker import NumbaLinker

    import xcache.integrations.pytensor as xp

    before = cmodule.GCC_compiler.compile_str
    convert = NumbaLinker.fgraph_convert
    c = xp.install()
    try:
        assert xp.installed() and isinstance(c, xcache.Cache)
        assert c.runtime_tag == _tag()
        assert cmodule.GCC_compiler.compile_str is not before
        assert NumbaLinker.fgraph_convert is not convert
    finally:
        xp.uninstall()
    assert not xp.installed()
    assert cmodule.GCC_compiler.compile_str is before
    assert NumbaLinker.fgraph_convert is convert
