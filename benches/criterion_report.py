#!/usr/bin/env python3
"""Turns the criterion results of `cargo bench --bench hit_path` into the in-process
section of docs/BENCHMARKS.md: medians, each next to its floor from the same run."""
import argparse, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import ROOT, machine, write_section  # noqa: E402

CRIT = os.path.join(ROOT, "target", "criterion")


def median_ns(group, name):
    d = os.path.join(CRIT, group, name.replace("/", "_").replace(":", "_"), "new", "estimates.json")
    if not os.path.exists(d):
        # criterion sanitises names: find the directory whose benchmark.json has this id
        for sub in os.listdir(os.path.join(CRIT, group)):
            b = os.path.join(CRIT, group, sub, "new", "benchmark.json")
            if os.path.exists(b) and json.load(open(b))["function_id"] == name:
                d = os.path.join(CRIT, group, sub, "new", "estimates.json")
                break
    return json.load(open(d))["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    args = ap.parse_args()
    b3 = median_ns("hit_path", "blake3 of 4 KiB (floor)")
    reg = median_ns("hit_path", "key+registry (loaded in this process)")
    dl = median_ns("hit_path", "dlopen+dlsym+dlclose (floor)")
    load = median_ns("hit_path", "hit+load: manifest, headers, lock, entry.json, blake3, dlopen, dlsym")
    parts = [(n, median_ns("hit_parts", n)) for n in [
        "get_or_build_tracked (hit, no load)", "get_or_build (the entry's own key: no manifest)", "lock_shared + unlock", "read_meta (entry.json)",
        "verify (meta + blake3 of lib.so)", "verify (meta + verified record, no hash)"]]
    lines = [
        "## In-process hit path (criterion)",
        "",
        f"Machine: {machine()}. Medians from `cargo bench --bench hit_path`, each next to a floor measured in the same run.",
        "",
        "| what | median | ratio | budget |",
        "|---|---:|---:|---|",
        f"| blake3 of the 4 KiB source (floor of any content key) | {fmt(b3)} | 1.00× | |",
        f"| request already loaded in this process: lookup by fast hash + byte comparison | {fmt(reg)} | {reg / b3:.2f}× | ≤ 2 µs: {'met' if reg <= 2000 else 'NOT met'} |",
        f"| bare dlopen + dlsym + dlclose (RTLD_NOW, floor) | {fmt(dl)} | 1.00× | |",
        f"| hit that must load: manifest and its headers, lock, entry.json, the artifact's `verified` record (no hash), dlopen, dlsym | {fmt(load)} | **{load / dl:.2f}×** | ≤ 1.2×: {'met' if load <= 1.2 * dl else 'NOT met'} |",
        f"| the same, beside the dlopen: manifest, headers, lock, metadata, record | {fmt(load - dl)} | **{(load - dl) / dl:.2f}×** the dlopen | ≤ 0.2× (#15): {'met' if load - dl <= 0.2 * dl else 'NOT met'} |",
        "",
        "Where the load path's extra time goes:",
        "",
        "| part | median |",
        "|---|---:|",
    ] + [f"| {n} | {fmt(t)} |" for n, t in parts] + [""]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, "## In-process hit path (criterion)", section)


if __name__ == "__main__":
    main()
