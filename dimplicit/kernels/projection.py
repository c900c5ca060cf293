"""Projection kernels: the row-wise ℓ1-ball projection around NumPy's sort, in two passes.

The exact projection (Duchi et al. 2008) sorts ``|a|`` in decreasing order and reads the
threshold θ off the cumulative sums.  NumPy's sort is vectorised (hard to beat from Numba); the
rest of the vectorised algorithm is a dozen passes with temporaries (abs, row sums, boolean
gathers, negations, cumulative sums, comparisons, ``argmax``, shrink, sign, scatter).  The
kernels here do that rest: :func:`rows_outside` the row sums and the gather of the rows to
sort, :func:`shrink_rows` the cumulative sums, θ and the shrink, each one pass per row, with
the same floating-point operations in the same order (NumPy's pairwise row sums, the sequential
cumulative sums, the Python float κ rounded to the array's dtype), so the result is bitwise
that of the vectorised code.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", error_model="numpy")
def _block_sum(a, lo, n):
    """A leaf of NumPy's pairwise summation: ``n ≤ 128`` entries from ``lo``."""
    if n < 8:
        res = a.dtype.type(-0.0)
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = lo + 8
    end = lo + n - n % 8
    while i < end:  # eight interleaved accumulators
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        res += a[i]
        i += 1
    return res


@njit(inline="always", error_model="numpy")
def _pairwise_sum(a, frames, left):
    """``Σ a`` exactly as NumPy's ``add.reduce`` sums a contiguous row (pairwise summation).

    NumPy splits a row longer than 128 into halves (the first a multiple of 8) recursively and
    sums the leaves with :func:`_block_sum`.  The same tree is walked here with an explicit
    stack, ``frames`` (int, 64 × 3: offset, length, state) and ``left`` (64 partial sums):
    a recursive function would not survive Numba's on-disk cache.
    """
    depth = 0
    lo, n = 0, a.shape[0]
    while True:
        while n > 128:  # descend to the leftmost leaf, stacking the parents
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = lo, n, 0
            depth += 1
            n = n // 2 - (n // 2) % 8
        v = _block_sum(a, lo, n)
        while depth > 0:  # climb while right halves are done; else start the right half
            d = depth - 1
            if frames[d, 2] == 0:
                left[d] = v
                frames[d, 2] = 1
                half = frames[d, 1] // 2 - (frames[d, 1] // 2) % 8
                lo, n = frames[d, 0] + half, frames[d, 1] - half
                break
            v = left[d] + v
            depth -= 1
        if depth == 0:
            return v


@njit(cache=True, nogil=True, error_model="numpy")
def rows_outside(A, limit, absrows, index):
    """Gather ``|A[i]|`` of the rows with ``Σ_j |A_ij| > limit`` (NumPy's float row sum).

    Parameters
    ----------
    A : 2-D float array, C-contiguous
    limit : float
        ``κ (1 + slack)``, rounded to the dtype of ``A`` (as NumPy compares with a Python float).
    absrows : 2-D array like ``A``
        Receives ``|A[i]|`` of the rows outside, in order, from row 0.
    index : 1-D int array (rows of ``A``)
        Receives their row numbers.

    Returns
    -------
    int
        The number of rows outside.  Rows with a NaN are never outside.
    """
    lim = A.dtype.type(limit)
    frames = np.empty((64, 3), np.intp)  # the summation's stack: depth ≤ log2(n / 128) + 1
    left = np.empty(64, A.dtype)
    count = 0
    for i in range(A.shape[0]):
        u = absrows[count]  # written in place; kept only if the row is outside
        row = A[i]
        for j in range(A.shape[1]):
            u[j] = abs(row[j])
        if _pairwise_sum(u, frames, left) > lim:
            index[count] = i
            count += 1
    return count


@njit(cache=True, nogil=True, error_model="numpy")
def shrink_rows(A, kappa, sorted_abs, index):
    """Project the rows ``A[index]`` onto the ℓ1 ball, in place, given their sorted ``|a|``.

    Parameters
    ----------
    A : 2-D float array
        Rows ``index[r]`` are overwritten with ``max(|a| − θ, 0) · sign(a)``.
    kappa : float
        Radius κ (rounded to the dtype of ``A``).
    sorted_abs : 2-D array
        Row ``r`` holds ``|A[index[r]]|`` sorted increasingly.
    index : 1-D int array

    Notes
    -----
    With ``u`` decreasing and ``c_j = (u_1 + … + u_j) − κ`` (sequential float sums, as
    ``cumsum``), θ = ``c_ρ / ρ`` for the largest ``ρ`` with ``u_ρ · ρ > c_ρ``, the last ``j``
    when there is none (NumPy's ``argmax`` of an all-False row).
    """
    t = A.dtype.type
    kap = t(kappa)
    n = A.shape[1]
    zero, one = t(0), t(1)
    for r in range(index.shape[0]):
        u = sorted_abs[r]
        run = c = theta = zero
        found = False
        for j in range(1, n + 1):
            v = u[n - j]  # decreasing
            run = v if j == 1 else run + v
            c = run - kap
            if v * t(j) > c:
                theta = c / t(j)
                found = True
        if not found:
            theta = c / t(n)
        row = A[index[r]]
        for j in range(n):
            a = row[j]
            d = abs(a) - theta
            if d <= zero:  # np.maximum(d, 0): ±0 and negatives give +0, NaN stays NaN
                d = zero
            # × np.sign(a), which is +0 for ±0 (a row with a NaN is never outside)
            row[j] = d * (one if a > zero else (-one if a < zero else zero))
