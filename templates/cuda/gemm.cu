/* xcache-template
description = "Row-major matrix product C = A*B on the GPU, with optional fused bias and relu: double-buffered SIMT tiles in the dtype's own arithmetic, or tensor cores (TF32, bf16, fp16 inputs, float32 accumulation); tile shape chosen from the problem's size at launch"
entry = [
  "int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream)",
  "int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias, void *c, void *stream)",
  "int xc_gemm_config(int config, int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias, void *c, void *stream)",
  "int xc_gemm_configs(void)",
]

[params.dtype]
type = "choice"
values = ["float32", "float64"]
doc = "element type of C and of the bias (and of A and B with precision ieee or tf32)"

[params.relu]
type = "bool"
default = false
doc = "apply relu to every element of C (after the bias); NaN stays NaN, as numpy's maximum(x, 0)"

[params.precision]
type = "choice"
values = ["ieee", "tf32", "bf16", "fp16"]
default = "ieee"
doc = "ieee: the dtype's own multiply-add on the SIMT units; tf32: float32 A and B rounded to TF32 on the tensor cores; bf16 / fp16: A and B are arrays of that 16-bit type, multiplied on the tensor cores. The last three accumulate in float32 and need dtype float32 and a GPU of compute capability 8.0 or later"
*/
/* ABI:
 * int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream)
 *   a  DEVICE, m*k row-major; b  DEVICE, k*n row-major (both of `dtype`, or of the 16-bit
 *   type that `precision` names); c  DEVICE, m*n `dtype`, written (not accumulated
 *   into), must not overlap a or b. Dimensions up to 2^31-1.
 * int xc_gemm_bias(..., const void *bias, void *c, void *stream)
 *   the same with c[i][j] += bias[j] before relu; bias is a DEVICE vector of n `dtype`
 *   values, or NULL for none.
 * int xc_gemm_config(int config, ...): xc_gemm_bias with tile configuration `config`
 *   (0 .. xc_gemm_configs()-1) instead of the one chosen from the size: for tuning and
 *   tests; -3 for an unknown config.
 * Returns 0 once queued, -1 for a bad dimension, -2 for a NULL pointer, else the
 * (positive) cudaError_t of the launch (cudaErrorNotSupported for a tensor-core
 * precision on a GPU older than compute capability 8.0). */
