"""Gradients through the equilibrium: the adjoint matrix ``V = ∂L/∂Z`` by four methods.

With ``S = φ'(Z)`` at the fixed point and ``G_X = G_Y C`` (docs/design.md §3)::

    implicit   V = S ⊙ (G_X + V A)                     adjoint fixed point (IFT)
    neumann    h₀ = S ⊙ G_X,  h_{k+1} = S ⊙ (h_k A),  V = Σ h_k      Szekeres & Izsák (2024)
    jfb        V = S ⊙ G_X                             Fung et al. (2022)
    phantom-k  V = h₀ + … + h_k                        truncated series (k = 0 is jfb)

and then ``∂L/∂A = Vᵀ X``, ``∂L/∂B = Vᵀ U``, ``∂L/∂b_x = Σ_rows V``, ``∂L/∂U = V B + G_Y D``.

A gated model (``X = s ⊙ φ(Z)``, ``s = σ(β)``, see :mod:`dimplicit.model`) uses ``S = s ⊙ φ'(Z)``
above, and the gate's gradient needs ``W = ∂L/∂X`` itself (``V = S ⊙ W``)::

    ∂L/∂β_i = Σ_rows W_i φ(Z_i) σ'(β_i) = (1 − s_i) Σ_rows W_i X_i

``W`` is taken from the same approximation as ``V``: ``G_X + V A`` at the fixed point
(implicit), the series ``G_X + (h₀ + … + h_{k−1}) A`` (neumann, phantom-k) and ``G_X`` (jfb).
So jfb and phantom-k give, for every parameter β included, the exact gradient of the loss
after ``k + 1`` applications of the map to the (detached) fixed point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dimplicit.backend import array_module
from dimplicit.model import GATE
from dimplicit.solvers import SolverOptions, SolveStats, solve
from dimplicit.solvers.result import finish

METHODS = ("implicit", "neumann", "jfb", "phantom")


@dataclass(frozen=True)
class BackwardOptions:
    """How to obtain ``V``.

    Parameters
    ----------
    method : {"implicit", "neumann", "jfb", "phantom"}
        ``"phantom"`` sums the first ``k + 1`` terms of the Neumann series (k GEMMs).
        The spellings ``"phantom-3"`` / ``"neumann-3"`` set ``k`` too.
    k : int
        Truncation for ``phantom``.
    solver : SolverOptions
        Tolerance / iteration limit / failure policy; ``implicit`` also uses its solver choice
        (Picard or Anderson).  For ``neumann`` the tolerance is on ``‖h_k‖∞ / ‖V‖∞``.
    """

    method: str = "implicit"
    k: int = 5
    solver: SolverOptions = field(default_factory=SolverOptions)

    def __post_init__(self):
        base, _, kk = self.method.partition("-")
        if kk:
            if base not in ("phantom", "neumann") or not kk.isdigit():
                raise ValueError(f"bad gradient method {self.method!r}")
            object.__setattr__(self, "method", "phantom")
            object.__setattr__(self, "k", int(kk))
        elif base not in METHODS:
            raise ValueError(f"gradient method must be one of {METHODS} or phantom-K, got {base!r}")
        if self.k < 0:
            raise ValueError(f"k must be ≥ 0, got {self.k}")

    def to_dict(self) -> dict:
        return asdict(self)


def adjoint(model, X, G_X, options: BackwardOptions = BackwardOptions(), *, want_dx=False):
    """Return ``(V, stats)`` for hidden states ``X`` and the direct gradient ``G_X``.

    ``stats.iterations`` counts GEMMs with ``A`` (0 for jfb).  With ``want_dx``, return
    ``(V, stats, W)``: ``W`` the method's ``∂L/∂X`` (``V = S ⊙ W``), which the gate's gradient
    needs (see the module docstring; it costs one more product with ``A`` for the generic
    implicit solve, an addition per term for the series, nothing for jfb).
    """
    A = model.params["A"]
    SA = model.structure.A
    S = model.phi.derivative(X)  # s ⊙ φ'(Z) for a gated model
    h = S * G_X
    so = options.solver
    W = None
    if options.method == "jfb":
        V, stats, W = h, _exact_stats(0, so.tol), G_X
    elif options.method == "implicit" and so.layerwise and model.structure.layer_order:
        V, stats, W = _layer_sweep(model, S, G_X, so, want_dx)
    elif options.method == "implicit":

        def f_(v, out):
            SA.matmul(v, A, out=out)
            out += G_X
            out *= S
            return out

        V, stats = solve(f_, h, so, what="adjoint (implicit) fixed-point solve")
        if want_dx:
            W = SA.matmul(V, A)
            W += G_X
    else:
        V, stats, W = _series(SA, A, S, G_X, h, options, want_dx)
    return (V, stats, W) if want_dx else (V, stats)


def _series(SA, A, S, G_X, h, options, want_dx):
    """Neumann series, truncated (phantom) or summed to tolerance (neumann)."""
    so = options.solver
    xp = array_module(h)
    V = h.copy()
    W = G_X.copy() if want_dx else None
    tmp = xp.empty_like(h)
    limit = options.k if options.method == "phantom" else so.max_iter
    k, ratio = 0, 0.0
    while k < limit:
        SA.matmul(h, A, out=tmp)
        if W is not None:
            W += tmp  # W = G_X + (h₀ + … + h_{k−1}) A, so that V = S ⊙ W term by term
        tmp *= S
        h, tmp = tmp, h
        V += h
        k += 1
        if options.method == "neumann" and (k % so.check_every == 0 or k == limit):
            hmax = float(xp.abs(h).max()) if h.size else 0.0
            vmax = float(xp.abs(V).max()) if V.size else 0.0
            ratio = hmax / vmax if vmax > 0 else (0.0 if hmax == 0 else float("inf"))
            if not ratio == ratio or ratio < so.tol:  # NaN counts as failure below
                break
    if options.method == "phantom":
        return V, _exact_stats(k, so.tol), W
    ok = ratio < so.tol
    stats = SolveStats(k, ratio, ratio, ok, 0 if ok else V.shape[0], so.tol)
    return V, finish(stats, so.on_failure, "adjoint (neumann) series"), W


def _layer_sweep(model, S, G_X, so, want_dx=False):
    """The implicit adjoint of a block lower-triangular ``A``, layer by layer, last layer first.

    ``v_g = S_g ⊙ (G_g + Σ_{later h} v_h A_hg + v_g A_gg)``: later layers are final when layer
    ``g`` is reached, so only layers with an intra-layer block need an inner solve.
    Returns ``(V, stats, W)``; ``W`` (``∂L/∂X``, layer by layer ``h + v_g A_gg``) only with
    ``want_dx``, else None.
    """
    xp = array_module(G_X)
    st, A = model.structure, model.params["A"]
    V = S * G_X  # each layer's S_g ⊙ G_g; completed layer by layer below
    W = xp.empty_like(G_X) if want_dx else None
    parts = []
    for g0, g1 in reversed(st.groups):
        h = G_X[:, g0:g1].copy()
        for r0, r1, _, _ in st.read_by(g0):
            h += V[:, r0:r1] @ A[r0:r1, g0:g1]
        Sg = S[:, g0:g1]
        if not st.has_self_block(g0):
            V[:, g0:g1] = Sg * h
            if W is not None:
                W[:, g0:g1] = h
            continue
        Agg = A[g0:g1, g0:g1]

        def f_(v, out, h=h, Sg=Sg, Agg=Agg):
            xp.matmul(v, Agg, out=out)
            out += h
            out *= Sg
            return out

        v, stats = solve(f_, Sg * h, so, what=f"adjoint solve of hidden layer {g0}:{g1}")
        V[:, g0:g1] = v
        if W is not None:
            W[:, g0:g1] = h + v @ Agg
        parts.append(stats)
    return V, SolveStats.merge(parts, so.tol, V.shape[0]), W


def _exact_stats(k, tol):
    return SolveStats(k, 0.0, 0.0, True, 0, tol)


def parameter_gradients(model, V, X, U, G_Y, want_input_grad=False, dX=None):
    """Gradient sums of every parameter (masked), and optionally ``∂L/∂U``.

    ``dX``: ``∂L/∂X`` from :func:`adjoint` (``want_dx=True``); required by a gated model,
    whose ``beta`` gradient is ``(1 − s) ⊙ Σ_rows dX ⊙ X`` on the gated neurons.
    """
    S = model.structure
    g = {
        "A": S.A.outer(V, X),
        "B": S.B.outer(V, U),
        "C": S.C.outer(G_Y, X),
        "D": S.D.outer(G_Y, U),
        "b_x": V.sum(axis=0),
        "b_y": G_Y.sum(axis=0),
    }
    if model.gated:
        if dX is None:
            raise ValueError("a gated model's gradient needs dX (adjoint(..., want_dx=True))")
        xp = array_module(X)
        units = model.gate_units
        cols = xp.asarray(units) if units.size < model.n_hidden else slice(None)
        gb = xp.zeros_like(model.params[GATE])
        # ∂x_i/∂β_i = φ(z_i) σ'(β_i) = x_i (1 − s_i): read off the gated state itself.
        gb[cols] = (dX[:, cols] * X[:, cols]).sum(axis=0) * (1 - model.gate())
        g[GATE] = gb
    for k, m in model.masks.items():
        g[k] *= m
    if want_input_grad:
        P = model.params
        g["U"] = S.B.matmul(V, P["B"])
        if not S.D.empty:
            g["U"] += S.D.matmul(G_Y, P["D"])
    return g
