"""Optimizers, schedules, projection after the step, and the in-process fit."""

import math

import numpy as np
import pytest

from dimplicit.fit import fit
from dimplicit.forward import predict
from dimplicit.model import PARAM_NAMES, build_model, dense_model
from dimplicit.optim import OptimizerConfig, apply_update, init_state, learning_rate
from dimplicit.partition import StepConfig
from dimplicit.projection import inf_norm


def params_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    m = dense_model(3, 4, 2, seed=seed, dtype="float64")
    g = {k: rng.standard_normal(v.shape) for k, v in m.params.items()}
    return m, g


def test_sgd_momentum_and_nesterov_follow_their_formulas():
    m, g = params_and_grads()
    for nesterov in (False, True):
        cfg = OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=nesterov)
        s = init_state(cfg, m.params)
        p1, s1 = apply_update(cfg, m.params, g, s, 0)
        p2, _ = apply_update(cfg, p1, g, s1, 1)
        buf = 0.9 * g["B"] + g["B"]  # momentum buffer after two steps
        step2 = g["B"] + 0.9 * buf if nesterov else buf
        step1 = g["B"] + 0.9 * g["B"] if nesterov else g["B"]
        np.testing.assert_allclose(p2["B"], m.params["B"] - 0.1 * step1 - 0.1 * step2)


def test_adam_first_step_moves_each_weight_by_lr():
    m, g = params_and_grads()
    cfg = OptimizerConfig("adam", lr=0.01)
    p, s = apply_update(cfg, m.params, g, init_state(cfg, m.params), 0)
    np.testing.assert_allclose(p["C"], m.params["C"] - 0.01 * np.sign(g["C"]), rtol=1e-6)
    assert set(s) == {f"{a}/{k}" for a in "mv" for k in PARAM_NAMES}


def test_weight_decay_only_on_matrices():
    m, g = params_and_grads()
    zero = {k: np.zeros_like(v) for k, v in g.items()}
    cfg = OptimizerConfig("sgd", lr=0.1, momentum=0.0, weight_decay=0.5)
    m.params["b_x"][:] = 1.0
    p, _ = apply_update(cfg, m.params, zero, init_state(cfg, m.params), 0)
    np.testing.assert_allclose(p["B"], m.params["B"] * (1 - 0.05))
    np.testing.assert_array_equal(p["b_x"], m.params["b_x"])


def test_cosine_schedule_and_warmup():
    cfg = OptimizerConfig(lr=1.0, schedule="cosine", total_steps=110, warmup_steps=10)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.5)
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(learning_rate(OptimizerConfig(lr=0.3), 1000), 0.3)


def test_update_projects_A_and_keeps_masks():
    m, g = params_and_grads()
    g["A"] *= 100  # a huge step that leaves the ball
    m.masks["D"] = np.zeros_like(m.params["D"])
    cfg = OptimizerConfig("sgd", lr=1.0, momentum=0.0)
    p, _ = apply_update(cfg, m.params, g, init_state(cfg, m.params), 0, m.masks, kappa=0.95)
    assert inf_norm(p["A"]) <= 0.95 * (1 + 1e-12)
    assert np.all(p["D"] == 0)


@pytest.mark.parametrize("kappa", [0.5, None])
def test_fit_keeps_the_implicit_latent_block_of_v1_in_the_ball(kappa):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((512, 6)) * [3, 1, 1, 0.3, 2, 1]
    m = build_model("ae-v1:3,8,4", 6, 6, kappa=kappa, seed=0, dtype="float64")
    cfg = OptimizerConfig("adam", lr=0.05)
    trained, hist = fit(m, U, U, optimizer=cfg, epochs=4, batch_size=64)
    (l0, l1) = [g for g in m.structure.groups if m.structure.has_self_block(g[0])][0]
    latent = inf_norm(trained.params["A"][l0:l1, l0:l1])
    if kappa is None:
        assert latent > 0.5  # the same training leaves the ball when nothing keeps it inside
    else:
        assert latent <= kappa * (1 + 1e-12)
        assert all(h["forward_unconverged"] == 0 for h in hist)
    # The feedforward blocks are not constrained: they grow beyond κ in ℓ1 row norm.
    assert inf_norm(trained.params["A"]) > 1


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        OptimizerConfig("rmsprop")
    with pytest.raises(ValueError, match="total_steps"):
        OptimizerConfig(schedule="cosine")


