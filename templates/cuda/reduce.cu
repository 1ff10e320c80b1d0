/* xcache-template
description = "Reduction of a row-major matrix on the GPU over its last axis (one result per row) or its leading axis (one per column), with an optional element-wise pre-expression over x; the kernel is chosen from the shape at launch"
entry = ["int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream)"]

[params.dtype]
type = "choice"
values = ["float32", "float64", "int32", "int64"]
doc = "element type of the input and of the output"

[params.op]
type = "choice"
values = ["sum", "max", "min", "mean"]
doc = "the reduction"

[params.pre]
type = "expr"
inputs = ["x"]
dtype = "dtype"
default = "x"
doc = "element-wise expression applied before reducing, e.g. x*x"

[params.axis]
type = "int"
min = 0
max = 1
default = 1
doc = "1: reduce along each row (out has rows elements, as numpy's sum(axis=1)); 0: reduce along the leading axis, down each column (out has cols elements, as sum(axis=0))"
*/
/* ABI: int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream)
 *   in   DEVICE pointer to rows*cols elements of `dtype`, row-major, naturally aligned
 *   out  DEVICE pointer to rows elements (axis=1: out[r] = op over c of pre(in[r*cols + c]))
 *        or cols elements (axis=0: out[c] = op over r of pre(in[r*cols + c]))
 *   stream  a cudaStream_t or NULL; asynchronous
 * Floats accumulate in double; int sums wrap (an int mean divides the wrapped sum).
 * max and min return NaN if any element is NaN (numpy's max/min). Empty reductions:
 * sum 0, mean NaN (0 for ints), max -inf / min +inf (the int's MIN / MAX).
 * Returns 0 once queued, -1 for a negative size, -2 for a NULL pointer, else the
 * (positive) cudaError_t of the launch.
 *
 * Strategy, chosen from the shape at launch (every kernel reads 16-byte vectors where
 * the data allows, with several loads in flight per thread, on a grid sized to the
 * GPU's resident blocks):
 *   axis=1, rows of <= 256 vectors: a team of 1..32 lanes of a warp per row, four
 *     rows per team in flight (a warp per row for rows of a few hundred elements,
 *     4 lanes for 16 float32s, one lane for a single column);
 *   axis=1, longer rows: a 256-thread block per row; when there are too few rows to
 *     fill the GPU (down to a single row: a full reduction), each row is split into
 *     chunks reduced by separate blocks, and a second small kernel combines the
 *     chunks' partial results (kept in a stream-ordered workspace from a private pool);
 *   axis=0: a block of 256 threads covers up to 32 column vectors by 8..256 rows
 *     (wider and shallower for matrices of fewer rows); the rows are split into chunks
 *     when there are too few columns to fill the GPU, again with a second pass over the
 *     chunks' partials.
 * On an H200, every shape of 2^28 float32 over the rows, and all but a single row over
 * the leading axis, reads at 94-107% of the device-to-device copy bandwidth
 * (docs/BENCHMARKS.md). */
/* NVRTC (cuda_compiler=nvrtc) compiles the kernels alone, into a cubin that xcache's
 * launcher (src/cuda_launch.rs) launches through the driver, choosing the kernel, grid
 * and workspace as xc_launch below does; nvcc also compiles the host launcher. The
 * kernels are extern "C" wrappers (named below) around templated bodies, so that both
 * find them by name. */
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#include <mutex>
#endif
{{ xc_prelude }}
{%- set ctype = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}[dtype] %}
{%- set vtype = {"float32": "float4", "float64": "double2", "int32": "int4", "int64": "longlong2"}[dtype] %}
{%- set lanes = {"float32": 4, "float64": 2, "int32": 4, "int64": 2}[dtype] %}
{%- set v2type = {"float32": "float2", "float64": "double2", "int32": "int2", "int64": "longlong2"}[dtype] %}
{%- set is_float = dtype in ["float32", "float64"] %}
{%- set additive = op in ["sum", "mean"] %}
{%- set acc = ("double" if is_float else "unsigned long long") if additive else ctype %}
{%- set init = "0" if additive else {"max": {"float32": "-INFINITY", "float64": "-INFINITY", "int32": "INT32_MIN", "int64": "INT64_MIN"}, "min": {"float32": "INFINITY", "float64": "INFINITY", "int32": "INT32_MAX", "int64": "INT64_MAX"}}[op][dtype] %}

{%- set threads = 256 %}
{%- set unroll = 4 %}
{%- set acc_bytes = 8 if additive or dtype in ["float64", "int64"] else 4 %}
#define XC_VEC {{ lanes }}      /* elements per 16-byte vector */
#define XC_THREADS {{ threads }}
#define XC_UNROLL {{ unroll }}             /* independent loads in flight per thread */
/* The launch data xcache's launcher reads:
xcache-launch reduce axis={{ axis }} vec={{ lanes }} threads={{ threads }} unroll={{ unroll }} acc={{ acc_bytes }}
*/

