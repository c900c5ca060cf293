"""Anderson acceleration of ``x ← f(x)``, with per-sample mixing coefficients.

Every row (sample) has its own small least-squares problem over the last ``m`` residuals
``g_j = f(x_j) − x_j``:  minimise ‖Σ α_j g_j‖² subject to Σ α_j = 1 (with a small Tikhonov
term), solved in difference form — (m−1)×(m−1) normal equations read off the Gram matrix — for
all samples at once by a vectorised elimination (:func:`_mixing_coefficients`).  The next
iterate is ``x = β Σ α_j f(x_j) + (1 − β) Σ α_j x_j``.

What an iteration costs besides the GEMM inside ``f``, in passes over a (batch × n) array:
the subtraction for ``g``, one Gram *row* ``<g_new, g_j>`` (the Gram matrix is updated
incrementally, never recomputed), the mixing (``m`` arrays read, one written) and, only at the
iterations the :class:`CheckSchedule` tests, one norm of ``f(x)`` (the residual norm is the Gram
diagonal).  On NumPy they run as one compiled pass per row
(:func:`dimplicit.kernels.anderson.anderson_step`, float64 Gram dot products), each array read
from memory once: the solver's own time per iteration at batch = n = 1024 (one thread, a GEMM
map; buffers and copies included) fell from 4.5–4.9 to 3.8–4.3 ms.  The default memory is
short (m = 3) because on the models measured in docs/performance.md a longer memory saved no
iterations but costs two more arrays read per iteration.  On a linear map — the implicit
adjoint system — Anderson with unlimited memory is GMRES; the short memory keeps most of that
acceleration.

Memory is O(m · batch · n): only the last ``m`` values of ``f(x)`` and ``g`` are kept.
"""

from __future__ import annotations

from dimplicit.backend import array_module
from dimplicit.kernels.anderson import anderson_step
from dimplicit.solvers.result import SolveStats, finish
from dimplicit.solvers.schedule import CheckSchedule


