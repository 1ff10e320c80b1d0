#!/usr/bin/env bash
# Every test: the workspace's (`cargo test --workspace`), then the CUDA tests this
# machine can run, then one line with the totals and one per group of tests skipped,
# with the reason. The README's test command; .ci/run runs exactly this.
#
# The CUDA tests (tests/cuda.rs, tests/nvrtc.rs) are #[ignore]d with their reason, so
# a plain `cargo test` counts them as ignored, never as passed. They are run here with
# --ignored where `xcache doctor` finds nvcc (tests/cuda.rs; for the gpu_* ones also
# libnvrtc and a GPU) and libnvrtc (tests/nvrtc.rs).
#
# Then the C ABI test (capi/tests/c_abi.rs, also #[ignore]d in the first run: it needs
# libxcache.so, built here first) and the Python tests (python/tests, pytest) with the
# interpreter $XCACHE_PYTHON (default: python3), into whose environment the package is
# installed first (`pip install ./python`) when it is a virtual environment. Their
# counts join the totals, and what they skip is listed with the reason.
#
# The examples of README.md and docs/*.md are tests too: cli/tests/docs.rs runs the
# console sessions (in the first run; those of `python -m xcache` after the package is
# installed), capi/tests/c_abi.rs the C programs, python/tests/test_docs.py the Python
# snippets. The examples they skip (marked in the docs' source, or needing what this
# machine lacks) are listed at the end with the other skips, from target/tmp/doc-examples-*.txt.
#
# `scripts/test.sh --setup` makes target/test-venv: a virtual environment with maturin,
# numpy, pytest, pytensor, ruff, mypy, moto's S3 server, the nvcc and NVRTC wheels and
# the package, and
# says where the wheels' `bin` is. Without XCACHE_PYTHON, this script then uses that
# venv (and that `bin`, for nvcc and NVRTC) by itself.
#
# Arguments go to the first `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
# To add a suite: run it after the others, add its counts, and add to `skipped` what
# it could not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/target/test-venv"
if [ "${1:-}" = "--setup" ]; then
  if [ ! -x "$venv/bin/python" ]; then "${PYTHON:-python3}" -m venv "$venv"; fi
  "$venv/bin/pip" install -q --disable-pip-version-check maturin numpy pytest pytensor numba triton ruff mypy
  # moto's S3 server: the second S3 implementation the S3 tier is tested against.
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]' ||
    echo "could not install moto: the S3 tests against moto will be skipped"
  nvbin=""
  if "$venv/bin/pip" install -q --disable-pip-version-check \
       nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl nvidia-cuda-nvrtc; then
    nvbin=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu*/bin 2>/dev/null | head -n 1)
  else
    echo "could not install the nvcc and NVRTC wheels: the CUDA compile tests will be skipped"
  fi
  PATH="$venv/bin:$PATH" "$venv/bin/pip" install -q --disable-pip-version-check \
    --no-deps --no-build-isolation ./python
  echo "venv: $venv (numpy, pytest, pytensor, numba, triton, maturin, ruff, mypy, moto, and the xcache package)"
  if [ -n "$nvbin" ]; then
    echo "nvcc: $nvbin/nvcc; libnvrtc beside it, in $(dirname "$nvbin")/lib (xcache finds it from nvcc)"
    echo "for nvcc on your PATH: export PATH=\"$nvbin:\$PATH\""
  fi
  echo "run the tests: scripts/test.sh (it uses this venv when XCACHE_PYTHON is unset)"
  exit 0
fi
# The venv of --setup, when there is one and no other Python was named.
if [ -z "${XCACHE_PYTHON:-}" ] && [ -x "$venv/bin/python" ]; then
  export XCACHE_PYTHON="$venv/bin/python"
  export XCACHE_TEST_PYTHON="${XCACHE_TEST_PYTHON:-$XCACHE_PYTHON}"
  nvbin=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu*/bin 2>/dev/null | head -n 1 || true)
  if [ -n "$nvbin" ]; then export PATH="$nvbin:$PATH"; fi
  echo "scripts/test.sh: Python $XCACHE_PYTHON${nvbin:+, nvcc and NVRTC from $nvbin} (target/test-venv)"
fi
doc_reports="${CARGO_TARGET_DIR:-target}/tmp"
rm -f "$doc_reports"/doc-examples-*.txt

log=$(mktemp)
probe=$(mktemp -d)
trap 'rm -rf "$log" "$probe"' EXIT

cargo test --workspace "$@" 2>&1 | tee -a "$log"

# What this machine has, as xcache itself finds it: the nvcc, NVRTC and GPU checks of
# `xcache doctor` (pretty JSON: each check's status is on the line after its name).
doctor=$(XCACHE_DIR="$probe/cache" XCACHE_FLAGS= XCACHE_CONFIG= \
  cargo run -q -p xcache-cli -- doctor --json || true)
