"""Pieces of the studies in ``docs/studies.md`` that tests and scripts share.

Over-parameterised convergence (Gao, Liu, Liu, Rajan & Gao, ICLR 2022, arXiv 2110.05645):
:func:`gao_model` builds the ReLU implicit network of that paper in dimplicit's
parametrisation, :func:`ntk_gram` computes its neural-tangent Gram matrix from one forward and
one adjoint solve, :func:`gao_gradient_descent` runs full-batch gradient descent with the
implicit gradient, and :func:`linear_rate` says whether a loss curve converges linearly.

The paper writes the network with *fixed* scale factors in front of standard-normal weights
(the "NTK parametrisation")::

    z = relu( (γ/√m) Ã z + W̃ x ),     ŷ = (1/√m) ũᵀ z,      Ã, W̃, ũ ~ N(0, 1) entrywise,

trained by gradient descent on ``(Ã, W̃, ũ)`` with the square loss ``½ Σᵢ (ŷᵢ − yᵢ)²`` and
inputs on the unit sphere.  dimplicit's model holds the *effective* weights ``A = (γ/√m) Ã``,
``B = W̃``, ``C = ũᵀ/√m``; a gradient step of size η on a raw weight ``θ = P / s`` is the step
``ΔP = −η s² ∇_P L`` on the effective weight, which is what :func:`gao_gradient_descent`
applies (``s² = γ²/m, 1, 1/m``).  The biases and the direct path ``D`` are absent (masked or
kept at zero).  ‖A‖₂ ≈ 2γ at initialisation, so for γ < ½ the map is an ℓ2 contraction and the
equilibrium is unique (‖A‖∞, dimplicit's usual certificate, grows like γ√m and is not used:
``kappa=None``).
"""

from __future__ import annotations

import numpy as np

from dimplicit.activations import Activation
from dimplicit.forward import equilibrium, output
from dimplicit.gradients import BackwardOptions, adjoint, parameter_gradients
from dimplicit.model import ImplicitModel
from dimplicit.solvers import SolverOptions

#: The trained effective weights of the Gao et al. model.
GAO_TRAINED = ("A", "B", "C")


def gao_scales(width: int, gamma: float) -> dict:
    """The fixed factors ``s`` of the trained weights (effective weight = ``s`` × raw weight)."""
    return {"A": gamma / np.sqrt(width), "B": 1.0, "C": 1.0 / np.sqrt(width)}


def gao_model(n_inputs: int, width: int, *, gamma: float = 0.2, seed=0, dtype="float64"):
    """The ReLU implicit network of Gao et al. (2022), randomly initialised.

    Parameters
    ----------
    n_inputs : int
        Input dimension ``d`` (inputs are expected on the unit sphere).
    width : int
        Hidden width ``m``.
    gamma : float
        The fixed factor γ of the implicit matrix, ``A = (γ/√m) Ã``; γ < ½ keeps the
        equilibrium map an ℓ2 contraction with high probability.
    seed : int
        Seed of the standard-normal raw weights.
    dtype : str
        Floating type (float64: the study fits losses down to 1e-12 of their start).

    Returns
    -------
    ImplicitModel
        One output, no biases, ``D`` masked to zero, ``kappa=None``.
    """
    if not 0 < gamma:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    rng = np.random.default_rng(seed)
    m, d = int(width), int(n_inputs)
    s = gao_scales(m, gamma)
    params = {
        "A": s["A"] * rng.standard_normal((m, m)),
        "B": s["B"] * rng.standard_normal((m, d)),
        "C": s["C"] * rng.standard_normal((1, m)),
        "D": np.zeros((1, d)),
        "b_x": np.zeros(m),
        "b_y": np.zeros(1),
    }
    params = {k: v.astype(dtype) for k, v in params.items()}
    masks = {"D": np.zeros((1, d), dtype=dtype)}
    meta = {"builder": "gao2022", "seed": seed, "widths": [d, m, 1], "gamma": gamma}
    return ImplicitModel(params, Activation("relu", m), masks, None, meta)


def _solver(tol):
    return SolverOptions(tol=tol, max_iter=2000, check_every=1, on_failure="raise")


def ntk_gram(model, U, *, gamma: float, tol: float = 1e-12):
    """The Gram matrix ``H = J Jᵀ`` of the raw-weight Jacobian of ``ŷ`` at ``model``.

    With ``Z`` the equilibria and ``V`` the adjoints of ``∂ŷᵢ/∂Zᵢ`` (one implicit adjoint solve
    with ``∂L/∂ŷ = 1`` on every row), ``∂ŷᵢ/∂A = vᵢ zᵢᵀ``, ``∂ŷᵢ/∂B = vᵢ xᵢᵀ``,
    ``∂ŷᵢ/∂C = zᵢᵀ``, so ``H = s_A² (VVᵀ)∘(ZZᵀ) + s_B² (VVᵀ)∘(UUᵀ) + s_C² ZZᵀ``.

    Returns
    -------
    H : ndarray (n × n)
    """
    s = gao_scales(model.n_hidden, gamma)
    X, _ = equilibrium(model, U, _solver(tol))
    G_X = np.ones((U.shape[0], 1), dtype=U.dtype) @ model.params["C"]
    V, _ = adjoint(model, X, G_X, BackwardOptions("implicit", solver=_solver(tol)))
    VV, ZZ, UU = V @ V.T, X @ X.T, U @ U.T
    return s["A"] ** 2 * VV * ZZ + s["B"] ** 2 * VV * UU + s["C"] ** 2 * ZZ