typedef {{ ctype }} xc_t;
typedef {{ acc }} xc_acc;
static_assert(sizeof(xc_acc) == {{ acc_bytes }}, "the launch data's partial size");
typedef {{ vtype }} xc_v;

static __device__ __forceinline__ xc_t xc_pre(xc_t x) { return {{ pre }}; }

static __device__ __forceinline__ xc_acc xc_combine(xc_acc p, xc_acc q) {
{%- if additive %}
    return p + q;
{%- elif op == "max" %}
    return (q > p || q != q) ? q : p; /* NaN wins, once seen */
{%- else %}
    return (q < p || q != q) ? q : p;
{%- endif %}
}

static __device__ __forceinline__ xc_acc xc_one(xc_t x) { return (xc_acc)xc_pre(x); }

static __device__ __forceinline__ xc_t xc_final(xc_acc a, int64_t count) {
{%- if op == "mean" and is_float %}
    return (xc_t)(count > 0 ? a / (double)count : NAN);
{%- elif op == "mean" %}
    return count > 0 ? (xc_t)((long long)a / count) : 0;
{%- else %}
    (void)count;
    return (xc_t)a;
{%- endif %}
}


/* In both axes' modules: combining a vector, a warp and a block; a block per long row
 * (for axis 0, a single column, which is a contiguous vector). */
/* The vector's elements combined as a tree (shorter dependency chains). */
static __device__ __forceinline__ xc_acc xc_vec(xc_v v) {
{%- if lanes == 4 %}
    return xc_combine(xc_combine(xc_one(v.x), xc_one(v.y)), xc_combine(xc_one(v.z), xc_one(v.w)));
{%- else %}
    return xc_combine(xc_one(v.x), xc_one(v.y));
{%- endif %}
}

template <int WIDTH>
static __device__ __forceinline__ xc_acc xc_warp_reduce(xc_acc a) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1)
        a = xc_combine(a, __shfl_xor_sync(0xffffffffu, a, off));
    return a;
}

/* The block's combined value, in thread 0. Every thread of the block must call it. */
static __device__ __forceinline__ xc_acc xc_block_reduce(xc_acc a, xc_acc *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = xc_warp_reduce<32>(a);
    if (lane == 0) red[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < XC_THREADS / 32 ? red[lane] : (xc_acc){{ init }};
        a = xc_warp_reduce<XC_THREADS / 32>(a);
    }
    __syncthreads(); /* red is reused by the caller's next row */
    return a;
}

/* Long rows: a block per (row, chunk). Each row is read as a scalar head up to its
 * first 16-byte boundary, a body of vectors split into `chunks` ranges of `chunk_units`
 * vectors, and a scalar tail. SPLIT: write the chunk's partial to
 * part[row * chunks + chunk]; else the row's result. */
template <bool SPLIT>
static __device__ __forceinline__ void xc_rows_block_body(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out, xc_acc *__restrict__ part,
        int64_t chunks, int64_t chunk_units) {
    __shared__ xc_acc red[XC_THREADS / 32];
    const int tid = threadIdx.x;
    const int64_t items = rows * chunks;
    for (int64_t w = blockIdx.x; w < items; w += gridDim.x) {
        const int64_t r = w / chunks, ch = w - r * chunks;
        const xc_t *row = in + r * cols;
        int64_t head = (int64_t)(((16 - ((uintptr_t)row & 15)) & 15) / sizeof(xc_t));
        if (head > cols) head = cols;
        const int64_t units = (cols - head) / XC_VEC;
        const int64_t tail = head + units * XC_VEC;
        const int64_t u0 = ch * chunk_units;
        const int64_t u1 = u0 + chunk_units < units ? u0 + chunk_units : units;
        xc_acc a = {{ init }};
        if (ch == 0) {
            if (tid < head) a = xc_combine(a, xc_one(row[tid]));
            if (tail + tid < cols) a = xc_combine(a, xc_one(row[tail + tid]));
        }
        const xc_v *body = reinterpret_cast<const xc_v *>(row + head);
        int64_t j = u0 + tid;
        for (; j + 3 * XC_THREADS < u1; j += 4 * XC_THREADS) {
            const xc_v v0 = body[j], v1 = body[j + XC_THREADS];
            const xc_v v2 = body[j + 2 * XC_THREADS], v3 = body[j + 3 * XC_THREADS];
            a = xc_combine(a, xc_combine(xc_combine(xc_vec(v0), xc_vec(v1)),
                                         xc_combine(xc_vec(v2), xc_vec(v3))));
        }
        for (; j < u1; j += XC_THREADS) a = xc_combine(a, xc_vec(body[j]));
        a = xc_block_reduce(a, red);
        if (tid == 0) {
            if (SPLIT) part[w] = a;
            else out[r] = xc_final(a, cols);
        }
    }
}

