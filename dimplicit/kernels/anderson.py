"""Anderson acceleration kernel: one iteration's memory-bound passes fused, row by row.

Every sample (row) of an Anderson solve is independent: its residual, its Gram row, its small
least-squares problem and its mixing read and write that row only.  :func:`anderson_step` runs
all of them for one row while the row (a few KiB) is in L1 cache, then moves to the next, so an
iteration reads ``x``, ``f(x)`` and the ``m − 1`` older ``f(x_j)`` and ``g_j`` from memory once
and writes ``g`` and the new ``x`` once: no temporaries, against six NumPy passes (subtraction,
two ``einsum``, the batched elimination over many small arrays, the mixing).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, error_model="numpy", fastmath={"reassoc"})
def _dot64(a, b):
    """``Σ a_i b_i`` accumulated in float64 (the products of float32 inputs are exact).

    ``reassoc`` lets LLVM keep several vector partial sums, as NumPy's SIMD loops do: the
    order is fixed by the compiled code (the same for every call, row, batch split and thread
    count on a given CPU), not the sequential one.  It is the only fast-math flag (no FMA
    contraction, no finite-math assumption: NaN and inf propagate).
    """
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@njit(inline="always", error_model="numpy")
def _coefficients(gram, slot, h, lam, M, rhs, alpha):
    """Mixing coefficients of one sample; True when its system is ill-conditioned.

    The same floating-point operations in the same order as the batched NumPy solve in
    :func:`dimplicit.solvers.anderson._mixing_coefficients` (difference-form normal equations,
    elimination without pivoting), for a single sample: ``alpha[:h]`` gets the solution.
    """
    k = h - 1
    g_ss = gram[slot, slot]
    # others = every stored residual but the newest, in index order
    for p in range(k):
        i = p if p < slot else p + 1
        rhs[p] = g_ss - gram[i, slot]
        for q in range(k):
            j = q if q < slot else q + 1
            M[p, q] = ((gram[i, j] - gram[i, slot]) - gram[j, slot]) + g_ss
    trace = 0.0
    for p in range(k):
        trace += M[p, p]
    scale = trace / k
    if scale < 1e-300:  # np.maximum(scale, 1e-300): a NaN scale stays NaN
        scale = 1e-300
    shift = lam * scale  # λ relative to the scale of M
    for p in range(k):
        M[p, p] += shift
    for i in range(k):  # forward elimination
        for j in range(i + 1, k):
            f = M[j, i] / M[i, i]
            for q in range(i, k):
                M[j, q] -= f * M[i, q]
            rhs[j] -= f * rhs[i]
    for i in range(k - 1, -1, -1):  # back substitution
        acc = rhs[i]
        for j in range(i + 1, k):
            acc = acc - M[i, j] * rhs[j]
        rhs[i] = acc / M[i, i]
    total = 0.0
    for p in range(k):
        total += rhs[p]
        alpha[p if p < slot else p + 1] = rhs[p]
    alpha[slot] = 1 - total
    finite = True
    size = 0.0
    for j in range(h):
        finite = finite and np.isfinite(alpha[j])
        size += abs(alpha[j])
    return not finite or size > 1e4


@njit(inline="always", error_model="numpy")
def _weighted_sum(a, F, s, h, out):
    """``out = ((0 + a_0 F[0, s]) + a_1 F[1, s]) + …``: einsum's order for ``"bm,mbn->bn"``."""
    f0 = F[0, s]
    zero = out.dtype.type(0)
    for i in range(out.shape[0]):
        out[i] = zero + a[0] * f0[i]  # not folded: 0 + (−0) is +0, as in einsum
    for j in range(1, h):
        fj = F[j, s]
        for i in range(out.shape[0]):
            out[i] += a[j] * fj[i]


@njit(cache=True, nogil=True, error_model="numpy")
def anderson_step(x_in, x, F, G, gram, slot, h, lam, damping, due, r, eps):
    """One Anderson iteration after ``F[slot] = f(x_in)``: residual, Gram row, check, mixing.

    Parameters
    ----------
    x_in : array (batch × n)
        The current iterate (the initial one, or ``x``).
    x : array (batch × n)
        Receives the next (mixed) iterate; may be ``x_in``.
    F, G : arrays (m × batch × n)
        Ring buffers of ``f(x_j)`` and ``g_j = f(x_j) − x_j``; ``F[slot]`` holds ``f(x)``,
        ``G[slot]`` receives ``g``; slots ``< h`` are in use.
    gram : float64 array (batch × m × m)
        Per-sample Gram matrices; row and column ``slot`` are updated (float64 dot products).
    slot, h : int
        The newest slot and the number of stored residuals (1 ≤ h ≤ m).
    lam : float
        Tikhonov term λ, relative to the scale of the normal equations.
    damping : float
        β: the next iterate is ``Σ α_j f_j − (1 − β) Σ α_j g_j``.
    due : bool
        Also write the per-sample relative residual ``‖g‖ / (‖f(x)‖ + eps)`` into ``r``
        (``inf`` where it is not finite).
    r : float64 array (batch)
    eps : float

    Returns
    -------
    int
        Samples whose least-squares system was ill-conditioned and took a plain Picard step.
    """
    b, n = x.shape
    m = F.shape[0]
    M = np.empty((m, m))
    rhs = np.empty(m)
    alpha = np.empty(m)
    a = np.empty(m, dtype=x.dtype)  # α rounded to the iterate's dtype, as the mixing uses it
    c = x.dtype.type(1 - damping)
    tmp = np.empty(n if damping != 1.0 else 0, dtype=x.dtype)
    fallbacks = 0
    for s in range(b):
        fx, xs, g = F[slot, s], x[s], G[slot, s]
        xi = x_in[s]  # read before xs is written: x_in may be x
        for i in range(n):
            g[i] = fx[i] - xi[i]
        for j in range(h):
            d = _dot64(g, G[j, s])
            gram[s, slot, j] = d
            gram[s, j, slot] = d
        if due:
            gss = gram[s, slot, slot]
            if gss < 0.0:  # np.maximum(gss, 0): a NaN stays NaN, and is reported as inf
                gss = 0.0
            rs = np.sqrt(gss) / (np.sqrt(_dot64(fx, fx)) + eps)
            r[s] = rs if np.isfinite(rs) else np.inf
        if h == 1:  # one residual: the mixing is a plain Picard step
            for i in range(n):
                xs[i] = fx[i]
            continue
        if _coefficients(gram[s], slot, h, lam, M, rhs, alpha):
            fallbacks += 1
            for j in range(h):  # Picard step: α = e_slot
                alpha[j] = 0.0
            alpha[slot] = 1.0
        for j in range(h):
            a[j] = alpha[j]
        # x = Σ_j α_j f_j summed from zero in slot order, einsum's order (bitwise its result),
        # one vectorised pass per slot over the row, in L1.  With damping, minus
        # (1 − β) Σ_j α_j g_j: Σ α x_j = Σ α (f_j − g_j), past iterates are not stored.
        _weighted_sum(a, F, s, h, xs)
        if damping != 1.0:
            _weighted_sum(a, G, s, h, tmp)
            for i in range(n):
                xs[i] -= c * tmp[i]
    return fallbacks
