"""Anderson acceleration of ``x ← f(x)``, with per-sample mixing coefficients.

Every row (sample) has its own small least-squares problem over the last ``m`` residuals
``g_j = f(x_j) − x_j``:  minimise ‖Σ α_j g_j‖² + λ‖α‖² subject to Σ α_j = 1, solved through the
bordered (m+1)×(m+1) system used by Bai, Kolter & Koltun (DEQ, 2019).  The next iterate is
``x = β Σ α_j f(x_j) + (1 − β) Σ α_j x_j``.

Memory is O(m · batch · n): only the last ``m`` values of ``f(x)`` and ``g`` are kept, and the
Gram matrix of the residuals is updated one row per iteration rather than recomputed.
"""

from __future__ import annotations

from dimplicit.backend import array_module
from dimplicit.solvers.result import SolveStats, finish


def anderson(
    f_,
    x0,
    *,
    tol=1e-4,
    max_iter=300,
    memory=5,
    regularization=1e-4,
    damping=1.0,
    check_every=1,
    on_failure="flag",
    what="solve",
):
    """Anderson-accelerated fixed-point iteration (batched, per-sample coefficients).

    Parameters
    ----------
    f_ : callable ``(x, out) -> out``
        The fixed-point map, writing ``f(x)`` into ``out``.
    x0 : array (batch × n)
        Initial iterate; not modified.
    tol, max_iter, check_every, on_failure
        As in :func:`dimplicit.solvers.picard.picard`; residual ``‖f(x) − x‖ / (‖f(x)‖ + ε)``.
    memory : int
        Number of past iterates mixed (m).
    regularization : float
        Tikhonov term λ, relative to the scale of the Gram matrix.
    damping : float
        β: 1 mixes only ``f(x_j)``; smaller values also mix the iterates ``x_j``.

    Returns
    -------
    x : array
        ``f`` of the last iterate (the best available estimate of the fixed point).
    stats : SolveStats
        ``fallbacks`` counts sample-steps that used a plain Picard step because the mixing
        coefficients were not finite or exploded (ill-conditioned least squares).
    """
    xp = array_module(x0)
    b, n = x0.shape
    m = int(memory)
    if m < 1:
        raise ValueError(f"Anderson memory must be ≥ 1, got {memory}")
    dt = x0.dtype
    F = xp.empty((m, b, n), dtype=dt)  # f(x_j), ring buffer
    G = xp.empty((m, b, n), dtype=dt)  # g_j = f(x_j) − x_j
    gram = xp.zeros((b, m, m), dtype=xp.float64)  # <g_i, g_j> per sample, float64 for the solve
    eps = 1e-30 if dt == xp.float64 else 1e-20

    x = x0.copy()
    fallbacks = 0
    r = None
    k = 0
    while k < max_iter:
        slot = k % m
        f_(x, F[slot])
        xp.subtract(F[slot], x, out=G[slot])
        k += 1
        # New Gram row/column: one batched dot product per stored residual.
        row = xp.einsum("bn,mbn->bm", G[slot], G).astype(xp.float64)
        gram[:, slot, :] = row
        gram[:, :, slot] = row
        if k % check_every == 0 or k == max_iter:
            fnorm = xp.sqrt(xp.einsum("bn,bn->b", F[slot], F[slot]).astype(xp.float64))
            r = xp.sqrt(xp.maximum(row[:, slot], 0)) / (fnorm + eps)
            r[~xp.isfinite(r)] = xp.inf
            if float(r.max()) < tol:
                x = F[slot].copy()
                break
        if k == max_iter:
            x = F[slot].copy()
            break
        h = min(k, m)
        alpha, bad = _mixing_coefficients(gram[:, :h, :h], regularization, xp)
        # Fall back to Picard (α = e_slot) for samples whose system was ill-conditioned.
        if bad.any():
            fallbacks += int(bad.sum())
            alpha[bad] = 0
            alpha[bad, slot] = 1
        a = alpha.astype(dt)
        x = xp.einsum("bm,mbn->bn", a, F[:h])
        if damping != 1.0:
            # Σ α x_j = Σ α (f_j − g_j): no need to store past iterates.
            x -= (1 - damping) * xp.einsum("bm,mbn->bn", a, G[:h])
    return x, finish(SolveStats.from_residuals(k, r, tol, fallbacks), on_failure, what)


def _mixing_coefficients(gram, lam, xp):
    """Solve min ‖Σ α_j g_j‖² + λ‖α‖², Σ α = 1, for every sample at once.

    Returns ``(alpha, bad)``: ``alpha`` is (batch × h); ``bad`` marks samples whose solution is
    not finite or has a huge norm (an ill-conditioned system), to be replaced by a Picard step.
    """
    b, h, _ = gram.shape
    # Scale λ by the Gram diagonal so the regularisation is relative, not absolute.
    scale = xp.maximum(xp.einsum("bii->b", gram) / h, 1e-300)
    H = xp.zeros((b, h + 1, h + 1), dtype=xp.float64)
    H[:, 0, 1:] = 1
    H[:, 1:, 0] = 1
    H[:, 1:, 1:] = gram / scale[:, None, None] + lam * xp.eye(h)[None]
    rhs = xp.zeros((b, h + 1, 1), dtype=xp.float64)
    rhs[:, 0, 0] = 1
    try:
        sol = xp.linalg.solve(H, rhs)[:, 1:, 0]
    except Exception:  # LinAlgError on a singular batch member: every sample falls back
        return xp.zeros((b, h)), xp.ones(b, dtype=bool)
    bad = ~xp.isfinite(sol).all(axis=1) | (xp.abs(sol).sum(axis=1) > 1e4)
    return sol, bad
