"""Numba's ``cache=True`` through xcache.

Numba keeps each cached function as an index (``.nbi``: signatures and machines to
data files, behind a stamp of the source file) and data files (``.nbc``: the pickled
compile result) in ``NUMBA_CACHE_DIR`` or ``__pycache__``. ``install()`` keeps the same
data in xcache's store instead, one *group* per compiled overload::

    import xcache.integrations.numba as xn
    xn.install()               # before importing the modules with cache=True functions

    @numba.njit(cache=True)
    def f(x): ...

It fills Numba's two hooks and holds no logic of its own:

- **The index and data files** (``numba.core.caching.IndexDataCacheFile``, what every
  Numba cache reads and writes through: functions, ``@vectorize``/``@guvectorize``
  kernels, ``@cfunc``, PyTensor's functions) become a ``load(key)``/``save(key, data)``
  over ``Cache.lease_group``: the group's key material is what Numba keys on (the
  function's module, qualified name and disambiguator, its source stamp, the
  signature, the target machine and CPU features, the bytecode and closure hashes) and
  the Numba, llvmlite and Python versions; its one file, ``data.nbc``, holds exactly
  what Numba's data file holds.
- **The locator** of functions in a source file: the source stamp is a hash of the
  file's *contents* (Numba's is its mtime and size), so two machines or checkouts with
  the same file share; and it creates nothing on disk. Other locators (PyTensor's,
  IPython's, zip files) go on as before, and their functions' data also goes through
  xcache.

So nothing is written to ``NUMBA_CACHE_DIR`` or ``__pycache__``; the groups live in the
compiledir ``numba-<version>`` of xcache's base dir, listed, pruned (``prune --stale``
retires old Numba versions), verified and shared (remote tier, bundles) like the rest.

**One compile for N processes.** On a miss, ``load`` takes the group's lease (the key's
exclusive lock) and returns nothing; Numba compiles; ``save`` publishes. Other processes
asking meanwhile wait for the lease, then load. A compile that fails, or a result Numba
refuses to cache, never reaches ``save``: every load, compile and save runs under Numba's
compiler lock, so the lease is abandoned when the thread leaves that lock for the last
time, and the next asker compiles instead of waiting for its lock timeout.

**Trust.** The data is a pickle, loaded as Numba loads its own cache directory's: only
from a cache directory that passes xcache's trust checks (owned by you, not writable by
others). A remote tier should be signed (``remote_sign_key``).

**Publishing behind the call.** ``save`` hands the group to a thread of this module's
that publishes it durably (staged, hashed, fsynced, renamed, as every entry is), so a
compile's first call does not wait for the disk: Numba itself writes its files without
syncing them. The lease stays held until the group is published, so other processes
still wait for it and then load it. At exit the process waits for what is left
(``wait()``, up to ``EXIT_WAIT`` seconds); a process that dies first (killed,
``os._exit``) published nothing of it, and the next one compiles it again. A forked
child leaves its parent's pending groups to the parent. ``install(write_behind=False)``
publishes inside ``save`` instead.

``uninstall()`` restores Numba's own cache for functions decorated after it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import queue
import sys
import threading
import time
import warnings
from typing import Any, Callable, Dict, Optional, Union

from .. import Cache, Error, Group, GroupLease

__all__ = ["EXIT_WAIT", "PRODUCER", "install", "installed", "uninstall", "wait"]

#: The producer name of the groups (``xcache list --producer numba``).
PRODUCER = "numba"
#: The one file of a group: the pickled compile result, as in Numba's ``.nbc`` files.
DATA_FILE = "data.nbc"
#: Bumped when the key material's layout changes.
MATERIAL_VERSION = 1
#: How long an exiting process waits for the groups it still has to publish, seconds.
EXIT_WAIT = 60.0

_lock = threading.Lock()
_cache: Optional[Cache] = None
_originals: Dict[str, Any] = {}


class _Leases(threading.local):
    """This thread's leases between Numba's ``load`` (a miss) and its ``save``, by key
    material. Numba compiles one function at a time per thread, but a compile nests
    its callees' (each with its own lease)."""

    def __init__(self) -> None:
        self.by_material: Dict[str, GroupLease] = {}


_leases = _Leases()