/* NVRTC (cuda_compiler=nvrtc) compiles the kernels alone, into a cubin that xcache's
 * launcher (src/cuda_launch.rs) launches through the driver as xc_gemm_config below
 * does, reading the configurations from the `xcache-launch` line; nvcc also compiles
 * the host launcher. Each configuration's two kernels (16-byte loads or not) are
 * extern "C" wrappers, xc_gemm_c<i>_v and xc_gemm_c<i>_s, around templated bodies. */
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif
{{ xc_prelude }}
{%- set t = {"float32": "float", "float64": "double"}[dtype] %}
{%- set ptx = {"ieee": "", "tf32": "tf32", "bf16": "bf16", "fp16": "f16"}[precision] %}
{%- if precision != "ieee" and dtype != "float32" %}
#error "cuda/gemm: precision {{ precision }} needs dtype float32 (the tensor cores accumulate in float32)"
{%- endif %}
{#- The tile configurations. SIMT: BM, BN, BK, TM, TN, min blocks per SM. Tensor cores:
    BM, BN, BK, warp WM x WN, stages. The size class chooses `pick[4]` (large) when
    cdiv(m, pick[0]) * cdiv(n, pick[1]) * pick[2] >= pick[3] * multiprocessors, else
    `pick[5]` (small): from timings of every config on an H200 (benches/gpu_check.py).
    float32 SIMT: 0: 256 threads of 8x8; 1: as 0 with BK 16; 2: 256 threads, 128
    accumulators each; 3: the large size class; 4: 128 threads; 5: 128 threads; 6: 64
    threads; 7: 256 threads of 4x4, the small size class; 8, 9: as 0, 1, registers
    unbounded. float64: 0: 256 threads of 4x4 doubles; 1: 128 threads, small problems.
    Tensor cores: 0: 4 warps of 64x64; 1, 2: 8 warps; 3: 8 warps of 64x32; 4: 4 warps;
    5: 4 warps, the small size class; 6: longer k-slices (209 KiB for tf32); 7: tf32: as
    1, a stage deeper; bf16 and fp16: 8 warps, longer k-slices. #}
{%- if precision == "ieee" and dtype == "float32" %}
{%- set configs = [
    [128, 128, 8, 8, 8, 2],
    [128, 128, 16, 8, 8, 2],
    [128, 256, 8, 8, 16, 1],
    [256, 128, 8, 16, 8, 1],
    [128, 64, 8, 8, 8, 4],
    [64, 128, 8, 8, 8, 4],
    [64, 64, 8, 8, 8, 8],
    [64, 64, 16, 4, 4, 2],
    [128, 128, 8, 8, 8, 1],
    [128, 128, 16, 8, 8, 1],
] %}
{%- set pick = [256, 128, 3, 2, 3, 7] %}
{%- elif precision == "ieee" %}
{%- set configs = [[64, 64, 16, 4, 4, 2], [32, 64, 16, 4, 4, 4]] %}
{%- set pick = [64, 64, 1, 2, 0, 1] %}
{%- elif precision == "tf32" %}
{%- set configs = [
    [128, 128, 32, 64, 64, 4],
    [128, 256, 32, 64, 64, 3],
    [256, 128, 32, 64, 64, 3],
    [128, 128, 32, 64, 32, 4],
    [64, 128, 32, 32, 64, 4],
    [64, 64, 32, 32, 32, 4],
    [128, 128, 64, 64, 64, 3],
    [128, 256, 32, 64, 64, 4],
] %}
{%- set pick = [128, 128, 1, 1, 1, 5] %}
{%- else %}
{%- set configs = [
    [128, 128, 32, 64, 64, 4],
    [128, 256, 32, 64, 64, 3],
    [256, 128, 32, 64, 64, 3],
    [128, 128, 32, 64, 32, 4],
    [64, 128, 32, 32, 64, 4],
    [64, 64, 32, 32, 32, 4],
    [128, 128, 64, 64, 64, 3],
    [128, 256, 64, 64, 64, 3],
] %}
{%- set pick = [128, 128, 1, 1, 0, 5] %}
{%- endif %}
{%- set elem = 8 if dtype == "float64" else 4 %}
{%- set in_bytes = 4 if precision in ["ieee", "tf32"] else 2 %}
{%- set apad = 4 if precision == "tf32" else 8 %}
/* The launch data xcache's launcher reads (one line; config = threads:smem:BM:BN):
xcache-launch gemm kind={{ "simt" if precision == "ieee" else "tc" }} configs={% for c in configs %}{% if precision == "ieee" %}{% set th = (c[0] // c[3]) * (c[1] // c[4]) %}{% set sm = (2 * c[2] * (c[0] + 4) + 2 * c[2] * c[1]) * elem %}{% else %}{% set th = (c[0] // c[3]) * (c[1] // c[4]) * 32 %}{% set sm = c[5] * (c[0] * (c[2] + apad) + c[2] * (c[1] + 8)) * in_bytes %}{% endif %}{{ th }}:{{ sm }}:{{ c[0] }}:{{ c[1] }}{% if not loop.last %},{% endif %}{% endfor %} pick={{ pick | join(",") }} chunk={{ 4 if precision == "ieee" else 16 // in_bytes }}
*/

typedef {{ t }} xc_t;

#define XC_RELU {{ 1 if relu else 0 }}

static __device__ __forceinline__ xc_t xc_epilogue(xc_t v, const xc_t *bias, int64_t col) {
    if (bias) v += bias[col];
#if XC_RELU
    v = v < 0 ? (xc_t)0 : v; /* NaN stays NaN */
#endif
    return v;
}

static __host__ __device__ __forceinline__ int64_t xc_cdiv(int64_t x, int64_t y) { return (x + y - 1) / y; }

/* Maps a linear tile index to (tile_m, tile_n) in groups of GROUP row tiles, so that
 * blocks resident together share rows of A and columns of B in L2. */
static __device__ __forceinline__ void xc_tile(int64_t t, int64_t tiles_m, int64_t tiles_n, int64_t *tm, int64_t *tn) {
    const int64_t GROUP = 8;
    const int64_t per_group = GROUP * tiles_n;
    const int64_t first = (t / per_group) * GROUP;
    const int64_t rows = tiles_m - first < GROUP ? tiles_m - first : GROUP;
    const int64_t r = t % per_group;
    *tm = first + r % rows;
    *tn = r / rows;
}

{%- if precision == "ieee" %}

/* ---------------------------------------------------------------------------------
 * SIMT kernel: block tile BM x BN, k-slices of BK, each thread TM x TN outputs in
 * registers as (TM/4) x (TN/4) strips of 4 x 4 spread across the tile, so that its
 * shared-memory reads are 16-byte vectors and a warp's reads are conflict-free
 * (lanes as 4 x 8, warps tiled over the block). A is stored transposed (k-major) in
 * shared memory, B as is; two shared buffers: while the block multiplies one k-slice,
 * the next is already loaded into registers (VEC: 16-byte global loads) and is stored
 * into the other buffer before the single barrier per slice.
 * ------------------------------------------------------------------------------- */

template <typename T> struct xc_quad;
template <> struct xc_quad<float> {
    static __device__ __forceinline__ void load(const float *p, float *d) {
        const float4 v = *reinterpret_cast<const float4 *>(p);
        d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
    }
    static __device__ __forceinline__ void store(float *p, const float *d) {
        *reinterpret_cast<float4 *>(p) = make_float4(d[0], d[1], d[2], d[3]);
    }
};
template <> struct xc_quad<double> {
    static __device__ __forceinline__ void load(const double *p, double *d) {
        const double2 v0 = reinterpret_cast<const double2 *>(p)[0], v1 = reinterpret_cast<const double2 *>(p)[1];
        d[0] = v0.x; d[1] = v0.y; d[2] = v1.x; d[3] = v1.y;
    }
    static __device__ __forceinline__ void store(double *p, const double *d) {
        reinterpret_cast<double2 *>(p)[0] = make_double2(d[0], d[1]);
        reinterpret_cast<double2 *>(p)[1] = make_double2(d[2], d[3]);
    }
};

template <int BM, int BN, int BK, int TM, int TN, int SMEM, bool VEC>
static __device__ __forceinline__ void xc_gemm_simt(int m, int n, int k,
        const xc_t *__restrict__ A, const xc_t *__restrict__ B, const xc_t *__restrict__ bias,
        xc_t *__restrict__ C) {
    constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;
    static_assert(SMEM == (2 * BK * (BM + 4) + 2 * BK * BN) * (int)sizeof(xc_t), "the launch data's shared memory");
    constexpr int SM_ = TM / 4, SN = TN / 4;          /* strips per thread */
    constexpr int AP = BM + 4;                        /* padded row of the transposed A */
    constexpr int LA = BM * BK / 4 / THREADS;         /* 4-element loads per thread */
    constexpr int LB = BK * BN / 4 / THREADS;
    static_assert(TX % 8 == 0 && TY % 4 == 0, "lanes are 4 x 8");
    static_assert(LA * 4 * THREADS == BM * BK && LB * 4 * THREADS == BK * BN, "loads");
    extern __shared__ __align__(16) unsigned char xc_smem[];
    xc_t *As = reinterpret_cast<xc_t *>(xc_smem);     /* [2][BK][AP] */
    xc_t *Bs = As + 2 * BK * AP;                      /* [2][BK][BN] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int tx = (warp % (TX / 8)) * 8 + (lane & 7);
    const int ty = (warp / (TX / 8)) * 4 + (lane >> 3);
    const int64_t tiles_m = xc_cdiv(m, BM), tiles_n = xc_cdiv(n, BN);

    for (int64_t t = blockIdx.x; t < tiles_m * tiles_n; t += gridDim.x) {
        int64_t tm, tn;
        xc_tile(t, tiles_m, tiles_n, &tm, &tn);
        const int64_t row0 = tm * BM, col0 = tn * BN;
        xc_t acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++) acc[i][j] = 0;
        xc_t ra[LA][4], rb[LB][4];

        auto load = [&](int64_t kt) {
#pragma unroll
            for (int l = 0; l < LA; l++) {
                const int e = tid + l * THREADS;
                const int r = e / (BK / 4), q = (e % (BK / 4)) * 4;
                const int64_t gr = row0 + r, gc = kt + q;
                if (VEC) {
                    if (gr < m && gc < k) xc_quad<xc_t>::load(A + gr * k + gc, ra[l]);
                    else ra[l][0] = ra[l][1] = ra[l][2] = ra[l][3] = 0;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) ra[l][i] = (gr < m && gc + i < k) ? A[gr * k + gc + i] : (xc_t)0;
                }
            }
#pragma unroll
            for (int l = 0; l < LB; l++) {
                const int e = tid + l * THREADS;
                const int r = e / (BN / 4), q = (e % (BN / 4)) * 4;
                const int64_t gr = kt + r, gc = col0 + q;
                if (VEC) {
                    if (gr < k && gc < n) xc_quad<xc_t>::load(B + gr * n + gc, rb[l]);
                    else rb[l][0] = rb[l][1] = rb[l][2] = rb[l][3] = 0;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) rb[l][i] = (gr < k && gc + i < n) ? B[gr * n + gc + i] : (xc_t)0;
                }
            }
        };
        auto store = [&](int buf) {
            xc_t *as = As + buf * BK * AP;
            xc_t *bs = Bs + buf * BK * BN;
#pragma unroll
            for (int l = 0; l < LA; l++) {
                const int e = tid + l * THREADS;
                const int r = e / (BK / 4), q = (e % (BK / 4)) * 4;
#pragma unroll
                for (int i = 0; i < 4; i++) as[(q + i) * AP + r] = ra[l][i];
            }
#pragma unroll
            for (int l = 0; l < LB; l++) {
                const int e = tid + l * THREADS;
                const int r = e / (BN / 4), q = (e % (BN / 4)) * 4;
                xc_quad<xc_t>::store(bs + r * BN + q, rb[l]);
            }
        };

        load(0);
        store(0);
        __syncthreads();
        int buf = 0;
        for (int64_t kt = 0; kt < k; kt += BK) {
            const bool more = kt + BK < k;
            if (more) load(kt + BK);
            const xc_t *as = As + buf * BK * AP;
            const xc_t *bs = Bs + buf * BK * BN;
#pragma unroll
            for (int kk = 0; kk < BK; kk++) {
                xc_t a[TM], b[TN];
#pragma unroll
                for (int s = 0; s < SM_; s++) xc_quad<xc_t>::load(as + kk * AP + s * (BM / SM_) + ty * 4, a + s * 4);
#pragma unroll
                for (int s = 0; s < SN; s++) xc_quad<xc_t>::load(bs + kk * BN + s * (BN / SN) + tx * 4, b + s * 4);
#pragma unroll
                for (int i = 0; i < TM; i++)
#pragma unroll
                    for (int j = 0; j < TN; j++) acc[i][j] = fma(a[i], b[j], acc[i][j]);
            }
            if (more) store(buf ^ 1);
            __syncthreads();
            buf ^= 1;
        }

#pragma unroll
        for (int i = 0; i < TM; i++) {
            const int64_t r = row0 + (i / 4) * (BM / SM_) + ty * 4 + (i % 4);
            if (r >= m) continue;
#pragma unroll
            for (int s = 0; s < SN; s++) {
                const int64_t c = col0 + s * (BN / SN) + tx * 4;
                xc_t v[4];
#pragma unroll
                for (int j = 0; j < 4; j++) v[j] = c + j < n ? xc_epilogue(acc[i][s * 4 + j], bias, c + j) : (xc_t)0;
                if (VEC && c < n) {
                    xc_quad<xc_t>::store(C + r * n + c, v);   /* n % 4 == 0: all four in range */
                } else {
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        if (c + j < n) C[r * n + c + j] = v[j];
                }
            }
        }
    }
}