/* Second pass of a split row reduction: a block per row over its chunks' partials,
 * four loads in flight per thread (a single row can have thousands of chunks). */
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_rows_finish(int64_t rows, int64_t cols,
        int64_t chunks, const xc_acc *__restrict__ part, xc_t *__restrict__ out) {
    __shared__ xc_acc red[XC_THREADS / 32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const xc_acc *p = part + r * chunks;
        xc_acc a = {{ init }};
        int64_t c = threadIdx.x;
        for (; c + 3 * XC_THREADS < chunks; c += 4 * XC_THREADS)
            a = xc_combine(a, xc_combine(xc_combine(p[c], p[c + XC_THREADS]),
                                         xc_combine(p[c + 2 * XC_THREADS], p[c + 3 * XC_THREADS])));
        for (; c < chunks; c += XC_THREADS) a = xc_combine(a, p[c]);
        a = xc_block_reduce(a, red);
        if (threadIdx.x == 0) out[r] = xc_final(a, cols);
    }
}

/* The kernels, by name: xc_rows_block, xc_rows_block_split, xc_rows_finish. */{%- for split in [false, true] %}
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_rows_block{{ "_split" if split else "" }}(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out, xc_acc *__restrict__ part,
        int64_t chunks, int64_t chunk_units) {
    xc_rows_block_body<{{ "true" if split else "false" }}>(rows, cols, in, out, part, chunks, chunk_units);
}
{%- endfor %}

#ifndef __CUDACC_RTC__
static int64_t xc_min64(int64_t x, int64_t y) { return x < y ? x : y; }
static int64_t xc_max64(int64_t x, int64_t y) { return x > y ? x : y; }
static int64_t xc_cdiv(int64_t x, int64_t y) { return (x + y - 1) / y; }

/* Resident 256-thread blocks per multiprocessor for kernel K, computed once. */
template <auto K>
static int xc_per_sm() {
    static const int n = [] {
        int b = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, K, XC_THREADS, 0) != cudaSuccess || b <= 0) {
            (void)cudaGetLastError();
            b = 4;
        }
        return b;
    }();
    return n;
}

/* A private stream-ordered memory pool per device for the partials of split
 * reductions: it keeps its memory between calls (the default pool would hand it back
 * at every synchronisation) and leaves the application's default pool alone. NULL
 * where pools are unsupported: the caller then does not split. */
static cudaMemPool_t xc_pool(int dev) {
    static std::mutex lock;
    static cudaMemPool_t pools[64];
    static bool tried[64];
    if (dev < 0 || dev >= 64) return nullptr;
    std::lock_guard<std::mutex> guard(lock);
    if (!tried[dev]) {
        tried[dev] = true;
        int ok = 0;
        cudaMemPoolProps props = {};
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = dev;
        cudaMemPool_t p = nullptr;
        if (cudaDeviceGetAttribute(&ok, cudaDevAttrMemoryPoolsSupported, dev) == cudaSuccess && ok &&
            cudaMemPoolCreate(&p, &props) == cudaSuccess) {
            uint64_t keep = UINT64_MAX;
            (void)cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &keep);
            pools[dev] = p;
        }
        (void)cudaGetLastError(); /* not the launch's error */
    }
    return pools[dev];
}

static xc_acc *xc_workspace(int dev, size_t count, cudaStream_t s) {
    cudaMemPool_t pool = xc_pool(dev);
    void *p = nullptr;
    if (!pool || cudaMallocFromPoolAsync(&p, count * sizeof(xc_acc), pool, s) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;
    }
    return (xc_acc *)p;
}

/* Long rows (and, for axis 0, a single column: a contiguous vector): a block per
 * (row, chunk); each row is split into chunks when the rows alone leave resident blocks
 * idle, keeping a chunk at >= 8 vectors per thread. */
static int xc_launch_rows_long(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int dev, int sms, cudaStream_t s) {
        const int64_t slots = (int64_t)sms * xc_per_sm<xc_rows_block_split>();
    const int64_t max_units = cols / XC_VEC;
    int64_t chunks = 1;
    if (rows < 2 * slots)
        chunks = xc_max64(1, xc_min64(xc_cdiv(2 * slots, rows), max_units / (8 * XC_THREADS)));
    xc_acc *part = chunks > 1 ? xc_workspace(dev, (size_t)(rows * chunks), s) : nullptr;
    if (!part) chunks = 1;
    const int64_t chunk_units = xc_cdiv(max_units, chunks);
    const unsigned grid = (unsigned)xc_min64(rows * chunks, slots);
    if (part) {
        xc_rows_block_split<<<grid, XC_THREADS, 0, s>>>(rows, cols, in, out, part, chunks, chunk_units);
        xc_rows_finish<<<(unsigned)xc_min64(rows, slots), XC_THREADS, 0, s>>>(
            rows, cols, chunks, part, out);
        const cudaError_t e = cudaGetLastError();
        (void)cudaFreeAsync(part, s);
        return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
    }
    xc_rows_block<<<grid, XC_THREADS, 0, s>>>(rows, cols, in, out, nullptr, 1, chunk_units);
    return (int)cudaGetLastError();
}
#endif
{%- if axis == 1 %}

