"""Robustness certificates (issue 17, part 3): the sensitivity bound is never violated."""

import numpy as np
import pytest

from dimplicit import certify
from dimplicit.activations import Activation
from dimplicit.model import ImplicitModel, dense_model


def _model(act, seed=0, q=3):
    return dense_model(5, 8, q, seed=seed, activation=act, kappa=0.9, a_norm=0.85,
                       dtype="float64")  # fmt: skip


@pytest.mark.parametrize("act", ["relu", "tanh", "arctan"])
def test_bound_holds_for_random_and_pgd_perturbations(act):
    m = _model(act, seed=3)
    M = certify.sensitivity_bound(m)
    assert M.shape == (3, 5) and (M >= 0).all()
    rng = np.random.default_rng(0)
    for _ in range(3):
        u = rng.normal(size=5)
        y0 = certify.outputs(m, u)[0]
        deltas = [rng.uniform(-e, e, size=(20, 5)) for e in (1e-3, 0.1, 1.0)]
        D = np.vstack(deltas)
        Y = certify.outputs(m, u + D)
        assert (np.abs(Y - y0) <= np.abs(D) @ M.T + 1e-9).all()
        for i in range(3):
            for sign in (1.0, -1.0):
                d = certify.pgd_attack(m, u, 0.5, direction=sign * np.eye(3)[i], steps=15,
                                       restarts=1, seed=i)  # fmt: skip
                assert np.abs(d).max() <= 0.5 + 1e-12
                dy = np.abs(certify.outputs(m, u + d)[0] - y0)
                assert (dy <= M @ np.abs(d) + 1e-9).all()


def test_bound_is_tight_for_positive_feedforward_identity_model():
    rng = np.random.default_rng(1)
    n, p, q = 6, 4, 2
    A = np.tril(rng.uniform(0, 1, (n, n)), k=-1)
    A *= 0.8 / np.maximum(A.sum(axis=1, keepdims=True), 1e-12)
    params = {"A": A, "B": rng.uniform(0, 1, (n, p)), "C": rng.uniform(0, 1, (q, n)),
              "D": rng.uniform(0, 1, (q, p)), "b_x": rng.normal(size=n),
              "b_y": rng.normal(size=q)}  # fmt: skip
    m = ImplicitModel(params, Activation("identity", n), kappa=0.9)
    M = certify.sensitivity_bound(m)
    # Linear with non-negative weights: the Jacobian is exactly M.
    J = params["C"] @ np.linalg.solve(np.eye(n) - A, params["B"]) + params["D"]
    np.testing.assert_allclose(M, J, rtol=1e-12)
    u, d = rng.normal(size=p), rng.uniform(0, 0.3, size=p)
    dy = certify.outputs(m, u + d)[0] - certify.outputs(m, u)[0]
    np.testing.assert_allclose(dy, M @ d, rtol=1e-9)


def test_linf_radius_is_never_broken_by_pgd():
    m = _model("tanh", seed=5, q=4)
    M = certify.sensitivity_bound(m)
    rng = np.random.default_rng(2)
    flips = {1: 0, 2: 0, 4: 0}
    for _ in range(4):
        u = rng.normal(size=5)
        r = certify.linf_radius(m, u, M)
        assert r > 0
        k = int(np.argmax(certify.outputs(m, u)[0]))
        for f in flips:
            eps = 0.99 * r * f
            d = certify.pgd_attack(m, u, eps, steps=15, restarts=1, seed=0)
            flips[f] += int(np.argmax(certify.outputs(m, u + d)[0]) != k)
    assert flips[1] == 0
    print("PGD flips at 1x/2x/4x the certified radius:", flips)


def test_score_decrease_bound_holds():
    m = dense_model(4, 6, 4, seed=2, activation="relu", kappa=0.9, a_norm=0.8, dtype="float64")
    rng = np.random.default_rng(3)
    u = rng.normal(size=4)
    out = certify.score_bound(m, u, 0.2)
    total, per = certify.score_decrease_bound(m, 0.2)
    assert per.shape == (4,) and (per <= total + 1e-12).all()
    D = rng.uniform(-0.2, 0.2, size=(200, 4))
    R = certify.outputs(m, u + D) - (u + D)
    s = np.sqrt((R**2).mean(axis=1))
    assert (s >= out["min_score"] - 1e-9).all()


def test_ill_posed_model_is_refused_in_one_line():
    m = _model("relu")
    # Every row of |A| sums to 1.2: ρ(|A|) = 1.2, so no Neumann series, no bound.
    m.params["A"] = m.params["A"] * (1.2 / np.abs(m.params["A"]).sum(axis=1, keepdims=True))
    with pytest.raises(ValueError, match=r"‖A‖∞ = 1.2 ≥ 1.*Perron.*kappa") as exc:
        certify.sensitivity_bound(m)
    assert "\n" not in str(exc.value)