{%- else %}

/* ---------------------------------------------------------------------------------
 * Tensor-core kernel (mma.sync, sm_80+): block tile BM x BN, k-slices of BK, warps of
 * WM x WN each, STAGES shared-memory stages filled by cp.async (16-byte copies with
 * zero fill past the edges; ALIGNED is false when a row is not a whole number of
 * 16-byte chunks or a pointer is misaligned: then plain loads fill the stage).
 * A is kept row-major [BM][BK + pad], B row-major [BK][BN + pad]; the pads make the
 * ldmatrix and fragment reads conflict-free.
 * ------------------------------------------------------------------------------- */
{%- if precision == "tf32" %}
typedef float xc_in;               /* A and B elements */
#define XC_KSTEP 8                 /* k per mma: m16n8k8 */
#define XC_APAD 4                  /* 36-float rows: ldmatrix rows in distinct banks */
#define XC_BPAD 8                  /* row stride = 8 mod 32 floats: fragment reads conflict-free */
{%- else %}
typedef unsigned short xc_in;      /* {{ precision }} bits */
#define XC_KSTEP 16                /* m16n8k16 */
#define XC_APAD 8
#define XC_BPAD 8
{%- endif %}
#define XC_ELEMS (16 / (int)sizeof(xc_in))   /* elements per 16-byte chunk */

