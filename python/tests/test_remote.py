"""The remote tier seen from Python: two caches ("machines") sharing a real
redis-server, a real S3 server (s3s-fs) or both in a chain, on loopback ports; the
second gets a remote hit without compiling."""

from __future__ import annotations

import ctypes
import gc
import socket
import time
from pathlib import Path

from conftest import free_port

import xcache


def _counting_cc(tmp_path: Path) -> Path:
    """A compiler wrapper that logs each compile, so a test can see none ran."""
    log = tmp_path / "compiles.log"
    cc = tmp_path / "cc-count.sh"
    cc.write_text(
        f'#!/bin/sh\ncase " $* " in *" -shared "*) echo compile >> "{log}" ;; esac\nexec cc "$@"\n'
    )
    cc.chmod(0o755)
    return cc


def test_a_second_machine_gets_a_remote_hit_and_loads_it(tmp_path: Path, redis_url: str) -> None:
    _share_between_two_machines(tmp_path, redis_url)


def test_a_second_machine_gets_a_remote_hit_through_s3(tmp_path: Path, s3_url: str) -> None:
    _share_between_two_machines(tmp_path, s3_url)
    s3_objects = [p for p in (tmp_path / "s3" / "xcb" / "py" / "xcache").rglob("*") if p.is_file()]
    assert len([p for p in s3_objects if not p.name.startswith(".")]) == 2, s3_objects


def test_a_chain_of_redis_and_s3_shares_through_both(
    tmp_path: Path, redis_url: str, s3_url: str
) -> None:
    # Uploaded to each tier: two uploads for one compile.
    _share_between_two_machines(tmp_path, f"{redis_url};{s3_url}", tiers=2)


def test_an_unreachable_s3_never_fails_a_request(tmp_path: Path, s3_url: str) -> None:
    port = free_port()  # nothing listens there
    c = xcache.Cache(
        base_dir=tmp_path / "c",
        flags={
            "remote": f"s3://xcb/py?endpoint=http://127.0.0.1:{port}",
            "remote_connect_timeout": "200ms",
        },
    )
    lib = c.compile("int one(void) { return 1; }\n", name="one.c")
    assert (lib.hit, lib.tier) == (False, "local")
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lib.symbol("one"))() == 1
    del lib, c
    gc.collect()
    current = next(s for s in xcache.Cache(base_dir=tmp_path / "c").stats() if s.current)
    assert current.remote_err_connect >= 1, current


def _share_between_two_machines(tmp_path: Path, remote: str, tiers: int = 1) -> None:
    cc = _counting_cc(tmp_path)
    flags = {"remote": remote, "cc": str(cc)}
    a = xcache.Cache(base_dir=tmp_path / "a", flags=flags)
    b = xcache.Cache(base_dir=tmp_path / "b", flags=flags)
    src = "int answer(void) { return 42; }\n"

    la = a.compile(src, name="answer.c")
    assert (la.hit, la.tier) == (False, "local")
    lb = b.compile(src, name="answer.c")
    assert (lb.hit, lb.tier) == (True, "remote")
    assert lb.key == la.key
    assert (tmp_path / "compiles.log").read_text().count("compile") == 1
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(lb.symbol("answer"))
    assert fn() == 42

    # Counters reach the stats file when a cache is dropped; read them afresh.
    del fn, la, lb, a, b
    gc.collect()
    for name, field, n in (("a", "remote_uploads", tiers), ("b", "remote_hits", 1)):
        reader = xcache.Cache(base_dir=tmp_path / name)
        current = next(s for s in reader.stats() if s.current)
        assert getattr(current, field) == n, current
        assert len(current.remote_tiers) == (tiers if name == "a" else 1), current


def test_an_unreachable_remote_never_fails_a_request(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    c = xcache.Cache(
        base_dir=tmp_path / "c",
        flags={"remote": f"redis://127.0.0.1:{port}/0", "remote_connect_timeout": "200ms"},
    )
    lib = c.compile("int one(void) { return 1; }\n", name="one.c")
    assert (lib.hit, lib.tier) == (False, "local")
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lib.symbol("one"))() == 1
    del lib, c
    gc.collect()
    current = next(s for s in xcache.Cache(base_dir=tmp_path / "c").stats() if s.current)
    assert current.remote_err_connect >= 1, current


def test_a_dripping_remote_costs_a_request_at_most_its_deadline(tmp_path: Path) -> None:
    """A peer that answers one byte every 50 ms never makes a compile wait longer than
    `remote_timeout` for the remote (before: one timeout per socket read, forever)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            conn.sendall(b"*2\r\n$1000000\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                stop.wait(0.05)  # the peer's pace, not the test waiting

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        cache = xcache.Cache(
            base_dir=tmp_path / "cache",
            flags={"remote": f"redis://127.0.0.1:{port}/0", "remote_timeout": "1s"},
        )
        start = time.monotonic()
        lib = cache.compile("int six(void) { return 6; }\n", name="six.c")
        spent = time.monotonic() - start
        assert ctypes.CFUNCTYPE(ctypes.c_int)(lib.symbol("six"))() == 6
        # One second for the remote, the rest for the compile: a hang guard.
        assert spent < 1 + 2, spent
        del lib, cache
        gc.collect()
        current = next(s for s in xcache.Cache(base_dir=tmp_path / "cache").stats() if s.current)
        assert current.remote_err_timeout == 1, current
    finally:
        stop.set()
        listener.close()