def test_cli_certify_prints_one_json_object(teacher_store, tmp_path, capsys):
    import json

    from conftest import make_trainer

    from dimplicit.cli import main

    t = make_trainer(teacher_store, epochs=1, executor="local", checkpoint_dir=tmp_path / "ck")
    t.fit()
    code = main(["certify", "--model", str(tmp_path / "ck" / "model.npz"), "--data",
                 str(teacher_store), "--rows", "20"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report and "\n" not in out.strip()


# --- The NSL-KDD application: scripts/certify_nslkdd.py ------------------------------------


@pytest.fixture(scope="module")
def nslkdd_cert():
    from conftest import load_script

    with load_script("certify_nslkdd") as mod:
        yield mod


def test_score_gradient_of_the_attack_matches_finite_differences(nslkdd_cert):
    m = dense_model(5, 7, 5, seed=4, activation="tanh", kappa=0.9, a_norm=0.8, dtype="float64")
    V = np.random.default_rng(5).normal(size=(3, 5))
    s, g = nslkdd_cert.score_and_grad(m, V)
    np.testing.assert_allclose(s, nslkdd_cert.scores(m, V), rtol=1e-12)
    h, fd = 1e-6, np.zeros_like(V)
    for j in range(5):
        e = np.zeros(5)
        e[j] = h
        fd[:, j] = (nslkdd_cert.scores(m, V + e) - nslkdd_cert.scores(m, V - e)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)


def test_category_switch_bound_holds_for_every_switch(nslkdd_cert):
    # Columns 2..5 are a one-hot group; every switch's decrease is below its bound.
    m = dense_model(6, 8, 6, seed=6, activation="relu", kappa=0.9, a_norm=0.8, dtype="float64")
    K = certify.sensitivity_bound(m) + np.eye(6)
    group = np.arange(2, 6)
    mean, sigma = np.full(6, 0.25), np.full(6, 0.5)
    B = nslkdd_cert.switch_bounds(K, group, sigma)
    assert B.shape == (4, 4) and (np.diag(B) == 0).all() and (B >= 0).all()
    U = np.random.default_rng(7).normal(size=(4, 6))
    U[:, group] = (np.eye(4) - 0.25) / 0.5  # row i is in category i
    s0 = nslkdd_cert.scores(m, U)
    best, cur, tgt = nslkdd_cert.switch_attack(m, U, group, mean, sigma)
    assert (cur == np.arange(4)).all() and (tgt != cur).all()
    assert (s0 - best <= B[cur, tgt] + 1e-9).all()


def test_nslkdd_slice_certificates_are_never_beaten(nslkdd_cert, slice_data, tmp_path, capsys):
    # A tiny autoencoder trained on the shipped slice (KDDTrain+; its rows without the six
    # training-only services stand in for KDDTest+): every per-feature, category-switch and
    # all-feature attack stays within its certified bound.
    import json
    import shutil
    from pathlib import Path

    data = tmp_path / "data" / "nsl-kdd"
    data.mkdir(parents=True)
    from dimplicit.experiments.szekeres2024 import TRAIN_ONLY_DUMMIES

    src = slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"
    shutil.copyfile(src, data / "KDDTrain+.txt")
    lines = src.read_text().splitlines(keepends=True)
    test = [ln for ln in lines if ln.split(",")[2] not in TRAIN_ONLY_DUMMIES]
    (data / "KDDTest+.txt").write_text("".join(test))
    argv = ["--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w"), "--epochs", "1",
            "--hidden", "12", "--sample", "6", "--top", "3", "--steps", "4", "--radius-steps", "3",
            "--figures", str(tmp_path / "fig")]  # fmt: skip
    result = nslkdd_cert.main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    assert result["model"]["rho_bound"] < 1 and result["detected_attacks"] > 0
    checks = result["bound_checks"]
    assert checks["violations"] == 0 and checks["attacks_checked"] > 50
    for f in result["per_feature_top_numeric"]:
        assert not f["dummy"] and 0 <= f["attack_max"] <= f["certified"] + 1e-9
    assert result["features"]["groups"] == {"protocol_type": 3, "service": 64, "flag": 11}
    for c in result["category_switch"].values():
        assert 0 <= c["tightness_max"] <= 1
    assert result["radius"]["certified_sample"]["max"] > 0
    if result["radius"]["pgd_evaded"]:
        assert result["radius"]["ratio_certified_over_pgd"]["max"] <= 1
    for path in result["figures"]:
        assert Path(path).stat().st_size > 0


# --- Gated ("v2") models: neuron i is σ(β_i)-Lipschitz ---------------------------------------


def _gated(seed=0, a_norm=1.3, act="tanh"):
    """A dense model with ‖A‖∞ > 1 whose gated rows bring ‖G|A|‖∞ below 1."""
    from dimplicit.model import with_gate

    m = dense_model(5, 8, 3, seed=seed, activation=act, kappa=None, a_norm=a_norm,
                    dtype="float64")  # fmt: skip
    return with_gate(m, np.arange(8), beta=np.linspace(-1.5, -0.5, 8))


def test_gated_bound_holds_where_the_ungated_bound_does_not_apply():
    m = _gated(seed=1)
    with pytest.raises(ValueError, match="‖A‖∞"):
        certify.sensitivity_bound(dense_model(5, 8, 3, seed=1, activation="tanh", kappa=None,
                                              a_norm=1.3, dtype="float64"))  # fmt: skip
    assert certify.check_certifiable(m) < 1
    M = certify.sensitivity_bound(m)
    rng = np.random.default_rng(0)
    for _ in range(3):
        u = rng.normal(size=5)
        y0 = certify.outputs(m, u)[0]
        D = np.vstack([rng.uniform(-e, e, size=(20, 5)) for e in (1e-3, 0.1, 1.0)])
        assert (np.abs(certify.outputs(m, u + D) - y0) <= np.abs(D) @ M.T + 1e-9).all()
        d = certify.pgd_attack(m, u, 0.5, direction=np.eye(3)[0], steps=10, restarts=1)
        assert (np.abs(certify.outputs(m, u + d)[0] - y0) <= M @ np.abs(d) + 1e-9).all()


def test_gated_bound_is_tight_for_a_positive_linear_model():
    """Identity φ, non-negative weights: the Jacobian C (I − GA)⁻¹ G B + D is exactly M (and
    differs from (I − AG)⁻¹ G, the other order of the gate)."""
    from dimplicit.model import with_gate

    rng = np.random.default_rng(2)
    n, p, q = 6, 4, 2
    A = rng.uniform(0, 1, (n, n))
    A *= 1.5 / A.sum(axis=1, keepdims=True)  # ‖A‖∞ = 1.5: only the gate makes it certifiable
    params = {"A": A, "B": rng.uniform(0, 1, (n, p)), "C": rng.uniform(0, 1, (q, n)),
              "D": rng.uniform(0, 1, (q, p)), "b_x": rng.normal(size=n),
              "b_y": rng.normal(size=q)}  # fmt: skip
    beta = rng.uniform(-2, -0.5, n)
    m = with_gate(ImplicitModel(params, Activation("identity", n), kappa=None), np.arange(n), beta)
    G = np.diag(1 / (1 + np.exp(-beta)))
    J = params["C"] @ np.linalg.solve(np.eye(n) - G @ A, G @ params["B"]) + params["D"]
    M = certify.sensitivity_bound(m)
    np.testing.assert_allclose(M, J, rtol=1e-12)
    other = params["C"] @ np.linalg.solve(np.eye(n) - A @ G, G @ params["B"]) + params["D"]
    assert np.abs(other - J).max() > 1e-3
    u, d = rng.normal(size=p), rng.uniform(0, 0.3, size=p)
    dy = certify.outputs(m, u + d)[0] - certify.outputs(m, u)[0]
    np.testing.assert_allclose(dy, M @ d, rtol=1e-9)


def test_gated_model_with_a_large_gate_weighted_norm_is_refused():
    # Every gate-weighted row of |A| sums to more than 1 (6·σ(−1.5) ≈ 1.09): ρ(G|A|) > 1.
    m = _gated(seed=2, a_norm=6.0)
    with pytest.raises(ValueError, match="gate-weighted"):
        certify.sensitivity_bound(m)


def test_layered_v0_autoencoder_is_certifiable_by_its_perron_root():
    """ρ(|A|) = 0 for a feed-forward layered model even though ‖A‖∞ > 1; the bound then
    matches the exact Jacobian's absolute value for a linear chain of non-negative weights."""
    from dimplicit.model import build_model

    m = build_model("ae-v0:3,8,4", 5, 5, seed=0, dtype="float64")
    assert np.abs(m.params["A"]).sum(axis=1).max() > 1
    assert certify.check_certifiable(m) < 1  # an upper bound on ρ(|A|) = 0
    # Non-negative weights and identity φ: the bound is the Jacobian C(I-A)^-1 B + D itself.
    lin = m.copy()
    lin.activation = type(m.activation)("identity", m.n_hidden)
    for k in ("A", "B", "C"):
        lin.params[k] = np.abs(lin.params[k])
    n = lin.n_hidden
    P = lin.params
    J = P["C"] @ np.linalg.solve(np.eye(n) - P["A"], P["B"]) + P["D"]
    np.testing.assert_allclose(certify.sensitivity_bound(lin), J, rtol=1e-10, atol=1e-12)