/* Short rows: TEAM consecutive lanes per row; a warp takes 32/TEAM consecutive rows per
 * step and XC_UNROLL steps at once. VECTOR: every row starts 16-byte aligned (aligned
 * base, cols a multiple of XC_VEC). */
template <int TEAM, bool VECTOR>
static __device__ __forceinline__ void xc_rows_team_body(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    constexpr int PER_WARP = 32 / TEAM;
    const int lane = threadIdx.x & (TEAM - 1);
    const int team = (threadIdx.x & 31) / TEAM;
    const int64_t warp = ((int64_t)blockIdx.x * XC_THREADS + threadIdx.x) >> 5;
    const int64_t warps = ((int64_t)gridDim.x * XC_THREADS) >> 5;
    const int64_t groups = (rows + PER_WARP - 1) / PER_WARP;
    const int64_t units = VECTOR ? cols / XC_VEC : cols;
    for (int64_t g = warp; g < groups; g += XC_UNROLL * warps) { /* uniform in the warp */
        xc_acc a[XC_UNROLL];
        const xc_t *row[XC_UNROLL];
        bool ok[XC_UNROLL];
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++) {
            const int64_t r = (g + u * warps) * PER_WARP + team;
            ok[u] = g + u * warps < groups && r < rows;
            row[u] = in + (ok[u] ? r : 0) * cols;
            a[u] = {{ init }};
        }
        for (int64_t j = lane; j < units; j += TEAM) {
            if (VECTOR) {
                xc_v v[XC_UNROLL];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (ok[u]) v[u] = reinterpret_cast<const xc_v *>(row[u])[j];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (ok[u]) a[u] = xc_combine(a[u], xc_vec(v[u]));
            } else {
                xc_t v[XC_UNROLL];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (ok[u]) v[u] = row[u][j];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (ok[u]) a[u] = xc_combine(a[u], xc_one(v[u]));
            }
        }
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++) {
            const xc_acc s = xc_warp_reduce<TEAM>(a[u]);
            if (lane == 0 && ok[u]) out[(g + u * warps) * PER_WARP + team] = xc_final(s, cols);
        }
    }
}

/* Narrow rows, COLS < XC_VEC elements with XC_VEC a multiple of COLS, over a 16-byte
 * aligned input (rows of 1 or 2 float32s, single float64s): each vector holds
 * R = XC_VEC / COLS whole rows, read with one 16-byte load; a thread takes XC_UNROLL
 * vectors at once, over a grid-stride loop, and writes its R results with one store
 * where out is aligned to them. The last rows (fewer than R) go one per thread. A team
 * of lanes per row would read these shapes with 4- or 8-byte loads. */
template <int COLS>
static __device__ __forceinline__ void xc_rows_narrow_body(int64_t rows,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    constexpr int R = XC_VEC / COLS;
    const int64_t whole = rows / R; /* vectors of whole rows */
    const bool vout = ((unsigned long long)out & (sizeof(xc_t) * R - 1)) == 0;
    const xc_v *vin = reinterpret_cast<const xc_v *>(in);
    for (int64_t j0 = (int64_t)blockIdx.x * XC_THREADS * XC_UNROLL + threadIdx.x; j0 < whole;
         j0 += (int64_t)gridDim.x * XC_THREADS * XC_UNROLL) {
        xc_v v[XC_UNROLL];
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++)
            if (j0 + u * XC_THREADS < whole) v[u] = vin[j0 + u * XC_THREADS];
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++) {
            const int64_t j = j0 + u * XC_THREADS;
            if (j >= whole) break;
            const xc_t e[XC_VEC] = {
{%- for c in ["x", "y", "z", "w"][:lanes] %}v[u].{{ c }}{% if not loop.last %}, {% endif %}{% endfor -%}
            };
            xc_t res[R];
#pragma unroll
            for (int k = 0; k < R; k++) {
                xc_acc a = xc_one(e[k * COLS]);
#pragma unroll
                for (int c = 1; c < COLS; c++) a = xc_combine(a, xc_one(e[k * COLS + c]));
                res[k] = xc_final(a, COLS);
            }
            if (vout && R == XC_VEC) {
                xc_v o;
{%- for c in ["x", "y", "z", "w"][:lanes] %}
                o.{{ c }} = res[{{ loop.index0 }} % R];
{%- endfor %}
                reinterpret_cast<xc_v *>(out)[j] = o;
{%- if lanes == 4 %}
            } else if (vout && R == 2) {
                {{ v2type }} o;
                o.x = res[0];
                o.y = res[1 % R];
                reinterpret_cast<{{ v2type }} *>(out)[j] = o;
{%- endif %}
            } else {
#pragma unroll
                for (int k = 0; k < R; k++) out[j * R + k] = res[k];
            }
        }
    }
    const int64_t t = (int64_t)blockIdx.x * XC_THREADS + threadIdx.x;
    if (t < rows - whole * R) {
        const int64_t r = whole * R + t;
        xc_acc a = {{ init }};
#pragma unroll
        for (int c = 0; c < COLS; c++) a = xc_combine(a, xc_one(in[r * COLS + c]));
        out[r] = xc_final(a, COLS);
    }
}

