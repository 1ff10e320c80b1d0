// The ceiling of `mma.sync` on this GPU: every warp issues independent tensor-core
// instructions on register operands (no memory traffic), so the rate measured is the
// most any mma.sync GEMM kernel (cuda/gemm's tensor-core path) can reach here; cuBLAS on
// Hopper uses wgmma instead. Build and run: nvcc -O3 -arch=sm_90 benches/mma_peak.cu -o mma_peak && ./mma_peak
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

template <int KIND>  // 0: bf16 m16n8k16, 1: fp16 m16n8k16, 2: tf32 m16n8k8
__global__ void __launch_bounds__(128) peak(float *out, int iters) {
    const uint32_t one = KIND == 0 ? 0x3f803f80u : KIND == 1 ? 0x3c003c00u : 0x3f800000u;
    uint32_t a[4] = {one, one, one, one}, b[2] = {one, one};
    float d[8][4] = {};
    for (int i = 0; i < iters; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (KIND == 0)
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 { %0, %1, %2, %3}, { %4, %5, %6, %7}, { %8, %9}, { %0, %1, %2, %3};\n"
                             : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
            else if (KIND == 1)
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 { %0, %1, %2, %3}, { %4, %5, %6, %7}, { %8, %9}, { %0, %1, %2, %3};\n"
                             : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
            else
                asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 { %0, %1, %2, %3}, { %4, %5, %6, %7}, { %8, %9}, { %0, %1, %2, %3};\n"
                             : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        }
    }
    float s = 0;
    for (int j = 0; j < 8; j++) s += d[j][0] + d[j][1] + d[j][2] + d[j][3];
    if (s == 1234.5f) out[0] = s;  // keeps the accumulators live
}

template <int KIND>
static void run(const char *name, double flops_per_mma, int sms) {
    float *out;
    cudaMalloc(&out, 4);
    const int blocks = sms * 8, iters = 4096;
    peak<KIND><<<blocks, 128>>>(out, 64);  // warm-up
    cudaEvent_t s, e;
    cudaEventCreate(&s);
    cudaEventCreate(&e);
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(s);
        peak<KIND><<<blocks, 128>>>(out, iters);
        cudaEventRecord(e);
        cudaEventSynchronize(e);
        float ms;
        cudaEventElapsedTime(&ms, s, e);
        best = ms < best ? ms : best;
    }
    const double flops = (double)blocks * 4 * iters * 8 * flops_per_mma;
    printf("mma.sync %s: %.1f TFLOP/s (%s)\n", name, flops / best / 1e9, cudaGetErrorString(cudaGetLastError()));
    cudaFree(out);
}

int main() {
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    printf("%s, %d SMs\n", p.name, p.multiProcessorCount);
    run<0>("bf16 m16n8k16", 2.0 * 16 * 8 * 16, p.multiProcessorCount);
    run<1>("fp16 m16n8k16", 2.0 * 16 * 8 * 16, p.multiProcessorCount);
    run<2>("tf32 m16n8k8", 2.0 * 16 * 8 * 8, p.multiProcessorCount);
    return 0;
}
