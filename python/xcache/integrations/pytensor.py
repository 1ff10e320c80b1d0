"""PyTensor compiles through xcache.

PyTensor (Theano's successor) turns each C thunk of a graph into a CPython extension
module, compiled by ``g++`` into its compiledir under one global lock, and probes the
compiler for its ``-march=native`` equivalent in every process (about 350 ms, compiling
and running a test program). ``install()`` makes its C module compilation go through
xcache instead::

    import xcache.integrations.pytensor as xp
    xp.install()                 # before the first pytensor.function()
    f = pytensor.function([x], pt.exp(x), mode="CVM")

What changes, and what does not:

- **Same source, flags, include dirs, libraries and module name.** The command
  PyTensor would run (``GCC_compiler.compile_str``: ``-g``, PyTensor's compile args,
  ``-I`` its include dirs with numpy's and Python's headers, ``-L``/``-l`` its
  libraries, ``-fvisibility=hidden``) is what xcache runs, with PyTensor's ``cxx``.
  Every header the compiler reads (numpy's, Python.h, PyTensor's own) is part of the
  key, through xcache's dependency tracking.
- **``-march=native`` instead of the probe.** PyTensor expands ``-march=native`` into
  explicit flags so that a compiledir shared between machines is not poisoned; xcache
  puts the host CPU's model and features into the key of any request with
  ``-march=native``, so the adapter passes it as such and the probe never runs (unless
  ``gcc__cxxflags`` names a ``-march`` of its own, which is kept).
- **No compiledir lock, no key files.** ``ModuleCache.module_from_key`` is replaced:
  the module is compiled (or found) by xcache, under xcache's per-key locks, and
  imported from the cache entry. Two processes compiling different graphs never wait
  for each other; N processes asking for one module cost one compile; a process with an
  empty PyTensor compiledir and a warm xcache cache compiles nothing.
- **A module PyTensor has a versioned key for skips code generation.** PyTensor's own
  warm path finds a module by its key (the ops, their C code versions, types, compile
  arguments, config hash: what PyTensor trusts across processes to name one module).
  The adapter keeps, beside each module, a small group (producer
  ``pytensor-module``) that maps that key (pickled and hashed, with PyTensor's
  version) to the module's source and name; a later process with that key reads the
  source from it instead of generating it, and asks xcache for it as before: the
  compiler, the flags and every header are checked as for any request, so an edited
  header or another compiler is still a miss. Unversioned keys (an op without
  ``c_code_cache_version``) are generated every time, as PyTensor compiles them every
  time.
- **``compile_str`` itself** (PyTensor's helper modules ``lazylinker_ext`` and
  ``cutils_ext``, scan, modules without a key) also compiles through xcache, and the
  result is copied to where PyTensor expects it and imported by PyTensor's
  ``dlimport``, as before.

- **PyTensor's Numba backend** (its default mode) keeps its functions through
  :mod:`xcache.integrations.numba`, installed when the backend first converts a graph
  (so that a process using only the C backend never imports Numba): PyTensor's own
  locator still names each function by PyTensor's key, and its data goes to xcache's
  groups (compiledir ``numba-<version>`` beside this cache) instead of
  ``base_compiledir/numba``. A process with an empty ``base_compiledir`` and a warm
  xcache cache compiles nothing, with either backend.

``uninstall()`` restores PyTensor's own functions (and Numba's cache, if this installed
xcache's); ``counters()`` says how many C modules this process found in xcache and how
many it compiled, and how many of those it found by PyTensor's key.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import pickle
import sys
import tempfile
import threading
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import Cache, CompileError, Error, Library

__all__ = ["counters", "install", "installed", "uninstall"]

_lock = threading.Lock()
_cache: Optional[Cache] = None
_originals: Dict[str, Any] = {}
_modules: Dict[Any, types.ModuleType] = {}
_counters = {"hits": 0, "compiles": 0, "memory_hits": 0, "key_hits": 0}

# The producer of the groups that map PyTensor's module keys to the modules' sources.
KEY_PRODUCER = "pytensor-module"


def installed() -> bool:
    """Whether PyTensor currently compiles through xcache."""
    return _cache is not None


def counters() -> Dict[str, int]:
    """This process's modules: ``hits`` (found in xcache's cache), ``compiles`` (the
    compiler ran), ``memory_hits`` (already imported by this process), ``key_hits``
    (of the hits and compiles, those whose source came from PyTensor's key, without
    code generation)."""
    return dict(_counters)


def install(cache: Optional[Cache] = None) -> Cache:
    """Makes PyTensor's C module compilation go through xcache; returns the cache used.

    Call it before the first ``pytensor.function()``. Without ``cache``, one is opened
    as ``xcache.Cache()`` does (``XCACHE_DIR``...), with PyTensor's ``cxx`` as its C++
    compiler and ``cpython-X.Y`` as its runtime tag. A ``cache`` given should use
    PyTensor's ``cxx`` (the ``cxx`` setting) for results identical to PyTensor's.
    Installing twice replaces the cache.
    """
    global _cache
    from pytensor.configdefaults import config
    from pytensor.link.c import cmodule
    from pytensor.link.numba.linker import NumbaLinker

    if not config.cxx:
        raise RuntimeError("PyTensor has no C++ compiler (config.cxx is empty): nothing to compile")
    if cache is None:
        tag = f"cpython-{sys.version_info[0]}.{sys.version_info[1]}"
        cache = Cache(runtime_tag=tag, flags={"cxx": config.cxx})
    with _lock:
        if not _originals:
            _originals["compile_str"] = cmodule.GCC_compiler.__dict__["compile_str"]
            _originals["module_from_key"] = cmodule.ModuleCache.module_from_key
            _originals["march_flags"] = cmodule.GCC_compiler.march_flags
            _originals["fgraph_convert"] = NumbaLinker.fgraph_convert
        cmodule.GCC_compiler.compile_str = staticmethod(_compile_str)
        cmodule.ModuleCache.module_from_key = _module_from_key
        NumbaLinker.fgraph_convert = _fgraph_convert
        user_march = any(
            f.startswith(("-march=", "--march=")) for f in config.gcc__cxxflags.split()
        )
        if cmodule.GCC_compiler.march_flags is None and not user_march:
            cmodule.GCC_compiler.march_flags = ["-march=native"]
        _cache = cache
    return cache


def uninstall() -> None:
    """Restores PyTensor's own compilation. Modules already imported stay in use."""
    global _cache
    from pytensor.link.c import cmodule
    from pytensor.link.numba.linker import NumbaLinker

    with _lock:
        if _originals:
            cmodule.GCC_compiler.compile_str = _originals["compile_str"]
            cmodule.ModuleCache.module_from_key = _originals["module_from_key"]
            NumbaLinker.fgraph_convert = _originals["fgraph_convert"]
            if _originals.get("numba_installed"):
                from . import numba as xn

                xn.uninstall()
            if cmodule.GCC_compiler.march_flags == ["-march=native"]:
                cmodule.GCC_compiler.march_flags = _originals["march_flags"]
            _originals.clear()
        _modules.clear()
        _cache = None


