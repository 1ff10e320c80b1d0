"""Numba's cache=True through xcache (xcache.integrations.numba), against the real numba
package: a second process with an empty NUMBA_CACHE_DIR compiles nothing and writes
nothing there, racing processes compile once, a corrupt group is never loaded, a
pruned cache compiles again, a failed compile holds nobody up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed (pip install numba)")

import xcache  # noqa: E402

HERE = Path(__file__).parent
RUN = str(HERE / "numba_run.py")
ALL = ["scalar", "array_loop", "parallel", "caller"]


def tag() -> str:
    return f"numba-{numba.__version__}"


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    shutil.copy(HERE / "numba_funcs.py", d / "numba_funcs.py")
    return d


def start(
    module_dir: Path, out: Path, names: List[str], numba_dir: Path, adapter: bool = True
) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_dir)}
    args = [sys.executable, RUN, str(module_dir), str(out), *names]
    return subprocess.Popen(
        args + (["--adapter"] if adapter else []),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 600) -> Dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-4000:]
    report: Dict = json.loads(out.strip().splitlines()[-1])
    return report


def run(module_dir: Path, out: Path, numba_dir: Path, adapter: bool = True) -> Dict:
    return finish(start(module_dir, out, ALL, numba_dir, adapter))


def numba_files(*dirs: Path) -> List[Path]:
    """Files Numba's own cache would have written (index, data) under `dirs`."""
    found: List[Path] = []
    for d in dirs:
        if d.exists():
            found += [p for p in d.rglob("*") if p.is_file()]
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, np.ndarray]:
    """The functions compiled and run by Numba alone."""
    d = tmp_path_factory.mktemp("reference")
    src = d / "src"
    src.mkdir()
    shutil.copy(HERE / "numba_funcs.py", src / "numba_funcs.py")
    run(src, d / "ref.npz", d / "numba-cache", adapter=False)
    return dict(np.load(d / "ref.npz"))


def assert_same(got: Path, reference: Dict[str, np.ndarray]) -> None:
    results = dict(np.load(got))
    assert results.keys() == reference.keys()
    for k, want in reference.items():
        assert results[k].dtype == want.dtype and np.array_equal(results[k], want), k


def test_a_second_process_loads_every_function_and_writes_nothing(
    module_dir: Path, tmp_path: Path, reference: Dict[str, np.ndarray]
) -> None:
    first = run(module_dir, tmp_path / "a.npz", tmp_path / "numba-1")
    for name in ALL:
        s = first["stats"][name]
        assert s["misses"] >= 1 and s["hits"] == 0, (name, s)
        assert tag() in s["cache_path"], s  # the xcache compiledir
    assert_same(tmp_path / "a.npz", reference)

    second = run(module_dir, tmp_path / "b.npz", tmp_path / "numba-2")
    for name in ALL:
        s = second["stats"][name]
        assert s["hits"] >= 1 and s["misses"] == 0, (name, s)
    assert_same(tmp_path / "b.npz", reference)
    # Nothing in NUMBA_CACHE_DIR, nor in __pycache__ beside the module.
    assert numba_files(tmp_path / "numba-1", tmp_path / "numba-2") == []
    assert not list(module_dir.rglob("*.nb[ic]"))

    entries = xcache.Cache(runtime_tag=tag()).list()
    assert len(entries) == len(ALL)
    assert all(e.language == "numba" and "numba_funcs." in e.source for e in entries)


def test_the_source_stamp_is_the_files_contents(module_dir: Path, tmp_path: Path) -> None:
    run(module_dir, tmp_path / "a.npz", tmp_path / "numba-1")
    # The same file elsewhere (another checkout, another machine), newer: shared.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(module_dir, elsewhere)
    os.utime(elsewhere / "numba_funcs.py", (2e9, 2e9))
    r = run(elsewhere, tmp_path / "b.npz", tmp_path / "numba-2")
    assert all(r["stats"][n]["misses"] == 0 for n in ALL), r["stats"]
    # Another file (one line added at the end): every function compiles again.
    with open(elsewhere / "numba_funcs.py", "a") as f:
        f.write("\nCHANGED = 1\n")
    r = run(elsewhere, tmp_path / "c.npz", tmp_path / "numba-3")
    assert all(r["stats"][n]["misses"] >= 1 for n in ALL), r["stats"]


def test_eight_processes_racing_on_cold_functions_compile_each_once(
    module_dir: Path, tmp_path: Path, reference: Dict[str, np.ndarray]
) -> None:
    procs = [
        start(module_dir, tmp_path / f"r{i}.npz", ALL, tmp_path / f"numba-{i}") for i in range(8)
    ]
    reports = [finish(p) for p in procs]
    for name in ALL:
        misses = sum(r["stats"][name]["misses"] for r in reports)
        assert misses == 1, (name, [r["stats"][name] for r in reports])
    for i in range(8):
        assert_same(tmp_path / f"r{i}.npz", reference)
    stats = next(s for s in xcache.Cache(runtime_tag=tag()).stats() if s.current)
    assert stats.compiles == len(ALL), stats


def test_a_corrupt_group_is_quarantined_and_compiled_again(
    module_dir: Path, tmp_path: Path, reference: Dict[str, np.ndarray]
) -> None:
    run(module_dir, tmp_path / "a.npz", tmp_path / "numba-1")
    compiledir = Path(xcache.Cache(runtime_tag=tag()).compiledir)
    data = sorted(compiledir.rglob("data.nbc"))
    assert len(data) == len(ALL)
    for p in data:
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x01
        os.chmod(p, 0o644)
        p.write_bytes(bytes(b))
    r = run(module_dir, tmp_path / "b.npz", tmp_path / "numba-2")
    for name in ALL:
        assert r["stats"][name]["misses"] == 1 and r["stats"][name]["hits"] == 0, r["stats"]
    assert_same(tmp_path / "b.npz", reference)
    assert len(list((compiledir / "quarantine").iterdir())) == len(ALL)
    # The groups compiled again are whole: the next process loads them.
    r = run(module_dir, tmp_path / "c.npz", tmp_path / "numba-3")
    assert all(r["stats"][n]["misses"] == 0 for n in ALL), r["stats"]


