#!/usr/bin/env python3
"""The remote tier against a loopback redis-server, fresh `xcache compile` processes:
a local hit, a remote hit (local miss -> fetched, verified, published, path printed)
of a ~100 KiB library, and a local hit with an unreachable remote configured (local
hits never ask the remote). Budget: remote hit <= 3 ms above a local hit; with the
remote unreachable, a local hit costs what it costs without one.

Usage: benches/remote.py [--runs N] [--write docs/BENCHMARKS.md]
Needs: a release build of the CLI, cc, redis-server.
"""
import argparse, json, os, random, shutil, socket, statistics, subprocess, sys, tempfile, time

from report import XCACHE, machine, write_section

# A library of about 100 KiB: a table the function reads.
SOURCE = "static const unsigned char blob[96000] = {%s};\nint f(int i) { return blob[i %% 96000]; }\n" % (
    ",".join(str((i * 131) % 251) for i in range(96000)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_redis(port, workdir):
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", workdir],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "Ready to accept connections" in line:
            return p
    sys.exit("redis-server did not start")


def timed(cmd, env):
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t, out


def entry_payload(artifact):
    """(name, bytes) of the files a published entry holds (entry.json, the artifact,
    its source): what a remote hit writes."""
    entry_dir = os.path.dirname(artifact)
    return [(n, open(os.path.join(entry_dir, n), "rb").read())
            for n in sorted(os.listdir(entry_dir))
            if n in ("entry.json", os.path.basename(artifact))
            or n.endswith((".c", ".cpp", ".cu"))]


def durable_floor_step(payload, floor_root, times):
    """A step that appends to `times` the cost of a durable publish of `payload`,
    in-process: the files written into a fresh directory, each fsynced, the directory
    fsynced, renamed into place, its parent fsynced (what any crash-safe cache pays on
    this disk, whose fsync latency moves with the host's load)."""
    os.makedirs(floor_root, exist_ok=True)

    def step():
        # The last round's copy goes first, untimed; its removal is committed by this
        # round's first fsync (the floor pays for its own cleanup).
        shutil.rmtree(os.path.join(floor_root, "entry"), ignore_errors=True)
        t = time.perf_counter()
        tmp = os.path.join(floor_root, "tmp")
        os.mkdir(tmp)
        for name, data in payload:
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
        dfd = os.open(tmp, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        os.rename(tmp, os.path.join(floor_root, "entry"))
        pfd = os.open(floor_root, os.O_RDONLY)
        os.fsync(pfd)
        os.close(pfd)
        times.append(time.perf_counter() - t)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--write")
    args = ap.parse_args()
    if not os.path.exists(XCACHE):
        sys.exit("build first: cargo build --release -p xcache-cli")
    if not shutil.which("redis-server"):
        sys.exit("needs redis-server")
    work = tempfile.mkdtemp(prefix="xcache-bench-")
    port = free_port()
    redis = start_redis(port, work)
    try:
        src = os.path.join(work, "big.c")
        open(src, "w").write(SOURCE)
        warm = os.path.join(work, "warm.c")
        open(warm, "w").write("int g(void) { return 1; }\n")
        url = f"redis://127.0.0.1:{port}/0"

        def env_for(name, remote):
            e = dict(os.environ, XCACHE_DIR=os.path.join(work, name),
                     XCACHE_FLAGS=f"handout_grace=0s,remote={remote}" if remote else "handout_grace=0s")
            return e

        a = env_for("a", url)
        first = json.loads(timed([XCACHE, "compile", src, "--json"], a)[1])
        size = first and os.path.getsize(first["path"])
        # A fresh base dir per remote hit, prepared ahead (compiler resolved, a small
        # entry in it) and synced: no `clear` just before a timed run, whose removals
        # the hit's first fsync would commit (a cost of the clear, not of the hit).
        fresh = []
        for i in range(args.runs):
            e = env_for(f"b{i}", url)
            timed([XCACHE, "compile", warm], e)
            fresh.append(e)
        os.sync()
        dead = env_for("a", f"redis://127.0.0.1:{free_port()}/0")
        plain = env_for("a", None)
        local, remote, unreachable, none, floor = [], [], [], [], []
        def remote_hit():
            t, out = timed([XCACHE, "compile", src, "--json"], fresh.pop())
            assert json.loads(out)["tier"] == "remote", out
            remote.append(t)

        payload = entry_payload(first["path"])
        durable_floor = durable_floor_step(payload, os.path.join(work, "floor"), floor)

        steps = [
            durable_floor,
            lambda: local.append(timed([XCACHE, "compile", src], a)[0]),
            remote_hit,
            lambda: unreachable.append(timed([XCACHE, "compile", src], dead)[0]),
            lambda: none.append(timed([XCACHE, "compile", src], plain)[0]),
        ]
        rng = random.Random(1)
        for _ in range(args.runs):
            # A fresh order each round: the remote hit's writes are flushed while the
            # next process runs, and that cost must not fall on one kind.
            rng.shuffle(steps)
            for step in steps:
                step()
    finally:
        redis.kill()
        shutil.rmtree(work, ignore_errors=True)
    ms = {k: statistics.median(v) * 1e3 for k, v in
          [("local", local), ("remote", remote), ("unreachable", unreachable), ("none", none),
           ("floor", floor)]}
    rows = [
        ("local hit, no remote configured", ms["none"], "1.00×  (baseline)"),
        ("local hit, remote configured", ms["local"], f"{ms['local'] / ms['none']:.2f}×"),
        ("local hit, remote configured but unreachable", ms["unreachable"],
         f"**{ms['unreachable'] / ms['none']:.2f}×** (budget: no more than without a remote)"),
        (f"remote hit: local miss, fetched, verified, published ({size // 1024} KiB library)",
         ms["remote"], f"**+{ms['remote'] - ms['local']:.2f} ms** over a local hit (budget ≤ +3 ms)"),
        (f"floor: a durable write of the same files ({len(payload)}, {sum(len(d) for _, d in payload) // 1024} KiB: "
         "each fsynced, directory fsynced, renamed, parent fsynced), in-process",
         ms["floor"], f"the remote hit's extra is {(ms['remote'] - ms['local']) / ms['floor']:.2f}× this"),
    ]
    lines = [
        "## Remote tier (Redis on loopback)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. Fresh "
        f"`xcache compile` processes, median of {args.runs} interleaved runs each (in a shuffled order each round); redis-server "
        "on 127.0.0.1 in the same run.",
        "Reproduce: `cargo build --release -p xcache-cli && python3 benches/remote.py`.",
        "",
        "| what | median | ratio |",
        "|---|---:|---:|",
        *[f"| {w} | {m:.2f} ms | {r} |" for w, m, r in rows],
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## Remote tier (Redis on loopback)", section)


if __name__ == "__main__":
    main()