static __device__ __forceinline__ uint32_t xc_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void xc_cp16(void *dst, const void *src, bool valid) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(xc_smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
#endif
}
static __device__ __forceinline__ void xc_cp_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
static __device__ __forceinline__ void xc_cp_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

static __device__ __forceinline__ void xc_ldsm4(uint32_t (&r)[4], const void *p) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 { %0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(xc_smem_addr(p)));
#endif
}
{%- if precision != "tf32" %}
static __device__ __forceinline__ void xc_ldsm4_t(uint32_t (&r)[4], const void *p) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 { %0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(xc_smem_addr(p)));
#endif
}
{%- endif %}

{%- if precision == "tf32" %}
static __device__ __forceinline__ uint32_t xc_tf32(uint32_t bits) {
    uint32_t r = bits;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
#endif
    return r;
}
{%- endif %}

static __device__ __forceinline__ void xc_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
{%- if precision == "tf32" %}
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 { %0, %1, %2, %3}, { %4, %5, %6, %7}, { %8, %9}, { %0, %1, %2, %3};\n"
{%- else %}
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.{{ ptx }}.{{ ptx }}.f32 { %0, %1, %2, %3}, { %4, %5, %6, %7}, { %8, %9}, { %0, %1, %2, %3};\n"
{%- endif %}
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <int BM, int BN, int BK, int WM, int WN, int STAGES, int SMEM, bool ALIGNED>
static __device__ __forceinline__ void xc_gemm_tc(int m, int n, int k,
        const xc_in *__restrict__ A, const xc_in *__restrict__ B, const float *__restrict__ bias,
        float *__restrict__ C) {
    static_assert(SMEM == STAGES * (BM * (BK + XC_APAD) + BK * (BN + XC_BPAD)) * (int)sizeof(xc_in),
                  "the launch data's shared memory");
#if __CUDA_ARCH__ >= 800
    constexpr int WARPS_N = BN / WN, THREADS = (BM / WM) * WARPS_N * 32;
    constexpr int MT = WM / 16, NT = WN / 8;          /* mma tiles per warp */
    constexpr int AS = BK + XC_APAD, BS = BN + XC_BPAD;
    constexpr int STAGE = BM * AS + BK * BS;          /* elements per stage */
    static_assert(NT % 2 == 0 && BK % XC_KSTEP == 0, "shape");
    static_assert((BM * BK / XC_ELEMS) % THREADS == 0 && (BK * BN / XC_ELEMS) % THREADS == 0, "loads");
    extern __shared__ __align__(16) unsigned char xc_smem[];
    xc_in *smem = reinterpret_cast<xc_in *>(xc_smem);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
    const int64_t tiles_m = xc_cdiv(m, BM), tiles_n = xc_cdiv(n, BN);
    const int64_t ktiles = xc_cdiv(k, BK);

    for (int64_t t = blockIdx.x; t < tiles_m * tiles_n; t += gridDim.x) {
        int64_t tm, tn;
        xc_tile(t, tiles_m, tiles_n, &tm, &tn);
        const int64_t row0 = tm * BM, col0 = tn * BN;

        auto load_stage = [&](int stage, int64_t kt) {
            xc_in *as = smem + stage * STAGE;
            xc_in *bs = as + BM * AS;
            const int64_t k0 = kt * BK;
            if (ALIGNED) {
#pragma unroll
                for (int l = 0; l < BM * BK / XC_ELEMS / THREADS; l++) {
                    const int e = tid + l * THREADS;
                    const int r = e / (BK / XC_ELEMS), q = (e % (BK / XC_ELEMS)) * XC_ELEMS;
                    const int64_t gr = row0 + r, gc = k0 + q;
                    const bool ok = gr < m && gc < k;
                    xc_cp16(as + r * AS + q, ok ? A + gr * k + gc : A, ok);
                }
#pragma unroll
                for (int l = 0; l < BK * BN / XC_ELEMS / THREADS; l++) {
                    const int e = tid + l * THREADS;
                    const int r = e / (BN / XC_ELEMS), q = (e % (BN / XC_ELEMS)) * XC_ELEMS;
                    const int64_t gr = k0 + r, gc = col0 + q;
                    const bool ok = gr < k && gc < n;
                    xc_cp16(bs + r * BS + q, ok ? B + gr * n + gc : B, ok);
                }
            } else {
                for (int e = tid; e < BM * BK; e += THREADS) {
                    const int r = e / BK, q = e % BK;
                    const int64_t gr = row0 + r, gc = k0 + q;
                    as[r * AS + q] = (gr < m && gc < k) ? A[gr * k + gc] : (xc_in)0;
                }
                for (int e = tid; e < BK * BN; e += THREADS) {
                    const int r = e / BN, q = e % BN;
                    const int64_t gr = k0 + r, gc = col0 + q;
                    bs[r * BS + q] = (gr < k && gc < n) ? B[gr * n + gc] : (xc_in)0;
                }
            }
        };

        float acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

#pragma unroll
        for (int s = 0; s < STAGES - 1; s++) {
            if (s < ktiles) load_stage(s, s);
            xc_cp_commit();
        }
        for (int64_t kt = 0; kt < ktiles; kt++) {
            xc_cp_wait<STAGES - 2>();
            __syncthreads(); /* stage kt is complete for all, stage kt-1 free for all */
            {
                const int64_t next = kt + STAGES - 1;
                if (next < ktiles) load_stage((int)(next % STAGES), next);
                xc_cp_commit();
            }
            const xc_in *as = smem + (int)(kt % STAGES) * STAGE;
            const xc_in *bs = as + BM * AS;
#pragma unroll
            for (int ks = 0; ks < BK; ks += XC_KSTEP) {
                uint32_t af[MT][4], bf[NT][2];
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    /* lanes 0-15: rows 0-15 at k; lanes 16-31: rows 0-15 at k + KSTEP/2 */
                    xc_ldsm4(af[i], as + (wm0 + i * 16 + (lane & 15)) * AS + ks + (lane >> 4) * (XC_KSTEP / 2));
{%- if precision == "tf32" %}
#pragma unroll
                    for (int q = 0; q < 4; q++) af[i][q] = xc_tf32(af[i][q]);
{%- endif %}
                }
{%- if precision == "tf32" %}
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const xc_in *p = bs + (ks + (lane & 3)) * BS + wn0 + j * 8 + (lane >> 2);
                    bf[j][0] = xc_tf32(__float_as_uint(p[0]));
                    bf[j][1] = xc_tf32(__float_as_uint(p[4 * BS]));
                }
{%- else %}
#pragma unroll
                for (int j = 0; j < NT; j += 2) {
                    /* four 8x8 matrices: k 0-7 and 8-15 of n-tile j, then of n-tile j+1 */
                    uint32_t r[4];
                    xc_ldsm4_t(r, bs + (ks + (lane & 7) + ((lane >> 3) & 1) * 8) * BS + wn0 + j * 8 + (lane >> 4) * 8);
                    bf[j][0] = r[0]; bf[j][1] = r[1]; bf[j + 1][0] = r[2]; bf[j + 1][1] = r[3];
                }
{%- endif %}
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++) xc_mma(acc[i][j], af[i], bf[j]);
            }
        }
        xc_cp_wait<0>();
        __syncthreads(); /* the next tile's prologue overwrites the stages */

        /* Accumulator (i, j): rows +lane/4 and +8, columns +2*(lane%4) and +1. */
