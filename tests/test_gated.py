"""Gated "v2" autoencoders (issue #15): the gate σ(β) in the forward pass, its exact
gradients, parameter counts, save/load, training, checkpoints and both executors."""

import numpy as np
import pytest

from dimplicit import gradcheck
from dimplicit.activations import Activation
from dimplicit.data.ingest import ingest_csv
from dimplicit.forward import equilibrium, predict
from dimplicit.gradients import BackwardOptions
from dimplicit.model import (
    GATE,
    PARAM_NAMES,
    ImplicitModel,
    build_model,
    check_model_header,
    dense_model,
    load_npz,
    weights_sha256,
    with_gate,
)
from dimplicit.optim import OptimizerConfig, apply_update, init_state
from dimplicit.partition import StepConfig, partition_sums
from dimplicit.solvers import SolverOptions

pytestmark = pytest.mark.timeout(180)

GATED_ACTS = ["leaky_relu:0.1", "arctan", "tanh"]
SIZES = ["5,32,8", "5,32,16", "5,64,8", "5,64,16", "7,64,8", "7,64,16"]
# Trainable parameters (weights + biases + gates) of Szekeres & Izsák (2024), from the
# protocol's table: HTRU2 has 8 features, NSL-KDD 117 (after one-hot encoding).
PAPER_COUNTS = {
    8: {
        "5,32,8": (1904, 1960, 1968), "5,32,16": (2168, 2408, 2424),
        "5,64,8": (5840, 5896, 5904), "5,64,16": (6360, 6600, 6616),
        "7,64,8": (6640, 6696, 6704), "7,64,16": (6904, 7144, 7160),
    },
    117: {
        "5,32,8": (8989, 9045, 9053), "5,32,16": (9253, 9493, 9509),
        "5,64,8": (19901, 19957, 19965), "5,64,16": (20421, 20661, 20677),
        "7,64,8": (20701, 20757, 20765), "7,64,16": (20965, 21205, 21221),
    },
}  # fmt: skip


def _v2(arch="ae-v2:5,32,16", p=8, seed=0, latent="arctan", dtype="float64"):
    m = build_model(arch, p, p, seed=seed, dtype=dtype, latent_activation=latent)
    rng = np.random.default_rng(seed + 100)
    m.params[GATE] = (rng.standard_normal(m.n_hidden) * m.masks[GATE]).astype(dtype)
    m.params["b_x"] = (rng.standard_normal(m.n_hidden) * 0.3).astype(dtype)
    return m


# ----------------------------------------------------------------------------- the model


def test_v2_is_v1_plus_a_gate_on_the_latent_layer():
    v1 = build_model("ae-v1:5,32,16", 8, 8, seed=3)
    v2 = build_model("ae-v2:5,32,16", 8, 8, seed=3)
    assert v2.gated and not v1.gated
    for k in PARAM_NAMES:  # same seed: the same weights; β starts at 0 (gate 1/2)
        np.testing.assert_array_equal(v2.params[k], v1.params[k])
    latent = np.arange(32 + 16, 32 + 16 + 16)  # widths 8-32-16-16-16-32-8: middle layer
    np.testing.assert_array_equal(v2.gate_units, latent)
    np.testing.assert_array_equal(v2.params[GATE], 0)
    assert v2.masks["A"][np.ix_(latent, latent)].sum() == 16 * 15
    assert v2.activation.to_list(v2.n_hidden)[latent[0]] == "arctan"
    v2l = build_model("ae-v2:5,32,16", 8, 8, activation="leaky_relu:0.1",
                      latent_activation="leaky_relu:0.1")  # fmt: skip
    assert set(v2l.activation.to_list(v2l.n_hidden)) == {"leaky_relu:0.1"}
    kdd = build_model("ae-v2:5,32,16", 117, 117, activation="arctan", latent_activation="arctan")
    assert set(kdd.activation.to_list(kdd.n_hidden)) == {"arctan"}
    with pytest.raises(ValueError, match="bad architecture"):
        build_model("ae-v2:5,32", 8, 8)


