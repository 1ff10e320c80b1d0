#!/usr/bin/env python3
"""`xcache list`, `size` and `prune --dry-run` over 10k, 100k and 1M entries, as whole
processes (median of 5 runs each), read through the compiledir's index; and a real prune
of 10% of the entries, beside the file system's own time to unlink as many.

Budgets (issue 15): list/size/prune --dry-run <= 0.2 s at 100k and <= 2 s at 1M; a real
prune of 10,000 of 100,000 entries <= 2 s plus the unlink time.

Floors, measured in the same run on the same tree:
- `readdir`: `find entries -mindepth 2 -maxdepth 2` listing every entry directory
  (what any tool must do to know which entries exist);
- `read index`: `wc -l` of the index file (reading it once, at C speed);
- `unlink`: `rm -rf` of as many entry directories as the real prune removed.

The entries are written directly in the on-disk format (a valid entry.json copied from
one real compile, a small lib.so, a last-use marker with a random age up to 90 days);
nothing is compiled. The index is then removed, so the first listing reads every entry
and writes it again; its time is reported separately.

Usage: benches/scale.py [--sizes 10000,100000,1000000] [--write docs/BENCHMARKS.md]
"""
import argparse, json, os, random, resource, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import XCACHE, machine, write_section  # noqa: E402

DAY = 86400


def populate(cd, n, template_entry, seed):
    """Writes n entries in the compiledir cd, copying the metadata shape of a real one."""
    entries = os.path.join(cd, "entries")
    lib = b"\x7fELF" + b"\0" * 60
    rng = random.Random(seed)
    now = time.time()
    meta = dict(template_entry)
    for i in range(n):
        key = "%064x" % rng.getrandbits(256)
        d = os.path.join(entries, key[:2], key)
        try:
            os.mkdir(d)
        except FileNotFoundError:
            os.makedirs(d)
        meta["key"] = key
        meta["source_name"] = f"kernel_{i}.c"
        meta["created"] = int(now) - 90 * DAY - rng.randrange(DAY)
        with open(os.path.join(d, "lib.so"), "wb") as f:
            f.write(lib)
        with open(os.path.join(d, "entry.json"), "w") as f:
            json.dump(meta, f)
        lu = os.path.join(d, "last-use")
        open(lu, "w").close()
        t = now - rng.randrange(90 * DAY)
        os.utime(lu, (t, t))


