"""Cache.compile, Library, symbols, ctypes, extensions, errors."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_python

import xcache

ADD = "int add(int a, int b) { return a + b; }\n"


def test_compile_loads_and_hits(cache: xcache.Cache) -> None:
    lib = cache.compile(ADD, name="add.c")
    assert not lib.hit and lib.compile_ms >= 0
    assert len(lib.key) == 64 and os.path.isfile(lib.path)
    assert lib.path.startswith(str(cache.compiledir))
    add = lib.ctypes_function("add", ctypes.c_int, [ctypes.c_int, ctypes.c_int])
    assert add(2, 3) == 5
    assert isinstance(lib.symbol("add"), int)
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int)(lib.symbol("add"))
    assert fn(40, 2) == 42
    again = cache.compile(ADD, name="add.c")
    assert again.hit and again.key == lib.key and again.path == lib.path
    # A fresh Cache (a fresh runtime, as a new process would be) hits on disk.
    other = xcache.Cache(base_dir=cache.base_dir)
    disk = other.compile(ADD)
    assert disk.hit and disk.key == lib.key
    assert "hit" in repr(disk)


def test_bytes_flags_languages_and_names(cache: xcache.Cache) -> None:
    lib = cache.compile(b"int f(void) { return N; }", flags=["-DN=7", "-O2"])
    f = lib.ctypes_function("f", ctypes.c_int, [])
    assert f() == 7
    other = cache.compile(b"int f(void) { return N; }", flags=["-DN=8", "-O2"])
    assert other.key != lib.key
    cxx = cache.compile('extern "C" int g() { return static_cast<int>(sizeof(bool)); }', lang="c++")
    assert cxx.ctypes_function("g", ctypes.c_int, [])() == 1
    with pytest.raises(ValueError, match="unknown language"):
        cache.compile("", lang="fortran")
    with pytest.raises(TypeError, match="list of strings"):
        cache.compile("int x;", flags="-O2")  # type: ignore[arg-type]


def test_include_dirs_and_headers_are_in_the_identity(cache: xcache.Cache, tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "k.h").write_text("#define K 3\n")
    src = '#include "k.h"\n#include "extra.h"\nint k(void) { return K * E; }\n'
    lib = cache.compile(src, include_dirs=[inc], headers={"extra.h": "#define E 5\n"})
    assert lib.ctypes_function("k", ctypes.c_int, [])() == 15
    assert cache.compile(src, include_dirs=[inc], headers={"extra.h": "#define E 5\n"}).hit
    # Another extra header content: another key.
    lib2 = cache.compile(src, include_dirs=[str(inc)], headers=[("extra.h", b"#define E 7\n")])
    assert lib2.key != lib.key
    assert lib2.ctypes_function("k", ctypes.c_int, [])() == 21
    # Headers given as paths are read now and named by their file name.
    (tmp_path / "extra.h").write_text("#define E 11\n")
    fresh = xcache.Cache(base_dir=cache.base_dir)
    lib3 = fresh.compile(src, include_dirs=[inc], headers=[tmp_path / "extra.h"])
    assert lib3.ctypes_function("k", ctypes.c_int, [])() == 33
    # A header in an include dir is tracked: edit it and a fresh runtime recompiles.
    (inc / "k.h").write_text("#define K 4\n")
    fresh2 = xcache.Cache(base_dir=cache.base_dir)
    lib4 = fresh2.compile(src, include_dirs=[inc], headers={"extra.h": "#define E 5\n"})
    assert not lib4.hit
    assert lib4.ctypes_function("k", ctypes.c_int, [])() == 20


def test_compile_error_fields(cache: xcache.Cache) -> None:
    with pytest.raises(xcache.CompileError) as info:
        cache.compile("int broken( {\n", name="broken.c")
    e = info.value
    assert isinstance(e, xcache.Error) and e.kind == "compile"
    assert "-shared" in e.command and "-o" in e.command
    assert "broken.c" in e.output and "error" in e.output
    assert os.path.isfile(e.kept_source)
    assert Path(e.kept_source).read_text() == "int broken( {\n"
    assert e.status == 1


def test_missing_symbol_and_invalid_requests(cache: xcache.Cache) -> None:
    lib = cache.compile(ADD)
    with pytest.raises(xcache.Error) as info:
        lib.symbol("nope")
    assert info.value.kind == "missing-symbol" and "nope" in str(info.value)
    with pytest.raises(xcache.Error) as info2:
        cache.compile(ADD, flags=["-o/tmp/elsewhere.so"])
    assert info2.value.kind == "invalid-request"


def test_refused_flags_raise_refused_flag_error_naming_the_flag(
    cache: xcache.Cache, tmp_path: Path
) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    # `as` in the directory -B names would run if the flag got through.
    (evil / "as").write_text(f"#!/bin/sh\ntouch {evil}/ran\nexit 1\n")
    (evil / "as").chmod(0o755)
    cases = [
        ([f"-B{evil}"], f"-B{evil}", "run programs"),
        (["--prefix", str(evil)], f"--prefix {evil}", "run programs"),
        (["-save-temps"], "-save-temps", "chooses the output"),
        ([f"-Wa,-a={evil}/listing"], f"-Wa,-a={evil}/listing", "writes files"),
        (["-MMD"], "-MMD", "tracks every header"),
    ]
    for flags, named, why in cases:
        with pytest.raises(xcache.RefusedFlagError) as info:
            cache.compile(ADD, flags=flags)
        e = info.value
        assert isinstance(e, xcache.Error) and e.kind == "invalid-request"
        assert e.flag == named and named in str(e), str(e)
        assert why in e.reason and e.fix, str(e)
    with pytest.raises(xcache.RefusedFlagError) as info2:
        cache.template(
            "elemwise", {"dtype": "float32", "arity": 1, "expr": "a"}, flags=["-fplugin=/x.so"]
        )
    assert info2.value.flag == "-fplugin=/x.so" and "allowed_flags" in info2.value.fix
    assert not (evil / "ran").exists() and not (evil / "listing").exists()
    assert list(evil.iterdir()) == [evil / "as"]
    # A flag the user vouches for with `allowed_flags` passes.
    vouched = xcache.Cache(
        base_dir=tmp_path / "cache2", flags={"allowed_flags": "-fdebug-prefix-map=*"}
    )
    lib = vouched.compile(ADD, flags=["-fdebug-prefix-map=/a=/b", "-O2"])
    add = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int)(lib.symbol("add"))
    assert add(2, 3) == 5


def test_template_errors_name_parameter_and_offset(cache: xcache.Cache) -> None:
    with pytest.raises(xcache.TemplateError) as info:
        cache.elemwise("a + * b", 2)
    e = info.value
    assert e.kind == "template" and e.template == "c/elemwise"
    assert e.parameter == "expr" and e.offset == 4, str(e)
    with pytest.raises(xcache.TemplateError) as info2:
        cache.elemwise("a", 1, dtype="float16")
    assert info2.value.parameter == "dtype" and info2.value.offset is None
    with pytest.raises(xcache.TemplateError) as info3:
        cache.template("elemwise", {"dtyp": "float32"})
    assert info3.value.parameter == "dtyp"
    with pytest.raises(xcache.TemplateError) as info4:
        cache.template("no-such-template")
    assert info4.value.parameter is None


def test_untrusted_cache(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    base.mkdir()
    os.chmod(base, 0o777)
    with pytest.raises(xcache.UntrustedCacheError) as info:
        xcache.Cache(base_dir=base).compile(ADD)
    e = info.value
    assert e.kind == "untrusted" and Path(e.path) == base
    assert "writable" in e.reason and e.fix


def test_settings_runtime_tag_and_flags(tmp_path: Path) -> None:
    c = xcache.Cache(
        base_dir=tmp_path / "c",
        runtime_tag="cpython-3.11",
        flags={"max_size": "5GiB", "opt_level": 2},
    )
    assert c.runtime_tag == "cpython-3.11"
    assert "cpython-3.11" in str(c.compiledir)
    c2 = xcache.Cache(base_dir=tmp_path / "c", flags="opt_level=1")
    assert c2.runtime_tag == "" and c2.compiledir != c.compiledir
    with pytest.raises(xcache.Error) as info:
        xcache.Cache(flags={"no_such_setting": "1"})
    assert info.value.kind == "config"
    with pytest.raises(TypeError):
        xcache.Cache(flags=3)  # type: ignore[arg-type]


def test_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XCACHE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("XCACHE_FLAGS", "max_size=1GiB")
    c = xcache.Cache()
    assert Path(c.base_dir) == tmp_path / "from-env"


def test_threads_racing_on_one_key_cost_one_compile(cache: xcache.Cache) -> None:
    src = "int racer(void) { return 99; }\n"
    barrier = threading.Barrier(8)
    results: list = []

    def work() -> None:
        barrier.wait()
        results.append(cache.compile(src))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert sum(not r.hit for r in results) == 1
    assert len({r.path for r in results}) == 1
    stats = {s.compiledir: s for s in cache.stats()}
    current = next(s for s in stats.values() if s.current)
    assert current.compiles == 1


def test_processes_racing_on_one_key_cost_one_compile(tmp_path: Path) -> None:
    import subprocess

    base = tmp_path / "race"
    code = (
        "import xcache, sys\n"
        "lib = xcache.Cache(base_dir=sys.argv[1]).compile('int r(void) { return 1; }')\n"
        "print('miss' if not lib.hit else 'hit')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(base)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == ["hit", "hit", "hit", "miss"]


def test_lock_timeout(tmp_path: Path) -> None:
    """An entry's lock held exclusively by someone else (here a plain flock on its lock
    file, as a builder or a collector holds it), and a cache with a lock_timeout: the
    request fails with LockTimeout naming the holder instead of waiting."""
    import fcntl

    base = tmp_path / "lt"
    c = xcache.Cache(base_dir=base, lock_timeout=0.05)
    assert c.lock_timeout == pytest.approx(0.05)
    lib = c.compile("int t(void) { return 1; }")
    entry_key = Path(lib.path).parent.name  # the result's key (headers tracked)
    lock = Path(c.compiledir) / "locks" / entry_key[:2] / f"{entry_key}.lock"
    del lib
    fresh = xcache.Cache(base_dir=base, lock_timeout=0.05)
    with open(lock, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"pid={os.getpid()} host=test\n")
        f.flush()
        with pytest.raises(xcache.LockTimeout) as info:
            fresh.compile("int t(void) { return 1; }")
        fcntl.flock(f, fcntl.LOCK_UN)
    e = info.value
    assert e.kind == "lock-timeout" and Path(e.path) == lock
    # The holder as the kernel knows it (/proc/locks), with its command line.
    assert e.waited >= 0.05 and e.holder.startswith(f"pid {os.getpid()} (")
    assert "xcache unlock" in str(e), str(e)
    assert fresh.compile("int t(void) { return 1; }").hit
    with pytest.raises(ValueError):
        xcache.Cache(lock_timeout=-1)


def test_compiled_extension_imports(cache: xcache.Cache) -> None:
    src = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *twice(PyObject *self, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(2 * v);
}
static PyMethodDef methods[] = {{"twice", twice, METH_O, "2*x"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "xc_ext_test", NULL, -1, methods};
PyMODINIT_FUNC PyInit_xc_ext_test(void) { return PyModule_Create(&def); }
"""
    mod = cache.compile_extension(src, "xc_ext_test")
    assert mod.twice(21) == 42
    assert sys.modules["xc_ext_test"] is mod
    import xc_ext_test  # type: ignore[import-not-found]

    assert xc_ext_test.twice(5) == 10
    lib = mod.__xcache_library__
    assert os.path.isfile(lib.path) and lib.pinned
    # Python.h is part of the key through dependency tracking; a fresh runtime hits.
    again = xcache.Cache(base_dir=cache.base_dir).compile_extension(
        src, "xc_ext_test", register=False
    )
    assert again.__xcache_library__.hit