@pytest.mark.parametrize("p", [8, 117])
@pytest.mark.parametrize("size", SIZES)
def test_trainable_counts_match_the_paper(p, size):
    """Counted from the masks (structural zeros excluded), never from a formula."""
    got = tuple(build_model(f"ae-v{v}:{size}", p, p).n_trainable for v in range(3))
    assert got == PAPER_COUNTS[p][size]


def test_gated_forward_is_a_rescaled_v1_for_a_homogeneous_activation():
    """With leaky ReLU, σ(β)φ(z) = φ(σ(β)z): the v2 model equals a v1 model whose latent
    rows of A, B and b_x are scaled by the gate, an independent check of the gated solve."""
    v2 = _v2(latent="leaky_relu:0.1")
    s = np.ones(v2.n_hidden)
    s[v2.gate_units] = 1 / (1 + np.exp(-v2.params[GATE][v2.gate_units]))
    P = {k: v.copy() for k, v in v2.params.items() if k != GATE}
    for k in ("A", "B"):
        P[k] = P[k] * s[:, None]
    P["b_x"] = P["b_x"] * s
    masks = {k: v for k, v in v2.masks.items() if k != GATE}
    v1 = ImplicitModel(P, v2.activation, masks, v2.kappa, v2.meta)
    U = np.random.default_rng(0).standard_normal((9, 8))
    tight = SolverOptions(tol=1e-13, max_iter=500)
    for layerwise in (True, False):
        opts = SolverOptions(tol=1e-13, max_iter=500, layerwise=layerwise)
        np.testing.assert_allclose(predict(v2, U, opts)[0], predict(v1, U, tight)[0],
                                   rtol=1e-10, atol=1e-12)  # fmt: skip


def test_the_fixed_point_applies_the_gate():
    v2 = _v2()
    U = np.random.default_rng(1).standard_normal((6, 8))
    X, st = equilibrium(v2, U, SolverOptions(tol=1e-13, max_iter=500))
    assert st.converged
    Z = X @ v2.params["A"].T + U @ v2.params["B"].T + v2.params["b_x"]
    want = Activation(v2.activation.spec, v2.n_hidden).apply_(Z.copy())
    g = v2.gate_units
    want[:, g] *= 1 / (1 + np.exp(-v2.params[GATE][g]))
    np.testing.assert_allclose(X, want, atol=1e-12)


def test_gate_free_models_are_untouched():
    v1 = build_model("ae-v1:5,32,16", 8, 8, seed=0)
    assert v1.phi is v1.activation and v1.gate_units.size == 0
    assert GATE not in init_state(OptimizerConfig(), v1.params) and "m/beta" not in init_state(
        OptimizerConfig(), v1.params
    )


def test_save_load_round_trip(tmp_path):
    v2 = _v2(dtype="float32")
    back = ImplicitModel.load(v2.save(tmp_path / "v2.npz"))
    assert back.gated and weights_sha256(back.params) == weights_sha256(v2.params)
    np.testing.assert_array_equal(back.masks[GATE], v2.masks[GATE])
    U = np.random.default_rng(2).standard_normal((5, 8)).astype("float32")
    np.testing.assert_array_equal(predict(back, U)[0], predict(v2, U)[0])
    import json

    header = json.loads(str(load_npz(tmp_path / "v2.npz")["header"]))
    check_model_header(header)
    assert header["version"] == 2
    # A model without a gate is written exactly as before: version 1, the six weights.
    v1 = build_model("ae-v1:5,32,16", 8, 8)
    arrays = load_npz(v1.save(tmp_path / "v1.npz"))
    assert json.loads(str(arrays["header"]))["version"] == 1
    assert not any(GATE in k for k in arrays)
    # The hash of a gated model covers β.
    other = v2.copy()
    other.params[GATE] = other.params[GATE] + other.masks[GATE]
    assert weights_sha256(other.params) != weights_sha256(v2.params)


