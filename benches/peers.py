#!/usr/bin/env python3
"""xcache next to its peers on the same work, all measured in the same run:

- ccache (Debian package): a cache hit on the same C kernel. ccache caches compiles
  (`-c`), not links, so its hit is shown alone and with the link that still has to
  make the shared object; xcache's hit returns the shared object itself.
- PyTensor (pip): compile and re-load an element-wise function (exp) in a fresh
  process, cold (empty compiledir) and warm (cached), next to xcache doing the same in a
  fresh process (`xcache compile -t elemwise --symbol`, which loads the result);
  `import pytensor` alone is shown as PyTensor's floor.
- `pytensor-cache list` against `xcache list` on caches holding the same number of
  compiled element-wise functions.

Usage: benches/peers.py [--write docs/BENCHMARKS.md]   (installs pytensor into
target/bench-venv with pip on first use; needs ccache: apt-get install ccache)
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import XCACHE, machine, reexec_in_venv, write_section  # noqa: E402



def med(cmd, runs, env=None, prepare=None, shell=False):
    ts = []
    for _ in range(runs):
        if prepare:
            prepare()
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, shell=shell)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


PYT_FN = """
import numpy as np, pytensor, pytensor.tensor as pt
x = pt.vector('x', dtype='float32')
f = pytensor.function([x], pt.exp(x{extra}))
assert abs(f(np.ones(4, dtype='float32'))[0] / np.exp(1.0{extra}) - 1) < 1e-5
"""


def main():
    reexec_in_venv(__file__, ["numpy", "pytensor"])
    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    ap.add_argument("--list-entries", type=int, default=20)
    args = ap.parse_args()
    if not shutil.which("ccache"):
        sys.exit("ccache is needed: apt-get install ccache")
    work = tempfile.mkdtemp(prefix="xcache-peers-")
    rows = []
    try:
        env = dict(os.environ, XCACHE_DIR=os.path.join(work, "xc"), CCACHE_DIR=os.path.join(work, "ccache"))
        env.pop("XCACHE_FLAGS", None)
        src = os.path.join(work, "kernel.c")
        open(src, "w").write("#include <stdint.h>\n#include <math.h>\nint kernel(int64_t n, const float *a, float *o)"
                             " { for (int64_t i = 0; i < n; i++) o[i] = expf(a[i]); return 0; }\n")
        obj, so = os.path.join(work, "k.o"), os.path.join(work, "k.so")
        subprocess.run(["ccache", "cc", "-O3", "-fPIC", "-c", src, "-o", obj], env=env, check=True)
        subprocess.run([XCACHE, "compile", src], env=env, check=True, stdout=subprocess.DEVNULL)
        t_ccache = med(["ccache", "cc", "-O3", "-fPIC", "-c", src, "-o", obj], 30, env)
        t_ccache_link = med(f"ccache cc -O3 -fPIC -c {src} -o {obj} && cc -shared -o {so} {obj} -lm", 30, env, shell=True)
        t_xcache = med([XCACHE, "compile", src], 30, env)
        t_cc = med(["cc", "-O3", "-fPIC", "-shared", "-o", so, src, "-lm"], 15, env)
        rows.append(("hit on the same C kernel", [
            ("cc, no cache (compile + link)", t_cc),
            ("ccache hit (`-c` only: an object, not a shared object)", t_ccache),
            ("ccache hit + link to a shared object", t_ccache_link),
            ("`xcache compile` hit (the shared object)", t_xcache),
        ]))

        # PyTensor: fresh processes.
        py = sys.executable
        pdir = os.path.join(work, "pyt")
        penv = dict(env, PYTENSOR_FLAGS=f"base_compiledir={pdir},floatX=float32")
        fn = os.path.join(work, "fn.py")
        open(fn, "w").write(PYT_FN.format(extra=""))
        t_import = med([py, "-c", "import pytensor, pytensor.tensor"], 5, penv)
        t_pyt_cold = med([py, fn], 3, penv, prepare=lambda: shutil.rmtree(pdir, ignore_errors=True))
        subprocess.run([py, fn], env=penv, check=True)
        t_pyt_warm = med([py, fn], 5, penv)
        xdir = os.path.join(work, "xc2")
        xenv = dict(env, XCACHE_DIR=xdir)
        xcmd = [XCACHE, "compile", "-t", "elemwise", "-p", "dtype=float32", "-p", "arity=1", "-p", "expr=exp(a)", "--symbol", "xc_elemwise"]
        t_x_cold = med(xcmd, 5, xenv, prepare=lambda: shutil.rmtree(xdir, ignore_errors=True))
        t_x_warm = med(xcmd, 20, xenv)
        rows.append(("element-wise exp: compile and load in a fresh process", [
            ("PyTensor, `import pytensor` alone (its floor)", t_import),
            ("PyTensor, cold (empty compiledir)", t_pyt_cold),
            ("PyTensor, warm (cached)", t_pyt_warm),
            ("xcache, cold (empty cache)", t_x_cold),
            ("xcache, warm (cached)", t_x_warm),
        ]))

        # Listing caches of the same size.
        n = args.list_entries
        for i in range(n):
            f = os.path.join(work, f"fn{i}.py")
            open(f, "w").write(PYT_FN.format(extra=f" + {i + 1}"))
            subprocess.run([py, f], env=penv, check=True)
            subprocess.run([XCACHE, "compile", "-t", "elemwise", "-p", "dtype=float32", "-p", "arity=1",
                            "-p", f"expr=exp(a + {i + 1})"], env=xenv, check=True, stdout=subprocess.DEVNULL)
        pcache = os.path.join(os.path.dirname(py), "pytensor-cache")
        t_plist = med([pcache, "list"], 5, penv)
        t_xlist = med([XCACHE, "list"], 20, xenv)
        rows.append((f"listing a cache of about {n} compiled element-wise functions", [
            ("`pytensor-cache list`", t_plist),
            ("`xcache list`", t_xlist),
        ]))
        import pytensor  # noqa: E402
        pyt_version = pytensor.__version__
        ccache_version = subprocess.run(["ccache", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Peers",
        "",
        f"Machine: {machine()}; {ccache_version}; PyTensor {pyt_version}. Whole processes, medians, "
        "all measured in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/peers.py`.",
        "",
    ]
    for title, items in rows:
        base = items[0][1]
        lines += [f"{title[0].upper()}{title[1:]}:", "", "| what | time | ratio |", "|---|---:|---:|"]
        for i, (name, t) in enumerate(items):
            ratio = "1.00× (baseline)" if i == 0 else f"{t / base:.3f}×"
            lines.append(f"| {name} | {t * 1e3:.1f} ms | {ratio} |")
        lines.append("")
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Peers", section)


if __name__ == "__main__":
    main()