@pytest.mark.parametrize("method", ["implicit", "neumann", "jfb", "phantom-3"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fit_learns_a_teacher(method, optimizer):
    """A small dense model fitted to a random implicit teacher lowers the loss ≥ 20×."""
    rng = np.random.default_rng(0)
    teacher = dense_model(6, 24, 2, activation="tanh", a_norm=0.8, seed=11, dtype="float64")
    U = rng.standard_normal((1500, 6))
    Y = predict(teacher, U)[0]
    student = dense_model(6, 24, 2, activation="tanh", seed=1, dtype="float64")
    lr = 3e-3 if optimizer == "adam" else 0.05
    opt = OptimizerConfig(optimizer, lr=lr, momentum=0.9)
    from dimplicit.gradients import BackwardOptions

    cfg = StepConfig("mse", backward=BackwardOptions(method))
    trained, hist = fit(student, U, Y, config=cfg, optimizer=opt, epochs=25, batch_size=100)
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert last < first / 20, (first, last)
    assert inf_norm(trained.params["A"]) <= 0.95 * (1 + 1e-6)
    assert all(h["forward_unconverged"] == 0 for h in hist)


def test_fit_classification_with_cross_entropy():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((900, 2))
    y = (U[:, 0] * U[:, 1] > 0).astype(np.int64)  # XOR-like: needs the hidden layer
    model = dense_model(2, 32, 2, activation="relu", seed=0, dtype="float64")
    trained, _ = fit(
        model,
        U,
        y,
        config=StepConfig("cross_entropy"),
        optimizer=OptimizerConfig("adam", lr=1e-2),
        epochs=60,
        batch_size=90,
    )
    pred = predict(trained, U)[0].argmax(1)
    assert (pred == y).mean() > 0.9


def test_fit_rejects_bad_input():
    m = dense_model(3, 4, 1)
    with pytest.raises(ValueError, match="U must be"):
        fit(m, np.zeros((5, 2)), np.zeros((5, 1)))
    bad = np.zeros((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(m, bad, np.zeros((5, 1)))


class _GenericXp:
    """NumPy seen as an unknown array module: the optimizers take their non-kernel path."""

    def __getattr__(self, name):
        return getattr(np, name)


def _optimizer_inputs(dtype, shape=(37, 29), seed=3):
    """Parameter, gradient and moments with zeros, signed zeros, tiny and huge entries."""
    rng = np.random.default_rng(seed)
    p, g, m, v = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    g.flat[:6] = [0.0, -0.0, 1e-30, -1e30, np.finfo(dtype).tiny, 3.0]
    m.flat[:2] = [-0.0, 0.0]
    return p, g, m, np.abs(v)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # NumPy, on ±1e30²
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", [0, 7, 1000])
def test_adam_kernel_is_bitwise_the_numpy_update(dtype, step):
    from dimplicit.optim import _adam

    cfg = OptimizerConfig("adam", lr=3e-3, betas=(0.8, 0.995), eps=1e-7)
    p, g, m, v = _optimizer_inputs(dtype)
    copies = [a.copy() for a in (p, g, m, v)]
    fused = _adam(np, p, g, m, v, cfg, 2e-3, step)
    generic = _adam(_GenericXp(), p, g, m, v, cfg, 2e-3, step)
    for a, b in zip(fused, generic, strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(np.signbit(a), np.signbit(b))
    for a, c in zip((p, g, m, v), copies, strict=True):
        assert np.array_equal(a, c)  # inputs untouched


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # NumPy, on ±1e30²
def test_adam_kernel_handles_non_contiguous_and_non_finite_inputs():
    from dimplicit.optim import _adam

    cfg = OptimizerConfig("adam")
    p, g, m, v = _optimizer_inputs(np.float32, shape=(20, 30))
    g[1, 1], g[2, 2], v[3, 3] = np.nan, np.inf, np.inf
    views = [a[::2, 1::3] for a in (p, g, m, v)]  # strided views
    fused = _adam(np, *views, cfg, 1e-3, 4)
    generic = _adam(_GenericXp(), *views, cfg, 1e-3, 4)
    for a, b in zip(fused, generic, strict=True):
        assert a.shape == views[0].shape
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # NumPy, on ±1e30²
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_kernel_is_bitwise_the_numpy_update(dtype, nesterov):
    from dimplicit.optim import _momentum

    cfg = OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=nesterov)
    p, g, m, _ = _optimizer_inputs(dtype)
    fused = _momentum(np, p, g, m, cfg, 0.05)
    generic = _momentum(_GenericXp(), p, g, m, cfg, 0.05)
    for a, b in zip(fused, generic, strict=True):
        assert a.dtype == dtype and np.array_equal(a, b) and a is not p
        assert np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # NumPy, on ±1e30²
def test_mixed_dtypes_take_numpys_promotion():
    """A float64 gradient on a float32 parameter: NumPy's promotion, not the kernel."""
    from dimplicit.optim import _adam

    cfg = OptimizerConfig("adam")
    p, g, m, v = _optimizer_inputs(np.float32)
    out = _adam(np, p, g.astype(np.float64), m, v, cfg, 1e-3, 0)
    ref = _adam(_GenericXp(), p, g.astype(np.float64), m, v, cfg, 1e-3, 0)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
