/* xcache-template
description = "Row-major matrix product C = A*B (m x k times k x n), cache-blocked, with an optional fused relu"
entry = ["int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c)"]
flags = ["-march=native", "-fopenmp-simd"]

[params.dtype]
type = "choice"
values = ["float32", "float64"]
doc = "element type of A, B and C"

[params.relu]
type = "bool"
default = false
doc = "apply max(0, x) to every element of C"
*/
/* ABI: int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c)
 *   a  m*k elements, row-major; b  k*n elements, row-major; c  m*n elements, written
 *   (not accumulated into). c must not overlap a or b.
 * Returns 0 on success, 1 if a dimension is negative, 2 if a pointer is NULL. */
#include <stdint.h>
#include <string.h>
{%- set t = {"float32": "float", "float64": "double"}[dtype] %}

/* Blocks: a KC x NC panel of B (256 x 256 floats = 256 KiB, L2-sized) is reused by
 * every row of A; MC rows of C (4 x 256) stay in L1 while a panel is applied. */
#define KC 256
#define NC 256
#define MC 4

static inline int64_t xc_min64(int64_t x, int64_t y) { return x < y ? x : y; }

int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a_, const void *b_, void *c_) {
    if (m < 0 || n < 0 || k < 0) return 1;
    if (m == 0 || n == 0) return 0;
    if (!c_ || (k > 0 && (!a_ || !b_))) return 2;
    const {{ t }} *restrict a = (const {{ t }} *)a_;
    const {{ t }} *restrict b = (const {{ t }} *)b_;
    {{ t }} *restrict c = ({{ t }} *)c_;
    memset(c, 0, (size_t)m * (size_t)n * sizeof({{ t }}));
    for (int64_t jc = 0; jc < n; jc += NC) {
        int64_t nb = xc_min64(NC, n - jc);
        for (int64_t pc = 0; pc < k; pc += KC) {
            int64_t kb = xc_min64(KC, k - pc);
            for (int64_t ic = 0; ic < m; ic += MC) {
                int64_t mb = xc_min64(MC, m - ic);
                if (mb == MC) {
                    /* Four rows at once: each B element loaded is used four times. */
                    {{ t }} *c0 = c + (ic + 0) * n + jc, *c1 = c + (ic + 1) * n + jc;
                    {{ t }} *c2 = c + (ic + 2) * n + jc, *c3 = c + (ic + 3) * n + jc;
                    for (int64_t p = pc; p < pc + kb; p++) {
                        const {{ t }} a0 = a[(ic + 0) * k + p], a1 = a[(ic + 1) * k + p];
                        const {{ t }} a2 = a[(ic + 2) * k + p], a3 = a[(ic + 3) * k + p];
                        const {{ t }} *brow = b + p * n + jc;
#pragma omp simd
                        for (int64_t j = 0; j < nb; j++) {
                            const {{ t }} bv = brow[j];
                            c0[j] += a0 * bv;
                            c1[j] += a1 * bv;
                            c2[j] += a2 * bv;
                            c3[j] += a3 * bv;
                        }
                    }
                } else {
                    for (int64_t i = ic; i < ic + mb; i++) {
                        {{ t }} *crow = c + i * n + jc;
                        for (int64_t p = pc; p < pc + kb; p++) {
                            const {{ t }} av = a[i * k + p];
                            const {{ t }} *brow = b + p * n + jc;
#pragma omp simd
                            for (int64_t j = 0; j < nb; j++) crow[j] += av * brow[j];
                        }
                    }
                }
            }
        }
    }
{%- if relu %}
    for (int64_t i = 0; i < m * n; i++) c[i] = c[i] > 0 ? c[i] : 0;
{%- endif %}
    return 0;
}
