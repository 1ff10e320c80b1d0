"""`xcache warm` with a Python entry point: a manifest may name code that builds
kernels through the integrations; it runs only with --allow-python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import xcache


def test_a_python_entry_point_runs_only_when_allowed(tmp_path: Path) -> None:
    (tmp_path / "kernels_warm.py").write_text(
        "import xcache\n"
        "def build():\n"
        "    c = xcache.Cache(runtime_tag='myjit-1.0')\n"
        "    c.put_group('myjit', 'saxpy-v3', {'saxpy.o': b'object code'}, name='saxpy')\n"
    )
    manifest = tmp_path / "warm.json"
    manifest.write_text(json.dumps({"requests": [{"python": "kernels_warm:build"}]}))
    env = dict(os.environ, XCACHE_DIR=str(tmp_path / "cache"), XCACHE_PYTHON=sys.executable)
    refused = subprocess.run(
        [sys.executable, "-m", "xcache", "warm", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "--allow-python" in refused.stderr, refused.stderr
    ran = subprocess.run(
        [sys.executable, "-m", "xcache", "warm", str(manifest), "--allow-python", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["python_entries"] == 1 and report["failed"] == []
    c = xcache.Cache(base_dir=tmp_path / "cache", runtime_tag="myjit-1.0")
    g = c.get_group("myjit", "saxpy-v3")
    assert g is not None and g.read("saxpy.o") == b"object code"
    # A bad entry point is refused before anything runs; a failing one is reported.
    manifest.write_text(json.dumps({"requests": [{"python": "kernels_warm:build; import os"}]}))
    bad = subprocess.run(
        [sys.executable, "-m", "xcache", "warm", str(manifest), "--allow-python"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "module:function" in bad.stderr, bad.stderr
    manifest.write_text(json.dumps({"requests": [{"python": "kernels_warm:missing"}]}))
    failing = subprocess.run(
        [sys.executable, "-m", "xcache", "warm", str(manifest), "--allow-python", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert failing.returncode != 0
    assert "missing" in json.loads(failing.stdout)["failed"][0]["error"]