#pragma unroll
        for (int i = 0; i < MT; i++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t r = row0 + wm0 + i * 16 + (lane >> 2) + h * 8;
                if (r >= m) continue;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const int64_t c = col0 + wn0 + j * 8 + (lane & 3) * 2;
                    if (ALIGNED && c + 1 < n) {
                        *reinterpret_cast<float2 *>(C + r * n + c) =
                            make_float2(xc_epilogue(acc[i][j][h * 2], bias, c), xc_epilogue(acc[i][j][h * 2 + 1], bias, c + 1));
                    } else {
                        if (c < n) C[r * n + c] = xc_epilogue(acc[i][j][h * 2], bias, c);
                        if (c + 1 < n) C[r * n + c + 1] = xc_epilogue(acc[i][j][h * 2 + 1], bias, c + 1);
                    }
                }
            }
        }
    }
#endif
}

{%- endif %}

/* The kernels, by name: xc_gemm_c<config>_<v: 16-byte loads | s: scalar loads>. */
{%- for c in configs %}
{%- set i = loop.index0 %}
{%- if precision == "ieee" %}{% set th = (c[0] // c[3]) * (c[1] // c[4]) %}{% set sm = (2 * c[2] * (c[0] + 4) + 2 * c[2] * c[1]) * elem %}{% else %}{% set th = (c[0] // c[3]) * (c[1] // c[4]) * 32 %}{% set sm = c[5] * (c[0] * (c[2] + apad) + c[2] * (c[1] + 8)) * in_bytes %}{% endif %}
{%- for v in ["v", "s"] %}
{%- if precision == "ieee" %}
extern "C" __global__ void __launch_bounds__({{ th }}, {{ c[5] }}) xc_gemm_c{{ i }}_{{ v }}(int m, int n, int k,
        const xc_t *__restrict__ A, const xc_t *__restrict__ B, const xc_t *__restrict__ bias,
        xc_t *__restrict__ C) {
    xc_gemm_simt<{{ c[0] }}, {{ c[1] }}, {{ c[2] }}, {{ c[3] }}, {{ c[4] }}, {{ sm }}, {{ "true" if v == "v" else "false" }}>(m, n, k, A, B, bias, C);
}
{%- else %}
extern "C" __global__ void __launch_bounds__({{ th }}) xc_gemm_c{{ i }}_{{ v }}(int m, int n, int k,
        const xc_in *__restrict__ A, const xc_in *__restrict__ B, const float *__restrict__ bias,
        float *__restrict__ C) {
    xc_gemm_tc<{{ c[0] }}, {{ c[1] }}, {{ c[2] }}, {{ c[3] }}, {{ c[4] }}, {{ c[5] }}, {{ sm }}, {{ "true" if v == "v" else "false" }}>(m, n, k, A, B, bias, C);
}
{%- endif %}
{%- endfor %}
{%- endfor %}

#ifndef __CUDACC_RTC__
/* Resident blocks per multiprocessor of kernel K with `threads` threads and `smem`
 * bytes of dynamic shared memory (raising K's limit above 48 KiB once), computed once. */
template <auto K>
static int xc_prepare(int threads, int smem) {
    static const int n = [&] {
        if (smem > 48 * 1024)
            (void)cudaFuncSetAttribute(K, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        int b = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, K, threads, smem) != cudaSuccess) b = 0;
        (void)cudaGetLastError();
        return b;
    }();
    return n;
}

/* ---------------------------------------------------------------------------------
 * Configurations and the launcher. Each config is one kernel shape; the size class
 * picks one (xc_pick) unless xc_gemm_config names it.
 * ------------------------------------------------------------------------------- */
typedef int (*xc_launch_fn)(int m, int n, int k, const void *a, const void *b, const xc_t *bias,
                            xc_t *c, bool vec, int sms, cudaStream_t s);

{%- if precision == "ieee" %}
template <int BM, int BN, int BK, int TM, int TN, auto KV, auto KS>
static int xc_run(int m, int n, int k, const void *a, const void *b, const xc_t *bias, xc_t *c,
                  bool vec, int sms, cudaStream_t s) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    constexpr int SMEM = (2 * BK * (BM + 4) + 2 * BK * BN) * (int)sizeof(xc_t);
    const int64_t tiles = xc_cdiv(m, BM) * xc_cdiv(n, BN);
    int per_sm = vec ? xc_prepare<KV>(THREADS, SMEM) : xc_prepare<KS>(THREADS, SMEM);
    if (per_sm <= 0) per_sm = 1;
    const int64_t cap = (int64_t)sms * per_sm * 64;   /* the kernel loops past it */
    const unsigned grid = (unsigned)(tiles < cap ? tiles : cap);
    if (vec)
        KV<<<grid, THREADS, SMEM, s>>>(
            m, n, k, (const xc_t *)a, (const xc_t *)b, bias, c);
    else
        KS<<<grid, THREADS, SMEM, s>>>(
            m, n, k, (const xc_t *)a, (const xc_t *)b, bias, c);
    return (int)cudaGetLastError();
}

