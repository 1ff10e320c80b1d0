"""xcache: a compile service, an on-disk compilation cache and a JIT runtime for
programs that generate C or CUDA at run time.

Hand it source (or an op template with parameters); it derives a content key, compiles
once into a shared object under the cache directory (``~/.cache/xcache`` by default),
loads it and hands back symbols. The next process, or the next CI job, skips the
compiler::

    import ctypes, xcache

    cache = xcache.Cache()                      # XCACHE_DIR, XCACHE_FLAGS, config file
    lib = cache.compile("int add(int a, int b) { return a + b; }")
    add = lib.ctypes_function("add", ctypes.c_int, [ctypes.c_int, ctypes.c_int])
    assert add(2, 3) == 5

    f = cache.elemwise("a*exp(b)+c", 3, dtype="float32")    # a fused numpy kernel
    f(a, b, c, out=out)

``python -m xcache …`` runs the ``xcache`` command; ``python -m xcache demo`` runs
Theano's check1 through this package, beside numpy. See docs/PYTHON.md.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
import types
from datetime import timedelta
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _native
from ._native import (
    CompileError,
    CudaKernel,
    CudaModule,
    Elemwise,
    Error,
    Gemm,
    Group,
    GroupLease,
    Library,
    LockTimeout,
    Reduce,
    RefusedFlagError,
    TemplateError,
    UntrustedCacheError,
)

__version__: str = _native.version()

__all__ = [
    "Cache",
    "CleanAction",
    "CleanReport",
    "CompileError",
    "CudaKernel",
    "CudaModule",
    "Elemwise",
    "Entry",
    "Error",
    "Gemm",
    "Group",
    "GroupLease",
    "Library",
    "LockTimeout",
    "Reduce",
    "RefusedFlagError",
    "Stats",
    "TemplateError",
    "UntrustedCacheError",
]

PathLike = Union[str, "os.PathLike[str]"]
Headers = Union[
    Mapping[str, Union[str, bytes]], Sequence[Union[PathLike, Tuple[str, Union[str, bytes]]]]
]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of the cache, as ``xcache list --json`` prints it."""

    key: str
    source: str
    language: str
    target: str
    template: Optional[str]
    params: Optional[List[Tuple[str, str]]]
    size: int
    disk_size: int
    created: int
    last_use: Optional[int]
    handed_out: Optional[int]
    compile_ms: int
    compiledir: str
    path: str
    status: str


@dataclasses.dataclass(frozen=True)
class Stats:
    """One compiledir's usage counters, as ``xcache stats --json`` prints them."""

    compiledir: str
    current: bool
    hits: int
    memory_hits: int
    misses: int
    compiles: int
    failed_compiles: int
    compile_ms: int
    saved_ms: int
    lock_wait_ms: int
    #: Local misses served by the remote tier, and those it could not serve.
    remote_hits: int = 0
    remote_misses: int = 0
    #: Entries uploaded, bytes fetched and sent, time spent on the remote (ms).
    remote_uploads: int = 0
    remote_bytes_in: int = 0
    remote_bytes_out: int = 0
    remote_ms: int = 0
    #: Remote failures by kind, values refused by the checks, requests not asked
    #: while the breaker was open.
    remote_err_connect: int = 0
    remote_err_timeout: int = 0
    remote_err_auth: int = 0
    remote_err_denied: int = 0
    remote_err_full: int = 0
    remote_rejected: int = 0
    remote_err_other: int = 0
    remote_skipped: int = 0
    #: Entries in it, the apparent bytes of their files (what pruning by size counts),
    #: and the ``max_size`` setting they are held to (0: no limit).
    entries: int = 0
    entries_bytes: int = 0
    max_size: int = 0
    #: Each remote tier's counters (``remote = redis://…;s3://…`` has two): dicts with
    #: ``tier`` (its address, secrets hidden), ``hits``, ``misses``, ``uploads``, … as
    #: ``xcache stats --json`` prints them.
    remote_tiers: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class CleanAction:
    """One thing a clean chose: removed, or kept and why (``skipped``)."""

    kind: str
    name: str
    source: str
    path: str
    bytes: int
    last_use: Optional[int]
    reason: Any
    skipped: Any


@dataclasses.dataclass(frozen=True)
class CleanReport:
    """What ``prune`` or ``clear`` did, as ``xcache prune --json`` prints it."""

    dry_run: bool
    actions: List[CleanAction]
    freed_bytes: int
    removed_entries: int
    skipped: int


