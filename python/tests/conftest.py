"""Each test gets its own cache directory; no test touches ~/.cache/xcache."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

import xcache


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "xcache"))
    monkeypatch.delenv("XCACHE_FLAGS", raising=False)
    (tmp_path / "config.toml").write_text("")
    monkeypatch.setenv("XCACHE_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.delenv("XCACHE_RUNTIME", raising=False)
    yield


@pytest.fixture
def cache(tmp_path: Path) -> xcache.Cache:
    return xcache.Cache(base_dir=tmp_path / "cache")


def run_python(code: str, env: Dict[str, str], timeout: float = 300) -> str:
    """Runs `code` in a fresh interpreter; returns its stdout, failing on an error."""
    p = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


REDIS = shutil.which("redis-server")
# A real S3 server over a directory (cargo install s3s-fs --features binary): the S3
# tier's tests run against it, like the Redis tests against redis-server.
S3S_FS = os.environ.get("XCACHE_TEST_S3S_FS") or shutil.which("s3s-fs")


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a loopback port, for the test; its URL."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Ready when it accepts a connection (no sleeping for a fixed time).
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from e
                time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def s3_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real s3s-fs on a loopback port, with a bucket, for the test; the tier's URL.
    The credentials it takes are put in this process's environment, where xcache
    reads them."""
    if S3S_FS is None:
        pytest.skip("s3s-fs is not installed (.ci/run installs it; or set XCACHE_TEST_S3S_FS)")
    root = tmp_path / "s3"
    (root / "xcb").mkdir(parents=True)
    port = free_port()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKPYTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "py-test-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    proc = subprocess.Popen(
        [
            S3S_FS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--access-key",
            "AKPYTEST",
            "--secret-key",
            "py-test-secret",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("s3s-fs did not start") from e
                time.sleep(0.01)
        yield f"s3://xcb/py?endpoint=http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
