#!/usr/bin/env python3
"""`xcache list`, `size` and `prune --dry-run` over 10k, 30k and 100k entries, as whole
processes (median of 5 runs each), to show the cost grows linearly (budget: <= 1 s at
100k on this machine). The entries are written directly in the on-disk format (valid
entry.json, a small lib.so, source, last-use); nothing is compiled.

Usage: benches/scale.py [--sizes 10000,30000,100000] [--write docs/BENCHMARKS.md]
"""
import argparse, json, os, random, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import XCACHE, machine, write_section  # noqa: E402


def populate(base, n, template_entry):
    """Writes n entries next to the one real entry, copying its metadata shape."""
    cd = [d for d in os.listdir(base) if d.startswith("compiledir_")][0]
    entries = os.path.join(base, cd, "entries")
    lib = b"\x7fELF" + os.urandom(12 * 1024)
    rng = random.Random(n)
    now = time.time()
    for i in range(n):
        key = "%064x" % rng.getrandbits(256)
        d = os.path.join(entries, key[:2], key)
        os.makedirs(d)
        meta = dict(template_entry)
        meta["key"] = key
        meta["source_name"] = f"kernel_{i}.c"
        meta["created"] = int(now) - rng.randrange(90 * 86400)
        with open(os.path.join(d, "lib.so"), "wb") as f:
            f.write(lib)
        with open(os.path.join(d, "source.c"), "w") as f:
            f.write(f"int kernel_{i}(void) {{ return {i}; }}\n")
        with open(os.path.join(d, "entry.json"), "w") as f:
            json.dump(meta, f)
        lu = os.path.join(d, "last-use")
        open(lu, "w").close()
        t = now - rng.randrange(90 * 86400)
        os.utime(lu, (t, t))
    return os.path.join(base, cd)


def timed(cmd, env, runs=5):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--write")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        work = tempfile.mkdtemp(prefix="xcache-scale-")
        try:
            env = dict(os.environ, XCACHE_DIR=os.path.join(work, "cache"))
            env.pop("XCACHE_FLAGS", None)
            src = os.path.join(work, "seed.c")
            open(src, "w").write("int seed(void) { return 1; }\n")
            out = subprocess.run([XCACHE, "compile", src, "--json"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            seed_meta = json.load(open(os.path.join(os.path.dirname(json.loads(out)["path"]), "entry.json")))
            t0 = time.perf_counter()
            populate(env["XCACHE_DIR"], n - 1, seed_meta)
            gen = time.perf_counter() - t0
            # Page cache warm, as on a machine that uses its cache.
            subprocess.run([XCACHE, "list", "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
            r = {
                "n": n,
                "list": timed([XCACHE, "list", "--json"], env),
                "size": timed([XCACHE, "size", "--json"], env),
                "prune": timed([XCACHE, "prune", "--max-size", "100MiB", "--older-than", "60d", "--dry-run", "--json"], env),
                "gen": gen,
            }
            print(f"{n}: list {r['list']:.3f}s size {r['size']:.3f}s prune --dry-run {r['prune']:.3f}s (generated in {gen:.1f}s)", flush=True)
            rows.append(r)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    lines = [
        "## Listing, sizing and pruning at scale",
        "",
        f"Machine: {machine()}. Whole `xcache` processes over a compiledir of N entries "
        "(written in the on-disk format, page cache warm), median of 5 runs each, all in the same run. "
        "Budget: ≤ 1 s each at 100k, growing linearly.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/scale.py`.",
        "",
        "| entries | `list --json` | `size --json` | `prune --dry-run` | per entry (list) | growth vs " + f"{base['n'] // 1000}k (list) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['list']:.3f} s | {r['size']:.3f} s | {r['prune']:.3f} s | "
            f"{r['list'] / r['n'] * 1e6:.1f} µs | {r['list'] / base['list']:.2f}× for {r['n'] / base['n']:.0f}× entries |"
        )
    lines.append("")
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Listing, sizing and pruning at scale", section)


if __name__ == "__main__":
    main()
