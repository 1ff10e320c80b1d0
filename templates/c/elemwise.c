/* xcache-template
description = "Fused element-wise expression over up to 8 inputs: out[i] = expr(a[i], b[i], ...), one loop, vectorised"
entry = ["int xc_elemwise(int64_t n, const void *const *inputs, void *out)"]
# -march=native: the loop is vectorised for the CPU it runs on (the CPU is then part
# of the key). -fopenmp-simd: honour `omp simd` and the libmvec declarations, so calls
# to expf & co. vectorise without -ffast-math. -fno-math-errno: sqrt becomes one
# instruction.
flags = ["-march=native", "-fopenmp-simd", "-fno-math-errno"]

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
/* ABI: int xc_elemwise(int64_t n, const void *const *inputs, void *out)
 *   n       number of elements (>= 0)
 *   inputs  `arity` pointers, each to n contiguous elements of `dtype`
 *   out     n elements of `dtype`; may be one of the inputs (in place), must not
 *           partially overlap any
 * Returns 0 on success, 1 if n < 0, 2 if a pointer is NULL while n > 0. */
{{ xc_prelude }}
{%- set ctype = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}[dtype] %}
{%- set names = ["a", "b", "c", "d", "e", "f", "g", "h"] %}

int xc_elemwise(int64_t n, const void *const *inputs, void *out) {
    if (n < 0) return 1;
    if (n == 0) return 0;
    if (!inputs || !out) return 2;
{%- for i in range(arity) %}
    const {{ ctype }} *in_{{ names[i] }} = (const {{ ctype }} *)inputs[{{ i }}];
    if (!in_{{ names[i] }}) return 2;
{%- endfor %}
    {{ ctype }} *o = ({{ ctype }} *)out;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
{%- for i in range(arity) %}
        const {{ ctype }} {{ names[i] }} = in_{{ names[i] }}[i];
{%- endfor %}
        o[i] = {{ expr }};
    }
    return 0;
}
