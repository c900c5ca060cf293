"""Residual kernels: a fixed-point solve's per-row relative residual in one compiled pass."""

from __future__ import annotations

import numpy as np
from numba import njit

# The row sums of squares below add in the order of NumPy's ``einsum("ij,ij->i", a, a)`` on its
# x86-64 baseline build (128-bit SIMD without FMA): ``lanes`` partial sums, fed four vectors at a
# time from the last to the first, then the tail (zero-padded), then a pairwise horizontal sum.
# Same operations in the same order, so the residuals, and every stopping decision taken on
# them, are bitwise those of the NumPy expression this replaces (tests/test_kernels.py).


@njit(inline="always", error_model="numpy")
def _sq(x, y, i, j):
    """``(x − y)²`` and ``x²`` of element ``(i, j)``: the subtraction rounds first, as NumPy's."""
    a = x[i, j]
    d = a - y[i, j]
    return d * d, a * a


@njit(inline="always", error_model="numpy")
def _row_sums_4(x, y, i):
    """``Σ (x − y)²`` and ``Σ x²`` over row ``i`` in einsum's float32 order (4 lanes)."""
    n = x.shape[1]
    d0 = d1 = d2 = d3 = s0 = s1 = s2 = s3 = x.dtype.type(0)
    j = 0
    while n - j >= 16:  # four vectors per round, accumulated last to first
        for v in (12, 8, 4, 0):
            e0, f0 = _sq(x, y, i, j + v)
            e1, f1 = _sq(x, y, i, j + v + 1)
            e2, f2 = _sq(x, y, i, j + v + 2)
            e3, f3 = _sq(x, y, i, j + v + 3)
            d0, d1, d2, d3 = e0 + d0, e1 + d1, e2 + d2, e3 + d3
            s0, s1, s2, s3 = f0 + s0, f1 + s1, f2 + s2, f3 + s3
        j += 16
    while j < n:  # the tail, one vector at a time (padding lanes add nothing)
        e0, f0 = _sq(x, y, i, j)
        d0, s0 = e0 + d0, f0 + s0
        if j + 1 < n:
            e1, f1 = _sq(x, y, i, j + 1)
            d1, s1 = e1 + d1, f1 + s1
        if j + 2 < n:
            e2, f2 = _sq(x, y, i, j + 2)
            d2, s2 = e2 + d2, f2 + s2
        if j + 3 < n:
            e3, f3 = _sq(x, y, i, j + 3)
            d3, s3 = e3 + d3, f3 + s3
        j += 4
    return (d0 + d1) + (d2 + d3), (s0 + s1) + (s2 + s3)


@njit(inline="always", error_model="numpy")
def _row_sums_2(x, y, i):
    """``Σ (x − y)²`` and ``Σ x²`` over row ``i`` in einsum's float64 order (2 lanes)."""
    n = x.shape[1]
    d0 = d1 = s0 = s1 = x.dtype.type(0)
    j = 0
    while n - j >= 8:  # four vectors per round, accumulated last to first
        for v in (6, 4, 2, 0):
            e0, f0 = _sq(x, y, i, j + v)
            e1, f1 = _sq(x, y, i, j + v + 1)
            d0, d1, s0, s1 = e0 + d0, e1 + d1, f0 + s0, f1 + s1
        j += 8
    while j < n:  # the tail (padding lanes add nothing)
        e0, f0 = _sq(x, y, i, j)
        d0, s0 = e0 + d0, f0 + s0
        if j + 1 < n:
            e1, f1 = _sq(x, y, i, j + 1)
            d1, s1 = e1 + d1, f1 + s1
        j += 2
    return d0 + d1, s0 + s1


@njit(cache=True, nogil=True, error_model="numpy")
def relative_residual_rows(x_new, x_old, eps):
    """Per-row ``‖x_new − x_old‖ / (‖x_new‖ + eps)``; ``inf`` where that is not finite.

    Parameters
    ----------
    x_new, x_old : ndarray (batch × n), float32 or float64, any strides
        The newest and the previous iterate (not modified; no difference array is formed).
    eps : scalar of the arrays' dtype
        Guards all-zero rows.

    Returns
    -------
    r : ndarray (batch,)
        The residuals, in the arrays' dtype.
    r_max : scalar
        Their maximum (0 for no rows): what a solver's stopping test reads.
    """
    r = np.empty(x_new.shape[0], dtype=x_new.dtype)
    r_max = r.dtype.type(0)
    for i in range(x_new.shape[0]):
        # A 128-bit vector holds 4 float32 or 2 float64 lanes.
        if x_new.itemsize == 4:
            num2, den2 = _row_sums_4(x_new, x_old, i)
        else:
            num2, den2 = _row_sums_2(x_new, x_old, i)
        v = np.sqrt(num2) / (np.sqrt(den2) + eps)
        v = v if np.isfinite(v) else np.inf  # a diverging row never looks converged
        r[i] = v
        r_max = max(r_max, v)
    return r, r_max
