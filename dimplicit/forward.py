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
    act = model.phi  # s ⊙ φ for gated models (built once per solve from the current β)
    if options.layerwise and S.layer_order:
        return _layer_sweep(model, Uproj, options, X0, act)  # adds b_x layer by layer
    Uproj += P["b_x"]
    f_ = _fixed_point_map(lambda x, out: S.A.matmul_t(x, A, out=out), Uproj, act, X0 is None)
    x0 = xp.zeros((U.shape[0], model.n_hidden), dtype=U.dtype) if X0 is None else X0
    return solve(f_, x0, options, what="forward fixed-point solve")


def _fixed_point_map(product, z, phi, from_zero: bool):
    """The map ``f(x) = φ(product(x) + z)`` as a solver wants it: ``f_(x, out) -> out``.

    From zeros the first evaluation is φ(0 Aᵀ + z) = φ(z): it skips its GEMM (the same values,
    one GEMM fewer per solve) but still counts as an iteration, so the stopping rule and the
    test schedule are unchanged.  Both solvers evaluate the map at ``x0`` first; with
    ``from_zero`` the caller's ``x0`` must be zeros.
    """
    first = [from_zero]

    def f_(x, out):
        if first[0]:
            first[0] = False
            out[...] = z
        else:
            product(x, out)
            out += z
        return phi.apply_(out)

    return f_


#: Rows per pass through a run of feedforward layers (NumPy): each layer's block of a pass
#: stays in the L2 cache between its GEMM, bias, activation and write-back, which made the
#: feedforward layers of ``ae-v1:5,32,16`` 1.7× faster on 65,536 rows than whole-batch passes.
_SWEEP_ROWS = 2048


def _layer_sweep(model, Z, options, X0, act):
    """Solve a block lower-triangular equilibrium layer by layer (forward substitution).

    Layer ``g`` reads only earlier layers (final once computed) and itself: ``x_g = φ(z_g)``
    for a feedforward layer, an inner fixed-point solve on the layer alone for an implicit one.
    ``Z`` (the input projection ``U Bᵀ``, without ``b_x``) is overwritten by ``X``.

    A layer's pre-activation is built in its own contiguous array (one GEMM per run of adjacent
    earlier layers it reads) and written back once: elementwise passes on a column slice of
    ``Z`` run at a fraction of their contiguous speed.  Feedforward layers are exact per row, so
    a run of them is swept block of rows by block of rows (on NumPy); an implicit layer is
    solved on the whole batch, so that its iterations and stopping test are the batch's.
    """
    xp = array_module(Z)
    S, A, b = model.structure, model.params["A"], model.params["b_x"]
    n_rows = Z.shape[0]

    def pre_activation(Zr, g0, g1, out):
        """``z_g`` of rows ``Zr`` into ``out`` (contiguous): reads of earlier layers + ``Z``."""
        spans = S.read_spans(g0)  # earlier layers: already X
        # The layer's input term ``U Bᵀ + b_x``, formed here rather than over all of ``Z``
        # beforehand: a layer that B does not feed reads the (contiguous) bias row alone.
        fed = S.fed_by_inputs(g0)
        if not spans:
            return xp.add(Zr[:, g0:g1], b[g0:g1], out=out) if fed else _fill(out, b[g0:g1])
        c0, c1 = spans[0]
        xp.matmul(Zr[:, c0:c1], A[g0:g1, c0:c1].T, out=out)
        for c0, c1 in spans[1:]:
            out += Zr[:, c0:c1] @ A[g0:g1, c0:c1].T
        out += Zr[:, g0:g1] + b[g0:g1] if fed else b[g0:g1]
        return out

    groups, parts, k = S.groups, [], 0
    step = _SWEEP_ROWS if xp.__name__ == "numpy" else max(n_rows, 1)
    while k < len(groups):
        run = []
        while k < len(groups) and not S.has_self_block(groups[k][0]):
            run.append(groups[k])
            k += 1
        if run:
            bufs = [xp.empty((min(step, n_rows), g1 - g0), dtype=Z.dtype) for g0, g1 in run]
            phis = [act.sub(g0, g1) for g0, g1 in run]
            for r0 in range(0, n_rows, step):
                Zr = Z[r0 : r0 + step]
                for (g0, g1), buf, phi in zip(run, bufs, phis, strict=True):
                    z = pre_activation(Zr, g0, g1, buf[: Zr.shape[0]])
                    Zr[:, g0:g1] = phi.apply_(z)
        if k == len(groups):
            break
        g0, g1 = groups[k]
        k += 1
        z = pre_activation(Z, g0, g1, xp.empty((n_rows, g1 - g0), dtype=Z.dtype))
        Agt = A[g0:g1, g0:g1].T
        f_ = _fixed_point_map(
            lambda x, out, Agt=Agt: xp.matmul(x, Agt, out=out), z, act.sub(g0, g1), X0 is None
        )
        x0 = xp.zeros_like(z) if X0 is None else xp.ascontiguousarray(X0[:, g0:g1])
        x, st = solve(f_, x0, options, what=f"forward solve of hidden layer {g0}:{g1}")
        Z[:, g0:g1] = x
        parts.append(st)
    return Z, SolveStats.merge(parts, options.tol, n_rows)


def _fill(out, row):
    """``out[...] = row`` (broadcast over the rows); returns ``out``."""
    out[...] = row
    return out


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
