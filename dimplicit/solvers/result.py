"""What every fixed-point solve reports: statistics, a converged flag, and the failure mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dimplicit.kernels.residual import relative_residual_rows

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NonConvergenceError(RuntimeError):
    """A fixed-point solve stopped at ``max_iter`` above tolerance (with ``on_failure="raise"``)."""

    def __init__(self, what: str, stats: SolveStats):
        self.stats = stats
        super().__init__(
            f"{what} did not converge: {stats.iterations} iterations, max relative residual "
            f"{stats.residual_max:.3g} > tol {stats.tol:.3g} for {stats.n_unconverged} sample(s). "
            "Check well-posedness (‖A‖∞ < 1, see dimplicit.projection.inf_norm), raise max_iter, "
            "or use the Anderson solver."
        )


@dataclass
class SolveStats:
    """Statistics of one batched fixed-point solve.

    Attributes
    ----------
    iterations : int
        Number of evaluations of the fixed-point map.
    residual_max, residual_mean : float
        Max / mean over the batch of the last per-sample relative residual
        ``‖x_new − x‖ / (‖x_new‖ + ε)`` (for ``neumann``: ``‖h_k‖∞ / ‖V‖∞``).
    converged : bool
        Every sample met the tolerance.
    n_unconverged : int
        Samples above tolerance at the end.
    tol : float
        The tolerance used.
    fallbacks : int
        Anderson only: sample-steps that fell back to a plain Picard step because the
        least-squares system was ill-conditioned.
    """

    iterations: int
    residual_max: float
    residual_mean: float
    converged: bool
    n_unconverged: int
    tol: float
    fallbacks: int = 0

    @classmethod
    def from_residuals(cls, iterations, r, tol, fallbacks=0) -> SolveStats:
        """Stats from the last per-sample residuals ``r`` (an array on any device)."""
        n_bad = int((r >= tol).sum())
        return cls(
            iterations=iterations,
            residual_max=float(r.max()),
            residual_mean=float(r.mean()),
            converged=n_bad == 0,
            n_unconverged=n_bad,
            tol=tol,
            fallbacks=fallbacks,
        )

    @classmethod
    def merge(cls, parts, tol, batch: int) -> SolveStats:
        """Stats of a layer-by-layer solve from those of its implicit blocks.

        Iterations add up (at least 1: a purely feedforward sweep is one pass); residuals are
        the worst block's; unconverged rows add up, capped at the batch (an upper bound when
        several blocks fail).
        """
        if not parts:
            return cls(1, 0.0, 0.0, True, 0, tol)
        bad = min(batch, sum(p.n_unconverged for p in parts))
        return cls(
            iterations=max(1, sum(p.iterations for p in parts)),
            residual_max=max(p.residual_max for p in parts),
            residual_mean=max(p.residual_mean for p in parts),
            converged=bad == 0,
            n_unconverged=bad,
            tol=tol,
            fallbacks=sum(p.fallbacks for p in parts),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def finish(stats: SolveStats, on_failure: str, what: str) -> SolveStats:
    """Apply the caller's failure policy: ``"raise"`` or ``"flag"`` (return the stats)."""
    if on_failure not in ("raise", "flag"):
        raise ValueError(f"on_failure must be 'raise' or 'flag', got {on_failure!r}")
    if not stats.converged and on_failure == "raise":
        raise NonConvergenceError(what, stats)
    return stats


def relative_residual(x_new, x_old, xp, scratch=None):
    """Per-sample ``‖x_new − x_old‖ / (‖x_new‖ + ε)`` (rows are samples).

    Non-finite rows report ``inf`` so that a diverging solve can never look converged.
    NumPy arrays take one compiled pass (:func:`dimplicit.kernels.residual.relative_residual_rows`,
    bitwise the same values; ``scratch`` is not needed); other backends the expression below,
    which may overwrite ``scratch``.
    """
    eps = _eps(x_new, xp)
    if _has_kernel(x_new, xp):
        return relative_residual_rows(x_new, x_old, x_new.dtype.type(eps))[0]
    d = xp.subtract(x_new, x_old, out=scratch)
    num = xp.sqrt(xp.einsum("ij,ij->i", d, d))
    den = xp.sqrt(xp.einsum("ij,ij->i", x_new, x_new))
    r = num / (den + eps)
    r[~xp.isfinite(r)] = xp.inf
    return r


def relative_residuals(x_new, x_old, xp, scratch=None):
    """:func:`relative_residual` and its maximum (a float): what a stopping test reads.

    The kernel finds the maximum in the same pass; other backends reduce ``r`` (one device
    synchronisation on GPU).
    """
    if _has_kernel(x_new, xp):
        r, r_max = relative_residual_rows(x_new, x_old, x_new.dtype.type(_eps(x_new, xp)))
        return r, float(r_max)
    r = relative_residual(x_new, x_old, xp, scratch)
    return r, float(r.max())


def _eps(x, xp) -> float:
    """The ε of the residual's denominator: all-zero rows report 0, not NaN."""
    return 1e-30 if x.dtype == xp.float64 else 1e-20


def _has_kernel(x, xp) -> bool:
    return xp is np and x.ndim == 2 and x.dtype in _KERNEL_DTYPES
