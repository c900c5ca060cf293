"""Robustness certificates of implicit models (El Ghaoui et al., *Implicit Deep Learning*).

For a well-posed model (Perron root ρ(|A|) < 1, implied by ‖A‖∞ < 1) whose activation φ is
componentwise 1-Lipschitz, the change of the output caused by a change ``δ`` of the input is
bounded entrywise by ::

    |ŷ(u + δ) − ŷ(u)| ≤ M |δ|,      M = |C| (I − |A|)⁻¹ |B| + |D|   (q × p, non-negative).

Proof sketch: ``|Δx| = |φ(z + Δz) − φ(z)| ≤ |Δz| ≤ |A||Δx| + |B||δ|``, hence
``(I − |A|)|Δx| ≤ |B||δ|``; since ``ρ(|A|) < 1`` the Neumann series of ``(I − |A|)⁻¹`` converges
and has non-negative terms, so ``|Δx| ≤ (I − |A|)⁻¹|B||δ|`` and ``|Δŷ| ≤ |C||Δx| + |D||δ|``.

A gated model (``x = s ⊙ φ(z)``, ``s = σ(β) ∈ (0, 1)``, 1 on ungated neurons; see
:mod:`dimplicit.model`) has neuron ``i`` ``s_i``-Lipschitz.  With ``G = diag(s)``,
``|Δx| ≤ G|Δz| ≤ G|A||Δx| + G|B||δ|``, so when ``ρ(G|A|) < 1`` ::

    M = |C| (I − G|A|)⁻¹ G |B| + |D|  =  |C| G (I − |A|G)⁻¹ |B| + |D|

(push-through identity; note that ``(I − |A|G)⁻¹ G`` alone is a different matrix).  The
condition is on the gate-weighted |A|: row ``i`` of ``|A|`` scaled by ``s_i``; without a gate
``G = I`` and everything reduces to the bound above.

Everything here works in the model's *input space*: the standardised features when the model
records a scaler (:func:`model_space` applies it).  Masks are already applied to
``model.params``.  NumPy, float64.
"""

from __future__ import annotations

import numpy as np

from dimplicit.activations import parse
from dimplicit.backend import to_host
from dimplicit.forward import predict
from dimplicit.solvers import SolverOptions

# Componentwise Lipschitz constants of the activations (leaky_relu's slope is checked ≤ 1).
LIPSCHITZ = {"relu": 1.0, "leaky_relu": 1.0, "tanh": 1.0, "arctan": 1.0,
             "sigmoid": 0.25, "identity": 1.0}  # fmt: skip

# A tight forward solve: certificates are compared with differences of outputs.
TIGHT = SolverOptions(tol=1e-12, max_iter=20000)


def _params64(model) -> dict:
    return {k: np.asarray(to_host(v), dtype=np.float64) for k, v in model.params.items()}


def gate_diagonal(model) -> np.ndarray:
    """The gate of every hidden neuron, float64 (n,): ``σ(β_i)`` if gated, else exactly 1."""
    g = np.ones(model.n_hidden)
    if model.gated:
        g[model.gate_units] = np.asarray(to_host(model.gate()), dtype=np.float64)
    return g


def check_certifiable(model) -> float:
    """Return a certified upper bound on ρ(G|A|); raise a one-line ``ValueError`` unless the
    bound applies.

    The sensitivity bound needs the Neumann series of ``(I − G|A|)⁻¹`` to converge, that is
    the Perron root ρ(G|A|) < 1 — not the stronger ‖G|A|‖∞ < 1.  The difference matters for
    layered models: the feed-forward "v0" autoencoders have ρ(|A|) = 0 (|A| is strictly block
    lower-triangular) while their ‖A‖∞ is well above 1.  The check is itself a certificate
    (Collatz–Wielandt): if ``v`` solves ``(I − G|A|) v = 1`` and ``v > 0``, then
    ``G|A| v = v − 1`` gives ``ρ(G|A|) ≤ max_i (v_i − 1)/v_i = 1 − 1/max(v) < 1``; if
    ρ ≥ 1, no such positive ``v`` exists.

    Raises
    ------
    ValueError
        ``ρ(G|A|) ≥ 1`` (the bound needs a well-posed model), or an activation that is not
        1-Lipschitz.
    """
    for name in model.activation.names:
        base, alpha = parse(name)
        if LIPSCHITZ.get(base, np.inf) > 1.0 or alpha > 1.0:
            raise ValueError(f"activation {name!r} is not 1-Lipschitz: no sensitivity bound")
    A = np.abs(np.asarray(to_host(model.params["A"]), dtype=np.float64))
    if A.size == 0:
        return 0.0
    if model.gated:
        A = gate_diagonal(model)[:, None] * A
    norm = float(A.sum(axis=1).max())
    if norm < 1.0:  # ρ ≤ ‖·‖∞: no solve needed
        return norm
    with np.errstate(all="ignore"):
        try:
            v = np.linalg.solve(np.eye(A.shape[0]) - A, np.ones(A.shape[0]))
        except np.linalg.LinAlgError:
            v = np.full(A.shape[0], np.nan)
    # Exact arithmetic gives v ≥ 1 when ρ < 1; demand it with a margin for rounding.
    if np.all(np.isfinite(v)) and v.min() >= 1.0 - 1e-9:
        rho = 1.0 - 1.0 / float(v.max())
        if rho < 1.0 - 1e-12:
            return rho
    what = "‖G|A|‖∞ (gate-weighted)" if model.gated else "‖A‖∞"
    raise ValueError(
        f"{what} = {norm:.4g} ≥ 1 and the Perron root ρ(|A|) is not below 1: the sensitivity "
        "bound needs a well-posed model; train it with --kappa below 1 (e.g. 0.95)"
    )


