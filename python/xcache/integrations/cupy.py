"""CuPy's kernel binaries in xcache's store.

CuPy compiles each kernel (``ElementwiseKernel``, ``ReductionKernel``, ``RawKernel``,
``RawModule``, its own ufuncs) with NVRTC or nvcc and keeps the binary in a *kernel
cache backend*, by default files in ``CUPY_CACHE_DIR`` (``~/.cupy/kernel_cache``).
CuPy 14.1 and later let another backend take its place
(``cupy.cuda.compiler._set_kernel_cache_backend``; experimental in CuPy). ``install()``
puts xcache's there::

    import xcache.integrations.cupy as xc
    xc.install()                 # before the first kernel is compiled
    k = cupy.ElementwiseKernel("float32 x", "float32 y", "y = x * 2", "double_it")

What changes, and what does not:

- **Same key, same binary.** CuPy names each binary by its own key (a SHA-1 of the
  source, options, arch, NVRTC version and CuPy's headers: ``<hex>.cubin``, ``.ltoir``,
  ``.hsaco``); that name is the group's key material, and the binary CuPy hands over
  (a cubin, or with ``name_expressions`` CuPy's payload around it) is what comes back,
  byte for byte. The arch is in CuPy's key, so another GPU's binary is never served.
- **The store's protocol** instead of files in one directory: a group of producer
  ``cupy`` in a compiledir per CuPy version (runtime tag ``cupy-<version>``, so that
  ``xcache prune --stale`` retires a CuPy upgrade's binaries, which CuPy's own key does
  not separate), hashed and verified on every load (CuPy checks a SHA-1 prefix of its
  own), size-limited and evicted (CuPy's directory grows without limit), shared through
  the remote tier and bundles.
- **``load(name)``** asks the cache, then its remote tier. **``save(name, binary,
  source)``** publishes the binary (with the source as ``<name>.cu`` when
  ``CUPY_CACHE_SAVE_CUDA_SOURCE`` is set, as CuPy's backend does); one another process
  published first is kept.
- **Not single-flight.** Processes compiling one cold kernel at the same moment each
  compile it (as with CuPy's own cache); the first to publish wins. CuPy has no hook
  between a miss and its compile failing, so a lease taken at ``load`` could outlive
  the compile.
- **Untouched:** ``CUPY_CACHE_IN_MEMORY`` (CuPy then asks no backend), CuPy's in-memory
  kernel caches, and the caches that do not go through the backend: Jitify's
  (``jitify_cache``) and cuFFT callbacks' (``callback_cache``), still under
  ``CUPY_CACHE_DIR``.

``uninstall()`` puts back the backend CuPy had.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from typing import Any, Dict, Optional, Union

from .. import Cache, Error, GroupLease

__all__ = ["PRODUCER", "KernelCacheBackend", "install", "installed", "uninstall"]

#: The producer of CuPy's groups (the compiler `xcache show` names).
PRODUCER = "cupy"

_lock = threading.Lock()
_previous: Dict[str, Any] = {}
_installed: Optional[KernelCacheBackend] = None


class KernelCacheBackend:
    """CuPy's kernel cache backend (``load``, ``save``) on an xcache ``Cache``."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def load(self, name: str) -> Optional[bytes]:
        """The binary CuPy saved as `name`, from the cache or its remote tier; None
        when neither has it."""
        got = self.cache.lease_group(PRODUCER, name, name)
        if isinstance(got, GroupLease):
            got.abandon()  # CuPy compiles and calls save(): see the module notes
            return None
        return got.read(name) if name in got.files else None

    def save(self, name: str, cubin: bytes, source: str) -> None:
        """Publishes `cubin` as `name`. A binary the store cannot take is not cached,
        with a warning: CuPy's compile itself succeeded."""
        files: Dict[str, Union[bytes, str]] = {name: cubin}
        if os.environ.get("CUPY_CACHE_SAVE_CUDA_SOURCE"):
            files[f"{name}.cu"] = source
        try:
            self.cache.put_group(PRODUCER, name, files, _kernel_name(source) or name)
        except Error as e:
            warnings.warn(f"xcache: CuPy's kernel {name} is not cached: {e}", stacklevel=2)


def _kernel_name(source: str) -> Optional[str]:
    # What `xcache list` shows: the first kernel the source defines.
    m = re.search(r"__global__\s+(?:void\s+)?(\w+)\s*\(", source)
    return m.group(1) if m else None


def installed() -> bool:
    """Whether CuPy's kernel binaries currently go to xcache."""
    return _installed is not None


def install(cache: Optional[Cache] = None) -> Cache:
    """Makes CuPy keep its kernel binaries in xcache; returns the cache used.

    Without `cache`, one is opened as ``xcache.Cache()`` opens it (``XCACHE_DIR``,
    ``XCACHE_FLAGS``, the config file) with ``cupy-<CuPy's version>`` as its runtime tag.
    Raises ``RuntimeError`` where CuPy is missing or has no kernel cache backend hook
    (CuPy before 14.1).
    """
    global _installed
    try:
        import cupy
        from cupy.cuda import compiler
    except ImportError as e:
        raise RuntimeError(f"xcache.integrations.cupy: CuPy is not importable here ({e})") from e
    hook = getattr(compiler, "_set_kernel_cache_backend", None)
    if hook is None:
        raise RuntimeError(
            f"CuPy {cupy.__version__} has no kernel cache backend hook "
            "(cupy.cuda.compiler._set_kernel_cache_backend, added in CuPy 14.1): its "
            "kernels stay in its own cache (CUPY_CACHE_DIR). Fix: upgrade CuPy "
            "(pip install -U cupy-cuda12x, or the package for your CUDA)"
        )
    if cache is None:
        cache = Cache(runtime_tag=f"cupy-{cupy.__version__}")
    backend = KernelCacheBackend(cache)
    with _lock:
        if not _previous:
            _previous["backend"] = compiler._kernel_cache_backend
        hook(backend)
        _installed = backend
    return cache


def uninstall() -> None:
    """Puts back the kernel cache backend CuPy had before ``install()``."""
    global _installed
    with _lock:
        if _previous:
            from cupy.cuda import compiler

            compiler._set_kernel_cache_backend(_previous.pop("backend"))
        _installed = None
