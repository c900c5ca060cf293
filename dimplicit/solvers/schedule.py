"""When a fixed-point solver tests convergence: every ``k`` iterations, or when it predicts success.

A convergence test costs a subtraction and two row norms over the whole (batch × n) state (and
a device synchronisation on GPU), a sizeable share of one iteration when ``n`` is small.  Testing
only every ``k`` iterations saves those passes but overshoots convergence by up to ``k − 1``
iterations, each a full GEMM.  The adaptive schedule gets both: from the last two tests it
estimates the contraction rate ρ of the worst sample's residual, and tests next at the first
iteration where ``r · ρ^j < tol`` (never more than ``check_every`` iterations later, so it
overshoots no more than the fixed schedule).  Either way the stopping rule is the same — every
sample's relative residual below ``tol`` — only the iterations at which it is evaluated differ.
"""

from __future__ import annotations

import math

CHECKS = ("adaptive", "fixed")


class CheckSchedule:
    """Decide at which iterations a solver evaluates its residual.

    Parameters
    ----------
    check : {"adaptive", "fixed"}
        ``"fixed"``: every ``check_every`` iterations.  ``"adaptive"``: at the predicted
        convergence, at most ``check_every`` iterations apart (see the module docstring).
    check_every : int
        The fixed interval, or the adaptive schedule's largest gap.
    tol : float
        The solver's tolerance (the adaptive schedule aims at it).
    max_iter : int
        The last iteration is always tested.
    first : int
        The first test (adaptive only): a solve from zeros has residual 1 after one step,
        which says nothing, so the default is the second iteration.
    """

    def __init__(self, check, check_every, tol, max_iter, first=2):
        if check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
        self.adaptive = check == "adaptive"
        self.every = max(1, int(check_every))
        self.tol = tol
        self.max_iter = max_iter
        self.next = min(first, self.every) if self.adaptive else self.every
        self.last = None  # (iteration, worst residual) of the previous test

    def due(self, k: int) -> bool:
        """True when iteration ``k`` (1-based count of map evaluations) must be tested."""
        return k >= self.next or k >= self.max_iter

    def observe(self, k: int, r: float):
        """Record the worst residual ``r`` tested at iteration ``k``; schedule the next test."""
        step = self.every
        if self.adaptive and step > 1:  # (a gap of at most 1 is 1: nothing to predict)
            step = 1
            if self.last is not None and math.isfinite(r) and 0 < r < self.last[1]:
                k0, r0 = self.last
                log_rho = math.log(r / r0) / (k - k0)  # < 0: the residual shrinks
                step = math.ceil(math.log(self.tol / r) / log_rho) if r >= self.tol else 1
                step = min(max(step, 1), self.every)
            self.last = (k, r)
        self.next = k + step