class _Publisher:
    """Runs ``save``'s publishes, in order, on a daemon thread of its own (started at
    the first); ``wait`` blocks until none is left."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._start = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="xcache-numba-publish", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                self._jobs.task_done()

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._jobs.all_tasks_done:
            while self._jobs.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._jobs.all_tasks_done.wait(left)
        return True

    def pending(self) -> int:
        return self._jobs.unfinished_tasks


_publisher = _Publisher()
_write_behind = True


def _forget_parents_jobs() -> None:
    """In a forked child: the parent publishes what it had pending; the child starts
    with none (and with no publishing thread, which fork does not copy)."""
    global _publisher
    _publisher = _Publisher()


os.register_at_fork(after_in_child=_forget_parents_jobs)


def wait(timeout: Optional[float] = None) -> bool:
    """Blocks until every group this process saved is published (or `timeout` seconds
    pass: then False). Exiting does this by itself, up to ``EXIT_WAIT``."""
    return _publisher.wait(timeout)


def _at_exit() -> None:
    left = _publisher.pending()
    if left and not _publisher.wait(EXIT_WAIT):
        warnings.warn(
            f"xcache (numba): {_publisher.pending()} of {left} compiled functions were not "
            f"published within {EXIT_WAIT:.0f} s of exit; the next process compiles them again",
            stacklevel=1,
        )


atexit.register(_at_exit)


def installed() -> bool:
    """Whether Numba's cache currently goes through xcache."""
    return _cache is not None


def install(cache: Optional[Cache] = None, *, write_behind: bool = True) -> Cache:
    """Makes Numba's ``cache=True`` keep its data in xcache; returns the cache used.

    Call it before the functions are decorated (Numba makes a function's cache when
    ``@jit(cache=True)`` runs). The cache's runtime tag is ``numba-<version>``: with
    ``cache``, a cache on its base dir with its settings and that tag; without, one
    opened as ``xcache.Cache()`` does (``XCACHE_DIR``...). Installing again keeps the
    cache in use unless another ``cache`` is given. ``write_behind``: publish compiled
    functions on a thread of their own (the default; see the module's documentation),
    else inside Numba's ``save``.
    """
    global _cache, _write_behind
    _write_behind = write_behind
    import numba
    from numba.core import caching
    from numba.core.compiler_lock import global_compiler_lock

    tag = f"numba-{numba.__version__}"
    with _lock:
        if _cache is not None and cache is None:
            return _cache
        new = cache.with_runtime_tag(tag) if cache is not None else Cache(runtime_tag=tag)
        if not _originals:
            _originals["IndexDataCacheFile"] = caching.IndexDataCacheFile
            caching.IndexDataCacheFile = _IndexDataFile
            # Before Numba's own locators, after any inserted in front of them
            # (PyTensor's keeps its functions).
            locators = caching.CacheImpl._locator_classes
            first = caching.UserProvidedCacheLocator
            locators.insert(locators.index(first) if first in locators else 0, _Locator)
            release = global_compiler_lock.release
            _originals["release"] = release
            global_compiler_lock.release = _releasing(release, global_compiler_lock)
        _cache = new
    return new


def uninstall() -> None:
    """Restores Numba's own cache for functions decorated from now on (those decorated
    before keep loading and saving through xcache while it is installed, and neither
    load nor save once it is not)."""
    global _cache
    from numba.core import caching
    from numba.core.compiler_lock import global_compiler_lock

    with _lock:
        if _originals:
            caching.IndexDataCacheFile = _originals["IndexDataCacheFile"]
            if _Locator in caching.CacheImpl._locator_classes:
                caching.CacheImpl._locator_classes.remove(_Locator)
            # The instance attribute set by install() shadowed the class's method.
            del global_compiler_lock.release
            _originals.clear()
        _cache = None


def _releasing(release: Any, compiler_lock: Any) -> Any:
    """Numba's compiler lock's ``release``, then, once this thread holds it no more,
    abandons the leases it still holds: their compile failed or was not cacheable (a
    save would have published them), and other processes wait on them."""

    def release_and_abandon() -> None:
        release()
        if _leases.by_material and not compiler_lock.is_locked():
            left, _leases.by_material = _leases.by_material, {}
            for lease in left.values():
                lease.abandon()

    return release_and_abandon


def _warn(what: str, e: BaseException) -> None:
    warnings.warn(f"xcache (numba): {what}: {e}; Numba compiles instead", stacklevel=3)


def _describe(x: Any) -> str:
    """Key material for a piece of Numba's index key: its types by class and name
    (Numba compares types by class and key; the name spells the key out), the rest
    by ``repr``."""
    from numba.core import types

    if isinstance(x, (tuple, list)):
        inner = ", ".join(_describe(v) for v in x)
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, types.Type):
        return f"{type(x).__name__}[{x}]"
    args = getattr(x, "args", None)
    if isinstance(args, tuple) and hasattr(x, "return_type"):  # a typing Signature
        recvr = getattr(x, "recvr", None)
        return f"sig{_describe(args)}->{_describe(x.return_type)} recvr={_describe(recvr)}"
    return repr(x)