def run(cmd, env):
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def timed(cmd, env, runs=5, shell=False):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, shell=shell)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mib(cmd, env):
    """Peak RSS of one run of cmd (a fresh child), MiB."""
    code = (
        "import resource, subprocess, sys, json;"
        "subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--write")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()
    rows = []
    prune_row = None
    for n in sizes:
        work = tempfile.mkdtemp(prefix="xcache-scale-")
        try:
            env = dict(os.environ, XCACHE_DIR=os.path.join(work, "cache"))
            env.pop("XCACHE_FLAGS", None)
            env.pop("XCACHE_CONFIG", None)
            src = os.path.join(work, "seed.c")
            open(src, "w").write("int seed(void) { return 1; }\n")
            out = subprocess.run([XCACHE, "compile", src, "--json"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            entry = os.path.dirname(json.loads(out)["path"])
            cd = os.path.dirname(os.path.dirname(os.path.dirname(entry)))
            seed_meta = json.load(open(os.path.join(entry, "entry.json")))
            t0 = time.perf_counter()
            populate(cd, n - 1, seed_meta, n)
            gen = time.perf_counter() - t0
            # Entries written behind xcache's back are not in the index: without it, the
            # next listing rebuilds it from the entries.
            os.remove(os.path.join(cd, "index"))
            # The first listing reads every entry and writes the index.
            t0 = time.perf_counter()
            run([XCACHE, "list", "--json"], env)
            first = time.perf_counter() - t0
            index_mib = os.path.getsize(os.path.join(cd, "index")) / 2**20
            r = {
                "n": n,
                "first": first,
                "index_mib": index_mib,
                "readdir": timed(f"find '{cd}/entries' -mindepth 2 -maxdepth 2 | wc -l", env, shell=True),
                "read_index": timed(f"wc -l '{cd}/index'", env, shell=True),
                "list": timed([XCACHE, "list", "--json"], env),
                "size": timed([XCACHE, "size", "--json"], env),
                "prune": timed([XCACHE, "prune", "--max-size", "100MiB", "--older-than", "60d",
                                "--dry-run", "--json"], env),
                "rss": peak_rss_mib([XCACHE, "list", "--json"], env),
                "gen": gen,
            }
            print(f"{n}: first list {first:.2f}s, list {r['list']:.3f}s size {r['size']:.3f}s "
                  f"prune --dry-run {r['prune']:.3f}s; floors: readdir {r['readdir']:.3f}s "
                  f"read index {r['read_index']:.3f}s; list peak RSS {r['rss']:.0f} MiB "
                  f"(generated in {gen:.1f}s)", flush=True)
            rows.append(r)
            if n == 100_000:
                # A real prune of the entries last used more than 81 of 90 days ago
                # (about 10%), then rm -rf of as many other entry directories.
                t0 = time.perf_counter()
                rep = json.loads(subprocess.run(
                    [XCACHE, "prune", "--older-than", "81d", "--json"], env=env, check=True,
                    capture_output=True, text=True).stdout)
                pruned_t = time.perf_counter() - t0
                removed = sum(1 for a in rep["actions"] if a["kind"] == "entry" and not a.get("skipped"))
                victims = []
                for fan in sorted(os.listdir(os.path.join(cd, "entries"))):
                    for k in os.listdir(os.path.join(cd, "entries", fan)):
                        victims.append(os.path.join(cd, "entries", fan, k))
                        if len(victims) == removed:
                            break
                    if len(victims) == removed:
                        break
                t0 = time.perf_counter()
                subprocess.run(["rm", "-rf", *victims], check=True)
                unlink_t = time.perf_counter() - t0
                prune_row = {"removed": removed, "prune": pruned_t, "unlink": unlink_t}
                print(f"real prune of {removed} of {n}: {pruned_t:.2f}s; rm -rf of as many: "
                      f"{unlink_t:.2f}s", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Listing, sizing and pruning at scale",
        "",
        f"Machine: {machine()}; load average {load[0]:.2f} at the start. Whole `xcache` "
        "processes over a compiledir of N entries (written in the on-disk format, page cache "
        "warm), reading the compiledir's index; median of 5 runs each, all in the same run. "
        "Floors in the same run: `find` listing every entry directory (readdir: what any "
        "tool must do to know which entries exist) and `wc -l` of the index. "
        "Budgets: ≤ 0.2 s at 100k, ≤ 2 s at 1M.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/scale.py`.",
        "",
        "| entries | `list --json` | `size --json` | `prune --dry-run` | floor: readdir | floor: read index "
        "| list ÷ readdir | index | list peak RSS | first list (writes the index) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['list']:.3f} s | {r['size']:.3f} s | {r['prune']:.3f} s | "
            f"{r['readdir']:.3f} s | {r['read_index']:.3f} s | {r['list'] / r['readdir']:.1f}× | "
            f"{r['index_mib']:.1f} MiB | {r['rss']:.0f} MiB | {r['first']:.1f} s |"
        )
    if prune_row:
        p = prune_row
        lines += [
            "",
            f"A real prune of {p['removed']:,} of 100,000 entries (`prune --older-than 81d`): "
            f"{p['prune']:.2f} s; `rm -rf` of as many entry directories: {p['unlink']:.2f} s; "
            f"the prune's own cost beyond the unlinks: {p['prune'] - p['unlink']:.2f} s "
            "(budget: ≤ 2 s plus the unlink time).",
        ]
    lines.append("")
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Listing, sizing and pruning at scale", section)


if __name__ == "__main__":
    main()