def anderson(
    f_,
    x0,
    *,
    tol=1e-4,
    max_iter=300,
    memory=3,
    regularization=1e-4,
    damping=1.0,
    check_every=4,
    check="adaptive",
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
    tol, max_iter, check_every, check, on_failure
        As in :func:`dimplicit.solvers.picard.picard`; the residual is
        ``‖f(x) − x‖ / (‖f(x)‖ + ε)``, the same quantity Picard tests.
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
    schedule = CheckSchedule(check, check_every, tol, max_iter)

    x = xp.empty_like(x0)  # the mixed iterate, written by every iteration (x0 is read once)
    fused = xp.__name__ == "numpy" and dt in (xp.float32, xp.float64)  # the kernel's dtypes
    fallbacks = 0
    r = xp.full(b, xp.inf)  # the last per-sample residuals
    k = 0
    while True:
        slot = k % m
        x_in = x0 if k == 0 else x
        f_(x_in, F[slot])
        k += 1
        h = min(k, m)
        due = schedule.due(k)
        if fused:
            # One compiled pass per row does the whole iteration, mixing included: the mixing
            # of the last iteration is wasted (and its fallbacks are not counted).
            bad = anderson_step(x_in, x, F, G, gram, slot, h, regularization, damping, due, r, eps)
        else:
            _residual(xp, x_in, F, G, gram, slot, h, due, r, eps)
        if due:
            rmax = float(r.max())
            if rmax < tol or k >= max_iter:
                break
            schedule.observe(k, rmax)
        if not fused:
            bad = _mixing(xp, x, F, G, gram, slot, h, regularization, damping)
        fallbacks += bad
    return F[slot].copy(), finish(SolveStats.from_residuals(k, r, tol, fallbacks), on_failure, what)


def _residual(xp, x_in, F, G, gram, slot, h, due, r, eps):
    """``G[slot] = F[slot] − x_in``, its Gram row and, when ``due``, the residuals ``r``."""
    fx, g = F[slot], G[slot]
    xp.subtract(fx, x_in, out=g)
    # New Gram row/column: one batched dot product per stored residual.
    row = xp.einsum("bn,mbn->bm", g, G[:h])
    gram[:, slot, :h] = row
    gram[:, :h, slot] = row
    if due:
        fnorm = xp.sqrt(xp.einsum("bn,bn->b", fx, fx).astype(xp.float64))
        r[...] = xp.sqrt(xp.maximum(gram[:, slot, slot], 0)) / (fnorm + eps)
        r[~xp.isfinite(r)] = xp.inf


def _mixing(xp, x, F, G, gram, slot, h, regularization, damping):
    """The next iterate into ``x``; returns the number of Picard fallbacks."""
    if h == 1:
        x[...] = F[slot]  # one residual: the mixing is a plain Picard step
        return 0
    alpha, bad = _mixing_coefficients(gram[:, :h, :h], slot, regularization, xp)
    # Fall back to Picard (α = e_slot) for samples whose system was ill-conditioned.
    n_bad = int(bad.sum())
    if n_bad:
        alpha[bad] = 0
        alpha[bad, slot] = 1
    a = alpha.astype(x.dtype)
    # CuPy's einsum takes no ``out``; its memory pool makes the temporary cheap.
    x[...] = xp.einsum("bm,mbn->bn", a, F[:h])
    if damping != 1.0:
        # Σ α x_j = Σ α (f_j − g_j): no need to store past iterates.
        x -= (1 - damping) * xp.einsum("bm,mbn->bn", a, G[:h])
    return n_bad


def _mixing_coefficients(gram, slot, lam, xp):
    """Solve min ‖Σ α_j g_j‖² + λ‖γ‖², Σ α = 1, for every sample at once.

    In difference form: with ``s`` the newest residual and ``γ_j = α_j`` for the others,
    ``Σ α_j g_j = g_s + Σ_j γ_j (g_j − g_s)``, so ``γ`` solves the (h−1)×(h−1) normal equations
    ``(M + λ·scale·I) γ = r`` with ``M_ij = Γ_ij − Γ_is − Γ_sj + Γ_ss`` and ``r_i = Γ_ss − Γ_is``,
    all read off the Gram matrix ``Γ``.  ``M`` is symmetric positive (semi)definite, so a
    batched elimination without pivoting, a few vector operations per entry, replaces a
    stacked LAPACK call (whose per-matrix overhead dominated at small ``n``).

    Returns ``(alpha, bad)``: ``alpha`` is (batch × h); ``bad`` marks samples whose solution is
    not finite or has a huge norm (an ill-conditioned system), to be replaced by a Picard step.
    """
    b, h, _ = gram.shape
    others = [j for j in range(h) if j != slot]
    g_ss = gram[:, slot, slot]
    g_os = gram[:, others, slot]  # (b, h−1)
    M = gram[:, others][:, :, others] - g_os[:, :, None] - g_os[:, None, :] + g_ss[:, None, None]
    r = g_ss[:, None] - g_os
    # λ relative to the scale of M (mean diagonal), so that it means the same at any norm.
    scale = xp.einsum("bii->b", M) / (h - 1)
    k = h - 1
    diag = xp.arange(k)
    M[:, diag, diag] += lam * xp.maximum(scale, 1e-300)[:, None]
    gamma = _spd_solve(M, r)
    alpha = xp.empty((b, h), dtype=xp.float64)
    alpha[:, others] = gamma
    alpha[:, slot] = 1 - gamma.sum(axis=1)
    with _quiet(xp):
        bad = ~xp.isfinite(alpha).all(axis=1) | (xp.abs(alpha).sum(axis=1) > 1e4)
    return alpha, bad


def _spd_solve(M, r):
    """Solve ``M x = r`` for a stack of small SPD matrices (b × k × k), overwriting both.

    Gaussian elimination without pivoting, vectorised over the batch: k³/3 vector operations
    on length-b arrays.  A zero or tiny pivot yields inf/NaN, which the caller flags.
    """
    xp = array_module(M)
    k = M.shape[1]
    with _quiet(xp):
        for i in range(k):
            for j in range(i + 1, k):
                f = M[:, j, i] / M[:, i, i]
                M[:, j, i:] -= f[:, None] * M[:, i, i:]
                r[:, j] -= f * r[:, i]
        for i in range(k - 1, -1, -1):
            acc = r[:, i]
            for j in range(i + 1, k):
                acc = acc - M[:, i, j] * r[:, j]
            r[:, i] = acc / M[:, i, i]
    return r


def _quiet(xp):
    """Silence NumPy's divide/overflow warnings: non-finite results are flagged, not raised."""
    import contextlib

    return xp.errstate(all="ignore") if hasattr(xp, "errstate") else contextlib.nullcontext()
