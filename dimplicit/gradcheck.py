"""Check analytic gradients against central finite differences (float64).

:func:`finite_differences` perturbs every *free* weight (masked entries stay zero) and solves
the equilibrium again from scratch, so it shares nothing with the adjoint code it checks.
:func:`run` is what ``dimplicit gradcheck`` prints.
"""

from __future__ import annotations

import numpy as np

from dimplicit.activations import NAMES
from dimplicit.forward import predict
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import loss_and_grad
from dimplicit.model import PARAM_NAMES, dense_model, layered_model
from dimplicit.partition import StepConfig, partition_sums
from dimplicit.solvers import SolverOptions

# Tight solves: the finite-difference quotient divides the solve error by the step h.
TIGHT = SolverOptions(tol=1e-14, max_iter=2000, check_every=1, on_failure="raise")
ACTIVATIONS = ["relu", "leaky_relu:0.1", "tanh", "arctan", "sigmoid", "identity"]
assert {a.split(":")[0] for a in ACTIVATIONS} == set(NAMES)


def loss_value(model, U, Y, loss, options=TIGHT) -> float:
    """The summed loss of a block, by a fresh forward solve."""
    Yhat, _, _ = predict(model, U, options)
    return float(loss_and_grad(loss, Yhat, Y)[0])


def finite_differences(model, U, Y, loss, h=1e-5, options=TIGHT, wrt_input=False) -> dict:
    """Central differences ``(L(θ+h e) − L(θ−h e)) / 2h`` for every free parameter entry."""
    grads = {}
    names = list(PARAM_NAMES) + (["U"] if wrt_input else [])
    for name in names:
        theta = U if name == "U" else model.params[name]
        g = np.zeros_like(theta)
        mask = model.masks.get(name)
        for idx in np.ndindex(theta.shape):
            if mask is not None and mask[idx] == 0:
                continue
            old = theta[idx]
            theta[idx] = old + h
            lp = loss_value(model, U, Y, loss, options)
            theta[idx] = old - h
            lm = loss_value(model, U, Y, loss, options)
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
    a = np.concatenate([g[k].ravel() for k in PARAM_NAMES])
    b = np.concatenate([ref[k].ravel() for k in PARAM_NAMES])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def small_problem(kind: str, activation: str, seed: int = 0, loss: str = "mse"):
    """A small float64 model and data for gradient checks.

    ``kind``: ``"dense"`` (‖A‖∞ = 0.6), ``"layered"`` (feedforward 4→5→4→3) or
    ``"layered-implicit"`` (the same with an all-to-all block in the middle layer).
    """
    rng = np.random.default_rng(seed)
    p, q, b = 4, 3, 7
    if kind == "dense":
        model = dense_model(p, 6, q, activation=activation, a_norm=0.6, seed=seed, dtype="float64")
    else:
        implicit = (1,) if kind == "layered-implicit" else ()
        model = layered_model(
            [p, 5, 4, 4, q],
            activation=activation,
            implicit_layers=implicit,
            implicit_activation=activation,
            implicit_scale=0.5,
            use_D=True,
            seed=seed,
            dtype="float64",
        )
    # Non-zero biases so that every parameter's gradient is exercised.
    model.params["b_x"] = rng.standard_normal(model.n_hidden) * 0.3
    model.params["b_y"] = rng.standard_normal(q) * 0.3
    U = rng.standard_normal((b, p))
    if loss == "cross_entropy":
        Y = rng.integers(0, q, size=b)
    elif loss == "bce":
        Y = rng.integers(0, 2, size=(b, q)).astype(np.float64)
    else:
        Y = rng.standard_normal((b, q))
    return model, U, Y


def analytic(model, U, Y, loss, method, k=3, wrt_input=False) -> dict:
    cfg = StepConfig(loss, TIGHT, BackwardOptions(method, k=k, solver=TIGHT))
    return partition_sums(model, U, Y, cfg, want_input_grad=wrt_input)["grads"]


def run(seed: int = 0, k: int = 3) -> dict:
    """The report printed by ``dimplicit gradcheck``.

    For ``implicit`` and ``neumann``: the max (over models and activations) relative error per
    parameter against finite differences, and ``"max"`` over parameters.  For ``jfb`` and
    ``phantom-k``: the smallest cosine with the finite-difference gradient.
    """
    report = {
        "implicit": dict.fromkeys([*PARAM_NAMES, "U"], 0.0),
        "neumann": dict.fromkeys([*PARAM_NAMES, "U"], 0.0),
        "jfb": {"cosine": 1.0},
        f"phantom-{k}": {"cosine": 1.0},
    }
    cases = []
    for kind in ("dense", "layered", "layered-implicit"):
        for act in ACTIVATIONS:
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
    for method in ("implicit", "neumann"):
        report[method]["max"] = max(report[method].values())
    report["cases"] = cases
    report["dtype"] = "float64"
    return report
