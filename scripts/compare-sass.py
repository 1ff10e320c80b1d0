#!/usr/bin/env python3
"""Compares the SASS of a CUDA template's kernels, kernel for kernel (cuobjdump --dump-sass,
addresses and encodings left out), for sm_90:

  scripts/compare-sass.py --old-templates DIR TEMPLATE [k=v ...]
      nvcc's build of the template in DIR (a template_path, e.g. a copy from an earlier
      commit: `git show REV:templates/cuda/gemm.cu > DIR/cuda/gemm.cu`) against nvcc's
      build of the current one: did a restructuring change the machine code?
  scripts/compare-sass.py --nvrtc TEMPLATE [k=v ...]
      NVRTC's cubin (as the handles build it, without --Ofast-compile) against nvcc's
      shared object: does NVRTC generate nvcc's code?

Needs target/debug/xcache and target/debug/examples/nvrtc_bench (`cargo build -p
xcache-cli --examples`), nvcc and cuobjdump on PATH, and XCACHE_DIR set to a scratch cache.
Prints each kernel with `identical` or `DIFF`, and a summary.
"""
import argparse, json, os, re, subprocess, sys


def sass(path):
    txt = subprocess.run(["cuobjdump", "--dump-sass", path], capture_output=True, text=True, check=True).stdout
    parts = re.split(r"\t\tFunction : (\S+)\n", txt)
    return {parts[i]: [re.sub(r"/\*[0-9a-f]{4}\*/", "", l).split(";")[0].strip()
                       for l in parts[i + 1].splitlines() if "/*" in l and ";" in l]
            for i in range(1, len(parts), 2)}


def nvcc_build(params, template_path=None):
    env = dict(os.environ, XCACHE_FLAGS=("template_path=%s," % template_path if template_path else "")
               + "cuda_arch=sm_90,cuda_compiler=nvcc")
    cmd = ["target/debug/xcache", "compile", "-t", params[0], "--json"]
    for p in params[1:]:
        cmd += ["-p", p]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)["path"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-templates")
    ap.add_argument("--nvrtc", action="store_true")
    ap.add_argument("template", nargs="+")
    a = ap.parse_args()
    new = sass(nvcc_build(a.template))
    if a.nvrtc:
        out = "/tmp/xcache-compare-sass.cubin"
        env = dict(os.environ, XCACHE_FLAGS="cuda_arch=sm_90")
        subprocess.run(["target/debug/examples/nvrtc_bench", "--cubin", out, "minimal"] + a.template,
                       check=True, env=env, capture_output=True)
        other, what = sass(out), "NVRTC"
        pairs = [(k, other[k], new.get(k)) for k in sorted(other)]
    elif a.old_templates:
        other, what = sass(nvcc_build(a.template, a.old_templates)), "old template"
        # Kernel names changed with the restructuring: match by body.
        bodies = {tuple(v) for v in other.values()}
        pairs = [(k, v, v if tuple(v) in bodies else None) for k, v in sorted(new.items())]
    else:
        sys.exit("give --old-templates DIR or --nvrtc")
    diff = 0
    for k, x, y in pairs:
        same = x == y
        diff += not same
        print(f"{k}: {'identical' if same else 'DIFF'}")
    print(f"{len(pairs) - diff} of {len(pairs)} kernels identical ({what} against nvcc's build of the current template)")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