/* The configurations above, in order. */
static const xc_launch_fn xc_configs[] = {
{%- for c in configs %}
    xc_run<{{ c[0] }}, {{ c[1] }}, {{ c[2] }}, {{ c[3] }}, {{ c[4] }}, xc_gemm_c{{ loop.index0 }}_v, xc_gemm_c{{ loop.index0 }}_s>,
{%- endfor %}
};
#define XC_NEEDS_SM80 0
{%- else %}
template <int BM, int BN, int BK, int WM, int WN, int STAGES, auto KV, auto KS>
static int xc_run(int m, int n, int k, const void *a, const void *b, const xc_t *bias, xc_t *c,
                  bool vec, int sms, cudaStream_t s) {
    constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    constexpr int SMEM = STAGES * (BM * (BK + XC_APAD) + BK * (BN + XC_BPAD)) * (int)sizeof(xc_in);
    const int64_t tiles = xc_cdiv(m, BM) * xc_cdiv(n, BN);
    int per_sm = vec ? xc_prepare<KV>(THREADS, SMEM) : xc_prepare<KS>(THREADS, SMEM);
    if (per_sm <= 0) return (int)cudaErrorInvalidConfiguration; /* the shared memory does not fit */
    const int64_t cap = (int64_t)sms * per_sm * 64;
    const unsigned grid = (unsigned)(tiles < cap ? tiles : cap);
    if (vec)
        KV<<<grid, THREADS, SMEM, s>>>(
            m, n, k, (const xc_in *)a, (const xc_in *)b, bias, c);
    else
        KS<<<grid, THREADS, SMEM, s>>>(
            m, n, k, (const xc_in *)a, (const xc_in *)b, bias, c);
    return (int)cudaGetLastError();
}

