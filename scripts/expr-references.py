#!/usr/bin/env python3
"""Writes tests/common/expr_references.rs: numpy/scipy results of the expression
functions `floor ceil round log1p expm1 sigmoid erf` at edge values, for float32 and
float64, as bit patterns (so that NaN, -0.0 and subnormals survive exactly).

    python3 -m venv /tmp/py && /tmp/py/bin/pip install numpy scipy mpmath
    /tmp/py/bin/python scripts/expr-references.py

The references are numpy/scipy's own: np.floor, np.ceil, np.round (half to even),
np.log1p, np.expm1, scipy.special.expit, scipy.special.erf.

- float64: the float64 loops.
- float32: floor, ceil and round in float32 (exact); the others are the float64 loops
  on the float32 input, rounded to float32. numpy's float32 loops use SIMD code that
  differs between CPUs (SVML on AVX-512) by an ulp or so, and scipy's float32 expit
  flushes to zero below -88.7; the float64 result rounded once is the same everywhere.
  The script still compares numpy/scipy's float32 loops with it and prints the largest
  difference.

Every reference is checked against mpmath at 200 bits: a transcendental reference must
be within 1 ulp of the correctly rounded value. Where numpy/scipy are further off, the
pair is left out of the table and printed; the Rust tests cover those separately. The
one case known: scipy's expit is 1/(1+exp(-x)), which flushes to 0 once exp(-x)
overflows (float64 x < -709.78), where the true value is a subnormal (expit(-720) =
1.3e-313); xcache's sigmoid returns the subnormal.
"""

import math
import os
import struct
import sys

import mpmath
import numpy as np
import scipy
import scipy.special as sp

mpmath.mp.prec = 200

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "common",
                   "expr_references.rs")

F64_INPUTS = [
    # signed zeros, infinities, NaN
    0.0, -0.0, math.inf, -math.inf, math.nan,
    # subnormals and the smallest normal
    5e-324, -5e-324, 2.225073858507201e-308, -2.225073858507201e-308,
    2.2250738585072014e-308, -2.2250738585072014e-308,
    # tiny: log1p, expm1 and erf must keep them (not round 1 + x)
    1e-300, -1e-300, 1e-20, -1e-20, 1e-10, -1e-10, 1e-5,
    # ordinary values
    0.1, -0.1, 0.25, 0.7, -0.7, 3.0, -3.0, 5.9, -6.0, 27.0,
    # half-way cases and their neighbours for round
    0.49999999999999994, 0.5, -0.5, 0.5000000000000001, 1.0, -1.0, 1.5, -1.5,
    2.5, -2.5, 3.5, -3.5, 4503599627370494.5, -4503599627370494.5,
    4503599627370495.5, -4503599627370495.5,
    # integers where the spacing reaches 1 and 2
    4503599627370496.0, 4503599627370497.0, 9007199254740994.0, -9007199254740994.0,
    # log1p near and past -1
    -0.9999999999999999, -1.0000000000000002,
    # sigmoid's saturation and expm1's overflow threshold
    36.7, 40.0, -36.7, -40.0, -100.0, -700.0, 709.0, 709.782712893384, 710.0,
    -720.0, -745.0, -1000.0, 1000.0,
    # large magnitudes
    1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308,
]

F32_INPUTS = [
    0.0, -0.0, math.inf, -math.inf, math.nan,
    # smallest and largest subnormals, smallest normal
    1.401298464324817e-45, -1.401298464324817e-45,
    1.1754942106924411e-38, -1.1754942106924411e-38,
    1.1754943508222875e-38, -1.1754943508222875e-38,
    1e-30, -1e-30, 1e-10, -1e-10, 1e-5, -1e-5,
    0.1, -0.1, 0.25, 0.7, -0.7, 3.0, -3.0, 3.9, -4.0, 10.0,
    # half-way cases: 0.49999997 is the largest float32 below 0.5
    0.4999999701976776, 0.5, -0.5, 0.5000000596046448, 1.0, -1.0, 1.5, -1.5,
    2.5, -2.5, 3.5, -3.5, 4194302.5, -4194302.5, 4194303.5, -4194303.5,
    8388607.5, -8388607.5,
    8388608.0, 8388609.0, 16777218.0, -16777218.0,
    -0.99999994, -1.0000001,
    # sigmoid's saturation (17.3 in float32) and the underflow region of exp
    17.0, 20.0, -17.0, -20.0, -87.0, -88.8, -100.0, -103.0, -104.0, -1000.0, 1000.0,
    # expm1's overflow threshold
    88.0, 88.72283, 88.8,
    1e30, -1e30, 3.4028234663852886e38, -3.4028234663852886e38,
]

