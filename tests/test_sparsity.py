"""Feature selection by column-sparse [B; D]: the group-lasso prox, its place in the update, the
estimators' ``selected_features_``, ``train --group-lasso`` and support recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_trainer

from dimplicit import ImplicitAutoencoder, ImplicitRegressor
from dimplicit.cli import main
from dimplicit.model import ImplicitModel, dense_model
from dimplicit.optim import OptimizerConfig, apply_update, init_state
from dimplicit.sparsity import (
    column_norms,
    column_sparse_problem,
    feature_report,
    group_lasso_prox,
    selected_features,
    support_recovery,
)

RNG = np.random.default_rng(0)


def _objective(B, D, B0, D0, t):
    """½‖[B; D] − [B0; D0]‖² + t Σ_j ‖[B; D][:, j]‖₂: what the prox minimises."""
    Z, Z0 = np.vstack([B, D]), np.vstack([B0, D0])
    return 0.5 * ((Z - Z0) ** 2).sum() + t * np.linalg.norm(Z, axis=0).sum()


# ----------------------------------------------------------------------------- the operator


def test_prox_matches_block_soft_thresholding():
    B, D = RNG.standard_normal((7, 9)), RNG.standard_normal((3, 9))
    B[:, 2] *= 0.05  # a column well below the threshold
    D[:, 2] *= 0.05
    t = 0.8
    nB, nD = group_lasso_prox(B, D, t)
    for j in range(9):
        col = np.concatenate([B[:, j], D[:, j]])
        norm = np.linalg.norm(col)
        want = max(0.0, 1 - t / norm) * col
        np.testing.assert_allclose(np.concatenate([nB[:, j], nD[:, j]]), want, rtol=1e-12)
    assert np.all(nB[:, 2] == 0) and np.all(nD[:, 2] == 0)


def test_prox_minimises_its_objective():
    """No perturbation of the prox's answer lowers ½‖Z − Z0‖² + t Σ‖z_j‖."""
    B0, D0 = RNG.standard_normal((5, 6)), RNG.standard_normal((2, 6))
    B0[:, 0] *= 0.1
    t = 0.7
    B, D = group_lasso_prox(B0, D0, t)
    best = _objective(B, D, B0, D0, t)
    for _ in range(200):
        dB, dD = 1e-3 * RNG.standard_normal(B.shape), 1e-3 * RNG.standard_normal(D.shape)
        assert _objective(B + dB, D + dD, B0, D0, t) >= best - 1e-12


def test_a_group_below_the_threshold_is_exactly_zero_and_masks_stay_zero():
    B = np.array([[0.3, 2.0, 0.0], [0.4, 0.0, 1.0]], dtype=np.float32)  # norms 0.5, 2, 1
    nB, nD = group_lasso_prox(B, None, 0.5)
    assert nD is None and nB.dtype == np.float32
    assert np.all(nB[:, 0] == 0)  # norm == threshold: zero
    np.testing.assert_allclose(nB[:, 1], [1.5, 0.0])
    np.testing.assert_allclose(nB[:, 2], [0.0, 0.5])
    assert nB[1, 1] == 0 and nB[0, 2] == 0  # zeros stay exactly zero


def test_zero_threshold_is_the_identity():
    B, D = RNG.standard_normal((4, 5)), RNG.standard_normal((2, 5))
    B[:, 1] = 0
    nB, nD = group_lasso_prox(B, D, 0.0)
    assert np.array_equal(nB, B) and np.array_equal(nD, D)
    with pytest.raises(ValueError, match="threshold"):
        group_lasso_prox(B, D, -1.0)


# ----------------------------------------------------------------------------- in the update


def _update(cfg, model, step=3):
    grads = {k: RNG.standard_normal(v.shape) for k, v in model.params.items()}
    state = init_state(cfg, model.params)
    return apply_update(cfg, model.params, grads, state, step, model.masks, model.kappa)


def test_sgd_update_is_the_gradient_step_then_the_prox():
    model = dense_model(5, 4, 3, seed=1, dtype="float64")
    grads = {k: RNG.standard_normal(v.shape) for k, v in model.params.items()}
    plain = OptimizerConfig("sgd", lr=0.1, momentum=0.0)
    lasso = OptimizerConfig("sgd", lr=0.1, momentum=0.0, group_lasso=2.0)
    p0, _ = apply_update(plain, model.params, grads, {}, 0, model.masks, model.kappa)
    p1, _ = apply_update(lasso, model.params, grads, {}, 0, model.masks, model.kappa)
    B, D = group_lasso_prox(p0["B"], p0["D"], 0.1 * 2.0)
    assert np.array_equal(p1["B"], B) and np.array_equal(p1["D"], D)
    for k in ("A", "C", "b_x", "b_y"):
        assert np.array_equal(p1[k], p0[k])


def test_group_lasso_zero_changes_nothing():
    model = dense_model(5, 4, 3, seed=2)
    grads = {k: RNG.standard_normal(v.shape).astype(v.dtype) for k, v in model.params.items()}
    for name in ("adam", "sgd"):
        a, b = OptimizerConfig(name), OptimizerConfig(name, group_lasso=0.0)
        sa, sb = init_state(a, model.params), init_state(b, model.params)
        pa, _ = apply_update(a, model.params, grads, sa, 0, model.masks, model.kappa)
        pb, _ = apply_update(b, model.params, grads, sb, 0, model.masks, model.kappa)
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    # Left out of the checkpoint fingerprint when unused, so older checkpoints resume.
    assert "group_lasso" not in OptimizerConfig().to_dict()
    assert OptimizerConfig(group_lasso=0.5).to_dict()["group_lasso"] == 0.5
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="group_lasso"):
            OptimizerConfig(group_lasso=bad)