def test_module_entry_point_runs_the_cli(tmp_path: Path) -> None:
    env = {"XCACHE_DIR": str(tmp_path / "cli")}
    out = run_python("import xcache, sys; xcache.Cache().compile('int q;')", env)
    assert out == ""
    import json
    import subprocess

    p = subprocess.run(
        [sys.executable, "-m", "xcache", "list", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 1 and rows[0]["language"] == "c"
    p = subprocess.run([sys.executable, "-m", "xcache", "nonsense"], capture_output=True, text=True)
    assert p.returncode == 2 and "nonsense" in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "xcache", "basecompiledir"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and p.stdout.strip() == str(tmp_path / "cli")


def test_a_header_edited_during_the_compile_is_never_served(tmp_path: Path) -> None:
    """A header edited while the compiler runs: the library says which header kept it
    out of the cache, and the next process compiles from the header as it is now. The
    edit is made by a compiler wrapper right after the real compile (no waiting)."""
    inc = tmp_path / "inc"
    inc.mkdir()
    h = inc / "h.h"
    h.write_text("#define VAL 1\n")
    os.utime(h, (h.stat().st_atime - 60, h.stat().st_mtime - 60))
    mark = tmp_path / "edit-next-compile"
    cc = tmp_path / "cc-edit.sh"
    cc.write_text(
        '#!/bin/sh\ncc "$@" || exit $?\n'
        f'case " $* " in *" -MD "*) if [ -f "{mark}" ]; then rm -f "{mark}"; '
        f"printf '#define VAL 2\\n' > \"{h}\"; fi ;; esac\n"
    )
    cc.chmod(0o755)
    flags = {"cc": str(cc)}
    base = tmp_path / "cache"
    src = '#include "h.h"\nint val(void) { return VAL; }\n'

    def compile_fresh() -> xcache.Library:
        return xcache.Cache(base_dir=base, flags=flags).compile(src, include_dirs=[inc])

    xcache.Cache(base_dir=base, flags=flags).compile("int warm(void) { return 0; }\n")
    mark.write_text("")
    first = compile_fresh()
    assert not mark.exists()
    assert (first.hit, first.unrecorded) == (False, str(h))
    assert first.ctypes_function("val", ctypes.c_int, [])() == 1

    second = compile_fresh()
    assert not second.hit
    assert second.ctypes_function("val", ctypes.c_int, [])() == 2
    if second.unrecorded is not None:  # arrived in the clock tick of the edit
        second = compile_fresh()
        assert not second.hit
    assert second.unrecorded is None
    third = compile_fresh()
    assert third.hit and third.key == second.key


def test_a_fan_directory_others_may_write_is_never_loaded_from(tmp_path: Path) -> None:
    """A hit checks every directory on the way: one that others may write (where they
    could swap entries) is refused; the library is compiled privately and loaded."""
    src = "int f(void) { return 4; }\n"
    first = xcache.Cache(base_dir=tmp_path / "c").compile(src, name="k.c")
    fan = Path(first.path).parent.parent
    del first
    os.chmod(fan, 0o777)
    lib = xcache.Cache(base_dir=tmp_path / "c").compile(src, name="k.c")
    assert not lib.hit
    assert not lib.path.startswith(str(tmp_path / "c"))
    assert any(str(fan) in w and "verify --repair" in w for w in lib.warnings), lib.warnings
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lib.symbol("f"))() == 4