def test_malformed_gates_are_refused():
    m = dense_model(3, 4, 2, seed=0)
    with pytest.raises(ValueError, match="beta"):
        ImplicitModel({**m.params, GATE: np.zeros(3)}, m.activation, m.masks)
    with pytest.raises(ValueError, match="without the gate"):
        ImplicitModel(m.params, m.activation, {GATE: np.ones(4)})
    with pytest.raises(ValueError, match="units"):
        with_gate(m, [4])
    with pytest.raises(ValueError, match="unknown model params"):
        ImplicitModel({**m.params, "gamma": np.zeros(4)}, m.activation)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", gradcheck.GATED_KINDS)
@pytest.mark.parametrize("activation", GATED_ACTS)
@pytest.mark.parametrize("method", ["implicit", "neumann"])
def test_gated_gradients_match_finite_differences(kind, activation, method):
    model, U, Y = gradcheck.small_problem(kind, activation, seed=3)
    fd = gradcheck.finite_differences(model, U, Y, "mse", wrt_input=True)
    g = gradcheck.analytic(model, U, Y, "mse", method, wrt_input=True)
    assert set(fd) == {*PARAM_NAMES, GATE, "U"}
    assert np.linalg.norm(fd[GATE]) > 1e-3
    for name in fd:
        assert gradcheck.relative_error(g[name], fd[name]) < 1e-6, name
    assert np.all(g[GATE][model.masks[GATE] == 0] == 0)


@pytest.mark.parametrize("kind", gradcheck.GATED_KINDS)
@pytest.mark.parametrize("activation", ["leaky_relu:0.1", "arctan"])
@pytest.mark.parametrize("method,steps", [("jfb", 1), ("phantom-2", 3), ("phantom-5", 6)])
def test_jfb_and_phantom_are_exact_gradients_of_the_unrolled_map(kind, activation, method,
                                                                   steps):  # fmt: skip
    """jfb / phantom-k equal the gradient of the loss after 1 / k + 1 map applications to
    the detached fixed point, β included: an exact finite-difference check for them too."""
    model, U, Y = gradcheck.small_problem(kind, activation, seed=5)
    ref = gradcheck.unrolled_finite_differences(model, U, Y, "mse", steps, wrt_input=True)
    g = gradcheck.analytic(model, U, Y, "mse", method, wrt_input=True)
    for name in ref:
        assert gradcheck.relative_error(g[name], ref[name]) < 1e-6, name


@pytest.mark.parametrize("method", ["implicit", "neumann", "phantom-3"])
def test_layer_sweep_and_whole_map_give_the_same_gate_gradient(method):
    """ae-v2 (layer-by-layer solves and adjoint) against the same model solved as a whole."""
    model = _v2(seed=1)
    rng = np.random.default_rng(0)
    U = rng.standard_normal((11, 8))
    out = []
    for layerwise in (True, False):
        so = SolverOptions(tol=1e-13, max_iter=1000, layerwise=layerwise)
        cfg = StepConfig("mse", so, BackwardOptions(method, solver=so))
        out.append(partition_sums(model, U, U, cfg)["grads"])
    for k in (*PARAM_NAMES, GATE):
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert np.abs(out[0][GATE]).max() > 0


def test_weight_decay_leaves_the_gate_alone():
    """Weight decay acts on the matrices only; β, like the biases, is not decayed."""
    m = _v2(dtype="float64")
    zero = {k: np.zeros_like(v) for k, v in m.params.items()}
    cfg = OptimizerConfig("sgd", lr=0.1, momentum=0.0, weight_decay=0.5)
    new, _ = apply_update(cfg, m.params, zero, init_state(cfg, m.params), 0, m.masks)
    np.testing.assert_array_equal(new[GATE], m.params[GATE])
    np.testing.assert_array_equal(new["b_x"], m.params["b_x"])
    assert not np.array_equal(new["B"], m.params["B"])
    grads = dict(zero, **{GATE: np.ones(m.n_hidden)})
    new, _ = apply_update(cfg, m.params, grads, init_state(cfg, m.params), 0, m.masks)
    np.testing.assert_allclose(new[GATE], (m.params[GATE] - 0.1) * m.masks[GATE])


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def htru2_store(slice_data, tmp_path_factory):
    """The HTRU2 slice shipped in tests/data, ingested (8 features, train/val/test)."""
    out = tmp_path_factory.mktemp("gated") / "htru2.zarr"
    ingest_csv(slice_data / "htru2" / "HTRU_2_slice.csv", out, fmt="htru2",
               splits=(0.8, 0.1, 0.1), stats_normal_only=True)  # fmt: skip
    return out