/* The kernels, by name: xc_rows_team_<TEAM>_<v: 16-byte vectors | s: scalars>,
 * xc_rows_narrow_<COLS>. */
{%- for team in [1, 2, 4, 8, 16, 32] %}
{%- for v in ["v", "s"] %}
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_rows_team_{{ team }}_{{ v }}(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    xc_rows_team_body<{{ team }}, {{ "true" if v == "v" else "false" }}>(rows, cols, in, out);
}
{%- endfor %}
{%- endfor %}
{%- for c in [1, 2] if c < lanes %}
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_rows_narrow_{{ c }}(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    (void)cols;
    xc_rows_narrow_body<{{ c }}>(rows, in, out);
}
{%- endfor %}


#ifndef __CUDACC_RTC__
template <int TEAM, bool VECTOR> struct xc_team;
{%- for team in [1, 2, 4, 8, 16, 32] %}
{%- for v in ["v", "s"] %}
template <> struct xc_team<{{ team }}, {{ "true" if v == "v" else "false" }}> {
    static constexpr void (*k)(int64_t, int64_t, const xc_t *, xc_t *) = xc_rows_team_{{ team }}_{{ v }};
};
{%- endfor %}
{%- endfor %}

template <int TEAM, bool VECTOR>
static void xc_launch_team(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int sms, cudaStream_t s) {
    const int64_t per_block = (XC_THREADS / 32) * (32 / TEAM) * XC_UNROLL; /* rows per block step */
    const int64_t want = xc_cdiv(rows, per_block);
    const int64_t cap = (int64_t)sms * xc_per_sm<xc_team<TEAM, VECTOR>::k>();
    xc_team<TEAM, VECTOR>::k<<<(unsigned)xc_max64(1, xc_min64(want, cap)), XC_THREADS, 0, s>>>(rows, cols, in, out);
}

template <bool VECTOR>
static void xc_launch_team_for(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int sms, cudaStream_t s) {
    const int64_t units = VECTOR ? cols / XC_VEC : cols;
    if (units <= 1) xc_launch_team<1, VECTOR>(rows, cols, in, out, sms, s);
    else if (units <= 2) xc_launch_team<2, VECTOR>(rows, cols, in, out, sms, s);
    else if (units <= 4) xc_launch_team<4, VECTOR>(rows, cols, in, out, sms, s);
    else if (units <= 8) xc_launch_team<8, VECTOR>(rows, cols, in, out, sms, s);
    else if (units <= 16) xc_launch_team<16, VECTOR>(rows, cols, in, out, sms, s);
    else xc_launch_team<32, VECTOR>(rows, cols, in, out, sms, s);
}

/* Narrow rows (1 or 2 float32s, one float64) over an aligned input: xc_rows_narrow_<COLS>. */
template <int COLS>
static void xc_launch_narrow(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int sms, cudaStream_t s);
{%- for c in [1, 2] if c < lanes %}
template <>
void xc_launch_narrow<{{ c }}>(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int sms, cudaStream_t s) {
    const int64_t want = xc_cdiv(rows / (XC_VEC / {{ c }}), XC_THREADS * XC_UNROLL);
    const int64_t cap = (int64_t)sms * xc_per_sm<xc_rows_narrow_{{ c }}>();
    xc_rows_narrow_{{ c }}<<<(unsigned)xc_max64(1, xc_min64(want, cap)), XC_THREADS, 0, s>>>(rows, cols, in, out);
}
{%- endfor %}