/* The configurations above, in order. */
static const xc_launch_fn xc_configs[] = {
{%- for c in configs %}
    xc_run<{{ c[0] }}, {{ c[1] }}, {{ c[2] }}, {{ c[3] }}, {{ c[4] }}, {{ c[5] }}, xc_gemm_c{{ loop.index0 }}_v, xc_gemm_c{{ loop.index0 }}_s>,
{%- endfor %}
};
#define XC_NEEDS_SM80 1
{%- endif %}

#define XC_CONFIGS ((int)(sizeof(xc_configs) / sizeof(xc_configs[0])))

/* The size class, from timings of every config on an H200 (benches/gpu_check.py): the
 * largest tile while its tiles still give (most) multiprocessors a block, else the
 * smallest. float32: 256x128 tiles of 16x8 per thread reach cuBLAS at 2048^3 and
 * above; at 1024^3 (32 such tiles) 64x64 tiles of 4x4 are fastest. Tensor cores:
 * 128x128 (bf16, fp16) or 128x256 (tf32) from about one tile per multiprocessor, else
 * 64x64. */
static int xc_pick(int64_t m, int64_t n, int sms) {
    return xc_cdiv(m, {{ pick[0] }}) * xc_cdiv(n, {{ pick[1] }}) * {{ pick[2] }} >= {{ pick[3] }} * (int64_t)sms ? {{ pick[4] }} : {{ pick[5] }};
}