status_of() {
  printf '%s\n' "$doctor" | grep -A1 "\"name\": \"$1\"" |
    sed -n 's/.*"status": "\([a-z]*\)".*/\1/p'
}

first_run=$(grep -cE '^test result:' "$log" || true)
skipped=()
if [ "$(status_of nvcc)" = ok ]; then
  if [ "$(status_of GPU)" = ok ] && [ "$(status_of NVRTC)" = ok ]; then
    cargo test --test cuda -- --ignored --skip without_a_gpu 2>&1 | tee -a "$log"
    skipped+=("tests/cuda.rs launches_fail_cleanly_without_a_gpu: this machine has a GPU")
  else
    cargo test --test cuda -- --ignored --skip gpu_ 2>&1 | tee -a "$log"
    if [ "$(status_of GPU)" = ok ]; then
      skipped+=("tests/cuda.rs gpu_*: no libnvrtc here (they run both compilers; install it as the README says)")
    else
      skipped+=("tests/cuda.rs gpu_*: no NVIDIA GPU here (they run where one is)")
    fi
  fi
else
  skipped+=("tests/cuda.rs, all of it: no nvcc here (install it as the README says)")
fi
if [ "$(status_of NVRTC)" = ok ]; then
  cargo test --test nvrtc -- --ignored 2>&1 | tee -a "$log"
  cargo test -p xcache-cli --test cuda_cli -- --ignored 2>&1 | tee -a "$log"
else
  skipped+=("tests/nvrtc.rs and cli/tests/cuda_cli.rs, all of them: no libnvrtc here (pip install nvidia-cuda-nvrtc, as the README says)")
fi

# A second real user swapping entry directories during hits (tests/swap.rs): needs root
# to act as `nobody`.
if [ "$(id -u)" = 0 ]; then
  cargo test --test swap -- --ignored 2>&1 | tee -a "$log"
else
  skipped+=("tests/swap.rs a_second_user_swapping_*: not root here (it acts as the user nobody)")
fi

# The remote tier against a real redis-server (cli/tests/remote.rs), where one is.
if command -v redis-server >/dev/null 2>&1; then
  cargo test -p xcache-cli --test remote -- --ignored 2>&1 | tee -a "$log"
else
  skipped+=("cli/tests/remote.rs: no redis-server here (apt-get install redis-server)")
fi

# The S3 tier against two real S3 servers (cli/tests/remote_s3.rs; the chain tests use
# redis-server too), each server's tests where it is found: s3s-fs (s3s_fs::*;
# XCACHE_TEST_S3S_FS, else s3s-fs on PATH; .ci/run installs it into target/tools with
# cargo install) and moto (moto::*; XCACHE_TEST_MOTO, else the venv's moto_server, else
# moto_server on PATH; --setup installs it into target/test-venv).
s3s="${XCACHE_TEST_S3S_FS:-s3s-fs}"
moto="${XCACHE_TEST_MOTO:-}"
if [ -z "$moto" ] && [ -x "$venv/bin/moto_server" ]; then moto="$venv/bin/moto_server"; fi
moto="${moto:-moto_server}"
no_redis=()
if ! command -v redis-server >/dev/null 2>&1; then
  no_redis=(--skip redis_in_front --skip killed_or_stopped)