class _IndexDataFile:
    """``numba.core.caching.IndexDataCacheFile`` through xcache: ``load``, ``save`` and
    ``flush`` of one function's cache (its file name base and source stamp), each
    overload a group."""

    def __init__(self, cache_path: Any, filename_base: str, source_stamp: Any) -> None:
        import llvmlite
        import numba

        self._name = filename_base
        self._flushed = False
        py = sys.version_info
        self._head = (
            f"xcache-numba {MATERIAL_VERSION}\n"
            f"function: {filename_base}\n"
            f"source: {source_stamp!r}\n"
            f"numba: {numba.__version__}\nllvmlite: {llvmlite.__version__}\n"
            f"python: {sys.implementation.name} {py[0]}.{py[1]}"
            f"{getattr(sys, 'abiflags', '')}\n"
        )

    def _material(self, key: Any) -> str:
        return f"{self._head}key: {_describe(key)}\n"

    def _group_name(self, key: Any) -> str:
        sig = key[0] if isinstance(key, tuple) and key else key
        return f"{self._name} {_describe(sig)}"

    def load(self, key: Any) -> Any:
        """The data Numba saved under ``key``, or None (and, on a miss under Numba's
        compiler lock, this thread holds the group's lease until ``save``)."""
        from numba.core.compiler_lock import global_compiler_lock

        cache = _cache
        if cache is None or self._flushed:
            return None
        material = self._material(key)
        if material in _leases.by_material:
            return None  # this thread is compiling it already (a nested compile)
        name = self._group_name(key)
        got: Union[Group, GroupLease, None]
        try:
            if global_compiler_lock.is_locked():
                got = cache.lease_group(PRODUCER, material, name)
            else:  # no compiler lock to end an unsaved lease: no single flight
                got = cache.get_group(PRODUCER, material, name)
        except Error as e:
            _warn(f"could not look up {name}", e)
            return None
        if got is None:
            return None
        if isinstance(got, GroupLease):
            _leases.by_material[material] = got
            return None
        try:
            return pickle.loads(got.read(DATA_FILE))
        except Exception as e:  # a group of another make: compile, as Numba would
            _warn(f"could not load {name}", e)
            return None

    def save(self, key: Any, data: Any) -> None:
        """Publishes ``data`` (Numba's reduced compile result) under ``key``."""
        from numba.core.serialize import dumps

        cache = _cache
        if cache is None or self._flushed:
            return
        material = self._material(key)
        name = self._group_name(key)
        lease = _leases.by_material.pop(material, None)
        try:
            payload = dumps(data)
        except Exception:
            if lease is not None:
                lease.abandon()
            raise

        def publish() -> None:
            try:
                if lease is not None:
                    lease.add(DATA_FILE, payload)
                    lease.publish()
                else:
                    cache.put_group(PRODUCER, material, {DATA_FILE: payload}, name)
            except Exception as e:  # never lost silently, never the caller's failure
                _warn(f"could not save {name}", e)
            finally:
                if lease is not None:
                    lease.abandon()  # a no-op once published

        if _write_behind:
            _publisher.submit(publish)
        else:
            publish()

    def flush(self) -> None:
        """Numba's ``recompile()``: this function's cached overloads are not to be used
        again. Groups are never replaced (another process may be loading one), so this
        process stops loading and saving this function instead."""
        self._flushed = True


class _Locator:
    """Numba's locator for a function in a source file, with the file's contents as
    its stamp and nothing created on disk."""

    def __init__(self, py_func: Any, py_file: str, stamp: str) -> None:
        self._py_file = py_file  # read by Numba's "cannot cache" warning
        self._lineno = py_func.__code__.co_firstlineno
        self._stamp = stamp

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Optional[_Locator]:
        if _cache is None or not os.path.isfile(py_file):
            return None  # "<string>", "<ipython-...>", a zip: another locator's
        try:
            with open(py_file, "rb") as f:
                stamp = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None
        return cls(py_func, py_file, stamp)

    def ensure_cache_path(self) -> None:
        """Nothing to create: the data goes to xcache."""

    def get_cache_path(self) -> str:
        """Where the data is kept (``dispatcher.stats.cache_path``): the compiledir."""
        cache = _cache
        return str(cache.compiledir) if cache is not None else ""

    def get_source_stamp(self) -> str:
        return self._stamp

    def get_disambiguator(self) -> str:
        return str(self._lineno)