def test_after_prune_a_run_compiles_again(
    module_dir: Path, tmp_path: Path, reference: Dict[str, np.ndarray]
) -> None:
    run(module_dir, tmp_path / "a.npz", tmp_path / "numba-1")
    # The groups live in the compiledir of the runtime tag numba-<version>.
    p = subprocess.run(
        [sys.executable, "-m", "xcache", "prune", "--max-size", "1B"],
        env={**os.environ, "XCACHE_RUNTIME": tag()},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert xcache.Cache(runtime_tag=tag()).list() == []
    r = run(module_dir, tmp_path / "b.npz", tmp_path / "numba-2")
    assert all(r["stats"][n]["misses"] >= 1 for n in ALL), r["stats"]
    assert_same(tmp_path / "b.npz", reference)
    r = run(module_dir, tmp_path / "c.npz", tmp_path / "numba-3")
    assert all(r["stats"][n]["misses"] == 0 for n in ALL), r["stats"]


FAILS = """
import sys
sys.path.insert(0, {src!r})
import xcache.integrations.numba as xn
xn.install()
import numba_funcs
try:
    numba_funcs.fails_to_type(1.0)
except Exception as e:
    print("failed:", type(e).__name__, flush=True)
else:
    raise SystemExit("it compiled")
sys.stdin.read()  # stays alive until the test closes stdin
"""


def test_a_failed_compile_holds_no_lease(module_dir: Path, tmp_path: Path) -> None:
    code = FAILS.format(src=str(module_dir))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    a = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert a.stdout is not None
        line = a.stdout.readline()
        assert line.startswith("failed: TypingError"), line + a.stderr.read()
        # A is alive, after its failed compile: B asking for the same group is not kept
        # waiting on a lease A still holds.
        b = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            input="",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert b.returncode == 0 and b.stdout.startswith("failed: TypingError"), b.stderr
    finally:
        a.communicate(input="", timeout=60)


def test_install_is_idempotent_and_uninstall_restores_numba() -> None:
    from numba.core import caching
    from numba.core.compiler_lock import global_compiler_lock

    import xcache.integrations.numba as xn

    original = caching.IndexDataCacheFile
    c = xn.install()
    try:
        assert xn.install() is c and xn.installed()
        assert c.runtime_tag == tag()
        assert caching.IndexDataCacheFile is not original
        assert sum(cls is xn._Locator for cls in caching.CacheImpl._locator_classes) == 1
        # A cache of the user's: its base dir, the producer's runtime tag.
        mine = xcache.Cache(base_dir=os.environ["XCACHE_DIR"] + "-mine")
        c2 = xn.install(mine)
        assert c2.base_dir == mine.base_dir and c2.runtime_tag == tag()
    finally:
        xn.uninstall()
    assert not xn.installed()
    assert caching.IndexDataCacheFile is original
    assert xn._Locator not in caching.CacheImpl._locator_classes
    assert "release" not in vars(global_compiler_lock)


BEHIND = """
import json, os, sys
import xcache.integrations.numba as xn
xn.install(write_behind={behind})
xn.EXIT_WAIT = 600.0  # a child left waiting on its parent's groups shows as a timeout
sys.path.insert(0, {src!r})
import threading
import numba_funcs as m
# The publishing thread is kept busy until after the fork: the group saved by the call
# below is still pending when the child is made, and when the parent comes to exit.
go = threading.Event()
xn._publisher.submit(go.wait)
m.scalar(1.75)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # atexit runs in the child: it has no groups of its own to wait for
_, status = os.waitpid(pid, 0)
{check}
go.set()
print(json.dumps({{"child": status, "drained": {drained}}}))
"""

# Published inside the call (write_behind=False): another process loads the group while
# this one's publishing thread is still held up.
SYNC_CHECK = """
import subprocess
r = subprocess.run(
    [sys.executable, {run!r}, {src!r}, {out!r}, "scalar", "--adapter"],
    env={{**os.environ, "NUMBA_CACHE_DIR": {numba!r}}},
    capture_output=True, text=True, timeout=120,
)
assert json.loads(r.stdout.splitlines()[-1])["stats"]["scalar"]["hits"] == 1, r.stderr
"""


@pytest.mark.parametrize("behind", [True, False])
def test_groups_published_behind_the_call_are_waited_for_at_exit_not_by_children(
    module_dir: Path, tmp_path: Path, behind: bool
) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-1")}
    check = (
        ""
        if behind
        else SYNC_CHECK.format(
            run=RUN, src=str(module_dir), out=str(tmp_path / "s.npz"), numba=str(tmp_path / "n")
        )
    )
    # With write-behind, the parent leaves its pending group to the exit: no wait here.
    drained = "True" if behind else "xn.wait(60)"
    code = BEHIND.format(behind=behind, src=str(module_dir), check=check, drained=drained)
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert p.returncode == 0, p.stderr[-4000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report == {"child": 0, "drained": True}, report
    # Published by the time the process was gone: a second one loads it.
    second = finish(start(module_dir, tmp_path / "b.npz", ["scalar"], tmp_path / "numba-2"))
    assert second["stats"]["scalar"] == {
        "hits": 1,
        "misses": 0,
        "cache_path": second["stats"]["scalar"]["cache_path"],
    }, second
