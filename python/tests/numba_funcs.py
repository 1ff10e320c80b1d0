"""Functions with ``cache=True`` for the Numba adapter's tests and benchmark: a scalar
one, an array loop, a parallel one (``prange``) and one calling two others. The tests
copy this file elsewhere and import it from there; its contents are the source stamp."""

import numba
import numpy as np


@numba.njit(cache=True)
def scalar(x):
    return x * 2.5 + 1.0 / (1.0 + x * x)


@numba.njit(cache=True)
def array_loop(a):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * a[i] - 0.5 * a[i]
    return s


@numba.njit(cache=True, parallel=True)
def parallel(a):
    out = np.empty_like(a)
    for i in numba.prange(a.shape[0]):
        out[i] = np.sin(a[i]) * np.exp(-a[i] * 0.001)
    return out


@numba.njit(cache=True)
def caller(a):
    return array_loop(a) + scalar(a[0])


@numba.njit(cache=True)
def fails_to_type(x):
    return x.no_such_attribute