# name -> (numpy/scipy function, exact?, mpmath reference or None)
FUNCS = {
    "floor": (np.floor, True, None),
    "ceil": (np.ceil, True, None),
    "round": (np.round, True, None),
    "log1p": (np.log1p, False, mpmath.log1p),
    "expm1": (np.expm1, False, mpmath.expm1),
    "sigmoid": (sp.expit, False, lambda x: 1 / (1 + mpmath.exp(-x))),
    "erf": (sp.erf, False, mpmath.erf),
}


def bits(x, dt):
    if dt == np.float32:
        return struct.unpack("<I", struct.pack("<f", float(x)))[0]
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def ordered(x, dt):
    """Integers in the order of the floats: the ulp distance is their difference."""
    b = bits(x, dt)
    sign = 1 << (31 if dt == np.float32 else 63)
    return -(b & (sign - 1)) if b & sign else b


def ulps(a, b, dt):
    if math.isnan(a) or math.isnan(b):
        return 0 if math.isnan(a) and math.isnan(b) else math.inf
    if math.isinf(a) or math.isinf(b):
        return 0 if a == b else math.inf
    return abs(ordered(a, dt) - ordered(b, dt))


def correctly_rounded(truth, x, dt):
    """mpmath's value rounded to dt, through a double at 200-bit accuracy (a double
    rounding that can be one float32 ulp off, which the 1-ulp check allows)."""
    if math.isnan(x):
        return math.nan
    v = truth(mpmath.mpf(float(x)))
    if isinstance(v, mpmath.mpc):  # log1p below -1
        return math.nan
    with np.errstate(over="ignore"):
        return float(dt(float(v)))


def reference(name, x, dt):
    f, exact, _ = FUNCS[name]
    with np.errstate(all="ignore"):
        if exact or dt == np.float64:
            return float(f(dt(x)))
        return float(np.float32(f(np.float64(x))))


def fmt(x, dt):
    """The shortest spelling that reads back to the same value of dt."""
    return "NaN" if math.isnan(x) else str(dt(x))


def table(dt, inputs):
    rust = "u32" if dt == np.float32 else "u64"
    width = 8 if dt == np.float32 else 16
    lines = []
    left_out = []
    worst_own_loop = {}
    for name, (f, exact, truth) in FUNCS.items():
        lines.append(f'    (\n        "{name}",\n        &[')
        for x in inputs:
            x = float(dt(x))
            want = reference(name, x, dt)
            if exact:
                # floor, ceil and rint are exact: the value must be an integer (or x
                # itself when it is not finite) and within 0.5 (round) or 1 of x.
                assert math.isnan(x) or math.isinf(x) or want == int(want), (name, x, want)
            else:
                cr = correctly_rounded(truth, x, dt)
                d = ulps(want, cr, dt)
                if d > 1:
                    left_out.append((name, x, want, cr, d))
                    continue
            if dt == np.float32 and not exact:
                with np.errstate(all="ignore"):
                    own = float(f(np.float32(x)))
                d = ulps(own, want, dt)
                if d > worst_own_loop.get(name, (-1,))[0]:
                    worst_own_loop[name] = (d, x, own, want)
            lines.append(
                f"            (0x{bits(x, dt):0{width}x}, 0x{bits(want, dt):0{width}x}), "
                f"// {fmt(x, dt)} -> {fmt(want, dt)}"
            )
        lines.append("        ],\n    ),")
    body = "\n".join(lines)
    for name, x, want, cr, d in left_out:
        print(f"{dt.__name__}: left out {name}({x!r}) = {want!r}: "
              f"{d} ulp from the correctly rounded {cr!r}", file=sys.stderr)
    for name, (d, x, own, want) in worst_own_loop.items():
        print(f"{dt.__name__}: numpy/scipy's own float32 loop for {name} is at most {d} "
              f"ulp from the reference (at {x!r}: {own!r} vs {want!r})", file=sys.stderr)
    return f"pub const {dt.__name__.upper()}: &[(&str, &[({rust}, {rust})])] = &[\n{body}\n];\n"


def main():
    header = f"""//! Generated by `scripts/expr-references.py` (numpy {np.__version__}, scipy {scipy.__version__},
//! mpmath {mpmath.__version__}); do not edit, re-run the script. For each expression function:
//! (input bits, numpy/scipy result bits), see the script for how each is computed and
//! checked. `FLOAT32` holds f32 bit patterns, `FLOAT64` f64 bit patterns.
"""
    text = header + "\n" + table(np.float32, F32_INPUTS) + "\n" + table(np.float64, F64_INPUTS)
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
