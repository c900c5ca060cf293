"""Batched fixed-point solvers: Picard and Anderson, one per file, sharing :class:`SolveStats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dimplicit.backend import array_module
from dimplicit.solvers.anderson import anderson
from dimplicit.solvers.blas import warm_blas
from dimplicit.solvers.picard import picard
from dimplicit.solvers.result import NonConvergenceError, SolveStats
from dimplicit.solvers.schedule import CHECKS, CheckSchedule

__all__ = [
    "AUTO_ANDERSON_MIN_WIDTH",
    "SOLVERS",
    "SolverOptions",
    "solve",
    "picard",
    "anderson",
    "CheckSchedule",
    "SolveStats",
    "NonConvergenceError",
]

SOLVERS = ("picard", "anderson", "auto")

#: ``solver="auto"`` uses Anderson on states at least this wide and Picard below: Anderson's
#: mixing costs about a dozen passes over the (batch × n) state per iteration, against a GEMM
#: of 2·n flops per element, so it pays only once n is large (docs/performance.md).
AUTO_ANDERSON_MIN_WIDTH = 1024


@dataclass(frozen=True)
class SolverOptions:
    """How to solve a fixed point ``x = f(x)``.

    Parameters
    ----------
    solver : {"picard", "anderson", "auto"}
        ``"auto"`` chooses per solve by the width ``n`` of the state (a whole model, or one
        layer of a layer-by-layer solve): Anderson from :data:`AUTO_ANDERSON_MIN_WIDTH` on,
        Picard below.
    tol : float
        Per-sample relative residual at which a row counts as converged.
    max_iter : int
        Maximum evaluations of the map.
    check_every : int
        Test convergence at most this many iterations apart (with ``check="fixed"``: exactly
        every this many).  The ``neumann`` gradient tests every this many terms.
    check : {"adaptive", "fixed"}
        When the solvers test convergence: where the observed contraction rate predicts it
        (``"adaptive"``, :class:`~dimplicit.solvers.schedule.CheckSchedule`) or every
        ``check_every`` iterations.  The stopping rule itself is the same.
    memory, regularization, damping : int, float, float
        Anderson's m, λ and β.
    on_failure : {"flag", "raise"}
        Non-convergence is reported in the stats, or raised as :class:`NonConvergenceError`.
    layerwise : bool
        When ``A`` is block lower-triangular over the model's layers (layered models and the
        autoencoders), solve layer by layer in one sweep, iterating only the layers with an
        intra-layer block.  Same fixed point, a fraction of the work; ``False`` iterates the
        whole map.
    """

    solver: str = "auto"
    tol: float = 1e-4
    max_iter: int = 300
    check_every: int = 4
    check: str = "adaptive"
    memory: int = 3
    regularization: float = 1e-4
    damping: float = 1.0
    on_failure: str = "flag"
    layerwise: bool = True

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1 or self.check_every < 1:
            raise ValueError("max_iter and check_every must be ≥ 1")
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {self.check!r}")
        if self.memory < 1:
            raise ValueError(f"memory must be ≥ 1, got {self.memory}")
        if self.on_failure not in ("flag", "raise"):
            raise ValueError(f"on_failure must be 'flag' or 'raise', got {self.on_failure!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def solve(f_, x0, options: SolverOptions, what: str = "solve"):
    """Solve ``x = f(x)`` from ``x0`` with the solver in ``options``; return ``(x, stats)``."""
    warm_blas(array_module(x0))  # once per process: see dimplicit.solvers.blas
    common = dict(
        tol=options.tol,
        max_iter=options.max_iter,
        check_every=options.check_every,
        check=options.check,
        on_failure=options.on_failure,
    )
    solver = options.solver
    if solver == "auto":
        solver = "anderson" if x0.shape[-1] >= AUTO_ANDERSON_MIN_WIDTH else "picard"
    if solver == "anderson":
        return anderson(
            f_,
            x0,
            memory=options.memory,
            regularization=options.regularization,
            damping=options.damping,
            what=what,
            **common,
        )
    return picard(f_, x0, what=what, **common)
