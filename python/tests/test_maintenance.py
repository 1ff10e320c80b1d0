"""list/stats/prune/clear as typed results, and libraries that stay valid while
another process prunes and clears."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import xcache


def cli(base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xcache", "--dir", str(base), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_list_stats_prune_clear_are_typed(cache: xcache.Cache) -> None:
    libs = [cache.compile(f"int v{i}(void) {{ return {i}; }}", name=f"v{i}.c") for i in range(3)]
    rows = cache.list(sort="name")
    assert [r.source for r in rows] == ["v0.c", "v1.c", "v2.c"]
    r = rows[0]
    assert isinstance(r, xcache.Entry) and r.language == "c" and r.size > 0
    assert r.status == "ok" and r.created > 0 and os.path.isdir(r.path)
    assert cache.list(all=True)[0].compiledir == r.compiledir
    s = next(s for s in cache.stats() if s.current)
    assert isinstance(s, xcache.Stats) and s.compiles == 3 and s.misses == 3
    dry = cache.prune(max_size=1, dry_run=True)
    assert isinstance(dry, xcache.CleanReport) and dry.dry_run
    assert all(isinstance(a, xcache.CleanAction) for a in dry.actions)
    # Every entry is in use (the libraries above are alive): nothing is removed.
    report = cache.clear(force=True)
    assert report.removed_entries == 0 and report.skipped >= 3
    del libs, rows
    report = cache.clear(force=True)
    assert report.removed_entries == 3 and report.freed_bytes > 0
    assert cache.list() == []
    pruned = cache.prune(max_size="1GiB", older_than="30d")
    assert pruned.removed_entries == 0


def test_a_live_library_survives_prune_and_clear_from_another_process(
    cache: xcache.Cache,
) -> None:
    lib = cache.compile("int alive(void) { return 7; }", name="alive.c")
    gone = cache.compile("int gone(void) { return 8; }", name="gone.c")
    gone_path = gone.path
    del gone  # released: collectable
    path = lib.path
    base = Path(cache.base_dir)
    for args in (["prune", "--max-size", "1B", "--json"], ["clear", "--force", "--json"]):
        p = cli(base, *args)
        assert p.returncode == 0, p.stderr
    assert os.path.isfile(path), "a pinned library's file was removed"
    assert not os.path.exists(gone_path)
    # The file is the library: load it again by path, as a script handed it would.
    f = ctypes.CDLL(path).alive
    assert f() == 7
    del f
    assert [r.source for r in cache.list()] == ["alive.c"]
    del lib
    p = cli(base, "clear", "--force", "--json")
    assert p.returncode == 0
    assert not os.path.exists(path)


def test_a_kernel_keeps_its_library_pinned(cache: xcache.Cache) -> None:
    f = cache.elemwise("a+1", 1, dtype="float64")
    p = cli(Path(cache.base_dir), "clear", "--force")
    assert p.returncode == 0
    assert os.path.isfile(f.library.path)


def test_a_cache_outlives_a_purge_of_its_compiledir(tmp_path: Path) -> None:
    """`xcache basecompiledir purge` from another process removes the compiledir (and
    the base dir) under a live Cache: its next requests make them again and succeed."""
    base = tmp_path / "purged"
    c = xcache.Cache(base_dir=base)
    lib = c.compile("int one(void) { return 1; }\n", name="one.c")
    del lib
    env = dict(os.environ, XCACHE_DIR=str(base))
    subprocess.run([sys.executable, "-m", "xcache", "basecompiledir", "purge"], env=env, check=True)
    assert not Path(c.compiledir).exists()
    two = c.compile("int two(void) { return 2; }\n", name="two.c")
    assert ctypes.CFUNCTYPE(ctypes.c_int)(two.symbol("two"))() == 2
    # Loaded already by this Cache: served from memory, as before the purge.
    one = c.compile("int one(void) { return 1; }\n", name="one.c")
    assert ctypes.CFUNCTYPE(ctypes.c_int)(one.symbol("one"))() == 1
    assert Path(c.compiledir).is_dir()