def sensitivity_bound(model) -> np.ndarray:
    """The entrywise sensitivity bound ``M = |C| (I − G|A|)⁻¹ G|B| + |D|`` (q × p).

    ``G = diag(σ(β))`` on gated neurons, the identity without a gate (then
    ``M = |C| (I − |A|)⁻¹ |B| + |D|``).

    Parameters
    ----------
    model : ImplicitModel
        ρ(G|A|) < 1 and a 1-Lipschitz activation.

    Returns
    -------
    ndarray (q × p), float64, non-negative
        ``|ŷ(u + δ) − ŷ(u)| ≤ M |δ|`` componentwise, for every ``u`` and ``δ``.

    Raises
    ------
    ValueError
        The model is not well-posed (ρ(G|A|) ≥ 1) or φ is not 1-Lipschitz.
    """
    check_certifiable(model)
    P = _params64(model)
    n = P["A"].shape[0]
    absA, absB = np.abs(P["A"]), np.abs(P["B"])
    if model.gated:  # rows of neuron i scaled by its gate: G|A| and G|B|
        g = gate_diagonal(model)[:, None]
        absA, absB = g * absA, g * absB
    # (I − G|A|) Z = G|B|, solved (never inverted); non-singular since ρ(G|A|) < 1.
    Z = np.linalg.solve(np.eye(n) - absA, absB) if n else P["B"]
    return np.abs(P["C"]) @ Z + np.abs(P["D"])


def model_space(model, U) -> np.ndarray:
    """Raw feature rows → the model's input space (its training scaler, if any), float64."""
    from dimplicit.data.preprocess import standardize

    U = np.array(U, dtype=np.float64, ndmin=2)
    scaler = model.meta.get("training", {}).get("scaler")
    if scaler is not None:
        U = standardize(U, np.asarray(scaler["mean"], np.float64), np.asarray(scaler["std"]))
    return U


def outputs(model, U, options: SolverOptions = TIGHT) -> np.ndarray:
    """``ŷ`` of model-space rows ``U`` (b × p) in float64."""
    m64 = model.astype(_Float64)
    Yhat, _, _ = predict(m64, np.array(U, dtype=np.float64, ndmin=2), options)
    return np.asarray(Yhat)


class _Float64:
    """A minimal backend for :meth:`ImplicitModel.astype`: host float64 arrays."""

    @staticmethod
    def asarray(v):
        return np.asarray(v, dtype=np.float64)


def linf_radius(model, u, M=None) -> float:
    """Certified ℓ∞ radius of a classifier's prediction at the model-space row ``u``.

    With ``k`` the predicted class and margins ``m_j = ŷ_k − ŷ_j``, a perturbation with
    ``‖δ‖∞ ≤ r`` moves output ``i`` by at most ``r · Σ_l M_il``; class ``j`` can overtake
    ``k`` only if ``|Δŷ_k| + |Δŷ_j| ≥ m_j``.  Hence no ``δ`` with ``‖δ‖∞ < r`` changes the
    argmax, where ::

        r = min_{j ≠ k} m_j / (Σ_l M_kl + Σ_l M_jl).

    Parameters
    ----------
    model : ImplicitModel
        A classifier (q ≥ 2 outputs) satisfying :func:`sensitivity_bound`'s conditions.
    u : array (p,)
        One row in the model's input space (see :func:`model_space`).
    M : ndarray, optional
        A precomputed :func:`sensitivity_bound`.

    Returns
    -------
    float
        The radius (``inf`` if no other class can ever overtake; 0 on a tie).
    """
    M = sensitivity_bound(model) if M is None else M
    y = outputs(model, u)[0]
    k = int(np.argmax(y))
    rows = M.sum(axis=1)
    others = np.arange(y.size) != k
    denom = rows[k] + rows[others]
    margins = y[k] - y[others]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denom > 0, margins / denom, np.inf)
    return float(r.min()) if r.size else float("inf")


