"""Triton's kernel cache in xcache's store.

Triton asks a *cache manager* for its compiled kernels, through one environment
variable::

    TRITON_CACHE_MANAGER=xcache.integrations.triton:CacheManager python train.py

Each kernel Triton compiles (its cubin, PTX, IRs and the metadata JSON) becomes one
xcache *group* of producer ``triton``, in a compiledir of its own per Triton version
(runtime tag ``triton-<version>``), found and published by the store's protocol: per-key
lock, staging and rename, hashes checked on every hit, pins, LRU and age eviction, the
remote tier (``remote = redis://…``), bundles, ``xcache list/prune/verify``. The cache
is opened as ``xcache.Cache()`` opens it (``XCACHE_DIR``, ``XCACHE_FLAGS``, the config
file); ``TRITON_CACHE_DIR`` is not written.

How Triton's four hooks map onto the store (``triton/compiler/compiler.py``,
``compile()``):

- **Key.** Triton constructs one manager per kernel with its key: a digest of Triton's
  own hash (its sources and ``libtriton``), the kernel's source and signature, the
  backend's hash, the compile options and the cache-invalidating environment. The
  backend's hash holds the target: ``ptxas`` version and compute capability for CUDA
  (``CUDABackend.hash``), the whole ``GPUTarget`` for HIP; the options hold the arch
  again (``sm90``, or ``TRITON_OVERRIDE_ARCH``). So a kernel built for sm_80 has
  another key than the same kernel for sm_90 and is never served for it. (The target
  is not added to xcache's material, and cannot be: the manager sees it only in the
  metadata at ``put_group``, but must look the kernel up by ``get_group`` before
  compiling. ``python/tests/test_triton.py`` checks that the key separates them.)
  The group's material is that key and the group's name (the metadata file's name).
- **get_group(name)** looks the group up here, then on the remote tier. Found: its
  paths, pinned while the manager lives (Triton reads them into the ``CompiledKernel``
  before it drops the manager). Not found: the manager takes the group's *lease* and
  returns None, so that processes asking for one cold kernel compile it once (the
  others wait for the lease, within ``lock_timeout``, then hit).
- **put(data, name)** during a compile writes the file into the manager's scratch
  directory and returns that path: Triton may read or rewrite it before the group is
  complete (``USE_IR_LOC``). Nothing reaches the store yet, so no reader ever sees half
  a kernel. (The lease's own staging would do until publishing, but publishing renames
  it into the entry, and Triton reads the paths after ``put_group``.)
- **put_group(name, group)** publishes every file of ``group`` at once through the
  lease (or, when another process published the kernel meanwhile, keeps theirs), then
  points ``group``'s paths at the published, pinned files, so that the
  ``CompiledKernel`` Triton builds from that very dict (and the profiler hooks that
  read it later) see the store's files, as on a hit. The scratch directory goes with
  the manager.
- **get_file(name)** finds files this manager staged or holds, a file put on its own
  (Triton's launcher modules and autotuning results: ``put`` without a group publishes
  at once, as a group of one), and a file of a published kernel. A miss on a file on
  its own takes its lease, for the ``put`` that follows.
- A manager dropped without publishing (Triton failed) abandons its leases: nothing is
  published and the next asker compiles. One that lingers (kept alive by a traceback,
  as IPython keeps the last one) gives its lease up when the same thread asks for the
  kernel again, rather than that thread waiting on itself.

Managers for ``TRITON_KERNEL_OVERRIDE`` and ``TRITON_KERNEL_DUMP`` (``override=True``,
``dump=True``) are not caches: they are Triton's own ``FileCacheManager``, reading
``TRITON_OVERRIDE_DIR`` and writing ``TRITON_DUMP_DIR`` as without xcache.

``TRITON_REMOTE_CACHE_BACKEND`` is not needed: Triton reads it only in its own
``RemoteCacheManager``, which this manager replaces; xcache's remote tier carries whole
kernels instead (read-through on a miss, write-back on publish, verified like any
entry).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
import weakref
from typing import Dict, List, Optional, Tuple, Union

from triton import __version__ as _triton_version
from triton.runtime.cache import CacheManager as _TritonCacheManager
from triton.runtime.cache import FileCacheManager

from .. import Cache, Error, Group, GroupLease

__all__ = ["PRODUCER", "CacheManager", "cache", "runtime_tag"]

#: The producer of Triton's groups (the compiler `xcache show` names).
PRODUCER = "triton"

_caches: Dict[Tuple[Optional[str], ...], Cache] = {}
_lock = threading.Lock()
# What Cache() reads its settings from: a change (a test's own XCACHE_DIR) opens
# another cache.
_SETTINGS = ("XCACHE_DIR", "XCACHE_FLAGS", "XCACHE_CONFIG")


# The leases this process holds, by material: the thread that took each and the manager
# holding it. A thread asking again for a kernel whose lease it holds is past that
# compile: it failed (an exception, a KeyboardInterrupt) and its manager lingers in a
# traceback (IPython's last one, a test report). That lease is given up rather than
# waited for, which would be a wait on itself until lock_timeout. Another thread's lease
# is waited for: that is single flight.
_leases_held: Dict[str, Tuple[int, weakref.ref[CacheManager]]] = {}


def runtime_tag() -> str:
    """The runtime tag of Triton's compiledir: ``triton-<Triton's version>``."""
    return f"triton-{_triton_version}"


def cache() -> Cache:
    """The cache Triton's kernels go to: ``xcache.Cache(runtime_tag=runtime_tag())``,
    opened once per process (per ``XCACHE_DIR``, ``XCACHE_FLAGS`` and
    ``XCACHE_CONFIG``)."""
    settings = tuple(os.environ.get(v) for v in _SETTINGS)
    with _lock:
        c = _caches.get(settings)
        if c is None:
            c = _caches[settings] = Cache(runtime_tag=runtime_tag())
        return c


def _group_material(key: str, name: str) -> str:
    return f"group {key} {name}"


def _file_material(key: str, name: str) -> str:
    return f"file {key} {name}"


def _kernel_name(filename: str) -> str:
    # Triton names a kernel's files f"{kernel}.{ext}" and its metadata f"{kernel}.json";
    # a kernel name (a Python identifier) has no dot.
    return filename.split(".", 1)[0]


class CacheManager(_TritonCacheManager):  # type: ignore[misc]
    """Triton's cache manager, in xcache's store: one per kernel, made by Triton
    (``TRITON_CACHE_MANAGER=xcache.integrations.triton:CacheManager``). See the module
    documentation."""

    def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
        self.key = key
        # Override and dump directories are Triton's own business: not a cache.
        self._triton: Optional[FileCacheManager] = (
            FileCacheManager(key, override=override, dump=dump) if override or dump else None
        )
        self._cache = cache() if self._triton is None else None
        # name → path of what this manager staged, found or published.
        self._files: Dict[str, str] = {}
        # What keeps those paths valid: pins of groups found or published.
        self._held: List[Group] = []
        # Leases taken on a miss, by material, for the put/put_group that follows.
        self._leases: Dict[str, GroupLease] = {}
        # Set by get_group: files put after it belong to a group (published by
        # put_group), else each is published on its own.
        self._in_group = False
        self._scratch: Optional[str] = None

    # -- Triton's hooks ---------------------------------------------------------------

    def get_group(self, filename: str) -> Optional[Dict[str, str]]:
        if self._triton is not None:
            return self._triton.get_group(filename)  # type: ignore[no-any-return]
        self._in_group = True
        got = self._lease(_group_material(self.key, filename), filename)
        return dict(got.files) if got is not None else None

    def put(self, data: Union[bytes, str, object], filename: str, binary: bool = True) -> str:
        if self._triton is not None:
            return self._triton.put(data, filename, binary=binary)  # type: ignore[no-any-return]
        # As FileCacheManager: bytes are written as they are, anything else (an IR
        # module) as its text.
        raw = data if isinstance(data, bytes) else str(data).encode("utf-8")
        if self._in_group:
            return self._stage(filename, raw)
        published = self._publish(_file_material(self.key, filename), {filename: raw}, filename)
        return published[filename]

    def put_group(self, filename: str, group: Dict[str, str]) -> Optional[str]:
        if self._triton is not None:
            return self._triton.put_group(filename, group)  # type: ignore[no-any-return]
        files: Dict[str, bytes] = {}
        for name, path in group.items():
            with open(path, "rb") as f:
                files[name] = f.read()
        published = self._publish(_group_material(self.key, filename), files, filename)
        # The dict Triton builds its CompiledKernel from: the store's files from now on.
        group.update({n: published[n] for n in group if n in published})
        return group.get(filename)

    def get_file(self, filename: str) -> Optional[str]:
        if self._triton is not None:
            return self._triton.get_file(filename)  # type: ignore[no-any-return]
        if filename not in self._files:
            material = _file_material(self.key, filename)
            if self._lease(material, filename) is None:
                # Perhaps a file of a published kernel (looked for here only).
                c = self._cache
                assert c is not None
                kernel = _kernel_name(filename)
                g = c.get_group(PRODUCER, _group_material(self.key, f"{kernel}.json"), kernel)
                if g is not None and filename in g.files:
                    self._give_up(material)
                    self._hold(g)
        return self._files.get(filename)

    # -- the store ------------------------------------------------------------------

    def _lease(self, material: str, filename: str) -> Optional[Group]:
        """The entry `material`, held; or None, with its lease kept for the put that
        fills it (one lease per material: a second miss on it returns None)."""
        if material in self._leases:
            return None
        c = self._cache
        assert c is not None
        with _lock:
            thread, holder = _leases_held.pop(material, (None, None))
        earlier = holder() if holder is not None else None
        if earlier is not None and thread == threading.get_ident():
            earlier._give_up(material)
        got = c.lease_group(PRODUCER, material, _kernel_name(filename))
        if isinstance(got, GroupLease):
            self._leases[material] = got
            with _lock:
                _leases_held[material] = (threading.get_ident(), weakref.ref(self))
            return None
        self._hold(got)
        return got

    def _take_lease(self, material: str) -> Optional[GroupLease]:
        lease = self._leases.pop(material, None)
        if lease is not None:
            with _lock:
                if _leases_held.get(material, (None, None))[1] == weakref.ref(self):
                    del _leases_held[material]
        return lease

    def _give_up(self, material: str) -> None:
        lease = self._take_lease(material)
        if lease is not None:
            lease.abandon()

    def _publish(self, material: str, files: Dict[str, bytes], filename: str) -> Dict[str, str]:
        """Publishes `files` as the entry `material` (through this manager's lease, else
        a new one; an entry already there is kept as it is) and returns its paths. A
        file the store refuses (a name it does not take) is not cached, with a warning:
        the compile itself succeeded."""
        c = self._cache
        assert c is not None
        try:
            got = self._take_lease(material) or c.lease_group(
                PRODUCER, material, _kernel_name(filename)
            )
            if isinstance(got, GroupLease):
                with got:  # abandoned if a file is refused
                    for name, data in files.items():
                        got.add(name, data)
                    g = got.publish()
            else:
                g = got
        except Error as e:
            warnings.warn(
                f"xcache: Triton's {filename} (key {self.key}) is not cached: {e}",
                stacklevel=3,
            )
            return {name: self._stage(name, data) for name, data in files.items()}
        self._hold(g)
        return dict(g.files)

    def _hold(self, g: Group) -> None:
        self._held.append(g)
        self._files.update(g.files)

    def _stage(self, filename: str, data: bytes) -> str:
        """Writes `filename` into this manager's scratch directory (made on first use,
        removed with the manager); returns its path."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="xcache-triton-")
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        path = os.path.join(self._scratch, os.path.basename(filename))
        with open(path, "wb") as f:
            f.write(data)
        self._files[filename] = path
        return path
