#!/usr/bin/env python3
"""The cost of dependency tracking on the hit path: a fresh-process `xcache compile` hit
of a source that includes 50 headers, against a hit of a source that includes none,
interleaved in the same run (budget: <= 1.15x). Also a source including numpy's
arrayobject.h and Python.h (as PyTensor's modules do), when a Python with numpy is
found, and the C program that only dlopens the library as the process floor.

Usage: benches/headers.py [--runs N] [--write docs/BENCHMARKS.md]
Needs: a release build of the CLI (cargo build --release -p xcache-cli) and cc.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from report import XCACHE, machine, write_section

LOADER = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    return 0;
}
"""


def run(cmd, env):
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def interleaved(cmds, runs, env):
    """Median wall time of each command, running them in turn `runs` times."""
    times = {k: [] for k in cmds}
    for _ in range(runs):
        for k, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def numpy_flags():
    python = os.environ.get("XCACHE_TEST_PYTHON", "python3")
    try:
        out = subprocess.run(
            [python, "-c", "import sysconfig, numpy; print(sysconfig.get_paths()['include']); print(numpy.get_include())"],
            check=True, capture_output=True, text=True).stdout.split()
        return [f"--flag=-I{out[0]}", f"--flag=-I{out[1]}"]
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--write", help="markdown file to (re)write the section in")
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")
    work = tempfile.mkdtemp(prefix="xcache-bench-")
    try:
        inc = os.path.join(work, "inc")
        os.mkdir(inc)
        for i in range(50):
            open(os.path.join(inc, f"h{i}.h"), "w").write(f"#define H{i} {i}\n")
        with open(os.path.join(work, "k50.c"), "w") as f:
            f.writelines(f'#include "h{i}.h"\n' for i in range(50))
            f.write("int kernel(void) { return H49; }\n")
        open(os.path.join(work, "k0.c"), "w").write("int kernel(void) { return 49; }\n")
        nflags = numpy_flags()
        if nflags:
            open(os.path.join(work, "knp.c"), "w").write(
                "#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"
                "#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION\n"
                "#include <numpy/arrayobject.h>\nint kernel(void) { return NPY_ABI_VERSION; }\n")
        loader_c = os.path.join(work, "loader.c")
        open(loader_c, "w").write(LOADER)
        loader = os.path.join(work, "loader")
        subprocess.run(["cc", "-O2", "-o", loader, loader_c, "-ldl"], check=True)
        env = dict(os.environ, XCACHE_DIR=os.path.join(work, "cache"))
        env.pop("XCACHE_FLAGS", None)
        cmds = {
            "none": [XCACHE, "compile", os.path.join(work, "k0.c"), f"--flag=-I{inc}"],
            "fifty": [XCACHE, "compile", os.path.join(work, "k50.c"), f"--flag=-I{inc}"],
        }
        if nflags:
            cmds["numpy"] = [XCACHE, "compile", os.path.join(work, "knp.c"), *nflags]
        headers = {}
        for k, cmd in cmds.items():
            run(cmd, env)  # the miss
            v = json.loads(run(cmd + ["--json"], env))
            assert v["hit"], v
            entry = json.load(open(os.path.join(os.path.dirname(v["path"]), "entry.json")))
            headers[k] = len(entry.get("headers", []))
            so = v["path"]
        cmds["dlopen"] = [loader, so]
        t = interleaved(cmds, args.runs, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = {k: v * 1e3 for k, v in t.items()}
    rows = [
        (f"hit, source including no header ({headers['none']} tracked: gcc's implicit stdc-predef.h)",
         ms["none"], "1.00×  (baseline)"),
        (f"hit, source including 50 headers ({headers['fifty']} tracked)", ms["fifty"],
         f"**{ms['fifty'] / ms['none']:.3f}×** (budget ≤ 1.15×)"),
    ]
    if "numpy" in ms:
        rows.append((f"hit, Python.h + numpy/arrayobject.h ({headers['numpy']} tracked)", ms["numpy"],
                     f"{ms['numpy'] / ms['none']:.3f}×"))
    rows.append(("C program: dlopen only (process floor)", ms["dlopen"],
                 f"{ms['dlopen'] / ms['none']:.2f}×"))
    lines = [
        "## Dependency tracking on the hit path",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. "
        f"Fresh-process `xcache compile` hits, median of {args.runs} runs of each, "
        "interleaved in one run. A hit reads the request's manifest and stats every header "
        "its result was built from (hashing only those whose signature changed).",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/headers.py`.",
        "",
        "| what | median | ratio |",
        "|---|---:|---:|",
        *[f"| {w} | {m:.2f} ms | {r} |" for w, m, r in rows],
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Dependency tracking on the hit path", section)


if __name__ == "__main__":
    main()
