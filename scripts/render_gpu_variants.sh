#!/usr/bin/env bash
# Renders the CUDA template variants that benches/gpu_check.py checks and times, into $1.
set -euo pipefail
out=${1:?usage: render_gpu_variants.sh DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
cargo build -q --example render
r=target/debug/examples/render
v() { local name=$1; shift; "$r" "$@" > "$out/$name.cu"; }
for axis in 0 1; do
  v rsum_f32_a$axis cuda/reduce dtype=float32 op=sum axis=$axis
  v rsq_f32_a$axis cuda/reduce dtype=float32 op=sum 'pre=x*x' axis=$axis
  v rmax_f32_a$axis cuda/reduce dtype=float32 op=max axis=$axis
  v rmin_f32_a$axis cuda/reduce dtype=float32 op=min axis=$axis
  v rmean_f32_a$axis cuda/reduce dtype=float32 op=mean axis=$axis
  v rsum_f64_a$axis cuda/reduce dtype=float64 op=sum axis=$axis
  v rmax_f64_a$axis cuda/reduce dtype=float64 op=max axis=$axis
  v rsum_i32_a$axis cuda/reduce dtype=int32 op=sum axis=$axis
  v rmean_i64_a$axis cuda/reduce dtype=int64 op=mean axis=$axis
done
v g_f32 cuda/gemm dtype=float32
v g_f32r cuda/gemm dtype=float32 relu=true
v g_f64r cuda/gemm dtype=float64 relu=true
v g_tf32 cuda/gemm dtype=float32 precision=tf32
v g_tf32r cuda/gemm dtype=float32 precision=tf32 relu=true
v g_bf16 cuda/gemm dtype=float32 precision=bf16
v g_fp16r cuda/gemm dtype=float32 precision=fp16 relu=true
