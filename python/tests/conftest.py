"""Each test gets its own cache directory; no test touches ~/.cache/xcache."""

from __future__ import annotations

import os
import subprocess
import sys
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
