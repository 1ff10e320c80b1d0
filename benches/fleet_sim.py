#!/usr/bin/env python3
"""A fleet on one machine: N simulated machines (each its own base dir, running the real
`xcache` CLI, one process per request) sharing one S3 bucket (s3s-fs on loopback), and,
in the chain variant, one Redis in front of it (`remote = redis://...;s3://...`).

For each N (1, 8, 64 by default) and each variant, fresh servers, then:

1. CI warms the remote: one machine compiles a share of the K kernels (`--warm`),
   uploading them (what `xcache warm` in CI does before the fleet's first use).
2. The fleet: the N machines start together (a barrier) and each asks for all K kernels
   in its own shuffled order, then once more (`--passes`): the first pass is remote hits
   (warmed kernels, or cold ones another machine uploaded first) and cold misses
   (compiled here, uploaded); later passes are local hits.
3. The stampede: a kernel no one has, asked for by all N machines at the same moment.
   The tier has no lease: every machine misses, compiles and uploads; the entry's
   conditional PUT (`If-None-Match: *`) lets one write land (s3s-fs checks then writes,
   so under a race more than one may), the others get 412 and count as uploads, not
   failures.

Counted per machine from `xcache stats --json` (`remote_tiers`: hits, misses, uploads,
bytes in and out), on the servers (s3s-fs's log of each routed request and each reply's
status; Redis's `INFO commandstats`), and by a compiler wrapper that logs each real
compile. Latency percentiles are over the `xcache compile` calls, whose wall time on
this 2-core machine grows with N mostly because N processes share 2 cores.

Usage: benches/fleet_sim.py [--clients 1,8,64] [--kernels 20] [--warm 0.5]
                            [--variants s3,chain] [--write docs/BENCHMARKS.md]
Needs: what benches/remote_s3.py needs.
"""
import argparse, collections, json, os, random, re, shutil, socket, statistics, subprocess, sys
import tempfile, threading, time

from report import XCACHE, machine, write_section
from remote import free_port, start_redis
from remote_s3 import client_env, s3_url, s3s_fs_program, start_s3s_fs, tiers_of

HEADING = "## Fleet simulation: N machines, one bucket, one Redis (loopback)"

# A kernel: a few loops the optimiser works on (tens of ms of cc -O2 each).
KERNEL = """\
#include <stddef.h>
void k{i}_axpy(size_t n, float a, const float *x, float *y) {{
    for (size_t j = 0; j < n; j++) y[j] = a * x[j] + y[j] + {i}.0f;
}}
float k{i}_dot(size_t n, const float *x, const float *y) {{
    float s = 0;
    for (size_t j = 0; j < n; j++) s += x[j] * y[j] * {i};
    return s;
}}
void k{i}_stencil(size_t n, const float *x, float *y) {{
    for (size_t j = 1; j + 1 < n; j++) y[j] = 0.25f * x[j - 1] + 0.5f * x[j] + 0.25f * x[j + 1] * {i};
}}
"""

# Logs `<base dir>` for each real compile (the link step), then runs cc.
COUNTING_CC = """#!/bin/sh
case " $* " in *" -shared "*) echo "$XCACHE_DIR" >> "$XC_COUNT";; esac
exec cc "$@"
"""

# s3s-fs logs each routed request (its operation) and each reply (its status).
S3S_LOG = "s3s=error,s3s::ops=debug,s3s::service=debug"