def score_decrease_bound(model, eps: float, M=None):
    """Bound on how much an ℓ∞ perturbation can lower an autoencoder's anomaly score.

    The score is ``s(u) = ‖ŷ(u) − u‖₂ / √p`` (RMSE of the reconstruction over the
    standardised features).  Write ``r(u) = ŷ(u) − u``.  Then, componentwise,
    ``|r_i(u + δ) − r_i(u)| = |Δŷ_i − δ_i| ≤ |Δŷ_i| + |δ_i| ≤ ((M + I)|δ|)_i`` (the triangle
    inequality; the identity's row adds the feature's own move, so the rows used are those of
    ``M + I``, not ``M − I``: the Jacobian ``J`` of ``ŷ`` only satisfies ``|J| ≤ M``, so
    ``|J − I| ≤ M + I``).  By the reverse triangle inequality
    ``s(u + δ) ≥ s(u) − ‖r(u + δ) − r(u)‖₂ / √p``, so over ``‖δ‖∞ ≤ ε`` ::

        s(u) − s(u + δ) ≤ ε ‖(M + I) 1‖₂ / √p               (all features may move)
        s(u) − s(u + δ) ≤ ε ‖M e_l + e_l‖₂ / √p             (only feature l moves)

    Both are independent of ``u``; the decrease is also at most ``s(u)`` itself.

    Parameters
    ----------
    model : ImplicitModel
        An autoencoder (q = p) satisfying :func:`sensitivity_bound`'s conditions.
    eps : float
        ℓ∞ radius in standardised units.
    M : ndarray, optional
        A precomputed :func:`sensitivity_bound`.

    Returns
    -------
    total : float
        Bound when every feature may move by ``eps``.
    per_feature : ndarray (p,)
        Bound when only feature ``l`` moves by ``eps``.
    """
    M = sensitivity_bound(model) if M is None else M
    q, p = M.shape
    if q != p:
        raise ValueError(f"an autoencoder has as many outputs as inputs, got {q} × {p}")
    K = M + np.eye(p)
    total = eps * float(np.linalg.norm(K.sum(axis=1))) / np.sqrt(p)
    per_feature = eps * np.linalg.norm(K, axis=0) / np.sqrt(p)
    return total, per_feature


def score_bound(model, u, eps: float, M=None) -> dict:
    """Anomaly score at the model-space row ``u`` and its certified minimum over ``‖δ‖∞ ≤ eps``.

    Returns
    -------
    dict
        ``score`` (s(u)), ``max_decrease`` (see :func:`score_decrease_bound`, capped at the
        score) and ``min_score`` (``score − max_decrease``).
    """
    u = np.array(u, dtype=np.float64, ndmin=2)
    y = outputs(model, u)
    s = float(np.sqrt(np.mean((y - u) ** 2)))
    total, _ = score_decrease_bound(model, eps, M)
    dec = min(total, s)
    return {"score": s, "max_decrease": dec, "min_score": s - dec}


def pgd_attack(model, u, eps: float, target=None, *, direction=None, steps: int = 60,
               restarts: int = 3, step_size=None, seed=0) -> np.ndarray:  # fmt: skip
    """Projected sign-gradient attack in the ℓ∞ ball ``‖δ‖∞ ≤ eps`` around ``u``.

    Gradients ``∂/∂U`` come from :func:`dimplicit.partition.partition_sums` (implicit
    backward pass, no finite differences): with the ``mse`` loss and the target
    ``Y = ŷ − w`` the gradient of the loss with respect to ``ŷ`` is proportional to ``w``, so
    descending it lowers ``w · ŷ``.

    Parameters
    ----------
    model : ImplicitModel
    u : array (p,)
        Model-space row.
    eps : float
        ℓ∞ radius.
    target : int, optional
        Classifier attack: lower the margin ``ŷ_k − ŷ_target`` (k = predicted class); None
        tries every other class and keeps the smallest margin.  Ignored with ``direction``.
    direction : array (q,), optional
        Minimise ``direction · ŷ(u + δ)`` instead (e.g. ``±e_i`` to move output ``i``).
    steps, restarts : int
        Iterations per start; starts (the first at ``δ = 0``, the others random in the ball).
    step_size : float, optional
        Default ``2.5 · eps / steps``.
    seed : int

    Returns
    -------
    ndarray (p,)
        The best ``δ`` found (``‖δ‖∞ ≤ eps``).
    """
    from dimplicit.partition import StepConfig, partition_sums

    u = np.asarray(u, dtype=np.float64).reshape(-1)
    m64 = model.astype(_Float64)
    config = StepConfig(loss="mse", forward=TIGHT)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    y0 = outputs(model, u)[0]
    if direction is not None:
        ws = [np.asarray(direction, dtype=np.float64)]
    else:
        k = int(np.argmax(y0))
        js = [target] if target is not None else [j for j in range(y0.size) if j != k]
        ws = []
        for j in js:
            w = np.zeros(y0.size)
            w[k], w[j] = 1.0, -1.0
            ws.append(w)
    rng = np.random.default_rng(seed)
    best, best_val = np.zeros_like(u), np.inf
    for w in ws:
        for r in range(restarts):
            d = np.zeros_like(u) if r == 0 else rng.uniform(-eps, eps, u.shape)
            for _ in range(steps):
                U = (u + d)[None, :]
                Y = outputs(m64, U) - w[None, :]
                g = partition_sums(m64, U, Y, config, want_input_grad=True)["grads"]["U"][0]
                d = np.clip(d - alpha * np.sign(g), -eps, eps)
            val = float(w @ outputs(m64, (u + d)[None, :])[0])
            if val < best_val:
                best, best_val = d, val
    return best
