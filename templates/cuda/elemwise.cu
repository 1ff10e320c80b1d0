/* xcache-template
description = "Fused element-wise expression over up to 8 inputs on the GPU: one grid-stride kernel, 16-byte vector loads when every pointer is aligned"
entry = ["int xc_elemwise(int64_t n, const void *const *inputs, void *out, void *stream)"]

[params.dtype]
type = "choice"
values = ["float32", "float64", "int32", "int64"]
doc = "element type of every input and of the output"

[params.arity]
type = "int"
min = 1
max = 8
doc = "number of inputs; the expression names them a, b, c, ... in order"

[params.expr]
type = "expr"
inputs = ["a", "b", "c", "d", "e", "f", "g", "h"]
arity = "arity"
dtype = "dtype"
doc = "the element-wise expression, e.g. a*exp(b)+c"
*/
/* ABI: int xc_elemwise(int64_t n, const void *const *inputs, void *out, void *stream)
 *   n       number of elements (>= 0)
 *   inputs  a HOST array of `arity` DEVICE pointers, each to n elements of `dtype`
 *   out     DEVICE pointer to n elements; may be one of the inputs (in place), must
 *           not partially overlap any
 *   stream  a cudaStream_t, or NULL for the default stream; the call is asynchronous
 * Returns 0 once the kernel is queued, -1 if n < 0, -2 if a pointer is NULL while
 * n > 0, else the (positive) cudaError_t of the launch (cudaGetErrorString explains it). */
/* NVRTC (cuda_compiler=nvrtc) compiles the kernels alone, into a cubin that xcache's
 * launcher (src/cuda_launch.rs) launches through the driver with the same grid as
 * xc_elemwise below; nvcc also compiles the host launcher. The kernels are extern "C"
 * so that both find them by these names: xc_vector, xc_scalar. */
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif
{{ xc_prelude }}
{%- set ctype = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}[dtype] %}
{%- set vtype = {"float32": "float4", "float64": "double2", "int32": "int4", "int64": "longlong2"}[dtype] %}
{%- set lanes = {"float32": 4, "float64": 2, "int32": 4, "int64": 2}[dtype] %}
{%- set vcomp = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long"}[dtype] %}
{%- set comps = ["x", "y", "z", "w"] %}
{%- set threads = 256 %}
{%- set blocks_per_sm = 16 %}
/* The launch data xcache's launcher reads:
xcache-launch elemwise lanes={{ lanes }} threads={{ threads }} blocks_per_sm={{ blocks_per_sm }}
*/
{%- set names = ["a", "b", "c", "d", "e", "f", "g", "h"] %}

static __device__ __forceinline__ {{ ctype }} xc_op(
{%- for i in range(arity) %}{{ ctype }} {{ names[i] }}{% if not loop.last %}, {% endif %}{% endfor %}) {
    return {{ expr }};
}

extern "C" __global__ void __launch_bounds__({{ threads }}) xc_scalar(int64_t start, int64_t n,
{%- for i in range(arity) %} const {{ ctype }} *in_{{ names[i] }},{% endfor %} {{ ctype }} *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = start + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = xc_op({% for i in range(arity) %}in_{{ names[i] }}[i]{% if not loop.last %}, {% endif %}{% endfor %});
}

extern "C" __global__ void __launch_bounds__({{ threads }}) xc_vector(int64_t nv,
{%- for i in range(arity) %} const {{ vtype }} *in_{{ names[i] }},{% endfor %} {{ vtype }} *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += stride) {
{%- for i in range(arity) %}
        const {{ vtype }} v_{{ names[i] }} = in_{{ names[i] }}[i];
{%- endfor %}
        {{ vtype }} r;
{%- for c in comps[:lanes] %}
        r.{{ c }} = ({{ vcomp }})xc_op({% for i in range(arity) %}({{ ctype }})v_{{ names[i] }}.{{ c }}{% if not loop.last %}, {% endif %}{% endfor %});
{%- endfor %}
        out[i] = r;
    }
}

#ifndef __CUDACC_RTC__
static int xc_blocks(int64_t work) {
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
        sms = 32;
        (void)cudaGetLastError(); /* not the launch's error */
    }
    int64_t want = (work + {{ threads - 1 }}) / {{ threads }};
    int64_t cap = (int64_t)sms * {{ blocks_per_sm }};
    return (int)(want < cap ? want : cap);
}

extern "C" int xc_elemwise(int64_t n, const void *const *inputs, void *out, void *stream) {
    if (n < 0) return -1;
    if (n == 0) return 0;
    if (!inputs || !out) return -2;
    (void)cudaGetLastError(); /* clear an error left by earlier calls on this thread */
    cudaStream_t s = (cudaStream_t)stream;
    uintptr_t align = (uintptr_t)out;
{%- for i in range(arity) %}
    const {{ ctype }} *in_{{ names[i] }} = (const {{ ctype }} *)inputs[{{ i }}];
    if (!in_{{ names[i] }}) return -2;
    align |= (uintptr_t)in_{{ names[i] }};
{%- endfor %}
    {{ ctype }} *o = ({{ ctype }} *)out;
    const int64_t nv = (align % 16 == 0) ? n / {{ lanes }} : 0;
    if (nv > 0) {
        xc_vector<<<xc_blocks(nv), {{ threads }}, 0, s>>>(nv,
{%- for i in range(arity) %} (const {{ vtype }} *)in_{{ names[i] }},{% endfor %} ({{ vtype }} *)o);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return (int)e;
    }
    const int64_t start = nv * {{ lanes }};
    if (start < n)
        xc_scalar<<<xc_blocks(n - start), {{ threads }}, 0, s>>>(start, n,
{%- for i in range(arity) %} in_{{ names[i] }},{% endfor %} o);
    return (int)cudaGetLastError();
}
#endif