static int xc_launch(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int dev, int sms, cudaStream_t s) {
    const bool aligned = ((uintptr_t)in & 15) == 0;
    if (aligned && cols >= 1 && cols < XC_VEC && XC_VEC % cols == 0) {
        if (cols == 1) xc_launch_narrow<1>(rows, cols, in, out, sms, s);
{%- if lanes == 4 %}
        else xc_launch_narrow<2>(rows, cols, in, out, sms, s);
{%- endif %}
        return (int)cudaGetLastError();
    }
    const bool vector = aligned && cols % XC_VEC == 0;
    if ((vector ? cols / XC_VEC : cols) <= 256) {
        if (vector) xc_launch_team_for<true>(rows, cols, in, out, sms, s);
        else xc_launch_team_for<false>(rows, cols, in, out, sms, s);
        return (int)cudaGetLastError();
    }
    return xc_launch_rows_long(rows, cols, in, out, dev, sms, s);
}
#endif
{%- else %}

/* Block (TX, TY) with TX*TY = 256; thread x owns a unit of columns (a vector of XC_VEC
 * columns when VECTOR, else one column), thread y every TY-th row of the block's range
 * [blockIdx.y * rows_per_chunk, +rows_per_chunk). The TY partials are combined in
 * shared memory. SPLIT: write part[blockIdx.y * cols + col]; else the column's result. */
template <bool VECTOR, bool SPLIT>
static __device__ __forceinline__ void xc_cols_body(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out, xc_acc *__restrict__ part,
        int64_t rows_per_chunk) {
    constexpr int W = VECTOR ? XC_VEC : 1;
    __shared__ xc_acc red[XC_THREADS * W];
    const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
    const int64_t unit = (int64_t)blockIdx.x * TX + tx;
    const int64_t units = VECTOR ? cols / XC_VEC : cols;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
    const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    xc_acc a[W];
#pragma unroll
    for (int w = 0; w < W; w++) a[w] = {{ init }};
    if (unit < units) {
        const xc_t *p = in + unit * W;
        int64_t r = r0 + ty;
        if (VECTOR) {
            for (; r + 3 * TY < r1; r += 4 * TY) {
                xc_v v[4];
#pragma unroll
                for (int u = 0; u < 4; u++)
                    v[u] = *reinterpret_cast<const xc_v *>(p + (r + (int64_t)u * TY) * cols);
#pragma unroll
                for (int u = 0; u < 4; u++) {
{%- for c in ["x", "y", "z", "w"][:lanes] %}
                    a[{{ loop.index0 }}] = xc_combine(a[{{ loop.index0 }}], xc_one(v[u].{{ c }}));
{%- endfor %}
                }
            }
            for (; r < r1; r += TY) {
                const xc_v v = *reinterpret_cast<const xc_v *>(p + r * cols);
{%- for c in ["x", "y", "z", "w"][:lanes] %}
                a[{{ loop.index0 }}] = xc_combine(a[{{ loop.index0 }}], xc_one(v.{{ c }}));
{%- endfor %}
            }
        } else {
            for (; r + 3 * TY < r1; r += 4 * TY) {
                xc_t v[4];
#pragma unroll
                for (int u = 0; u < 4; u++) v[u] = p[(r + (int64_t)u * TY) * cols];
#pragma unroll
                for (int u = 0; u < 4; u++) a[0] = xc_combine(a[0], xc_one(v[u]));
            }
            for (; r < r1; r += TY) a[0] = xc_combine(a[0], xc_one(p[r * cols]));
        }
    }
    /* Tree over y in shared memory (TY is a power of two; with one row of threads, as
     * for a single row or a few, there is nothing to combine: TY is the same for the
     * whole block, so the barriers are skipped by all its threads or none). */
    if (TY > 1) {
#pragma unroll
        for (int w = 0; w < W; w++) red[(ty * TX + tx) * W + w] = a[w];
        __syncthreads();
        for (int s = TY / 2; s > 0; s >>= 1) {
            if (ty < s) {
#pragma unroll
                for (int w = 0; w < W; w++) {
                    a[w] = xc_combine(a[w], red[((ty + s) * TX + tx) * W + w]);
                    red[(ty * TX + tx) * W + w] = a[w];
                }
            }
            __syncthreads();
        }
    }
    /* A vector's results in one 16-byte store where out allows it (a single row is a
     * map: its stores are half the traffic). */
    if (VECTOR && !SPLIT && ty == 0 && unit < units && ((unsigned long long)out & 15) == 0) {
        xc_v o;
{%- for c in ["x", "y", "z", "w"][:lanes] %}
        o.{{ c }} = xc_final(a[{{ loop.index0 }}], rows);
{%- endfor %}
        *reinterpret_cast<xc_v *>(out + unit * W) = o;
    } else if (ty == 0 && unit < units) {
#pragma unroll
        for (int w = 0; w < W; w++) {
            const int64_t col = unit * W + w;
            if (SPLIT) part[(int64_t)blockIdx.y * cols + col] = a[w];
            else out[col] = xc_final(a[w], rows);
        }
    }
}