def _fgraph_convert(self: Any, fgraph: Any, **kwargs: Any) -> Any:
    """``NumbaLinker.fgraph_convert``, where PyTensor's Numba backend makes a graph's
    functions (with ``cache=True``): Numba's cache goes through xcache from then on."""
    from . import numba as xn

    with _lock:
        cache = _cache
        if cache is not None and not xn.installed():
            # The Numba adapter's compiledir: this cache's base dir and settings, with
            # Numba's version as the runtime tag.
            xn.install(cache)
            _originals["numba_installed"] = True
    original: Callable[..., Any] = _originals["fgraph_convert"]
    return original(self, fgraph, **kwargs)


def _command_flags(
    include_dirs: Optional[Sequence[str]],
    lib_dirs: Optional[Sequence[str]],
    libs: Optional[Sequence[str]],
    preargs: Optional[Sequence[str]],
    hide_symbols: bool,
) -> List[str]:
    """The flags of PyTensor's ``GCC_compiler.compile_str`` command, in its order, but
    ``cxx -shared``, ``-o FILE`` and the source (xcache's to choose)."""
    from pytensor.configdefaults import config
    from pytensor.link.c import cmodule

    incs = [d for d in (include_dirs or []) if d] + cmodule.std_include_dirs()
    ldirs = [d for d in (lib_dirs or []) if d] + cmodule.std_lib_dirs()
    all_libs = list(libs or []) + cmodule.std_libs()
    flags = ["-g"]
    if config.cmodule__remove_gxx_opt:
        flags.extend(p for p in (preargs or []) if not p.startswith("-O"))
    else:
        flags.extend(preargs or [])
    flags.extend(f"-I{os.path.abspath(d)}" for d in incs)
    flags.extend(f"-L{os.path.abspath(d)}" for d in ldirs)
    if hide_symbols and sys.platform != "win32":
        flags.append("-fvisibility=hidden")
    flags.extend(cmodule.GCC_compiler.linking_patch(ldirs, all_libs))
    return flags


def _build(module_name: str, src_code: str, flags: List[str]) -> Library:
    """Compiles (or finds) a module through xcache; PyTensor's CompileError on failure."""
    cache = _cache
    assert cache is not None, "xcache.integrations.pytensor is not installed"
    if not src_code.endswith("\n"):
        src_code += "\n"  # as PyTensor writes it
    try:
        lib = cache.compile(src_code, lang="c++", flags=flags, name=f"{module_name}.cpp")
    except CompileError as e:
        from pytensor.link.c.exceptions import CompileError as PyTensorCompileError

        raise PyTensorCompileError(
            f"Compilation failed (return status={e.status}):\n{e.command}\n{e.output}\n"
            f"(compiled by xcache; the source is kept at {e.kept_source})"
        ) from e
    with _lock:
        _counters["hits" if lib.hit else "compiles"] += 1
    return lib


