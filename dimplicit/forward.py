"""The equilibrium (forward) pass: solve ``X = φ(X Aᵀ + U Bᵀ + b_x)`` and predict ``Ŷ``."""

from __future__ import annotations

from dimplicit.backend import array_module
from dimplicit.solvers import SolverOptions, solve


def equilibrium(model, U, options: SolverOptions = SolverOptions(), X0=None):
    """Solve for the hidden state of every row of ``U``.

    Parameters
    ----------
    model : ImplicitModel
        Weights on the same device/dtype as ``U``.
    U : array (b × p)
    options : SolverOptions
    X0 : array (b × n), optional
        Warm start (default zeros, so the first iterate is φ(U Bᵀ + b_x)).

    Returns
    -------
    X : array (b × n)
    stats : SolveStats
    """
    xp = array_module(U)
    P = model.params
    At = P["A"].T  # a transposed view: BLAS reads it with a transpose flag, no copy
    Uproj = U @ P["B"].T  # computed once per solve (DESIGN §2)
    Uproj += P["b_x"]
    act = model.activation

    def f_(x, out):
        xp.matmul(x, At, out=out)
        out += Uproj
        return act.apply_(out)

    x0 = xp.zeros((U.shape[0], model.n_hidden), dtype=U.dtype) if X0 is None else X0
    return solve(f_, x0, options, what="forward fixed-point solve")


def output(model, X, U):
    """``Ŷ = X Cᵀ + U Dᵀ + b_y``."""
    P = model.params
    Y = X @ P["C"].T
    Y += U @ P["D"].T
    Y += P["b_y"]
    return Y


def predict(model, U, options: SolverOptions = SolverOptions()):
    """Return ``(Ŷ, X, stats)`` for inputs ``U``."""
    X, stats = equilibrium(model, U, options)
    return output(model, X, U), X, stats
