/* xcache-template
description = "Row reduction of a row-major matrix, with an optional element-wise pre-expression over x: out[r] = op(pre(in[r, :]))"
entry = ["int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out)"]
flags = ["-march=native", "-fopenmp-simd", "-fno-math-errno"]

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
/* ABI: int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out)
 *   in   rows*cols elements of `dtype`, row-major
 *   out  axis=1: rows elements, out[r] = op over c of pre(in[r*cols + c]);
 *        axis=0: cols elements, out[c] = op over r of pre(in[r*cols + c])
 * axis=1: floats are summed in vector lanes of their own type over blocks of 1024
 * elements and the block sums in double, so long float32 rows keep about float32
 * accuracy (like numpy's pairwise sums). axis=0: every column accumulates in double,
 * four rows folded at a time into a block of 2048 column accumulators. Int sums wrap (two's
 * complement), and an int mean is the wrapped sum divided by the count, truncated.
 * max and min return NaN if any element is NaN. An empty reduction gives 0 for sum,
 * NaN (or 0 for ints) for mean, and -inf/+inf (or the int's min/max) for max/min.
 * Returns 0 on success, 1 if rows < 0 or cols < 0, 2 if a pointer is NULL. */
{{ xc_prelude }}
#include <float.h>
{%- set ctype = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}[dtype] %}
{%- set is_float = dtype in ["float32", "float64"] %}
{%- set acc = "double" if is_float else ("uint64_t" if op in ["sum", "mean"] else ctype) %}
{%- set lowest = {"float32": "-INFINITY", "float64": "-INFINITY", "int32": "INT32_MIN", "int64": "INT64_MIN"}[dtype] %}
{%- set cacc = acc if op in ["sum", "mean"] else ctype %}
{%- set highest = {"float32": "INFINITY", "float64": "INFINITY", "int32": "INT32_MAX", "int64": "INT64_MAX"}[dtype] %}

#define XC_BLOCK 1024

static inline {{ ctype }} xc_pre({{ ctype }} x) { return {{ pre }}; }

{%- if axis == 1 %}
int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out) {
    if (rows < 0 || cols < 0) return 1;
    if (rows == 0) return 0;
    if (!out || (!in && cols > 0)) return 2;
    const {{ ctype }} *src = (const {{ ctype }} *)in;
    {{ ctype }} *dst = ({{ ctype }} *)out;
    for (int64_t r = 0; r < rows; r++) {
        const {{ ctype }} *row = src + r * cols;
{%- if op in ["sum", "mean"] %}
        {{ acc }} total = 0;
        for (int64_t b = 0; b < cols; b += XC_BLOCK) {
            int64_t end = b + XC_BLOCK < cols ? b + XC_BLOCK : cols;
{%- if is_float %}
            {{ ctype }} part = 0;
#pragma omp simd reduction(+:part)
            for (int64_t c = b; c < end; c++) part += xc_pre(row[c]);
            total += (double)part;
{%- else %}
            uint64_t part = 0;
#pragma omp simd reduction(+:part)
            for (int64_t c = b; c < end; c++) part += (uint64_t)xc_pre(row[c]);
            total += part;
{%- endif %}
        }
{%- if op == "sum" %}
        dst[r] = ({{ ctype }})total;
{%- elif is_float %}
        dst[r] = ({{ ctype }})(cols > 0 ? total / (double)cols : NAN);
{%- else %}
        dst[r] = cols > 0 ? ({{ ctype }})((int64_t)total / cols) : 0;
{%- endif %}
{%- else %}
        {{ ctype }} best = {{ lowest if op == "max" else highest }};
{%- if not is_float %}
#pragma omp simd reduction({{ op }}:best)
{%- endif %}
        for (int64_t c = 0; c < cols; c++) {
            {{ ctype }} v = xc_pre(row[c]);
            best = (v {{ ">" if op == "max" else "<" }} best || v != v) ? v : best;
        }
        dst[r] = best;
{%- endif %}
    }
    return 0;
}
{%- else %}

#define XC_COLS 2048 /* column accumulators: 16 KiB of doubles, in L1 */

static inline {{ cacc }} xc_fold({{ cacc }} p, {{ cacc }} q) {
{%- if op in ["sum", "mean"] %}
    return p + q;
{%- else %}
    return q != q ? q : (q {{ ">" if op == "max" else "<" }} p ? q : p); /* NaN sticks; this form vectorises */
{%- endif %}
}

int xc_reduce(int64_t rows, int64_t cols, const void *in, void *out) {
    if (rows < 0 || cols < 0) return 1;
    if (cols == 0) return 0;
    if (!out || (!in && rows > 0)) return 2;
    const {{ ctype }} *src = (const {{ ctype }} *)in;
    {{ ctype }} *dst = ({{ ctype }} *)out;
    {{ cacc }} a[XC_COLS];
    for (int64_t c0 = 0; c0 < cols; c0 += XC_COLS) {
        const int64_t cb = cols - c0 < XC_COLS ? cols - c0 : XC_COLS;
        for (int64_t c = 0; c < cb; c++) a[c] = {{ "0" if op in ["sum", "mean"] else (lowest if op == "max" else highest) }};
        int64_t r = 0;
        /* Four rows at a time: one load and store of each accumulator per four rows,
         * the rows read as four sequential streams. */
        for (; r + 4 <= rows; r += 4) {
            const {{ ctype }} *p0 = src + r * cols + c0, *p1 = p0 + cols, *p2 = p1 + cols, *p3 = p2 + cols;
#pragma omp simd
            for (int64_t c = 0; c < cb; c++) {
                const {{ cacc }} x01 = xc_fold(({{ cacc }})xc_pre(p0[c]), ({{ cacc }})xc_pre(p1[c]));
                const {{ cacc }} x23 = xc_fold(({{ cacc }})xc_pre(p2[c]), ({{ cacc }})xc_pre(p3[c]));
                a[c] = xc_fold(a[c], xc_fold(x01, x23));
            }
        }
        for (; r < rows; r++) {
            const {{ ctype }} *p = src + r * cols + c0;
#pragma omp simd
            for (int64_t c = 0; c < cb; c++) a[c] = xc_fold(a[c], ({{ cacc }})xc_pre(p[c]));
        }
        for (int64_t c = 0; c < cb; c++) {
{%- if op == "mean" and is_float %}
            dst[c0 + c] = ({{ ctype }})(rows > 0 ? a[c] / (double)rows : NAN);
{%- elif op == "mean" %}
            dst[c0 + c] = rows > 0 ? ({{ ctype }})((int64_t)a[c] / rows) : 0;
{%- else %}
            dst[c0 + c] = ({{ ctype }})a[c];
{%- endif %}
        }
    }
    return 0;
}
{%- endif %}
