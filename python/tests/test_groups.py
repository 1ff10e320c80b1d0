"""Artifact groups from Python: the API the integrations (numba, triton, cupy) use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xcache


def test_put_get_and_read(tmp_path: Path) -> None:
    c = xcache.Cache(base_dir=tmp_path / "c", runtime_tag="numba-0.65.1")
    assert c.get_group("numba", "sig=(f8,)") is None
    g = c.put_group(
        "numba", "sig=(f8,)", {"data.nbc": b"\x00\x01payload", "meta.json": "{}"}, name="m.f"
    )
    assert (g.hit, g.producer, g.name) == (False, "numba", "m.f")
    assert set(g.files) == {"data.nbc", "meta.json"}
    assert Path(g.path("data.nbc")).read_bytes() == b"\x00\x01payload"
    h = c.get_group("numba", "sig=(f8,)")
    assert h is not None and h.hit and h.read("meta.json") == b"{}"
    assert h.key == g.key
    with pytest.raises(KeyError):
        h.path("nope")
    with pytest.raises(xcache.Error):
        c.put_group("numba", "other", {"../escape": b"x"})
    with pytest.raises(xcache.Error):
        c.put_group("Not A Producer", "m", {"a": b"x"})
    # The producer's version is the runtime tag: its own compiledir.
    assert "numba-0.65.1" in str(c.compiledir)


def test_a_lease_builds_once_and_an_abandoned_one_publishes_nothing(tmp_path: Path) -> None:
    c = xcache.Cache(base_dir=tmp_path / "c")
    lease = c.lease_group("triton", "k1", name="add_kernel")
    assert isinstance(lease, xcache.GroupLease)
    staged = lease.add("add_kernel.cubin", b"\x7fELF...")
    assert Path(staged).read_bytes() == b"\x7fELF..."
    g = lease.publish(compile_seconds=0.25)
    assert g.compile_ms == 250 and not g.hit
    again = c.lease_group("triton", "k1")
    assert isinstance(again, xcache.Group) and again.hit
    with c.lease_group("triton", "k2") as abandoned:
        assert isinstance(abandoned, xcache.GroupLease)
        abandoned.add("x.json", "{}")
    assert c.get_group("triton", "k2") is None
    with pytest.raises(ValueError):
        lease.publish()


def test_processes_racing_on_one_cold_group_build_it_once(tmp_path: Path) -> None:
    base = tmp_path / "c"
    log = tmp_path / "builds.log"
    worker = f"""
import sys, xcache
c = xcache.Cache(base_dir={str(base)!r})
got = c.lease_group("cupy", "kernel-7")
if isinstance(got, xcache.GroupLease):
    with open({str(log)!r}, "a") as f:
        f.write("built\\n")
    got.add("kernel.cubin", b"cubin bytes")
    got = got.publish()
assert got.read("kernel.cubin") == b"cubin bytes"
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", worker], env=dict(os.environ)) for _ in range(6)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert log.read_text().count("built") == 1


def test_a_corrupt_member_is_never_served(tmp_path: Path) -> None:
    c = xcache.Cache(base_dir=tmp_path / "c")
    g = c.put_group("numba", "m", {"data.nbc": b"a" * 100})
    p = Path(g.path("data.nbc"))
    del g
    data = bytearray(p.read_bytes())
    data[50] ^= 1
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))
    assert c.get_group("numba", "m") is None
    assert c.put_group("numba", "m", {"data.nbc": b"a" * 100}).hit is False


def test_with_runtime_tag_keeps_the_base_dir_and_settings(tmp_path: Path) -> None:
    c = xcache.Cache(base_dir=tmp_path / "c", flags={"max_size": "1B"}, lock_timeout=7.5)
    n = c.with_runtime_tag("numba-0.65.1")
    assert isinstance(n, xcache.Cache)
    assert (n.base_dir, n.runtime_tag, n.lock_timeout) == (c.base_dir, "numba-0.65.1", 7.5)
    assert n.compiledir != c.compiledir and "numba-0.65.1" in str(n.compiledir)
    # The settings came along: with a 1-byte max_size, prune() (to max_size) removes
    # what is not in use; with the default it keeps it.
    d = xcache.Cache(base_dir=tmp_path / "d").with_runtime_tag("numba-0.65.1")
    for cache in (n, d):
        cache.put_group("numba", "m", {"data.nbc": b"x" * 4096})
        cache.prune()
    assert n.list() == [] and len(d.list()) == 1
