#!/usr/bin/env bash
# Runs the whole benchmark suite and rewrites docs/BENCHMARKS.md, one section per
# script. Every figure is a median next to a baseline measured in the same run.
# Takes about 20 minutes here (the 100k-entry cache is written twice a run). The GPU
# section comes from benches/cuda_bench.py (and its checks and tile sweep from
# benches/gpu_check.py), run on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ccache >/dev/null || apt-get install -y -qq ccache
command -v flock >/dev/null || apt-get install -y -qq util-linux
out=docs/BENCHMARKS.md
cargo build --release -p xcache-cli
cargo build --release --example embed_hit
cargo bench --bench hit_path -- --warm-up-time 1 --measurement-time 3
python3 benches/criterion_report.py --write "$out"
python3 benches/process_hit.py --write "$out"
python3 benches/concurrency.py --write "$out"
python3 benches/scale.py --write "$out"
command -v redis-server >/dev/null && python3 benches/remote.py --write "$out"
python3 benches/check1.py --write "$out"
python3 benches/cpu_kernels.py --write "$out"
python3 benches/peers.py --write "$out"
# The Python package (built from python/) and its PyTensor and Triton adapters, in the
# bench venv.
venv=target/bench-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q maturin numpy pytensor numba blake3 triton
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install -q --no-deps --no-build-isolation ./python
"$venv/bin/python" benches/python_bench.py --write "$out"
"$venv/bin/python" benches/triton_bench.py --write "$out"
# Numba and PyTensor's Numba backend through their adapters (about 8 minutes).
"$venv/bin/python" benches/jit_adapters.py --write "$out"
echo "wrote $out"