fi
for server in s3s_fs moto; do
  if [ "$server" = s3s_fs ]; then bin="$s3s"; else bin="$moto"; fi
  if command -v "$bin" >/dev/null 2>&1; then
    XCACHE_TEST_S3S_FS="$s3s" XCACHE_TEST_MOTO="$moto" cargo test -p xcache-cli --test remote_s3 \
      -- --ignored "$server::" "${no_redis[@]}" 2>&1 | tee -a "$log"
    if [ ${#no_redis[@]} -gt 0 ]; then
      skipped+=("cli/tests/remote_s3.rs $server::redis_in_front_of_s3_*, $server::a_killed_or_stopped_*: no redis-server here (apt-get install redis-server)")
    fi
  elif [ "$server" = s3s_fs ]; then
    skipped+=("cli/tests/remote_s3.rs s3s_fs::* and the S3 tests of python/tests/test_remote.py: no s3s-fs here (cargo install s3s-fs --version 0.14.1 --features binary --locked, or set XCACHE_TEST_S3S_FS)")
  else
    skipped+=("cli/tests/remote_s3.rs moto::*: no moto_server here (scripts/test.sh --setup installs moto[server] into target/test-venv; or pip install 'moto[server]' and set XCACHE_TEST_MOTO)")
  fi
done

# Python extension modules with numpy's headers (tests/pyext.rs): where a Python with
# its headers and numpy is found (XCACHE_TEST_PYTHON, else python3).
py="${XCACHE_TEST_PYTHON:-python3}"
if "$py" -c 'import numpy, sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  XCACHE_TEST_PYTHON="$py" cargo test --test pyext -- --ignored 2>&1 | tee -a "$log"
else
  skipped+=("tests/pyext.rs: no Python with its headers and numpy here (set XCACHE_TEST_PYTHON)")
fi

# The C ABI: compile the C example and the threaded C test against include/xcache.h
# with cc, link them with the freshly built libxcache.so, run them.
cargo build -q -p xcache-capi
if [ "$(status_of NVRTC)" = ok ]; then
  gpu_flag=0
  [ "$(status_of GPU)" = ok ] && gpu_flag=1
  XCACHE_TEST_GPU=$gpu_flag cargo test -p xcache-capi --test c_abi -- --ignored 2>&1 | tee -a "$log"
else
  cargo test -p xcache-capi --test c_abi -- --ignored --skip a_cuda_module 2>&1 | tee -a "$log"
  skipped+=("capi/tests/c_abi.rs a_cuda_module_*: no libnvrtc here (pip install nvidia-cuda-nvrtc, as the README says)")
fi

# The Python package, in $XCACHE_PYTHON (or python3).
py_passed=0 py_failed=0 py_skipped=0
py=${XCACHE_PYTHON:-python3}
pylog=$(mktemp)
if ! command -v "$py" >/dev/null 2>&1; then
  skipped+=("python/tests and the docs' python -m xcache sessions, all of it: no Python interpreter ($py)")
elif ! "$py" -c 'import pytest, numpy' >/dev/null 2>&1; then
  skipped+=("python/tests and the docs' python -m xcache sessions, all of it: $py has no pytest or numpy (scripts/test.sh --setup makes a venv with them)")
else
  if "$py" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    # A virtual environment: install the package as it is now (incremental builds),
    # with its own tools (maturin) on PATH.
    PATH="$("$py" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
    isolation=()
    "$py" -c 'import maturin' >/dev/null 2>&1 && isolation=(--no-build-isolation)
    "$py" -m pip install -q --disable-pip-version-check --no-deps "${isolation[@]}" ./python
  fi
  if ! "$py" -c 'import xcache' >/dev/null 2>&1; then
    skipped+=("python/tests and the docs' python -m xcache sessions, all of it: the xcache package is not installed for $py (pip install ./python, or scripts/test.sh --setup)")
  else
    # The docs' `python -m xcache` sessions, now that the package is installed.
    XCACHE_PYTHON="$py" cargo test -p xcache-cli --test docs -- --ignored python_md_console 2>&1 | tee -a "$log"
    "$py" -m pytest python/tests -q -rs -p no:cacheprovider 2>&1 | tee "$pylog" || true
    # pytest's closing line: "36 passed, 2 skipped in 76.02s" (with -q, undecorated).
    last=$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$pylog" | tail -n 1 || true)
    count() { printf '%s\n' "$last" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
    py_passed=$(count passed)
    py_failed=$(( $(count failed) + $(count error) ))
    py_skipped=$(count skipped)
    if [ -z "$last" ]; then py_failed=$((py_failed + 1)); fi
    while IFS= read -r line; do
      line=${line#SKIPPED }
      skipped+=("${line#\[*\] }")
    done < <(grep -E '^SKIPPED ' "$pylog" || true)
  fi
fi
rm -f "$pylog"

# Totals over every `cargo test` above: what the first run ignored and a later run ran
# counts once, as run; what stayed ignored (those tests, and doc examples marked
# `ignore`) is skipped. Then pytest's.
read -r passed failed skipped_n < <(
  grep -E '^test result:' "$log" |
    sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' |
    awk -v first="$first_run" '
      { p += $1; f += $2 }
      NR <= first { i += $3 }
      NR > first { i -= $1 + $2 }
      END { print p + 0, f + 0, i + 0 }'
)
# The doc examples the Rust doc tests could not run here, with why.
for f in "$doc_reports"/doc-examples-*.txt; do
  [ -f "$f" ] || continue
  while IFS= read -r line; do
    case "$line" in
      skipped:*) skipped+=("doc example ${line#skipped: }"); skipped_n=$((skipped_n + 1)) ;;
    esac
  done < "$f"
done
passed=$((passed + py_passed))
failed=$((failed + py_failed))
skipped_n=$((skipped_n + py_skipped))
for s in "${skipped[@]}"; do
  echo "skipped: $s"
done
echo "tests: $passed passed, $failed failed, $skipped_n skipped"
[ "$failed" -eq 0 ]
