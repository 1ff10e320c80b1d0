#!/usr/bin/env python3
"""Concurrency, as whole processes, all measured in the same run:

1. Same key, N processes, empty cache: exactly one compile (counted by a compiler
   wrapper) and wall time close to one compile.
2. Distinct keys: throughput of 2 processes against 1 (target >= 1.8x), and the same
   with a single global lock per compiledir, as Theano and PyTensor have (emulated by
   running each `xcache compile` under `flock` on one lock file).
3. `xcache warm` of 200 template instances with --jobs 2 against --jobs 1 (target <= 0.55x).

Usage: benches/concurrency.py [--write docs/BENCHMARKS.md]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import XCACHE, machine, write_section  # noqa: E402

WRAPPER = """#!/bin/sh
case " $* " in *" -shared "*) echo x >> "$XC_COUNT";; esac
exec cc "$@"
"""


def env_for(work, name):
    e = dict(os.environ, XCACHE_DIR=os.path.join(work, name))
    e.pop("XCACHE_FLAGS", None)
    return e


def source(work, i, size=40):
    p = os.path.join(work, f"k{i}.c")
    body = "".join(f"  for (int64_t j = 0; j < n; j++) y[j] = y[j] * {k}.5f + x[j];\n" for k in range(size))
    open(p, "w").write(f"#include <stdint.h>\nint k{i}(int64_t n, const float *x, float *y) {{\n{body}  return {i};\n}}\n")
    return p


def run_all(cmds, env):
    t = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in cmds]
    for p in procs:
        assert p.wait() == 0
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    ap.add_argument("--keys", type=int, default=16)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="xcache-conc-")
    try:
        wrapper = os.path.join(work, "cc-count.sh")
        open(wrapper, "w").write(WRAPPER)
        os.chmod(wrapper, 0o755)

        # 1. Same key, N processes.
        src = source(work, 0)
        e = env_for(work, "one")
        t_one = run_all([[XCACHE, "compile", src]], e)
        results = []
        for n in (2, 4, 8):
            e = env_for(work, f"same{n}")
            e["XCACHE_FLAGS"] = f"cc={wrapper}"
            e["XC_COUNT"] = os.path.join(work, f"count{n}")
            wall = run_all([[XCACHE, "compile", src]] * n, e)
            compiles = len(open(e["XC_COUNT"]).read().split())
            results.append((n, compiles, wall))

        # 2. Distinct keys: 1 process doing all, 2 processes doing half each.
        srcs = [source(work, i) for i in range(1, args.keys + 1)]
        lock = os.path.join(work, "global.lock")

        def serial(name, wrap=None):
            e = env_for(work, name)
            cmd = lambda s: (["flock", lock] if wrap else []) + [XCACHE, "compile", s]  # noqa: E731
            t = time.perf_counter()
            for s in srcs:
                subprocess.run(cmd(s), env=e, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t

        def two(name, wrap=None):
            e = env_for(work, name)
            halves = [srcs[0::2], srcs[1::2]]
            script = lambda part: " && ".join(  # noqa: E731
                (f"flock {lock} " if wrap else "") + f"{XCACHE} compile {s} >/dev/null" for s in part)
            t = time.perf_counter()
            ps = [subprocess.Popen(["sh", "-c", script(h)], env=e) for h in halves]
            for p in ps:
                assert p.wait() == 0
            return time.perf_counter() - t

        t1 = serial("d1")
        t2 = two("d2")
        t1g = serial("g1", wrap=True)
        t2g = two("g2", wrap=True)

        # 3. warm 200 template instances.
        reqs = [{"template": "elemwise", "params": {"dtype": "float32", "arity": 2, "expr": f"a*{i}+b"}}
                for i in range(200)]
        manifest = os.path.join(work, "warm.json")
        json.dump({"requests": reqs}, open(manifest, "w"))

        def warm(name, jobs):
            e = env_for(work, name)
            t = time.perf_counter()
            subprocess.run([XCACHE, "warm", manifest, "--jobs", str(jobs)], env=e, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - t

        w1 = warm("w1", 1)
        w2 = warm("w2", 2)
        w2again = warm("w2", 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Concurrency",
        "",
        f"Machine: {machine()}. Whole `xcache` processes, all measured in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/concurrency.py`.",
        "",
        f"Same key, N processes at once on an empty cache (one compile alone: {t_one * 1e3:.0f} ms):",
        "",
        "| processes | compiler runs | wall time | vs one compile |",
        "|---:|---:|---:|---:|",
    ]
    for n, compiles, wall in results:
        lines.append(f"| {n} | {compiles} | {wall * 1e3:.0f} ms | {wall / t_one:.2f}× |")
    lines += [
        "",
        f"Distinct keys: {len(srcs)} different sources, compiled by 1 process in turn, or split between 2:",
        "",
        "| locking | 1 process | 2 processes | throughput of 2 vs 1 |",
        "|---|---:|---:|---:|",
        f"| xcache (per-key locks) | {t1:.2f} s | {t2:.2f} s | **{t1 / t2:.2f}×** (target ≥ 1.8×) |",
        f"| one global lock per compiledir (Theano/PyTensor style, `flock` around each compile) | {t1g:.2f} s | {t2g:.2f} s | {t1g / t2g:.2f}× |",
        "",
        "`xcache warm` of 200 `elemwise` instances on an empty cache:",
        "",
        "| jobs | time | ratio |",
        "|---:|---:|---:|",
        f"| 1 | {w1:.2f} s | 1.00× (baseline) |",
        f"| 2 | {w2:.2f} s | **{w2 / w1:.2f}×** (target ≤ 0.55×) |",
        f"| 2, cache already warm | {w2again:.2f} s | {w2again / w1:.3f}× |",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Concurrency", section)


if __name__ == "__main__":
    main()
