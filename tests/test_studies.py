"""Small seeded checks behind the studies in docs/studies.md (the long runs are scripts).

* Over-parameterised convergence (Gao et al. 2022, ``dimplicit.studies``): the Gram matrix
  formula equals ``J Jᵀ`` of a finite-difference Jacobian over the raw weights; one
  gradient-descent step lowers the loss by ``η Rᵀ H R`` to first order; a wide network
  converges linearly on a tiny case, and the same criterion rejects a run whose step size is
  beyond the stability limit ``2 / λ_max(H)``.
* JFB's speed claim (``scripts/jfb_speed.py``): on the study's model the JFB backward pass
  costs no adjoint iterations while the implicit one needs several, and its gradient is a
  descent direction (positive inner product with the exact gradient, and a small step along
  it lowers the loss); the script's time-to-target summary gives the known answer on
  synthetic curves.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script

from dimplicit.forward import predict
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import loss_and_grad
from dimplicit.model import dense_model
from dimplicit.partition import StepConfig, partition_sums
from dimplicit.solvers import SolverOptions
from dimplicit.studies import (
    GAO_TRAINED,
    gao_gradient_descent,
    gao_model,
    gao_scales,
    is_linear,
    linear_rate,
    ntk_gram,
)


def _sphere_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    a = rng.standard_normal(d)
    y = np.sin(3 * U @ (a / np.linalg.norm(a)))
    return U, (y - y.mean()) / y.std()


def _outputs(model, U):
    Yhat, _, _ = predict(model, U, SolverOptions(tol=1e-13, max_iter=2000, check_every=1))
    return Yhat[:, 0]


# ----------------------------------------------------------------- Gao et al. (2022)


def test_gao_model_is_the_papers_scaling():
    m, gamma = 200, 0.2
    model = gao_model(5, m, gamma=gamma, seed=3)
    P = model.params
    # Raw weights are standard normal once the fixed factors are divided out.
    for name, s in gao_scales(m, gamma).items():
        raw = P[name] / s
        tol = 5 / np.sqrt(raw.size)  # five standard errors
        assert abs(raw.std() - 1) < tol and abs(raw.mean()) < tol
    assert model.kappa is None and not P["D"].any() and not P["b_x"].any()
    assert np.linalg.norm(P["A"], 2) < 2.2 * gamma  # ‖(γ/√m) Ã‖₂ ≈ 2γ: an ℓ2 contraction


def test_ntk_gram_equals_finite_difference_jacobian():
    n, d, m, gamma = 4, 3, 6, 0.3
    U, _ = _sphere_data(n, d, seed=1)
    model = gao_model(d, m, gamma=gamma, seed=2)
    s = gao_scales(m, gamma)
    cols, eps = [], 1e-6
    for name in GAO_TRAINED:  # differentiate w.r.t. the raw weights θ = P / s
        P = model.params[name]
        for idx in np.ndindex(P.shape):
            plus, minus = model.copy(), model.copy()
            plus.params[name][idx] += eps * s[name]
            minus.params[name][idx] -= eps * s[name]
            cols.append((_outputs(plus, U) - _outputs(minus, U)) / (2 * eps))
    J = np.stack(cols, axis=1)
    H = ntk_gram(model, U, gamma=gamma)
    np.testing.assert_allclose(H, J @ J.T, rtol=1e-6, atol=1e-9)


def test_gradient_descent_step_matches_first_order_prediction():
    n, d, m, gamma, lr = 6, 3, 12, 0.2, 1e-5
    U, y = _sphere_data(n, d, seed=4)
    model = gao_model(d, m, gamma=gamma, seed=5)
    _, L = gao_gradient_descent(model, U, y, lr=lr, iterations=1, gamma=gamma)
    R = _outputs(model, U) - y
    predicted = -lr * R @ ntk_gram(model, U, gamma=gamma) @ R  # ΔL ≈ −η ‖Jᵀ R‖²
    assert L[1] < L[0]
    assert abs((L[1] - L[0]) - predicted) < 1e-3 * abs(predicted)


def test_wide_network_converges_linearly_and_a_too_large_step_does_not():
    n, d, m, gamma = 8, 4, 64, 0.2
    U, y = _sphere_data(n, d, seed=0)
    model = gao_model(d, m, gamma=gamma, seed=0)
    lam = np.linalg.eigvalsh(ntk_gram(model, U, gamma=gamma))
    assert lam[0] > 0  # the Gram matrix at initialisation is positive definite
    _, L = gao_gradient_descent(model, U, y, lr=1.0 / lam[-1], iterations=300, gamma=gamma)
    fit = linear_rate(L)
    assert fit["r2"] > 0.98 and fit["final_ratio"] < 1e-3, fit
    assert is_linear(fit, max_final_ratio=1e-3)
    # The NTK's prediction (1 − η λ_min)² per step bounds the late rate from below, roughly.
    assert fit["late_rate"] > 0.5 * -2 * np.log10(1 - lam[0] / lam[-1])
    # Well beyond the stability limit 2/λ_max gradient descent diverges (just beyond it, at
    # 2.5/λ_max, it still converges after a "catapult" that lowers λ_max): same criterion.
    with np.errstate(all="ignore"):
        _, Lbad = gao_gradient_descent(model, U, y, lr=4 / lam[-1], iterations=300, gamma=gamma)
    assert not np.isfinite(Lbad[-1])
    bad = linear_rate(Lbad)
    assert not is_linear(bad, max_final_ratio=1e-3), bad


def test_linear_rate_known_answers():
    k = np.arange(200)
    fit = linear_rate(10.0 ** (-0.05 * k))
    assert fit["rate"] == pytest.approx(0.05) and fit["r2"] == pytest.approx(1.0)
    assert fit["fitted_iterations"] == 200  # never below 1e-10 of the start: all kept
    sub = linear_rate(1.0 / (1.0 + k))  # sublinear: 1/k decay
    assert not is_linear(sub)
    plateau = linear_rate(np.r_[10.0 ** (-0.05 * k[:50]), np.full(150, 10.0**-2.5)])
    assert plateau["slowdown"] < 0.1 and not is_linear(plateau)


# ----------------------------------------------------------------- JFB (Fung et al. 2022)


def _study_model_and_data(seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((64, 10))
    y = (U[:, 0] + 0.5 * U[:, 1] ** 2 > 0.5).astype(np.int64) + (U[:, 2] > 1).astype(np.int64)
    # The model of scripts/jfb_speed.py (dense relu, ‖A‖∞ = 0.9), in float64.
    model = dense_model(10, 32, 3, activation="relu", kappa=0.95, a_norm=0.9, seed=seed,
                        dtype="float64")  # fmt: skip
    return model, U, y


def _sums(model, U, y, method):
    so = SolverOptions(tol=1e-10, max_iter=1000)
    config = StepConfig("cross_entropy", so, BackwardOptions(method, solver=so))
    return partition_sums(model, U, y, config)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jfb_backward_is_cheaper_and_a_descent_direction(seed):
    model, U, y = _study_model_and_data(seed)
    exact = _sums(model, U, y, "implicit")
    jfb = _sums(model, U, y, "jfb")
    assert jfb["stats"]["backward_iters_sum"] == 0
    assert exact["stats"]["backward_iters_sum"] >= 5
    assert _sums(model, U, y, "phantom-5")["stats"]["backward_iters_sum"] == 5
    g, gj = exact["grads"], jfb["grads"]
    inner = sum(float((g[k] * gj[k]).sum()) for k in g)
    assert inner > 0  # −g_jfb is a descent direction for the exact loss
    # The output weights get the exact gradient; only A, B, b_x are approximate.
    np.testing.assert_allclose(gj["C"], g["C"], rtol=1e-9, atol=1e-12)
    # A small step along −g_jfb lowers the loss.
    step = model.copy()
    for k in g:
        step.params[k] = step.params[k] - 1e-3 * gj[k]
    loss0 = float(loss_and_grad("cross_entropy", predict(model, U)[0], y)[0])
    loss1 = float(loss_and_grad("cross_entropy", predict(step, U)[0], y)[0])
    assert loss1 < loss0


def _load_script(name):
    with load_script(name) as mod:
        return mod


def test_jfb_speed_summary_known_answer():
    js = _load_script("jfb_speed")
    # Per-epoch seconds and accuracies; the best accuracy of the seed is 0.90, target 0.891.
    spec = {"implicit": (2.0, [0.5, 0.8, 0.9]), "neumann": (1.5, [0.5, 0.8, 0.9]),
            "jfb": (1.0, [0.6, 0.89, 0.895]), "phantom-5": (1.2, [0.4, 0.5, 0.6])}  # fmt: skip
    runs = []
    for method, (sec, accs) in spec.items():
        curve = [{"epoch": i + 1, "train_s": sec * (i + 1), "train_cpu_s": sec * (i + 1) / 2,
                  "val_accuracy": a} for i, a in enumerate(accs)]  # fmt: skip
        runs.append({"method": method, "seed": 0, "curve": curve})
    out = js.summarize(runs, 0.99)
    assert out["implicit"]["time_to_target"] == pytest.approx(6.0)
    assert out["jfb"]["time_to_target"] == pytest.approx(3.0)
    assert out["jfb"]["target_speedup_vs_implicit"] == pytest.approx(2.0)
    assert out["jfb"]["epoch_speedup_vs_implicit"] == pytest.approx(2.0)
    assert out["neumann"]["target_speedup_vs_implicit"] == pytest.approx(2.0 / 1.5)
    assert out["phantom-5"]["reached_target"] == 0
    assert np.isnan(out["phantom-5"]["time_to_target"])
    cpu = js.summarize(runs, 0.99, "train_cpu_s")
    assert cpu["jfb"]["time_to_target"] == pytest.approx(1.5)
