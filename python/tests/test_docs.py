"""Every Python snippet of the README and docs/*.md runs as written.

Each ```python block runs in a fresh interpreter, in an empty directory, with its own
XCACHE_DIR and HOME. The HTML comment right above a block steers it, as for the
console examples (cli/tests/common/docblocks.rs): ``skip: REASON`` never runs it,
``needs: pytensor`` runs it only where PyTensor is installed; either shows here as a
skipped test with its reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Snippet(NamedTuple):
    place: str
    code: str
    directives: Dict[str, str]


def _directives(comment: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    text = comment.strip()
    text = text[1:] if text.startswith(":") else text
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "setup:":
            break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def snippets() -> List[Snippet]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    out = []
    for doc in docs:
        lines = doc.read_text().splitlines()
        pending: Dict[str, str] = {}
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"\s*<!-- doctest(?!-defaults)(.*)", line)
            if m:
                body = [m.group(1)]
                while not body[-1].rstrip().endswith("-->"):
                    i += 1
                    body.append(lines[i])
                text = "\n".join(body).rstrip()
                pending = _directives(text[: -len("-->")])
            elif line.startswith("```"):
                lang = line[3:].strip()
                start = i
                i += 1
                code = []
                while not lines[i].startswith("```"):
                    code.append(lines[i])
                    i += 1
                if lang == "python":
                    place = f"{doc.relative_to(ROOT)}:{start + 1}"
                    out.append(Snippet(place, "\n".join(code) + "\n", pending))
                pending = {}
            elif line.strip():
                pending = {}
            i += 1
    return out


SNIPPETS = snippets()


def _has_gpu() -> bool:
    """Whether CuPy sees a GPU (the GPU examples use CuPy's arrays)."""
    try:
        import cupy  # type: ignore[import-not-found]

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:
        return False


def test_the_docs_have_their_python_snippets() -> None:
    places = [s.place for s in SNIPPETS]
    assert any(p.startswith("README.md") for p in places), places
    assert any(p.startswith("docs/PYTHON.md") for p in places), places


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.place for s in SNIPPETS])
def test_snippet_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    d = snippet.directives
    if "skip" in d:
        pytest.skip(f"{snippet.place}: {d['skip']}")
    for need in d.get("needs", "").split():
        if need == "gpu":
            if not _has_gpu():
                pytest.skip(f"{snippet.place}: needs an NVIDIA GPU (CuPy finds none here)")
        elif importlib.util.find_spec(need) is None:
            pytest.skip(f"{snippet.place}: needs {need}, which is not installed here")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "XCACHE_DIR": str(tmp_path / "cache"),
        "XCACHE_CONFIG": str(tmp_path / "config.toml"),
        # PyTensor's compiledir, in this test's directory too.
        "PYTENSOR_FLAGS": f"base_compiledir={tmp_path / 'pytensor'}",
    }
    (tmp_path / "config.toml").write_text("")
    env.pop("XCACHE_FLAGS", None)
    p = subprocess.run(
        [sys.executable, "-c", snippet.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, f"{snippet.place} fails:\n{snippet.code}\n{p.stdout}{p.stderr}"
