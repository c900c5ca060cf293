"""Model builders, activations, save/load without pickle."""

import numpy as np
import pytest

from dimplicit.activations import Activation, apply_, derivative
from dimplicit.forward import predict
from dimplicit.model import (
    ImplicitModel,
    autoencoder_widths,
    dense_model,
    layered_model,
    weights_sha256,
)
from dimplicit.projection import inf_norm


@pytest.mark.parametrize(
    "name", ["relu", "leaky_relu:0.1", "tanh", "arctan", "sigmoid", "identity"]
)
def test_activation_derivative_matches_finite_difference(name):
    z = np.linspace(-3, 3, 61) + 0.013  # avoid the kink at exactly 0
    x = apply_(z.copy(), name)
    h = 1e-6
    fd = (apply_(z + h, name) - apply_(z - h, name)) / (2 * h)
    np.testing.assert_allclose(derivative(x, name), fd, rtol=1e-6, atol=1e-8)


def test_activation_errors():
    with pytest.raises(ValueError, match="unknown activation"):
        Activation("swish", 3)
    with pytest.raises(ValueError, match="slope"):
        Activation("leaky_relu:2", 3)
    with pytest.raises(ValueError, match="entries"):
        Activation(["relu", "tanh"], 3)


def test_per_neuron_activation():
    act = Activation(["relu", "tanh", "relu", "identity"], 4)
    z = np.array([[-1.0, -1.0, 2.0, -3.0]])
    np.testing.assert_allclose(act.apply_(z.copy()), [[0.0, np.tanh(-1.0), 2.0, -3.0]])


def test_dense_model_is_well_posed_and_seeded():
    m = dense_model(5, 50, 3, a_norm=0.7, seed=3)
    assert inf_norm(m.params["A"]) == pytest.approx(0.7, rel=1e-5)
    assert weights_sha256(m.params) == weights_sha256(
        dense_model(5, 50, 3, a_norm=0.7, seed=3).params
    )
    assert weights_sha256(m.params) != weights_sha256(
        dense_model(5, 50, 3, a_norm=0.7, seed=4).params
    )


def test_autoencoder_widths_follow_the_paper():
    assert autoencoder_widths(117, 5, 32, 16) == [117, 32, 16, 16, 16, 32, 117]
    assert autoencoder_widths(8, 7, 64, 16) == [8, 64, 32, 16, 16, 16, 32, 64, 8]


def test_layered_model_structure():
    m = layered_model([6, 8, 4, 8, 6], implicit_layers=(1,), seed=0)
    MA = m.masks["A"]
    # Layer 1 (neurons 8..11) is all-to-all within itself, without self-loops.
    assert np.all(MA[8:12, 8:12] == 1 - np.eye(4))
    # Only the first layer reads the input and only the last layer feeds the output.
    assert m.masks["B"][:8].all() and not m.masks["B"][8:].any()
    assert m.masks["C"][:, 12:].all() and not m.masks["C"][:, :12].any()
    assert m.activation.names == ["arctan", "leaky_relu:0.1"]
    ff = layered_model([6, 8, 4, 8, 6], seed=0)
    assert np.all(np.triu(ff.masks["A"]) == 0)  # strictly lower-triangular: feedforward


def test_save_load_round_trip(tmp_path):
    m = layered_model([6, 8, 4, 8, 6], implicit_layers=(1,), seed=0, kappa=0.9)
    path = m.save(tmp_path / "model.npz")
    back = ImplicitModel.load(path)
    assert weights_sha256(back.params) == weights_sha256(m.params)
    assert back.kappa == 0.9 and back.meta == m.meta
    U = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(predict(m, U)[0], predict(back, U)[0])
    # No pickle inside: numpy refuses object arrays with allow_pickle=False.
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImplicitModel.load(tmp_path / "missing.npz")
    path = dense_model(2, 3, 1).save(tmp_path / "m.npz")
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        ImplicitModel.load(tmp_path / "trunc.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="malformed"):
        ImplicitModel.load(tmp_path / "other.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous file intact and no temporary behind."""
    path = dense_model(2, 3, 1, seed=0).save(tmp_path / "m.npz")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        dense_model(2, 3, 1, seed=1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