def _import_from(module_name: str, path: str) -> types.ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(module_name, path)
    spec = importlib.util.spec_from_file_location(module_name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _compile_str(
    module_name: str,
    src_code: str,
    location: Optional[str] = None,
    include_dirs: Optional[Sequence[str]] = None,
    lib_dirs: Optional[Sequence[str]] = None,
    libs: Optional[Sequence[str]] = None,
    preargs: Optional[Sequence[str]] = None,
    py_module: bool = True,
    hide_symbols: bool = True,
) -> Optional[types.ModuleType]:
    """``GCC_compiler.compile_str`` through xcache: the module is compiled (or found)
    by xcache, written to ``location`` as PyTensor does (``mod.cpp``, the shared
    object, ``__init__.py``) and imported by PyTensor's ``dlimport``."""
    from pytensor.configdefaults import config
    from pytensor.link.c import cmodule

    if not config.cxx:
        from pytensor.link.c.exceptions import MissingGXX

        raise MissingGXX("g++ not available! We can't compile c code.")
    flags = _command_flags(include_dirs, lib_dirs, libs, preargs, hide_symbols)
    lib = _build(module_name, src_code, flags)
    if location is None:
        location = tempfile.mkdtemp(dir=str(config.compiledir))
    with open(os.path.join(location, "mod.cpp"), "w") as f:
        f.write(src_code if src_code.endswith("\n") else src_code + "\n")
    lib_filename = os.path.join(location, f"{module_name}.{cmodule.get_lib_extension()}")
    # A private copy, atomically: the library is pinned while `lib` lives.
    tmp = f"{lib_filename}.xcache-{os.getpid()}-{threading.get_ident()}"
    with open(lib.path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    os.replace(tmp, lib_filename)
    if not py_module:
        return None
    with open(os.path.join(location, "__init__.py"), "w"):
        pass
    module: types.ModuleType = cmodule.dlimport(lib_filename)
    return module


def _module_from_key(self: Any, key: Any, lnk: Any) -> types.ModuleType:
    """``ModuleCache.module_from_key`` through xcache, without PyTensor's compiledir
    lock: the module is compiled (or found) by xcache and imported from its entry."""
    from pytensor.link.c import cmodule

    try:
        with _lock:
            module = _modules[key]
            _counters["memory_hits"] += 1
        return module
    except (KeyError, TypeError):
        pass
    c_compiler = lnk.c_compiler()
    if c_compiler is not cmodule.GCC_compiler:
        original: Callable[..., types.ModuleType] = _originals["module_from_key"]
        return original(self, key, lnk)
    flags = _command_flags(
        lnk.header_dirs(), lnk.lib_dirs(), lnk.libraries(), lnk.compile_args(), True
    )
    material = _key_material(key)
    known = _source_by_key(material) if material is not None else None
    if known is not None:
        name, src = known
        lib = _build(name, src, flags)
        with _lock:
            _counters["key_hits"] += 1
    else:
        mod = lnk.get_dynamic_module()
        src = mod.code()
        name = mod.code_hash  # set by code()
        lib = _build(name, src, flags)
        if material is not None:
            _record_source(material, name, src)
    # Imported from the entry while `lib` pins it; once loaded, the module no longer
    # needs the file (CPython never unloads extension modules).
    module = _import_from(name, lib.path)
    try:
        with _lock:
            _modules[key] = module
    except TypeError:  # an unhashable key: not remembered
        pass
    return module


def _key_material(key: Any) -> Optional[str]:
    """What names PyTensor's module key across processes: its pickle's hash (PyTensor
    keeps its keys pickled, and takes an unpickled key for the module it names), with
    PyTensor's version; ``None`` for a key PyTensor does not keep (unversioned: an op
    without a C code version) or cannot pickle. Equal pickles are equal keys; two
    pickles of one key that differ (an attribute's order) only cost a generation."""
    if not isinstance(key, tuple) or not key or not key[0]:
        return None
    try:
        data = pickle.dumps(key, protocol=4)
    except Exception:  # any key PyTensor itself could not keep
        return None
    import pytensor

    return f"{pytensor.__version__};{hashlib.sha256(data).hexdigest()}"


def _source_by_key(material: str) -> Optional[Tuple[str, str]]:
    """The module name and source recorded for PyTensor's key, or ``None`` (a cache
    fault is a miss)."""
    cache = _cache
    assert cache is not None, "xcache.integrations.pytensor is not installed"
    try:
        group = cache.get_group(KEY_PRODUCER, material)
        if group is None:
            return None
        return group.read("name").decode(), group.read("mod.cpp").decode()
    except (Error, OSError, UnicodeDecodeError, KeyError):
        return None


def _record_source(material: str, name: str, src: str) -> None:
    """Records the module name and source for PyTensor's key; a cache that cannot be
    written only costs the next process a code generation."""
    cache = _cache
    assert cache is not None, "xcache.integrations.pytensor is not installed"
    try:
        cache.put_group(KEY_PRODUCER, material, {"name": name, "mod.cpp": src}, name=name)
    except (Error, OSError):
        pass
