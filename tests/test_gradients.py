"""Gradients: finite differences, agreement between methods, feedforward = backprop, JFB."""

import numpy as np
import pytest

from dimplicit import gradcheck
from dimplicit.activations import Activation
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import LOSSES
from dimplicit.model import PARAM_NAMES, layered_model
from dimplicit.partition import StepConfig, partition_sums

KINDS = ["dense", "layered", "layered-implicit"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", gradcheck.ACTIVATIONS)
@pytest.mark.parametrize("method", ["implicit", "neumann"])
def test_matches_finite_differences(kind, activation, method):
    model, U, Y = gradcheck.small_problem(kind, activation, seed=3)
    fd = gradcheck.finite_differences(model, U, Y, "mse", wrt_input=True)
    g = gradcheck.analytic(model, U, Y, "mse", method, wrt_input=True)
    for name in [*PARAM_NAMES, "U"]:
        assert np.linalg.norm(fd[name]) > 0 or name in model.masks
        assert gradcheck.relative_error(g[name], fd[name]) < 1e-6, name


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["dense", "layered-implicit"])
def test_every_loss_matches_finite_differences(loss, kind):
    model, U, Y = gradcheck.small_problem(kind, "tanh", seed=4, loss=loss)
    fd = gradcheck.finite_differences(model, U, Y, loss)
    g = gradcheck.analytic(model, U, Y, loss, "implicit")
    for name in PARAM_NAMES:
        assert gradcheck.relative_error(g[name], fd[name]) < 1e-6, name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "arctan"])
def test_implicit_and_neumann_agree(kind, activation):
    model, U, Y = gradcheck.small_problem(kind, activation, seed=5)
    a = gradcheck.analytic(model, U, Y, "mse", "implicit")
    b = gradcheck.analytic(model, U, Y, "mse", "neumann")
    for name in PARAM_NAMES:
        assert gradcheck.relative_error(a[name], b[name]) < 1e-8, name


@pytest.mark.parametrize("activation", ["relu", "leaky_relu:0.1", "tanh", "sigmoid"])
@pytest.mark.parametrize("method", ["implicit", "neumann"])
def test_feedforward_equals_layer_by_layer_backprop(activation, method):
    """A strictly triangular A is an ordinary MLP: compare with backprop written out here."""
    widths = [4, 5, 3, 6, 2]
    model = layered_model(widths, activation=activation, use_D=False, seed=7, dtype="float64")
    rng = np.random.default_rng(0)
    model.params["b_x"] = rng.standard_normal(model.n_hidden) * 0.2
    U = rng.standard_normal((9, 4))
    Y = rng.standard_normal((9, 2))
    got = gradcheck.analytic(model, U, Y, "mse", method)

    # Independent MLP: slice the layer weights out of A/B/C and backpropagate by hand.
    P = model.params
    hidden = widths[1:-1]
    offs = np.concatenate([[0], np.cumsum(hidden)])
    sl = [slice(offs[i], offs[i + 1]) for i in range(len(hidden))]
    Ws = [P["B"][sl[0]]] + [P["A"][sl[i + 1], sl[i]] for i in range(len(hidden) - 1)]
    bs = [P["b_x"][s] for s in sl]
    act = Activation(activation, 1)
    hs, h = [U], U
    for W, b in zip(Ws, bs, strict=True):
        h = act.apply_(h @ W.T + b)
        hs.append(h)
    Wout = P["C"][:, sl[-1]]
    Yhat = hs[-1] @ Wout.T + P["b_y"]
    gY = 2 * (Yhat - Y) / Y.shape[1]
    gWout = gY.T @ hs[-1]
    delta = gY @ Wout
    gWs, gbs = [None] * len(Ws), [None] * len(Ws)
    for i in reversed(range(len(Ws))):
        dz = delta * act.derivative(hs[i + 1])
        gWs[i] = dz.T @ hs[i]
        gbs[i] = dz.sum(0)
        delta = dz @ Ws[i]
    np.testing.assert_allclose(got["B"][sl[0]], gWs[0], rtol=1e-12, atol=1e-12)
    for i in range(len(hidden) - 1):
        np.testing.assert_allclose(got["A"][sl[i + 1], sl[i]], gWs[i + 1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["b_x"], np.concatenate(gbs), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["C"][:, sl[-1]], gWout, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["b_y"], gY.sum(0), rtol=1e-12, atol=1e-12)
    # Masked (absent) connections get exactly zero gradient.
    assert np.all(got["A"][model.masks["A"] == 0] == 0)
    assert np.all(got["D"] == 0)


@pytest.mark.parametrize("activation", gradcheck.ACTIVATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jfb_is_a_descent_direction_on_contractive_models(activation, seed):
    model, U, Y = gradcheck.small_problem("dense", activation, seed=seed)
    true = gradcheck.analytic(model, U, Y, "mse", "implicit")
    for method in ("jfb", "phantom-2"):
        g = gradcheck.analytic(model, U, Y, "mse", method)
        assert gradcheck.cosine(g, true) > 0, method


def test_phantom_approaches_the_exact_gradient():
    model, U, Y = gradcheck.small_problem("dense", "tanh", seed=1)
    true = gradcheck.analytic(model, U, Y, "mse", "implicit")
    errs = [
        gradcheck.relative_error(
            gradcheck.analytic(model, U, Y, "mse", "phantom", k=k)["A"], true["A"]
        )
        for k in (0, 2, 8, 30)
    ]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6


def test_method_names():
    assert BackwardOptions("phantom-4").k == 4
    assert BackwardOptions("neumann-2").method == "phantom"
    with pytest.raises(ValueError, match="gradient method"):
        BackwardOptions("autograd")


def test_partition_sums_are_additive_over_row_splits():
    """Sums over a block equal the sum over its halves: the basis of distributed training."""
    model, U, Y = gradcheck.small_problem("dense", "relu", seed=2)
    # Solved to round-off: at the default tol the halves may stop an iteration apart from the
    # whole block, and the sums then agree only to about tol.
    cfg = StepConfig("mse", gradcheck.TIGHT, BackwardOptions(solver=gradcheck.TIGHT))
    whole = partition_sums(model, U, Y, cfg)
    a = partition_sums(model, U[:3], Y[:3], cfg)
    b = partition_sums(model, U[3:], Y[3:], cfg)
    assert whole["count"] == a["count"] + b["count"]
    np.testing.assert_allclose(whole["loss"], a["loss"] + b["loss"], rtol=1e-6)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(
            whole["grads"][k], a["grads"][k] + b["grads"][k], rtol=1e-5, atol=1e-9
        )


def test_gradcheck_cli_prints_one_json(capsys):
    import json

    from dimplicit.cli import main

    assert main(["gradcheck"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["implicit"]["max"] < 1e-6 and out["neumann"]["max"] < 1e-6
    assert out["jfb"]["cosine"] > 0 and out["phantom-3"]["cosine"] > 0
    # Gated ("v2") models are covered: β's error is reported, and jfb / phantom-k are exact
    # gradients of the unrolled map.
    assert {"ae-v2/arctan", "layered-gated/arctan", "dense-gated/leaky_relu:0.1"} <= set(
        out["cases"]
    )
    assert 0 < out["implicit"]["beta"] < 1e-6 and 0 < out["neumann"]["beta"] < 1e-6
    assert 0 < out["jfb"]["unrolled"] < 1e-6 and 0 < out["phantom-3"]["unrolled"] < 1e-6