def _fields(cls: Any, d: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _report(text: str) -> CleanReport:
    d = json.loads(text)
    d["actions"] = [CleanAction(**_fields(CleanAction, a)) for a in d["actions"]]
    return CleanReport(**_fields(CleanReport, d))


def _python_include_dirs() -> List[str]:
    paths = sysconfig.get_paths()
    dirs = [paths["include"]]
    if paths.get("platinclude") and paths["platinclude"] != paths["include"]:
        dirs.append(paths["platinclude"])
    return dirs


class Cache(_native.Cache):
    """The cache and compile service.

    ``Cache()`` takes its settings where the ``xcache`` command does (``XCACHE_DIR``,
    ``XCACHE_FLAGS``, ``~/.config/xcache/config.toml``); ``base_dir``, ``runtime_tag``
    (e.g. ``"cpython-3.11"``: part of the compiledir's name), ``flags`` (a dict of
    settings, ``{"max_size": "5GiB"}``, or an ``XCACHE_FLAGS`` string) and
    ``lock_timeout`` (seconds; ``LockTimeout`` past it) override them.

    Thread-safe: share one per process. The GIL is released while compiling, hashing
    and waiting for locks, and many threads asking for one key cost one compile.
    """

    def compile_extension(
        self,
        source: Union[str, bytes],
        name: str,
        *,
        lang: str = "c",
        flags: Optional[Sequence[str]] = None,
        include_dirs: Optional[Sequence[PathLike]] = None,
        headers: Optional[Headers] = None,
        register: bool = True,
    ) -> types.ModuleType:
        """Compiles ``source``, a CPython extension module whose init function is
        ``PyInit_<name>``, through the cache, and imports it.

        Python's headers are searched (and, as every header the compiler reads, are
        part of the key); ``include_dirs`` come after them. With ``register``, the
        module is put in ``sys.modules[name]``. The module keeps its library (and so its
        file) alive: ``module.__xcache_library__``.
        """
        lib = self.compile(
            source,
            lang=lang,
            flags=list(flags or []),
            name=f"{name}.c" if lang == "c" else f"{name}.cpp",
            include_dirs=[*_python_include_dirs(), *(include_dirs or [])],
            headers=headers,
        )
        # Imported through a name for the very file that was checked and loaded (the
        # loader then finds it loaded already): never whatever sits at the path now.
        name_of_file = lib._checked_load_name()
        try:
            by_name = name_of_file.path or lib.path
            loader = importlib.machinery.ExtensionFileLoader(name, by_name)
            spec = importlib.util.spec_from_file_location(name, by_name, loader=loader)
            if spec is None:  # pragma: no cover - only for a path importlib refuses
                raise ImportError(f"cannot import {name} from {lib.path}")
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        finally:
            name_of_file.close()
        module.__file__ = lib.path
        module.__xcache_library__ = lib  # type: ignore[attr-defined]
        if register:
            sys.modules[name] = module
        return module

    def with_runtime_tag(self, runtime_tag: str) -> Cache:
        """A cache on this one's base dir, with its settings and lock timeout, under
        another runtime tag (so another compiledir): what an adapter for another
        compiler opens, with that compiler's version as the tag (``numba-0.65.1``), so
        that ``prune --stale`` retires the groups of versions no longer in use."""
        return type(self)(
            runtime_tag=runtime_tag, lock_timeout=self.lock_timeout, _settings_of=self
        )

    def list(self, all: bool = False, sort: str = "name") -> List[Entry]:
        """The entries of the current compiledir (of every compiledir with ``all``),
        sorted by ``name``, ``age`` (newest first), ``size`` (largest first) or ``use``
        (least recently used first)."""
        rows = json.loads(self._list_json(all, sort))
        out = []
        for r in rows:
            if r.get("params") is not None:
                r["params"] = [tuple(p) for p in r["params"]]
            out.append(Entry(**_fields(Entry, r)))
        return out

    def stats(self, zero: bool = False) -> List[Stats]:
        """Usage counters per compiledir (the current one always listed); ``zero``
        resets them after reading."""
        return [Stats(**_fields(Stats, r)) for r in json.loads(self._stats_json(zero))]

    def prune(
        self,
        max_size: Union[str, int, None] = None,
        older_than: Union[str, float, timedelta, None] = None,
        stale: bool = False,
        dry_run: bool = False,
    ) -> CleanReport:
        """Removes least recently used entries down to ``max_size`` (``"1GiB"`` or
        bytes; default: the ``max_size`` setting), and entries unused for
        ``older_than`` (``"30d"``, seconds or a ``timedelta``); with ``stale``, stale
        compiledirs too. Entries in use (a live ``Library`` in any process) are kept."""
        return _report(self._prune_json(max_size, older_than, stale, dry_run))

    def clear(self, force: bool = False, dry_run: bool = False) -> CleanReport:
        """Removes every entry of the current compiledir but those in use (a live
        ``Library`` in any process) and, without ``force``, those handed out within
        the ``handout_grace`` setting."""
        return _report(self._clear_json(force, dry_run))
