#!/usr/bin/env python3
"""Whole-process timings of `xcache compile`: a cache hit from a fresh process and a
miss, next to the bare compiler command that builds the same shared object and to a
C program that only dlopens + dlsyms it. Every figure is the median of repeated runs
measured in this one run, so the ratios compare like with like.

The fresh-process rows (hits, `--version`, the floors) are measured interleaved: each
round runs every command once, in turn, so that drift in the machine's load touches
them alike. `--compare NAME=PATH` adds the hit of another build of `xcache` (an older
commit, the same code linked differently) to those rounds.

Usage: benches/process_hit.py [--runs N] [--compare NAME=PATH]... [--write docs/BENCHMARKS.md]
Needs: a release build of the CLI (cargo build --release -p xcache-cli) and cc.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from report import ROOT, XCACHE, machine, write_section

SOURCE = r"""
#include <stdint.h>
#include <math.h>
int kernel(int64_t n, const float *a, const float *b, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * expf(b[i]) + 1.0f;
    return 0;
}
"""

LOADER = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    if (!dlsym(h, "kernel")) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    return 0;
}
"""


def so_path(env, src):
    out = subprocess.run([XCACHE, "compile", src, "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["path"]


def median_time(cmd, runs, env=None, prepare=None):
    times = []
    for _ in range(runs):
        if prepare:
            prepare()
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--write", help="markdown file to (re)write the section in")
    ap.add_argument("--compare", action="append", default=[],
                    help="NAME=PATH of another xcache binary whose hit to time alongside")
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")

    work = tempfile.mkdtemp(prefix="xcache-bench-")
    try:
        src = os.path.join(work, "kernel.c")
        open(src, "w").write(SOURCE)
        loader_c = os.path.join(work, "loader.c")
        open(loader_c, "w").write(LOADER)
        loader = os.path.join(work, "loader")
        subprocess.run(["cc", "-O2", "-o", loader, loader_c, "-ldl"], check=True)
        env = dict(os.environ, XCACHE_DIR=os.path.join(work, "cache"))
        env.pop("XCACHE_FLAGS", None)

        first = json.loads(subprocess.run([XCACHE, "compile", src, "--json"], env=env,
                                          check=True, capture_output=True, text=True).stdout)
        so = first["path"]
        entry = json.load(open(os.path.join(os.path.dirname(so), "entry.json")))
        flags = entry["key_material"]["flags"]
        compiler = entry["key_material"]["toolchain"]["path"]
        bare_out = os.path.join(work, "bare.so")
        # The same command xcache runs: output and source go before the link libraries.
        bare = [compiler, *flags[:-1], "-o", bare_out, src, flags[-1]]
        assert flags[-1] == "-lm", flags

        def empty_cache():
            shutil.rmtree(env["XCACHE_DIR"], ignore_errors=True)

        r = {}
        r["bare_compile"] = median_time(bare, args.runs)
        r["xcache_miss"] = median_time([XCACHE, "compile", src], args.runs, env, empty_cache)
        subprocess.run([XCACHE, "compile", src], env=env, check=True, stdout=subprocess.DEVNULL)
        compiledir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(so_path(env, src)))))

        def drop_entries():
            shutil.rmtree(os.path.join(compiledir, "entries"), ignore_errors=True)

        r["xcache_miss_warm"] = median_time([XCACHE, "compile", src], args.runs, env, drop_entries)
        subprocess.run([XCACHE, "compile", src], env=env, check=True, stdout=subprocess.DEVNULL)
        so = json.loads(subprocess.run([XCACHE, "compile", src, "--json"], env=env, check=True,
                                       capture_output=True, text=True).stdout)["path"]
        hello_rs = os.path.join(work, "hello.rs")
        open(hello_rs, "w").write('fn main() { println!("hi"); }\n')
        hello = os.path.join(work, "hello")
        subprocess.run(["rustc", "-O", "-o", hello, hello_rs], check=True)
        interleaved = {
            "xcache_hit": ([XCACHE, "compile", src], env),
            "xcache_hit_load": ([XCACHE, "compile", src, "--symbol", "kernel"], env),
            "version": ([XCACHE, "--version"], env),
            "dlopen_only": ([loader, so], None),
            "true": (["/bin/true"], None),
            "rust_hello": ([hello], None),
        }
        embed = os.path.join(ROOT, "target", "release", "examples", "embed_hit")
        if os.path.exists(embed):
            interleaved["embed_hit"] = ([embed, src], env)
        compared = []
        for spec in args.compare:
            name, path = spec.split("=", 1)
            subprocess.run([path, "compile", src], env=env, check=True, stdout=subprocess.DEVNULL)
            interleaved["cmp:" + name] = ([path, "compile", src], env)
            compared.append(name)
        times = {k: [] for k in interleaved}
        for _ in range(args.runs * 3):
            for k, (cmd, e) in interleaved.items():
                t = time.perf_counter()
                subprocess.run(cmd, check=True, env=e, stdout=subprocess.DEVNULL)
                times[k].append(time.perf_counter() - t)
        for k, v in times.items():
            r[k] = statistics.median(v)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = {k: v * 1e3 for k, v in r.items()}
    rows = [
        ("bare compile (`cc` with the same flags)", ms["bare_compile"], "1.00×  (baseline)"),
        ("`xcache compile`, miss, empty base dir (compiler probed, dirs created)", ms["xcache_miss"],
         f"{ms['xcache_miss'] / ms['bare_compile']:.2f}× bare compile"),
        ("`xcache compile`, miss, compiler already known", ms["xcache_miss_warm"],
         f"**{ms['xcache_miss_warm'] / ms['bare_compile']:.2f}×** bare compile (budget ≤ 1.05×)"),
        ("`xcache compile`, hit, fresh process", ms["xcache_hit"],
         f"{ms['xcache_hit'] / ms['bare_compile']:.3f}× bare compile; "
         f"{ms['xcache_hit'] / ms['dlopen_only']:.2f}× dlopen-only"),
        ("`xcache compile --symbol kernel`, hit + dlopen + dlsym", ms["xcache_hit_load"],
         f"**{ms['xcache_hit_load'] / ms['dlopen_only']:.2f}×** dlopen-only (budget ≤ 1.2×)"),
        *([("minimal embedding binary (`examples/embed_hit.rs`): hit, dlopen, dlsym", ms["embed_hit"],
            f"**{ms['embed_hit'] / ms['dlopen_only']:.2f}×** dlopen-only (budget ≤ 1.2×)")] if "embed_hit" in ms else []),
        ("`xcache --version`", ms["version"], f"{ms['version'] / ms['dlopen_only']:.2f}× dlopen-only"),
        *[(f"`xcache compile`, hit, fresh process: {name}", ms["cmp:" + name],
           f"{ms['cmp:' + name] / ms['dlopen_only']:.2f}× dlopen-only") for name in compared],
        ("C program: dlopen + dlsym only", ms["dlopen_only"], "1.00×  (process floor)"),
        ("`/bin/true`", ms["true"], "spawn floor"),
        ("Rust `fn main() { println!(\"hi\") }`", ms["rust_hello"],
         f"{ms['rust_hello'] / ms['dlopen_only']:.2f}× dlopen-only: a Rust process's own floor"),
    ]
    lines = [
        "## Whole-process: hit and miss of `xcache compile`",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. "
        f"Median of {args.runs} runs (misses, bare compile) or {args.runs * 3} interleaved "
        "rounds (hits, `--version` and the floors); all measured in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/process_hit.py`.",
        "",
        "| what | median | ratio |",
        "|---|---:|---|",
    ]
    for name, v, ratio in rows:
        lines.append(f"| {name} | {v:.2f} ms | {ratio} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(args.write, "## Whole-process: hit and miss", section)


if __name__ == "__main__":
    main()
