/* xcache-template
description = "Row-major matrix product C = A*B on the GPU: 128x128 tiles in shared memory, 8x8 outputs per thread in registers, optional fused relu"
entry = ["int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream)"]

[params.dtype]
type = "choice"
values = ["float32", "float64"]
doc = "element type of A, B and C"

[params.relu]
type = "bool"
default = false
doc = "apply max(0, x) to every element of C"
*/
/* ABI: int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream)
 *   a  DEVICE, m*k row-major; b  DEVICE, k*n row-major; c  DEVICE, m*n, written (not
 *   accumulated into), must not overlap a or b. Dimensions up to 2^31-1.
 * Returns 0 once queued, -1 for a bad dimension, -2 for a NULL pointer, else the
 * (positive) cudaError_t of the launch. */
#include <cuda_runtime.h>
#include <stdint.h>
{%- set t = {"float32": "float", "float64": "double"}[dtype] %}

#define BM 128
#define BN 128
#define BK 8

/* 256 threads as 16x16; thread (tx, ty) owns rows {ty*4+i, 64+ty*4+i} and columns
 * {tx*4+j, 64+tx*4+j} of the block's 128x128 tile: its shared-memory reads of a k-slice
 * are 4 consecutive values twice, so a warp reads without bank conflicts. */
__global__ void __launch_bounds__(256) xc_gemm_kernel(int m, int n, int k,
        const {{ t }} *__restrict__ A, const {{ t }} *__restrict__ B, {{ t }} *__restrict__ C) {
    __shared__ {{ t }} As[BK][BM];
    __shared__ {{ t }} Bs[BK][BN];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t row0 = (int64_t)blockIdx.x * BM;
    for (int64_t tile_n = blockIdx.y; tile_n * BN < n; tile_n += gridDim.y) {
    const int64_t col0 = tile_n * BN;
    {{ t }} acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0;

    for (int64_t kt = 0; kt < k; kt += BK) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int e = tid + l * 256;
            const int ar = e / BK, ac = e % BK;          /* A tile: 128 rows x 8 */
            const int64_t gr = row0 + ar, gc = kt + ac;
            As[ac][ar] = (gr < m && gc < k) ? A[gr * k + gc] : ({{ t }})0;
            const int br = e / BN, bc = e % BN;          /* B tile: 8 rows x 128 */
            const int64_t hr = kt + br, hc = col0 + bc;
            Bs[br][bc] = (hr < k && hc < n) ? B[hr * n + hc] : ({{ t }})0;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            {{ t }} a[8], b[8];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a[i] = As[kk][ty * 4 + i];
                a[4 + i] = As[kk][64 + ty * 4 + i];
                b[i] = Bs[kk][tx * 4 + i];
                b[4 + i] = Bs[kk][64 + tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 8; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int64_t r = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t c = col0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
            if (c < n) {
                {{ t }} v = acc[i][j];
{%- if relu %}
                v = v > 0 ? v : ({{ t }})0;
{%- endif %}
                C[r * n + c] = v;
            }
        }
    }
    __syncthreads(); /* the next column tile reuses the shared tiles */
    }
}

extern "C" int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream) {
    if (m < 0 || n < 0 || k < 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return -1;
    if (m == 0 || n == 0) return 0;
    if (!c || (k > 0 && (!a || !b))) return -2;
    (void)cudaGetLastError(); /* clear an error left by earlier calls on this thread */
    /* Row tiles on x (up to 2^31-1 blocks), column tiles on y, looped past 65535. */
    const int64_t tiles_n = (n + BN - 1) / BN;
    dim3 grid((unsigned)((m + BM - 1) / BM), (unsigned)(tiles_n < 65535 ? tiles_n : 65535));
    xc_gemm_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>((int)m, (int)n, (int)k,
        (const {{ t }} *)a, (const {{ t }} *)b, ({{ t }} *)c);
    return (int)cudaGetLastError();
}
