"""Batched fixed-point solvers: Picard and Anderson, one per file, sharing :class:`SolveStats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dimplicit.solvers.anderson import anderson
from dimplicit.solvers.picard import picard
from dimplicit.solvers.result import NonConvergenceError, SolveStats

__all__ = ["SolverOptions", "solve", "picard", "anderson", "SolveStats", "NonConvergenceError"]

SOLVERS = ("picard", "anderson")


@dataclass(frozen=True)
class SolverOptions:
    """How to solve a fixed point ``x = f(x)``.

    Parameters
    ----------
    solver : {"picard", "anderson"}
    tol : float
        Per-sample relative residual at which a row counts as converged.
    max_iter : int
        Maximum evaluations of the map.
    check_every : int
        Test convergence every this many iterations (Picard; Anderson computes the residual
        as a by-product and tests each iteration).
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

    solver: str = "picard"
    tol: float = 1e-4
    max_iter: int = 300
    check_every: int = 4
    memory: int = 5
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
        if self.on_failure not in ("flag", "raise"):
            raise ValueError(f"on_failure must be 'flag' or 'raise', got {self.on_failure!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def solve(f_, x0, options: SolverOptions, what: str = "solve"):
    """Solve ``x = f(x)`` from ``x0`` with the solver in ``options``; return ``(x, stats)``."""
    common = dict(tol=options.tol, max_iter=options.max_iter, on_failure=options.on_failure)
    if options.solver == "anderson":
        return anderson(
            f_,
            x0,
            memory=options.memory,
            regularization=options.regularization,
            damping=options.damping,
            what=what,
            **common,
        )
    return picard(f_, x0, check_every=options.check_every, what=what, **common)