def test_masked_entries_of_B_stay_zero_in_a_layered_model():
    from dimplicit.model import build_model

    model = build_model("ae-v1:3,8,4", 6, 6, seed=0, dtype="float64")
    p, _ = _update(OptimizerConfig("adam", lr=0.05, group_lasso=1.0), model)
    assert np.all(p["B"][model.masks["B"] == 0] == 0)
    assert np.all(p["D"] == 0)  # masked D: the groups are B's columns


def test_the_trainer_zeroes_whole_columns_and_executors_agree(teacher_store):
    """A large λ empties some input columns; the Dask executor gives the same bits."""
    from distributed import Client, LocalCluster

    opt = OptimizerConfig(lr=1e-2, group_lasso=20.0)
    local = make_trainer(teacher_store, optimizer=opt, executor="local").fit()
    norms = column_norms(local.model_)
    assert 0 < (norms == 0).sum() < len(norms)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        dask_ = make_trainer(teacher_store, optimizer=opt, executor="dask").fit(client)
    assert dask_.summary_["weights_sha256"] == local.summary_["weights_sha256"]


# ----------------------------------------------------------------------------- read-outs


def test_selected_features_and_report():
    model = dense_model(4, 3, 2, seed=0, dtype="float64")
    model.params["B"][:, 1] = 0
    model.params["D"][:, 1] = 0
    model.params["D"][:, 3] = 0  # B still uses feature 3
    norms = column_norms(model)
    assert norms[1] == 0 and norms[3] > 0
    assert selected_features(norms).tolist() == [0, 2, 3]
    report = feature_report(model, ["a", "b", "c", "d"])
    assert report["n_selected"] == 3 and set(report["selected"]) == {"a", "c", "d"}
    assert report["column_norms"]["b"] == 0.0
    got = [report["column_norms"][n] for n in report["selected"]]
    assert got == sorted(got, reverse=True)
    assert support_recovery([0, 2, 3], [0, 3], 4) == {
        "precision": 2 / 3, "recall": 1.0, "n_selected": 3, "n_true": 2,
    }  # fmt: skip


def test_support_recovery_on_a_seeded_column_sparse_model():
    """The blog experiment in small: a 6-of-20-inputs teacher with 8 hidden neurons, a student
    with 5; the inputs the student keeps are the teacher's."""
    U, Y, teacher, support = column_sparse_problem(
        n_samples=200, n_inputs=20, n_hidden=8, n_outputs=20, n_used=6, noise=0.05, seed=3
    )
    assert np.flatnonzero(column_norms(teacher)).tolist() == support.tolist()
    reg = ImplicitRegressor(
        hidden=5, group_lasso=4.0, epochs=60, batch_size=32, select_best=None, patience=None,
        random_state=0,
    ).fit(U, Y)  # fmt: skip
    rec = support_recovery(reg.selected_features_, support, 20)
    assert rec["precision"] >= 0.8 and rec["recall"] >= 0.8, rec
    # Without the penalty every input is used: the selection comes from λ.
    plain = ImplicitRegressor(
        hidden=5, epochs=5, batch_size=32, select_best=None, patience=None, random_state=0
    ).fit(U, Y)
    assert len(plain.selected_features_) == 20


def test_estimator_attributes_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 5))
    X[:, 1] = 0.9 * X[:, 0] + 0.1 * rng.standard_normal(120)
    ae = ImplicitAutoencoder(
        arch="ae-dense", hidden=8, group_lasso=5.0, epochs=15, batch_size=32, random_state=0
    )
    with pytest.raises(AttributeError):
        ae.selected_features_  # noqa: B018 - not fitted yet
    ae.fit(X)
    assert ae.feature_norms_.shape == (5,)
    assert np.array_equal(ae.selected_features_, np.flatnonzero(ae.feature_norms_ > 0))
    back = ImplicitAutoencoder.load(ae.save(tmp_path / "ae.npz"))
    assert back.group_lasso == 5.0
    assert np.array_equal(back.feature_norms_, ae.feature_norms_)
    with pytest.raises(ValueError, match="group_lasso"):
        ImplicitAutoencoder(group_lasso=-1.0, epochs=1).fit(X)


# ----------------------------------------------------------------------------- CLI


def test_train_group_lasso_flag_round_trip(teacher_store, tmp_path, capsys):
    argv = ["train", "--data", str(teacher_store), "--hidden", "8", "--epochs", "2",
            "--batch-size", "1000", "--lr", "0.01", "--quiet"]  # fmt: skip
    assert main([*argv, "--group-lasso", "20", "--checkpoint-dir", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    features = summary["features"]
    model = ImplicitModel.load(summary["model"])
    norms = column_norms(model)
    assert features["n_features"] == 6
    assert features["n_selected"] == int((norms > 0).sum()) < 6
    assert [features["column_norms"][f"f{j}"] for j in range(6)] == pytest.approx(norms)
    assert main([*argv, "--checkpoint-dir", str(tmp_path / "b")]) == 0
    assert "features" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--group-lasso", "-1"])
    assert exc.value.code == 2
    assert "non-negative number" in capsys.readouterr().err
