"""The pure per-partition function: one block of rows in, gradient *sums* out.

The distributed trainer runs :func:`partition_sums` as one task per row-block and reduces the
results with :func:`combine` in a fixed tree; the in-process trainer calls the same function on
each mini-batch.  Keeping both paths on one function is what makes their weights comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dimplicit.backend import array_module, to_host
from dimplicit.forward import equilibrium, output
from dimplicit.gradients import BackwardOptions, adjoint, parameter_gradients
from dimplicit.losses import LOSSES, loss_and_grad
from dimplicit.model import param_names
from dimplicit.solvers import SolverOptions


@dataclass(frozen=True)
class StepConfig:
    """What one gradient evaluation needs besides weights and data."""

    loss: str = "mse"
    forward: SolverOptions = field(default_factory=SolverOptions)
    backward: BackwardOptions = field(default_factory=BackwardOptions)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def partition_sums(model, U, Y, config: StepConfig = StepConfig(), *, want_input_grad=False):
    """Loss and gradient sums of one block of rows, plus solver statistics.

    Parameters
    ----------
    model : ImplicitModel
        Weights on the same device and dtype as ``U``.
    U : array (b × p)
        Inputs.
    Y : array
        Targets (see :func:`dimplicit.losses.loss_and_grad`).
    config : StepConfig
    want_input_grad : bool
        Also return ``∂L/∂U`` under ``grads["U"]``.

    Returns
    -------
    dict
        ``loss`` (float sum), ``count`` (rows), ``grads`` (dict of sums, on the input's
        device), and ``stats``: forward/backward iterations and residuals, as sums and maxima
        so that :func:`combine` can merge them.
    """
    X, fstats = equilibrium(model, U, config.forward)
    Yhat = output(model, X, U)
    loss, G_Y = loss_and_grad(config.loss, Yhat, Y)
    G_X = model.structure.C.matmul(G_Y, model.params["C"])
    V, bstats, *dX = adjoint(model, X, G_X, config.backward, want_dx=model.gated)  # β needs ∂L/∂X
    grads = parameter_gradients(model, V, X, U, G_Y, want_input_grad, *dX)
    return {
        "loss": float(loss),
        "count": int(U.shape[0]),
        "grads": grads,
        "stats": _stats(fstats, bstats),
    }


def _stats(f, b) -> dict:
    # Sums and maxima only, so that merging partitions is associative.
    return {
        "blocks": 1,
        "forward_iters_sum": f.iterations,
        "forward_iters_max": f.iterations,
        "forward_residual_max": f.residual_max,
        "forward_unconverged": f.n_unconverged,
        "backward_iters_sum": b.iterations,
        "backward_iters_max": b.iterations,
        "backward_residual_max": b.residual_max,
        "backward_unconverged": b.n_unconverged,
        "anderson_fallbacks": f.fallbacks + b.fallbacks,
    }


def combine(a: dict, b: dict) -> dict:
    """Merge two partition results (``a`` first: the order is part of the arithmetic)."""
    stats = {}
    for k, v in a["stats"].items():
        stats[k] = max(v, b["stats"][k]) if k.endswith("_max") else v + b["stats"][k]
    return {
        "loss": a["loss"] + b["loss"],
        "count": a["count"] + b["count"],
        "grads": {k: a["grads"][k] + b["grads"][k] for k in a["grads"]},
        "stats": stats,
    }


def tree_reduce(results: list, pair=None):
    """Pairwise reduction in a fixed tree that depends only on the list order.

    Level by level, neighbours ``(0, 1), (2, 3), …`` are merged and an odd last item moves up
    unchanged.  Both executors reduce through this one function, so they perform the same
    additions in the same order.

    Parameters
    ----------
    results : list
        Partition results, or anything ``pair`` accepts (e.g. Dask futures of them).
    pair : callable, optional
        ``pair(a, b, depth, index)`` merges two items; default :func:`combine` in place.
    """
    if not results:
        raise ValueError("nothing to reduce")
    if pair is None:

        def pair(a, b, depth, index):
            return combine(a, b)

    level, depth = list(results), 0
    while len(level) > 1:
        nxt = [pair(level[i], level[i + 1], depth, i) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, depth = nxt, depth + 1
    return level[0]


def to_host_result(res: dict) -> dict:
    """Copy a partition result's arrays to NumPy (what travels between workers)."""
    return {**res, "grads": {k: to_host(v) for k, v in res["grads"].items()}}


def mean_gradients(total: dict) -> dict:
    """Divide reduced gradient sums by the global row count (the only division)."""
    n = total["count"]
    xp = array_module(total["grads"]["A"])
    return {
        k: total["grads"][k] / xp.asarray(n, dtype=total["grads"][k].dtype)
        for k in param_names(total["grads"])
    }


def summarize_stats(total: dict) -> dict:
    """Human-facing per-step statistics from a reduced result."""
    s = total["stats"]
    nb = max(s["blocks"], 1)
    return {
        "loss": total["loss"] / max(total["count"], 1),
        "forward_iters": s["forward_iters_sum"] / nb,
        "forward_iters_max": s["forward_iters_max"],
        "backward_iters": s["backward_iters_sum"] / nb,
        "backward_iters_max": s["backward_iters_max"],
        "forward_residual_max": s["forward_residual_max"],
        "forward_unconverged": s["forward_unconverged"],
        "backward_unconverged": s["backward_unconverged"],
        "anderson_fallbacks": s["anderson_fallbacks"],
    }