extern "C" int xc_gemm_configs(void) { return XC_CONFIGS; }

extern "C" int xc_gemm_config(int config, int64_t m, int64_t n, int64_t k, const void *a, const void *b,
                              const void *bias, void *c, void *stream) {
    if (m < 0 || n < 0 || k < 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return -1;
    if (config >= XC_CONFIGS) return -3;
    if (m == 0 || n == 0) return 0;
    if (!c || (k > 0 && (!a || !b))) return -2;
    (void)cudaGetLastError(); /* clear an error left by earlier calls on this thread */
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
        sms = 32;
        (void)cudaGetLastError(); /* not the launch's error */
    }
#if XC_NEEDS_SM80
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        major = 0;
    }
    if (major < 8) return (int)cudaErrorNotSupported;
    const int64_t chunk = 16 / (int64_t)sizeof(xc_in);
    const bool vec = k % chunk == 0 && n % chunk == 0 && ((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0 &&
                     ((uintptr_t)c & 7) == 0 && ((uintptr_t)bias & 7) == 0;
#else
    const bool vec = k % 4 == 0 && n % 4 == 0 && ((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0 &&
                     ((uintptr_t)c & 15) == 0;
#endif
    if (config < 0) config = xc_pick(m, n, sms);
    return xc_configs[config]((int)m, (int)n, (int)k, a, b, (const xc_t *)bias, (xc_t *)c, vec, sms,
                              (cudaStream_t)stream);
}

extern "C" int xc_gemm_bias(int64_t m, int64_t n, int64_t k, const void *a, const void *b, const void *bias,
                            void *c, void *stream) {
    return xc_gemm_config(-1, m, n, k, a, b, bias, c, stream);
}

extern "C" int xc_gemm(int64_t m, int64_t n, int64_t k, const void *a, const void *b, void *c, void *stream) {
    return xc_gemm_config(-1, m, n, k, a, b, nullptr, c, stream);
}
#endif
