"""Picard (plain fixed-point) iteration ``x ← f(x)``, batched over rows."""

from __future__ import annotations

from dimplicit.backend import array_module
from dimplicit.solvers.result import SolveStats, finish, relative_residuals
from dimplicit.solvers.schedule import CheckSchedule


def picard(
    f_,
    x0,
    *,
    tol=1e-4,
    max_iter=300,
    check_every=4,
    check="adaptive",
    on_failure="flag",
    what="solve",
):
    """Iterate ``x ← f(x)`` until every row's relative residual is below ``tol``.

    Parameters
    ----------
    f_ : callable ``(x, out) -> out``
        The fixed-point map; writes ``f(x)`` into ``out`` (no allocation on the hot path).
    x0 : array (batch × n)
        Initial iterate (warm start); not modified.
    tol : float
        Per-sample relative residual ``‖x_{k+1} − x_k‖ / (‖x_{k+1}‖ + ε)``.
    max_iter : int
        Maximum number of evaluations of ``f``.
    check_every : int
        Test convergence at most this many iterations apart: the test costs a subtraction and
        two reductions (and a device synchronisation on GPU), while every iteration past
        convergence costs a GEMM.
    check : {"adaptive", "fixed"}
        When to test: at the iteration where the observed contraction rate predicts
        convergence, or every ``check_every`` iterations
        (:class:`~dimplicit.solvers.schedule.CheckSchedule`).
    on_failure : {"flag", "raise"}
        Return unconverged stats, or raise :class:`~dimplicit.solvers.result.NonConvergenceError`.

    Returns
    -------
    x : array
        The last iterate ``f(x_{k-1})``.
    stats : SolveStats
    """
    xp = array_module(x0)
    x = x0.copy()
    y = xp.empty_like(x)  # two buffers, swapped each step: memory O(batch × n)
    schedule = CheckSchedule(check, check_every, tol, max_iter)
    r = None
    k = 0
    while k < max_iter:
        f_(x, y)
        k += 1
        x, y = y, x  # x is now the newest iterate, y the previous one
        if schedule.due(k):
            r, rmax = relative_residuals(x, y, xp, scratch=y)  # y is dead after this: reuse it
            if rmax < tol:
                break
            schedule.observe(k, rmax)
    return x, finish(SolveStats.from_residuals(k, r, tol), on_failure, what)