def redis_call(port, *args):
    """One Redis command on a fresh connection; the reply's bulk string (or status)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join([f"*{len(args)}\r\n".encode()] +
                       [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]))
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if buf[:1] in (b"+", b"-", b":") and buf.endswith(b"\r\n"):
            break
        if buf[:1] == b"$":
            n = int(buf[1:buf.index(b"\r\n")])
            if len(buf) >= buf.index(b"\r\n") + 2 + n + 2:
                break
    s.close()
    if buf[:1] == b"$":
        head = buf.index(b"\r\n")
        return buf[head + 2:head + 2 + int(buf[1:head])].decode()
    return buf[1:].strip().decode()


def redis_counts(port):
    """{command: calls} and wire bytes in and out, from INFO."""
    calls = {}
    for line in redis_call(port, "INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_(\w+):calls=(\d+)", line)
        if m:
            calls[m.group(1).upper()] = int(m.group(2))
    stats = dict(l.split(":", 1) for l in redis_call(port, "INFO", "stats").splitlines() if ":" in l)
    calls.pop("INFO", None)
    calls.pop("CONFIG", None)
    return calls, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def s3_counts(log_path, since=0):
    """(ops, statuses, entry PUT count, offset) from s3s-fs's log after byte `since`."""
    with open(log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
        end = f.tell()
    ops = collections.Counter(re.findall(r"resolved route, op: (\w+)", text))
    statuses = collections.Counter(re.findall(r"resp: Response \{ status: (\d+)", text))
    entry_puts = len(re.findall(
        r'resolved route, op: PutObject, s3_path: Object \{ bucket: "[^"]+", key: "[^"]*/e/', text))
    return ops, statuses, entry_puts, end


def pct(xs, p):
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


def run_fleet(variant, n, args, work, rng):
    """One configuration: fresh servers, CI's warm-up, the fleet's passes, the stampede."""
    root = os.path.join(work, f"{variant}-{n}")
    os.makedirs(root)
    cc = os.path.join(root, "cc-count.sh")
    open(cc, "w").write(COUNTING_CC)
    os.chmod(cc, 0o755)
    count_log = os.path.join(root, "compiles.log")
    open(count_log, "w").close()
    s3_log_path = os.path.join(root, "s3s-fs.log")
    s3_log = open(s3_log_path, "wb")
    sport = free_port()
    s3 = start_s3s_fs(sport, os.path.join(root, "s3"), log=s3_log,
                      env=dict(os.environ, RUST_LOG=S3S_LOG, NO_COLOR="1"))
    redis, rport = None, None
    if variant == "chain":
        rport = free_port()
        redis = start_redis(rport, root)
    remote = s3_url(sport, "fleet")
    if redis:
        remote = f"redis://127.0.0.1:{rport}/0;{remote}"
    try:
        srcs = []
        for i in range(args.kernels):
            p = os.path.join(root, f"k{i}.c")
            open(p, "w").write(KERNEL.format(i=i))
            srcs.append(p)
        stampede_src = os.path.join(root, "stampede.c")
        open(stampede_src, "w").write(KERNEL.format(i=10_000 + n))

        def env(name, with_remote=True):
            e = client_env(os.path.join(root, name), remote if with_remote else None,
                           f",cc={cc}")
            e["XC_COUNT"] = count_log
            return e

        def compile_(e, src):
            t = time.perf_counter()
            out = subprocess.run([XCACHE, "compile", src, "--json"], env=e, check=True,
                                 capture_output=True, text=True).stdout
            return time.perf_counter() - t, json.loads(out)

        # 1. CI warms the remote: `xcache warm` of a manifest naming a share of the kernels.
        warmed = srcs[:round(args.kernels * args.warm)]
        manifest = os.path.join(root, "warm.json")
        json.dump({"requests": [{"source": os.path.basename(s)} for s in warmed]},
                  open(manifest, "w"))
        if warmed:
            subprocess.run([XCACHE, "warm", manifest, "-j", "2"], env=env("ci"), cwd=root,
                           check=True, capture_output=True)
        # The machines, their compiler resolved ahead (a local compile, no remote),
        # untimed: what is measured is requests, not a first start.
        warm_c = os.path.join(root, "warm.c")
        open(warm_c, "w").write("int g(void) { return 1; }\n")
        machines = [env(f"m{j}") for j in range(n)]
        for j in range(n):
            subprocess.run([XCACHE, "compile", warm_c], env=env(f"m{j}", with_remote=False),
                           check=True, capture_output=True)
        compiles_before = len(open(count_log).read().split())
        _, _, _, s3_since = s3_counts(s3_log_path)
        if redis:
            redis_call(rport, "CONFIG", "RESETSTAT")

        # 2. The fleet.
        calls = [[] for _ in range(n)]  # (pass, tier, hit, seconds)
        barrier = threading.Barrier(n)
        errors = []

        def client(j):
            try:
                order = srcs[:]
                random.Random(rng.random()).shuffle(order)
                barrier.wait()
                for p in range(args.passes):
                    for src in order:
                        took, out = compile_(machines[j], src)
                        calls[j].append((p, out["tier"], out["hit"], took))
            except Exception as e:  # surfaced below
                errors.append(e)
                barrier.abort()

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(j,)) for j in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        per_machine = [tiers_of(e) for e in machines]
        s3_ops, s3_status, s3_entry_puts, s3_mark = s3_counts(s3_log_path, s3_since)
        rcalls, rin, rout = redis_counts(rport) if redis else ({}, 0, 0)
        log = open(count_log).read().split()
        fleet_compiles = len(log) - compiles_before

        # 3. The stampede: everyone misses one new kernel at once.
        if redis:
            redis_call(rport, "CONFIG", "RESETSTAT")
        stampede = []
        barrier2 = threading.Barrier(n)

        def stampeder(j):
            try:
                barrier2.wait()
                took, out = compile_(machines[j], stampede_src)
                stampede.append((out["tier"], out["hit"], took))
            except Exception as e:
                errors.append(e)
                barrier2.abort()

        threads = [threading.Thread(target=stampeder, args=(j,)) for j in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        st_ops, st_status, st_entry_puts, _ = s3_counts(s3_log_path, s3_mark)
        st_compiles = len(open(count_log).read().split()) - len(log)
        after = [tiers_of(e) for e in machines]
        st_rcalls = redis_counts(rport)[0] if redis else {}
    finally:
        s3.kill()
        s3.wait()
        s3_log.close()
        if redis:
            redis.kill()
            redis.wait()

    def tier_sum(rows, kind, field):
        return sum(r.get(kind, {}).get(field, 0) for r in rows)

    remote_hits = [c[3] for cs in calls for c in cs if c[0] == 0 and c[1] == "remote"]
    compiled = [c[3] for cs in calls for c in cs if c[0] == 0 and not c[2]]
    later = [c[3] for cs in calls for c in cs if c[0] > 0]
    tiers = collections.Counter(c[1] if c[2] else "compiled" for cs in calls for c in cs if c[0] == 0)
    errs = sum(tier_sum(per_machine, k, f) for k in ("s3", "redis")
               for f in ("err_connect", "err_timeout", "err_auth", "err_denied", "err_full",
                         "err_other", "rejected", "skipped"))
    st_errs = sum(tier_sum(after, k, f) - tier_sum(per_machine, k, f) for k in ("s3", "redis")
                  for f in ("err_connect", "err_timeout", "err_auth", "err_denied", "err_full",
                            "err_other", "rejected", "skipped"))
    per_client = []
    for j, r in enumerate(per_machine):
        ts = [c[3] for c in calls[j]]
        per_client.append({
            "machine": j,
            "s3": r.get("s3", {}), "redis": r.get("redis", {}),
            "p50_ms": pct(ts, 50) * 1e3, "p95_ms": pct(ts, 95) * 1e3, "p99_ms": pct(ts, 99) * 1e3,
        })
    return {
        "variant": variant, "n": n, "kernels": args.kernels, "warmed": len(warmed),
        "wall_s": wall, "fleet_compiles": fleet_compiles,
        "first_pass": dict(tiers),
        "errors": errs,
        "s3_hits": tier_sum(per_machine, "s3", "hits"),
        "s3_misses": tier_sum(per_machine, "s3", "misses"),
        "s3_uploads": tier_sum(per_machine, "s3", "uploads"),
        "s3_bytes_in": tier_sum(per_machine, "s3", "bytes_in"),
        "s3_bytes_out": tier_sum(per_machine, "s3", "bytes_out"),
        "redis_hits": tier_sum(per_machine, "redis", "hits"),
        "redis_misses": tier_sum(per_machine, "redis", "misses"),
        "redis_uploads": tier_sum(per_machine, "redis", "uploads"),
        "redis_bytes_in": tier_sum(per_machine, "redis", "bytes_in"),
        "redis_bytes_out": tier_sum(per_machine, "redis", "bytes_out"),
        "s3_ops": dict(s3_ops), "s3_status": dict(s3_status), "s3_entry_puts": s3_entry_puts,
        "redis_calls": rcalls, "redis_net_in": rin, "redis_net_out": rout,
        "p_remote": [pct(remote_hits, p) * 1e3 for p in (50, 95, 99)],
        "p_compiled": [pct(compiled, p) * 1e3 for p in (50, 95, 99)] if compiled else [0, 0, 0],
        "p_later": [pct(later, p) * 1e3 for p in (50, 95, 99)],
        "per_client": per_client,
        "stampede": {
            "compiles": st_compiles,
            "tiers": dict(collections.Counter(s[0] if s[1] else "compiled" for s in stampede)),
            "uploads_s3": tier_sum(after, "s3", "uploads") - tier_sum(per_machine, "s3", "uploads"),
            "uploads_redis": tier_sum(after, "redis", "uploads") - tier_sum(per_machine, "redis", "uploads"),
            "errors": st_errs,
            "s3_ops": dict(st_ops), "s3_status": dict(st_status), "entry_puts": st_entry_puts,
            "redis_calls": st_rcalls,
            "p50_ms": pct([s[2] for s in stampede], 50) * 1e3,
            "max_ms": max(s[2] for s in stampede) * 1e3,
        },
    }


def kib(b):
    return f"{b / 1024:.0f} KiB" if b < 10 << 20 else f"{b / (1 << 20):.1f} MiB"


def section(results, args):
    get = lambda r: r["s3_ops"].get("GetObject", 0)
    put = lambda r: r["s3_ops"].get("PutObject", 0)
    rcmds = lambda calls: sum(calls.values())
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. "
        f"`benches/fleet_sim.py`: N machines (base dirs, each request a fresh `xcache compile` process) "
        f"on this one 2-core host, {args.kernels} C kernels of three loops each, {round(args.kernels * args.warm)} "
        "of them warmed into the remote by CI first; each machine asks for every kernel in its own "
        f"order, {args.passes} passes, all machines started together. Fresh s3s-fs (and redis-server) per row. "
        "Requests are counted on the servers (s3s-fs's log of routed operations, Redis's `INFO commandstats`); "
        "hits, misses, uploads and bytes from each machine's `xcache stats --json` (`remote_tiers`); compiles "
        "by a compiler wrapper. Latency: the `xcache compile` calls of all machines, by what they were: "
        "remote hits and misses (first pass), local hits (later passes); at N = 64, 64 processes share 2 "
        "cores, so the wall times measure this host's CPU more than the servers. s3s-fs logs every "
        "request (to count them), which adds to its own time.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/fleet_sim.py`.",
        "",
        "| variant | N | first pass: remote hits / compiled | compiles (cold kernels) | S3 GET / PUT per machine | Redis commands per machine | value bytes in / out per machine | remote hit p50 / p95 / p99 | miss (compiled, uploaded) p50 / p95 / p99 | local hit p50 / p95 / p99 | errors | wall |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["n"]
        fp = r["first_pass"]
        bin_ = (r["s3_bytes_in"] + r["redis_bytes_in"]) / n
        bout = (r["s3_bytes_out"] + r["redis_bytes_out"]) / n
        lines.append(
            f"| {r['variant']} | {n} | {fp.get('remote', 0)} / {fp.get('compiled', 0)} | "
            f"{r['fleet_compiles']} ({r['kernels'] - r['warmed']}) | "
            f"{get(r) / n:.1f} / {put(r) / n:.1f} | "
            + (f"{rcmds(r['redis_calls']) / n:.1f}" if r["variant"] == "chain" else "–") + " | "
            f"{kib(bin_)} / {kib(bout)} | "
            + " / ".join(f"{x:.1f}" for x in r["p_remote"]) + " ms | "
            + " / ".join(f"{x:.0f}" for x in r["p_compiled"]) + " ms | "
            + " / ".join(f"{x:.1f}" for x in r["p_later"]) + " ms | "
            f"{r['errors']} | {r['wall_s']:.1f} s |")
    lines += [
        "",
        "Per machine, the spread (min–max over the N machines) of its S3 counters and of the latency over all its calls:",
        "",
        "| variant | N | S3 hits per machine | S3 misses | S3 uploads | p50 of its calls | p99 of its calls |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pc = r["per_client"]
        span = lambda f: f"{min(map(f, pc)):.0f}–{max(map(f, pc)):.0f}"
        lines.append(
            f"| {r['variant']} | {r['n']} | {span(lambda c: c['s3'].get('hits', 0))} | "
            f"{span(lambda c: c['s3'].get('misses', 0))} | {span(lambda c: c['s3'].get('uploads', 0))} | "
            f"{span(lambda c: c['p50_ms'])} ms | {span(lambda c: c['p99_ms'])} ms |")
    lines += [
        "",
        "Requests the servers saw over each fleet run (all machines), against what the code says "
        "(docs/REMOTE.md, \"A thousand machines\"): S3 GETs = 2 × S3 hits + S3 misses + S3 uploads, "
        "PUTs = 2 × S3 uploads; Redis commands = its hits × 2 + its misses + its uploads × 4.",
        "",
        "| variant | N | S3 GET (404) | S3 PUT (412) | predicted GET / PUT | Redis commands (predicted) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pg = 2 * r["s3_hits"] + r["s3_misses"] + r["s3_uploads"]
        pp = 2 * r["s3_uploads"]
        pr = 2 * r["redis_hits"] + r["redis_misses"] + 4 * r["redis_uploads"]
        lines.append(
            f"| {r['variant']} | {r['n']} | {get(r)} ({r['s3_status'].get('404', 0)}) | "
            f"{put(r)} ({r['s3_status'].get('412', 0)}) | {pg} / {pp} | "
            + (f"{rcmds(r['redis_calls'])} ({pr}): "
               + ", ".join(f"{k} {v}" for k, v in sorted(r["redis_calls"].items()))
               if r["variant"] == "chain" else "–") + " |")
    lines += [
        "",
        "The stampede: one kernel nobody has, asked for by all N machines at once. There is no lease "
        "in the tier: each machine misses, compiles once and uploads.",
        "",
        "| variant | N | compiles | served from the remote | entry PUTs: written / refused (412) | uploads counted | failures counted | S3 GET / PUT | Redis commands | p50 / slowest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["stampede"]
        refused = s["s3_status"].get("412", 0) + s["s3_status"].get("409", 0)
        lines.append(
            f"| {r['variant']} | {r['n']} | {s['compiles']} | {s['tiers'].get('remote', 0)} | "
            f"{s['entry_puts'] - refused} / {refused} | "
            f"S3 {s['uploads_s3']}" + (f", Redis {s['uploads_redis']}" if r["variant"] == "chain" else "")
            + f" | {s['errors']} | {s['s3_ops'].get('GetObject', 0)} / {s['s3_ops'].get('PutObject', 0)} | "
            + (str(rcmds(s["redis_calls"])) if r["variant"] == "chain" else "–")
            + f" | {s['p50_ms']:.0f} / {s['max_ms']:.0f} ms |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,8,64", help="the fleet sizes, comma-separated")
    ap.add_argument("--kernels", type=int, default=20)
    ap.add_argument("--warm", type=float, default=0.5, help="the share of kernels CI warms first")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--variants", default="s3,chain")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every figure, per machine too, to this file")
    ap.add_argument("--write")
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")
    if not s3s_fs_program():
        sys.exit("needs s3s-fs: cargo install s3s-fs --version 0.14.1 --features binary --locked")
    variants = args.variants.split(",")
    if "chain" in variants and not shutil.which("redis-server"):
        sys.exit("the chain variant needs redis-server")
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="xcache-fleet-")
    results = []
    try:
        for n in [int(x) for x in args.clients.split(",")]:
            for variant in variants:
                t = time.perf_counter()
                r = run_fleet(variant, n, args, work, rng)
                results.append(r)
                print(f"{variant} N={n}: {time.perf_counter() - t:.1f} s, compiles {r['fleet_compiles']}, "
                      f"stampede compiles {r['stampede']['compiles']}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = section(results, args)
    print(text)
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)
    if args.write:
        write_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
