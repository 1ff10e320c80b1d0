/* xcache-template
description = "Row reduction of a row-major matrix on the GPU, with an optional element-wise pre-expression over x: one block per row, warp-shuffle tree"
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
*/
/* ABI: int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream)
 *   in   DEVICE pointer to rows*cols elements of `dtype`, row-major
 *   out  DEVICE pointer to rows elements: out[r] = op over c of pre(in[r*cols + c])
 *   stream  a cudaStream_t or NULL; asynchronous
 * Floats accumulate in double; int sums wrap (an int mean divides the wrapped sum).
 * max and min return NaN if any element is NaN. Empty rows: sum 0, mean NaN (0 for
 * ints), max -inf / min +inf (the int's MIN / MAX).
 * Returns 0 once queued, -1 for a negative size, -2 for a NULL pointer, else the
 * (positive) cudaError_t of the launch. */
#include <cuda_runtime.h>
{{ xc_prelude }}
{%- set ctype = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}[dtype] %}
{%- set is_float = dtype in ["float32", "float64"] %}
{%- set additive = op in ["sum", "mean"] %}
{%- set acc = ("double" if is_float else "unsigned long long") if additive else ctype %}
{%- set init = "0" if additive else {"max": {"float32": "-INFINITY", "float64": "-INFINITY", "int32": "INT32_MIN", "int64": "INT64_MIN"}, "min": {"float32": "INFINITY", "float64": "INFINITY", "int32": "INT32_MAX", "int64": "INT64_MAX"}}[op][dtype] %}

static __device__ __forceinline__ {{ ctype }} xc_pre({{ ctype }} x) { return {{ pre }}; }

static __device__ __forceinline__ {{ acc }} xc_combine({{ acc }} p, {{ acc }} q) {
{%- if additive %}
    return p + q;
{%- elif op == "max" %}
    return (q > p || q != q) ? q : p; /* NaN wins, once seen */
{%- else %}
    return (q < p || q != q) ? q : p;
{%- endif %}
}

__global__ void __launch_bounds__(256) xc_rows(int64_t rows, int64_t cols, const {{ ctype }} *__restrict__ in, {{ ctype }} *out) {
    __shared__ {{ acc }} part[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const {{ ctype }} *row = in + r * cols;
        {{ acc }} a = {{ init }};
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            a = xc_combine(a, ({{ acc }})xc_pre(row[c]));
        for (int off = 16; off > 0; off >>= 1)
            a = xc_combine(a, __shfl_down_sync(0xffffffffu, a, off));
        if (lane == 0) part[warp] = a;
        __syncthreads();
        if (warp == 0) {
            a = lane < 8 ? part[lane] : ({{ acc }}){{ init }};
            for (int off = 4; off > 0; off >>= 1)
                a = xc_combine(a, __shfl_down_sync(0xffffffffu, a, off));
            if (lane == 0) {
{%- if op == "mean" and is_float %}
                out[r] = ({{ ctype }})(cols > 0 ? a / (double)cols : NAN);
{%- elif op == "mean" %}
                out[r] = cols > 0 ? ({{ ctype }})((long long)a / cols) : 0;
{%- else %}
                out[r] = ({{ ctype }})a;
{%- endif %}
            }
        }
        __syncthreads();
    }
}

extern "C" int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out, void *stream) {
    if (rows < 0 || cols < 0) return -1;
    if (rows == 0) return 0;
    if (!out || (!in && cols > 0)) return -2;
    (void)cudaGetLastError(); /* clear an error left by earlier calls on this thread */
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
        sms = 32;
        (void)cudaGetLastError(); /* not the launch's error */
    }
    const int64_t cap = (int64_t)sms * 16;
    const int blocks = (int)(rows < cap ? rows : cap);
    xc_rows<<<blocks, 256, 0, (cudaStream_t)stream>>>(rows, cols, (const {{ ctype }} *)in, ({{ ctype }} *)out);
    return (int)cudaGetLastError();
}