def _trainer(store, **kw):
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer

    model = build_model("ae-v2:5,32,16", 8, 8, seed=0, activation="leaky_relu:0.1",
                        latent_activation="leaky_relu:0.1")  # fmt: skip
    opts = dict(optimizer=OptimizerConfig(lr=1e-2), epochs=1, batch_size=256, block_rows=128,
                seed=0)  # fmt: skip
    opts.update(kw)
    return Trainer(model, DataSpec(str(store), "autoencode", normal_only=True), **opts)


def test_v2_trains_the_loss_falls_and_beta_moves(htru2_store):
    """(5;32;16)-v2 on the HTRU2 slice, a few hundred Adam steps."""
    t = _trainer(htru2_store, executor="local", epochs=12, batch_size=128, block_rows=128)
    t.fit()
    losses = [r["loss"] for r in t.history_]
    assert len(losses) >= 250
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    m = t.model_
    beta = m.params[GATE][m.gate_units]
    assert np.abs(beta).max() > 0.05  # started at 0
    assert np.all(m.params[GATE][m.masks[GATE] == 0] == 0)


def test_local_and_dask_executors_agree_and_resume_carries_beta(htru2_store, tmp_path):
    from distributed import Client, LocalCluster

    from dimplicit.distributed.checkpoint import list_checkpoints, load_checkpoint

    local = _trainer(htru2_store, executor="local", epochs=2).fit()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        dask_ = _trainer(htru2_store, executor="dask", epochs=2).fit(client)
    assert dask_.summary_["weights_sha256"] == local.summary_["weights_sha256"]
    ck = tmp_path / "ck"
    _trainer(htru2_store, executor="local", epochs=2, checkpoint_dir=ck, checkpoint_every=3,
             max_steps=7).fit()  # fmt: skip
    saved = load_checkpoint(list_checkpoints(ck)[-1])
    assert GATE in saved["params"] and "m/beta" in saved["state"]
    assert np.abs(saved["params"][GATE]).max() > 0
    resumed = _trainer(htru2_store, executor="local", epochs=2, checkpoint_dir=ck,
                       resume=True).fit()  # fmt: skip
    assert resumed.summary_["weights_sha256"] == local.summary_["weights_sha256"]


def test_a_v1_checkpoint_does_not_resume_a_v2_run(htru2_store, tmp_path):
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer

    ck = tmp_path / "ck"
    v1 = build_model("ae-v1:5,32,16", 8, 8, seed=0)
    spec = DataSpec(str(htru2_store), "autoencode", normal_only=True)
    Trainer(v1, spec, epochs=1, batch_size=256, checkpoint_dir=ck, checkpoint_every=2,
            max_steps=2, executor="local").fit()  # fmt: skip
    with pytest.raises(ValueError, match="cannot be resumed"):
        _trainer(htru2_store, executor="local", epochs=1, checkpoint_dir=ck, resume=True).fit()


def test_autoencoder_estimator_takes_ae_v2(tmp_path):
    from dimplicit import ImplicitAutoencoder

    X = np.random.default_rng(0).standard_normal((300, 6))
    ae = ImplicitAutoencoder(arch="ae-v2:3,8,4", epochs=2, batch_size=64, random_state=0)
    ae.fit(X)
    assert ae.model_.gated and ae.model_.gate_units.size == 4
    assert np.abs(ae.model_.params[GATE]).max() > 0
    ae.save(tmp_path / "ae.npz")
    back = ImplicitAutoencoder.load(tmp_path / "ae.npz")
    np.testing.assert_allclose(back.score_samples(X), ae.score_samples(X))
