"""The equilibrium (forward) pass: solve ``X = φ(X Aᵀ + U Bᵀ + b_x)`` and predict ``Ŷ``.

For a gated model φ is :attr:`~dimplicit.model.ImplicitModel.phi`, ``s ⊙ φ``: the gate
``s = σ(β)`` scales the gated neurons' outputs inside every application of the map, so the
fixed point, and everything that reads ``X`` (other neurons through ``A``, the output through
``C``), sees the gated values.  Since ``0 < s < 1`` the gate only shrinks the map's Lipschitz
constant: a model well-posed without it stays well-posed.
"""

from __future__ import annotations

from dimplicit.backend import array_module
from dimplicit.solvers import SolverOptions, SolveStats, solve


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
    S = model.structure  # block-sparse products for layered models (dimplicit.structure)
    A = P["A"]
    Uproj = S.B.matmul_t(U, P["B"])  # computed once per solve (docs/design.md §2)
    Uproj += P["b_x"]
    act = model.phi  # s ⊙ φ for gated models (built once per solve from the current β)
    if options.layerwise and S.layer_order:
        return _layer_sweep(model, Uproj, options, X0, act)

    def f_(x, out):
        S.A.matmul_t(x, A, out=out)
        out += Uproj
        return act.apply_(out)

    x0 = xp.zeros((U.shape[0], model.n_hidden), dtype=U.dtype) if X0 is None else X0
    return solve(f_, x0, options, what="forward fixed-point solve")


def _layer_sweep(model, Z, options, X0, act):
    """Solve a block lower-triangular equilibrium layer by layer (forward substitution).

    Layer ``g`` reads only earlier layers (final once computed) and itself: ``x_g = φ(z_g)``
    for a feedforward layer, an inner fixed-point solve on the layer alone for an implicit one.
    ``Z`` (the input projection) is overwritten by ``X``.
    """
    xp = array_module(Z)
    S, A = model.structure, model.params["A"]
    parts = []
    for g0, g1 in S.groups:
        z = Z[:, g0:g1]
        for _, _, c0, c1 in S.reads(g0):
            z += Z[:, c0:c1] @ A[g0:g1, c0:c1].T  # earlier layers: already X
        phi = act.sub(g0, g1)
        if not S.has_self_block(g0):
            phi.apply_(z)
            continue
        zg, Agt = xp.ascontiguousarray(z), A[g0:g1, g0:g1].T

        def f_(x, out, zg=zg, Agt=Agt, phi=phi):
            xp.matmul(x, Agt, out=out)
            out += zg
            return phi.apply_(out)

        x0 = xp.zeros_like(zg) if X0 is None else xp.ascontiguousarray(X0[:, g0:g1])
        x, st = solve(f_, x0, options, what=f"forward solve of hidden layer {g0}:{g1}")
        Z[:, g0:g1] = x
        parts.append(st)
    return Z, SolveStats.merge(parts, options.tol, Z.shape[0])


def output(model, X, U):
    """``Ŷ = X Cᵀ + U Dᵀ + b_y``."""
    P = model.params
    S = model.structure
    Y = S.C.matmul_t(X, P["C"])
    if not S.D.empty:
        Y += S.D.matmul_t(U, P["D"])
    Y += P["b_y"]
    return Y


def predict(model, U, options: SolverOptions = SolverOptions()):
    """Return ``(Ŷ, X, stats)`` for inputs ``U``."""
    X, stats = equilibrium(model, U, options)
    return output(model, X, U), X, stats