def gao_gradient_descent(model, U, y, *, lr, iterations, gamma, method="implicit", tol=1e-12,
                         stop_ratio=1e-14):
    """Full-batch gradient descent on the raw weights of a :func:`gao_model`.

    Parameters
    ----------
    model : ImplicitModel
        Start (not modified).
    U : ndarray (n × d)
    y : ndarray (n,)
    lr : float
        Step size η on the raw weights.
    iterations : int
        Number of steps.
    gamma : float
        The model's γ (sets the per-weight factors).
    method : str
        Gradient method (:class:`~dimplicit.gradients.BackwardOptions`); ``implicit`` is the
        exact gradient.
    tol : float
        Forward and adjoint solver tolerance (relative residual).
    stop_ratio : float
        Stop early once the loss is below ``stop_ratio`` times the initial loss (the float64
        floor; the curve is flat from there on).

    Returns
    -------
    model : ImplicitModel
        The trained model.
    losses : ndarray
        ``½ Σ (ŷ − y)²`` before each step and after the last (length ≤ iterations + 1).
    """
    model = model.copy()
    s = gao_scales(model.n_hidden, gamma)
    y = np.asarray(y, dtype=U.dtype).reshape(-1, 1)
    # A diverging run (too large a step) may lose the fixed point: flagged, not raised, and
    # recorded as an infinite loss that ends the run.
    opts = SolverOptions(tol=tol, max_iter=2000, check_every=1, on_failure="flag")
    back = BackwardOptions(method, solver=opts)
    X = None
    losses = []
    for k in range(iterations + 1):
        # Warm start from the previous equilibrium: the weights moved little.
        X, fstats = equilibrium(model, U, opts, X0=X)
        R = output(model, X, U) - y
        losses.append(0.5 * float((R * R).sum()) if fstats.converged else float("inf"))
        if k == iterations or not np.isfinite(losses[-1]) or losses[-1] < stop_ratio * losses[0]:
            break
        G_Y = R  # ∂(½ Σ R²)/∂ŷ
        G_X = G_Y @ model.params["C"]
        V, bstats = adjoint(model, X, G_X, back)
        if not bstats.converged:
            losses.append(float("inf"))
            break
        g = parameter_gradients(model, V, X, U, G_Y)
        for name in GAO_TRAINED:
            model.params[name] = model.params[name] - lr * s[name] ** 2 * g[name]
    return model, np.asarray(losses)


def linear_rate(losses, *, floor_ratio: float = 1e-10, window: int | None = None) -> dict:
    """Fit ``log10 L_k = a + b k`` and compare the early and late convergence rates.

    Parameters
    ----------
    losses : array
        Loss per iteration.
    floor_ratio : float
        Fit only up to the first iteration with ``L_k ≤ floor_ratio · L_0`` (below it float64
        round-off, not the dynamics, shapes the curve).
    window : int, optional
        Window of the early and late rates (default: a quarter of the fitted range).

    Returns
    -------
    dict
        ``rate`` (−b: decades of loss per iteration), ``rho`` (the per-step contraction
        ``10^b``), ``r2`` of the fit, ``early_rate``/``late_rate`` (decades per iteration over
        the first and the last window), ``slowdown`` (late / early), ``final_ratio``
        (``L_end / L_0`` of the fitted range), ``fitted_iterations``.
    """
    L = np.asarray(losses, dtype=float)
    if L.size < 4 or not np.all(np.isfinite(L)) or L[0] <= 0:
        nan = float("nan")
        return {"rate": nan, "rho": nan, "r2": nan, "early_rate": nan, "late_rate": nan,
                "slowdown": nan, "final_ratio": nan, "fitted_iterations": int(L.size)}
    below = np.nonzero(L <= floor_ratio * L[0])[0]
    end = int(below[0]) + 1 if below.size else L.size
    end = max(end, 4)
    logL = np.log10(np.maximum(L[:end], np.finfo(float).tiny))
    k = np.arange(end, dtype=float)
    b, a = np.polyfit(k, logL, 1)
    resid = logL - (a + b * k)
    ss_tot = float(((logL - logL.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 0.0
    w = window or max(1, (end - 1) // 4)
    early = (logL[0] - logL[w]) / w
    late = (logL[end - 1 - w] - logL[end - 1]) / w
    return {
        "rate": float(-b),
        "rho": float(10.0**b),
        "r2": r2,
        "early_rate": float(early),
        "late_rate": float(late),
        "slowdown": float(late / early) if early > 0 else float("nan"),
        "final_ratio": float(L[end - 1] / L[0]),
        "fitted_iterations": int(end),
    }


def is_linear(fit: dict, *, min_r2: float = 0.98, max_final_ratio: float = 1e-6) -> bool:
    """The study's criterion for linear convergence of a :func:`linear_rate` fit.

    Linear: the log-linear fit has ``R² ≥ min_r2`` and the loss fell below
    ``max_final_ratio`` of its start within the run.
    """
    return bool(fit["r2"] >= min_r2 and fit["final_ratio"] <= max_final_ratio)
