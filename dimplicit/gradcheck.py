"""Check analytic gradients against central finite differences (float64).

:func:`finite_differences` perturbs every *free* weight (masked entries stay zero) and solves
the equilibrium again from scratch, so it shares nothing with the adjoint code it checks.
:func:`run` is what ``dimplicit gradcheck`` prints.

Gated models (the "v2" latent gate ``σ(β)``) are checked for ``beta`` too.  ``jfb`` and
``phantom-k`` are not gradients of the equilibrium loss, but they are exact gradients of
the loss after ``k + 1`` applications of the map to the fixed point held fixed
(:func:`unrolled_loss_value`), which gives them an exact finite-difference check as well.
"""

from __future__ import annotations

import numpy as np

from dimplicit.activations import NAMES
from dimplicit.forward import output, predict
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import loss_and_grad
from dimplicit.model import (
    GATE,
    PARAM_NAMES,
    build_model,
    dense_model,
    layered_model,
    param_names,
    with_gate,
)
from dimplicit.partition import StepConfig, partition_sums
from dimplicit.solvers import SolverOptions

# Tight solves: the finite-difference quotient divides the solve error by the step h.
TIGHT = SolverOptions(tol=1e-14, max_iter=2000, check_every=1, on_failure="raise")
ACTIVATIONS = ["relu", "leaky_relu:0.1", "tanh", "arctan", "sigmoid", "identity"]
assert {a.split(":")[0] for a in ACTIVATIONS} == set(NAMES)
# Gated ("v2") models: the paper's two latent activations.
GATED_KINDS = ("ae-v2", "layered-gated", "dense-gated")
GATED_ACTIVATIONS = ["leaky_relu:0.1", "arctan"]


def loss_value(model, U, Y, loss, options=TIGHT) -> float:
    """The summed loss of a block, by a fresh forward solve."""
    Yhat, _, _ = predict(model, U, options)
    return float(loss_and_grad(loss, Yhat, Y)[0])


def unrolled_loss_value(model, U, Y, loss, X0, steps: int) -> float:
    """The summed loss after ``steps`` applications of the map ``x ↦ φ(x Aᵀ + U Bᵀ + b_x)``
    (gate included) to the fixed state ``X0``: what jfb (1 step) and phantom-k (k + 1 steps)
    differentiate exactly when ``X0`` is the fixed point."""
    P, phi = model.params, model.phi
    X = X0
    for _ in range(steps):
        X = phi.apply_(X @ P["A"].T + U @ P["B"].T + P["b_x"])
    return float(loss_and_grad(loss, output(model, X, U), Y)[0])


def finite_differences(
    model, U, Y, loss, h=1e-5, options=TIGHT, wrt_input=False, value=None
) -> dict:
    """Central differences ``(L(θ+h e) − L(θ−h e)) / 2h`` for every free parameter entry.

    ``value(model, U, Y)``: the loss to differentiate (default: :func:`loss_value` with
    ``loss`` and ``options``, a fresh equilibrium solve).
    """
    if value is None:

        def value(m, u, y):
            return loss_value(m, u, y, loss, options)

    grads = {}
    names = list(param_names(model.params)) + (["U"] if wrt_input else [])
    for name in names:
        theta = U if name == "U" else model.params[name]
        g = np.zeros_like(theta)
        mask = model.masks.get(name)
        for idx in np.ndindex(theta.shape):
            if mask is not None and mask[idx] == 0:
                continue
            old = theta[idx]
            theta[idx] = old + h
            lp = value(model, U, Y)
            theta[idx] = old - h
            lm = value(model, U, Y)
            theta[idx] = old
            g[idx] = (lp - lm) / (2 * h)
        grads[name] = g
    return grads


def relative_error(g, ref) -> float:
    """‖g − ref‖ / ‖ref‖ (Frobenius); 0 when both vanish."""
    den = np.linalg.norm(ref)
    num = np.linalg.norm(g - ref)
    return float(num / den) if den > 0 else float(num)


