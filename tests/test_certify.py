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
    m.params["A"] = m.params["A"] * (1.0 / np.abs(m.params["A"]).sum(axis=1).max())
    with pytest.raises(ValueError, match=r"‖A‖∞ = 1 ≥ 1.*kappa") as exc:
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