/* Second pass of a split column reduction over the (chunks x cols) partials: block
 * (TX, TY) as in xc_cols, thread y taking every TY-th chunk, four loads in flight. */
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_cols_finish(int64_t rows, int64_t cols,
        int64_t chunks, const xc_acc *__restrict__ part, xc_t *__restrict__ out) {
    __shared__ xc_acc red[XC_THREADS];
    const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
    const int64_t col = (int64_t)blockIdx.x * TX + tx;
    xc_acc a = {{ init }};
    if (col < cols) {
        int64_t ch = ty;
        for (; ch + 3 * TY < chunks; ch += 4 * TY)
            a = xc_combine(a, xc_combine(xc_combine(part[ch * cols + col], part[(ch + TY) * cols + col]),
                                         xc_combine(part[(ch + 2 * TY) * cols + col], part[(ch + 3 * TY) * cols + col])));
        for (; ch < chunks; ch += TY) a = xc_combine(a, part[ch * cols + col]);
    }
    red[ty * TX + tx] = a;
    __syncthreads();
    for (int s = TY / 2; s > 0; s >>= 1) {
        if (ty < s) red[ty * TX + tx] = a = xc_combine(a, red[(ty + s) * TX + tx]);
        __syncthreads();
    }
    if (ty == 0 && col < cols) out[col] = xc_final(a, rows);
}

/* Few rows (at most 4) over the leading axis: a row of 256 threads, each taking
 * XC_UNROLL units of columns (vectors of XC_VEC where the data allows) spaced a block
 * apart, over a grid-stride loop, and going down all the rows itself (no shared
 * memory, no barriers). A single row is a map: one 16-byte load and one 16-byte store
 * per vector. */
template <bool VECTOR>
static __device__ __forceinline__ void xc_cols_few_body(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    constexpr int W = VECTOR ? XC_VEC : 1;
    const int64_t units = VECTOR ? cols / XC_VEC : cols;
    const bool vout = VECTOR && ((unsigned long long)out & 15) == 0;
    for (int64_t u0 = (int64_t)blockIdx.x * XC_THREADS * XC_UNROLL + threadIdx.x; u0 < units;
         u0 += (int64_t)gridDim.x * XC_THREADS * XC_UNROLL) {
        xc_acc a[XC_UNROLL][W];
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++)
#pragma unroll
            for (int w = 0; w < W; w++) a[u][w] = {{ init }};
        for (int64_t r = 0; r < rows; r++) {
            const xc_t *p = in + r * cols;
            if (VECTOR) {
                xc_v v[XC_UNROLL];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (u0 + u * XC_THREADS < units) v[u] = reinterpret_cast<const xc_v *>(p)[u0 + u * XC_THREADS];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++) {
                    if (u0 + u * XC_THREADS >= units) break;
{%- for c in ["x", "y", "z", "w"][:lanes] %}
                    a[u][{{ loop.index0 }} % W] = xc_combine(a[u][{{ loop.index0 }} % W], xc_one(v[u].{{ c }}));
{%- endfor %}
                }
            } else {
                xc_t v[XC_UNROLL];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (u0 + u * XC_THREADS < units) v[u] = p[u0 + u * XC_THREADS];
#pragma unroll
                for (int u = 0; u < XC_UNROLL; u++)
                    if (u0 + u * XC_THREADS < units) a[u][0] = xc_combine(a[u][0], xc_one(v[u]));
            }
        }
#pragma unroll
        for (int u = 0; u < XC_UNROLL; u++) {
            const int64_t unit = u0 + u * XC_THREADS;
            if (unit >= units) break;
            if (vout) {
                xc_v o;
{%- for c in ["x", "y", "z", "w"][:lanes] %}
                o.{{ c }} = xc_final(a[u][{{ loop.index0 }} % W], rows);
{%- endfor %}
                reinterpret_cast<xc_v *>(out)[unit] = o;
            } else {
#pragma unroll
                for (int w = 0; w < W; w++) out[unit * W + w] = xc_final(a[u][w], rows);
            }
        }
    }
}

/* The kernels, by name: xc_cols_<v | s>[_split], xc_cols_finish, xc_cols_few_<v | s>. */
{%- for v in ["v", "s"] %}
{%- for split in [false, true] %}
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_cols_{{ v }}{{ "_split" if split else "" }}(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out, xc_acc *__restrict__ part,
        int64_t rows_per_chunk) {
    xc_cols_body<{{ "true" if v == "v" else "false" }}, {{ "true" if split else "false" }}>(rows, cols, in, out, part, rows_per_chunk);
}
{%- endfor %}
{%- endfor %}
{%- for v in ["v", "s"] %}
extern "C" __global__ void __launch_bounds__(XC_THREADS) xc_cols_few_{{ v }}(int64_t rows, int64_t cols,
        const xc_t *__restrict__ in, xc_t *__restrict__ out) {
    xc_cols_few_body<{{ "true" if v == "v" else "false" }}>(rows, cols, in, out);
}
{%- endfor %}