def cosine(g: dict, ref: dict) -> float:
    """Cosine between two gradients flattened over all parameters."""
    names = [k for k in (*PARAM_NAMES, GATE) if k in ref]
    a = np.concatenate([g[k].ravel() for k in names])
    b = np.concatenate([ref[k].ravel() for k in names])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def small_problem(kind: str, activation: str, seed: int = 0, loss: str = "mse"):
    """A small float64 model and data for gradient checks.

    ``kind``: ``"dense"`` (‖A‖∞ = 0.6), ``"layered"`` (feedforward 4→5→4→3),
    ``"layered-implicit"`` (the same with an all-to-all block in the middle layer),
    ``"layered-gated"`` (that block's neurons gated: a small "v2" model, solved layer by
    layer), ``"dense-gated"`` (the dense model with neurons 0, 2, 3 gated: scattered gated
    columns, solved as a whole) or ``"ae-v2"`` (``build_model("ae-v2:5,4,2")``, an
    autoencoder: 4 outputs; its latent activation is ``activation`` too).  Gated models get
    random ``β``.
    """
    rng = np.random.default_rng(seed)
    p, q, b = 4, 3, 7
    if kind == "ae-v2":
        q = p
        model = build_model("ae-v2:5,4,2", p, q, activation=activation,
                            latent_activation=activation, kappa=None, dtype="float64")  # fmt: skip
        # A latent block strong enough for the coupling to matter (the initial one is tiny).
        g = np.ix_(model.gate_units, model.gate_units)
        model.params["A"][g] = 0.4 * rng.standard_normal((2, 2)) * model.masks["A"][g]
    elif kind in ("dense", "dense-gated"):
        model = dense_model(p, 6, q, activation=activation, a_norm=0.6, seed=seed, dtype="float64")
        if kind == "dense-gated":
            model = with_gate(model, [0, 2, 3])
    else:
        implicit = (1,) if kind in ("layered-implicit", "layered-gated") else ()
        model = layered_model(
            [p, 5, 4, 4, q],
            activation=activation,
            implicit_layers=implicit,
            implicit_activation=activation,
            implicit_scale=0.5,
            gated_layers=implicit if kind == "layered-gated" else (),
            use_D=True,
            seed=seed,
            dtype="float64",
        )
    # Non-zero biases so that every parameter's gradient is exercised.
    model.params["b_x"] = rng.standard_normal(model.n_hidden) * 0.3
    model.params["b_y"] = rng.standard_normal(q) * 0.3
    if model.gated:
        model.params[GATE] = rng.standard_normal(model.n_hidden) * model.masks[GATE]
    U = rng.standard_normal((b, p))
    if loss == "cross_entropy":
        Y = rng.integers(0, q, size=b)
    elif loss == "bce":
        Y = rng.integers(0, 2, size=(b, q)).astype(np.float64)
    else:
        Y = rng.standard_normal((b, q))
    return model, U, Y


def analytic(model, U, Y, loss, method, k=3, wrt_input=False) -> dict:
    """The package's gradient sums by ``method`` (tight solves)."""
    cfg = StepConfig(loss, TIGHT, BackwardOptions(method, k=k, solver=TIGHT))
    return partition_sums(model, U, Y, cfg, want_input_grad=wrt_input)["grads"]


def unrolled_finite_differences(model, U, Y, loss, steps: int, wrt_input=False) -> dict:
    """Finite differences of :func:`unrolled_loss_value` from the unperturbed fixed point
    (what ``jfb``, ``steps = 1``, and ``phantom-k``, ``steps = k + 1``, must equal)."""
    _, X0, _ = predict(model, U, TIGHT)

    def value(m, u, y):
        return unrolled_loss_value(m, u, y, loss, X0, steps)

    return finite_differences(model, U, Y, loss, wrt_input=wrt_input, value=value)


def run(seed: int = 0, k: int = 3) -> dict:
    """The report printed by ``dimplicit gradcheck``.

    For ``implicit`` and ``neumann``: the max (over models and activations, gated "v2"
    models included) relative error per parameter (``beta``: the gate) against finite
    differences, and ``"max"`` over parameters.  For ``jfb`` and ``phantom-k``: the smallest
    cosine with the finite-difference gradient (dense models), and ``"unrolled"``: the max
    relative error, over all parameters of the gated models, against finite differences of
    the loss after 1 (jfb) or k + 1 (phantom-k) applications of the map to the fixed point.
    """
    report = {
        "implicit": dict.fromkeys([*PARAM_NAMES, GATE, "U"], 0.0),
        "neumann": dict.fromkeys([*PARAM_NAMES, GATE, "U"], 0.0),
        "jfb": {"cosine": 1.0, "unrolled": 0.0},
        f"phantom-{k}": {"cosine": 1.0, "unrolled": 0.0},
    }
    cases = []
    plan = [("dense", a) for a in ACTIVATIONS] + [("layered", a) for a in ACTIVATIONS]
    plan += [("layered-implicit", a) for a in ACTIVATIONS]
    plan += [(kind, a) for kind in GATED_KINDS for a in GATED_ACTIVATIONS]
    for kind, act in plan:
        model, U, Y = small_problem(kind, act, seed)
        fd = finite_differences(model, U, Y, "mse", wrt_input=True)
        cases.append(f"{kind}/{act}")
        for method in ("implicit", "neumann"):
            g = analytic(model, U, Y, "mse", method, wrt_input=True)
            for name in fd:
                err = relative_error(g[name], fd[name])
                report[method][name] = max(report[method][name], err)
        if kind == "dense":  # JFB is a descent direction under contraction (dense models)
            for method, key in (("jfb", "jfb"), (f"phantom-{k}", f"phantom-{k}")):
                c = cosine(analytic(model, U, Y, "mse", method, k=k), fd)
                report[key]["cosine"] = min(report[key]["cosine"], c)
        if kind in GATED_KINDS:
            for method, steps in (("jfb", 1), (f"phantom-{k}", k + 1)):
                ref = unrolled_finite_differences(model, U, Y, "mse", steps, wrt_input=True)
                g = analytic(model, U, Y, "mse", method, k=k, wrt_input=True)
                err = max(relative_error(g[name], ref[name]) for name in ref)
                report[method]["unrolled"] = max(report[method]["unrolled"], err)
    for method in ("implicit", "neumann"):
        report[method]["max"] = max(report[method].values())
    report["cases"] = cases
    report["dtype"] = "float64"
    return report
