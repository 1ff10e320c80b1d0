/* xcache-template
description = "Row-major matrix product C = A*B (m x k times k x n): packed panels and a register-blocked micro-kernel vectorised by the compiler, with optional fused bias and relu"
entry = [
  "int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c)",
  "int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias, void *c)",
]
flags = ["-march=native", "-fopenmp-simd"]

[params.dtype]
type = "choice"
values = ["float32", "float64"]
doc = "element type of A, B, C and the bias"

[params.relu]
type = "bool"
default = false
doc = "apply relu to every element of C (after the bias); NaN stays NaN, as numpy's maximum(x, 0)"
*/
/* ABI: int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c)
 *   a  m*k elements, row-major; b  k*n elements, row-major; c  m*n elements, written
 *   (not accumulated into). c must not overlap a or b.
 * int xc_gemm_bias(..., const void *bias, void *c): the same with c[i][j] += bias[j]
 *   (n elements; NULL for none) before relu.
 * Returns 0 on success, 1 if a dimension is negative, 2 if a pointer is NULL or the
 * packing buffers cannot be allocated.
 *
 * The loops of BLIS / GotoBLAS in portable C: a KC x NC block of B is packed into
 * NR-wide column panels, an MC x KC block of A into MR-tall row panels (both padded
 * with zeros), and an MR x NR micro-kernel keeps its tile of C in registers while it
 * streams the two panels; its loops have constant bounds, so the compiler unrolls them
 * and vectorises along NR (two vector registers per row). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
{%- set t = {"float32": "float", "float64": "double"}[dtype] %}

typedef {{ t }} xc_t;

#if defined(__AVX512F__)
#define XC_VBYTES 64
#define MR 8
#elif defined(__AVX__)
#define XC_VBYTES 32
#define MR 6
#else
#define XC_VBYTES 16
#define MR 4
#endif
#define NR (2 * XC_VBYTES / (int)sizeof(xc_t)) /* two vector registers per row of the tile */
#define KC 256                                  /* A panel MR x KC and B panel KC x NR in L1 */
#define MC (MR * 16)                            /* packed A block in L2 */
#define NC (NR * 64)                            /* packed B block in L3 */

static inline int64_t xc_min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* bp[j / NR][p][j % NR] = b[(pc + p) * n + jc + j], zero past nb. */
static void xc_pack_b(const xc_t *restrict b, int64_t n, int64_t pc, int64_t kb, int64_t jc, int64_t nb,
                      xc_t *restrict bp) {
    for (int64_t j0 = 0; j0 < nb; j0 += NR) {
        const int64_t w = xc_min64(NR, nb - j0);
        xc_t *dst = bp + (j0 / NR) * kb * NR;
        for (int64_t p = 0; p < kb; p++) {
            const xc_t *src = b + (pc + p) * n + jc + j0;
            int64_t j = 0;
            for (; j < w; j++) dst[p * NR + j] = src[j];
            for (; j < NR; j++) dst[p * NR + j] = 0;
        }
    }
}

/* ap[i / MR][p][i % MR] = a[(ic + i) * k + pc + p], zero past mb. */
static void xc_pack_a(const xc_t *restrict a, int64_t k, int64_t ic, int64_t mb, int64_t pc, int64_t kb,
                      xc_t *restrict ap) {
    for (int64_t i0 = 0; i0 < mb; i0 += MR) {
        const int64_t h = xc_min64(MR, mb - i0);
        xc_t *dst = ap + (i0 / MR) * kb * MR;
        for (int64_t i = 0; i < MR; i++) {
            if (i < h) {
                const xc_t *src = a + (ic + i0 + i) * k + pc;
                for (int64_t p = 0; p < kb; p++) dst[p * MR + i] = src[p];
            } else {
                for (int64_t p = 0; p < kb; p++) dst[p * MR + i] = 0;
            }
        }
    }
}

/* c[0..h) x [0..w) (row stride n) += ap (MR x kb) * bp (kb x NR). */
static inline void xc_micro(int64_t kb, const xc_t *restrict ap, const xc_t *restrict bp, xc_t *restrict c,
                            int64_t n, int64_t h, int64_t w) {
    xc_t acc[MR][NR];
    for (int i = 0; i < MR; i++)
#pragma omp simd
        for (int j = 0; j < NR; j++) acc[i][j] = 0;
    for (int64_t p = 0; p < kb; p++) {
        const xc_t *bv = bp + p * NR;
        const xc_t *av = ap + p * MR;
        for (int i = 0; i < MR; i++) {
            const xc_t ai = av[i];
#pragma omp simd
            for (int j = 0; j < NR; j++) acc[i][j] += ai * bv[j];
        }
    }
    if (h == MR && w == NR) {
        for (int i = 0; i < MR; i++)
#pragma omp simd
            for (int j = 0; j < NR; j++) c[i * n + j] += acc[i][j];
    } else {
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < w; j++) c[i * n + j] += acc[i][j];
    }
}

int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a_, const void *b_, const void *bias_, void *c_) {
    if (m < 0 || n < 0 || k < 0) return 1;
    if (m == 0 || n == 0) return 0;
    if (!c_ || (k > 0 && (!a_ || !b_))) return 2;
    const xc_t *restrict a = (const xc_t *)a_;
    const xc_t *restrict b = (const xc_t *)b_;
    const xc_t *restrict bias = (const xc_t *)bias_;
    xc_t *restrict c = (xc_t *)c_;
    memset(c, 0, (size_t)m * (size_t)n * sizeof(xc_t));
    xc_t *bp = NULL, *ap = NULL;
    if (k > 0) {
        bp = (xc_t *)aligned_alloc(64, sizeof(xc_t) * KC * NC);
        ap = (xc_t *)aligned_alloc(64, sizeof(xc_t) * KC * MC);
        if (!bp || !ap) {
            free(bp);
            free(ap);
            return 2;
        }
    }
    for (int64_t jc = 0; jc < n && k > 0; jc += NC) {
        const int64_t nb = xc_min64(NC, n - jc);
        for (int64_t pc = 0; pc < k; pc += KC) {
            const int64_t kb = xc_min64(KC, k - pc);
            xc_pack_b(b, n, pc, kb, jc, nb, bp);
            for (int64_t ic = 0; ic < m; ic += MC) {
                const int64_t mb = xc_min64(MC, m - ic);
                xc_pack_a(a, k, ic, mb, pc, kb, ap);
                for (int64_t j0 = 0; j0 < nb; j0 += NR)
                    for (int64_t i0 = 0; i0 < mb; i0 += MR)
                        xc_micro(kb, ap + (i0 / MR) * kb * MR, bp + (j0 / NR) * kb * NR,
                                 c + (ic + i0) * n + jc + j0, n, xc_min64(MR, mb - i0), xc_min64(NR, nb - j0));
            }
        }
    }
    free(bp);
    free(ap);
    for (int64_t i = 0; bias && i < m; i++) {
        xc_t *row = c + i * n;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) row[j] += bias[j];
    }
{%- if relu %}
    for (int64_t i = 0; i < m * n; i++) c[i] = c[i] < 0 ? 0 : c[i]; /* NaN stays NaN */
{%- endif %}
    return 0;
}

int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c) {
    return xc_gemm_bias(m, n, k, a, b, NULL, c);
}