#ifndef __CUDACC_RTC__
/* Block shape for a (rows x units) problem: TX units wide (32, fewer for narrow
 * matrices), TY = 256 / TX rows deep, fewer (and TX wider) for short ones. */
static dim3 xc_cols_block(int64_t rows, int64_t units) {
    int tx = 32;
    while (tx > 1 && tx / 2 >= units) tx /= 2;
    int ty = XC_THREADS / tx;
    while (ty > 1 && ty > rows) ty /= 2;
    return dim3(XC_THREADS / ty, ty);
}

/* The most rows the few-rows kernel takes. */
#define XC_FEW_ROWS 4

static int xc_launch(int64_t rows, int64_t cols, const xc_t *in, xc_t *out, int dev, int sms, cudaStream_t s) {
    /* A single column is a contiguous vector: reduced as a single long row is. */
    if (cols == 1) return xc_launch_rows_long(1, rows, in, out, dev, sms, s);
    const bool vector = ((uintptr_t)in & 15) == 0 && cols % XC_VEC == 0;
    const int64_t units = vector ? cols / XC_VEC : cols;
    if (rows <= XC_FEW_ROWS) {
        const int64_t want = xc_cdiv(units, XC_THREADS * XC_UNROLL);
        const int64_t cap = (int64_t)sms * (vector ? xc_per_sm<xc_cols_few_v>() : xc_per_sm<xc_cols_few_s>());
        const unsigned grid = (unsigned)xc_max64(1, xc_min64(want, cap));
        if (vector) xc_cols_few_v<<<grid, XC_THREADS, 0, s>>>(rows, cols, in, out);
        else xc_cols_few_s<<<grid, XC_THREADS, 0, s>>>(rows, cols, in, out);
        return (int)cudaGetLastError();
    }
    const dim3 block = xc_cols_block(rows, units);
    const int tx = (int)block.x, ty = (int)block.y;
    const int64_t col_blocks = xc_cdiv(units, tx);
    const int64_t slots = (int64_t)sms * (vector ? xc_per_sm<xc_cols_v_split>() : xc_per_sm<xc_cols_s_split>());
    /* Enough blocks for two rounds of resident blocks, each thread keeping >= 16 rows. */
    int64_t chunks = 1;
    if (col_blocks < 2 * slots)
        chunks = xc_max64(1, xc_min64(xc_min64(xc_cdiv(2 * slots, col_blocks), rows / (16 * ty)), 65535));
    xc_acc *part = chunks > 1 ? xc_workspace(dev, (size_t)(chunks * cols), s) : nullptr;
    if (!part) chunks = 1;
    const int64_t rows_per_chunk = xc_max64(1, xc_cdiv(rows, chunks));
    chunks = xc_max64(1, xc_cdiv(rows, rows_per_chunk));
    const dim3 grid((unsigned)col_blocks, (unsigned)chunks);
    if (part) {
        if (vector) xc_cols_v_split<<<grid, block, 0, s>>>(rows, cols, in, out, part, rows_per_chunk);
        else xc_cols_s_split<<<grid, block, 0, s>>>(rows, cols, in, out, part, rows_per_chunk);
        const dim3 fblock = xc_cols_block(chunks, cols);
        xc_cols_finish<<<(unsigned)xc_cdiv(cols, fblock.x), fblock, 0, s>>>(rows, cols, chunks, part, out);
        const cudaError_t e = cudaGetLastError();
        (void)cudaFreeAsync(part, s);
        return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
    }
    if (vector) xc_cols_v<<<grid, block, 0, s>>>(rows, cols, in, out, nullptr, xc_max64(rows, 1));
    else xc_cols_s<<<grid, block, 0, s>>>(rows, cols, in, out, nullptr, xc_max64(rows, 1));
    return (int)cudaGetLastError();
}
#endif
{%- endif %}

#ifndef __CUDACC_RTC__
extern "C" int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream) {
    if (rows < 0 || cols < 0) return -1;
    if ({{ "rows" if axis == 1 else "cols" }} == 0) return 0; /* no outputs */
    if (!out || (!in && rows > 0 && cols > 0)) return -2;
    (void)cudaGetLastError(); /* clear an error left by earlier calls on this thread */
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
        sms = 32;
        (void)cudaGetLastError(); /* not the launch's error */
    }
    return xc_launch(rows, cols, (const xc_t *)in, (xc_t *)out, dev, sms, (cudaStream_t)stream);
}
#endif
