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


# ----------------------------------------------------------------------------- header fuzz

WRONG_VALUES = ([], "x", 3, -1, 2.5, None, {}, {"a": 1}, True, [1, "b"])


def header_fields(doc, prefix=()):
    """Every field path of a JSON header (dicts descended; lists and values are leaves)."""
    for k, v in doc.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from header_fields(v, (*prefix, k))


def with_field(doc, path, value):
    import copy

    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def rewrite_header(src, dst, header):
    import json

    arrays = dict(np.load(src, allow_pickle=False))
    arrays["header"] = np.array(json.dumps(header))
    np.savez(dst, **arrays)


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    from dimplicit.model import build_model

    m = build_model("ae-dense", 4, 4, hidden=6, seed=0)
    m.meta["training"] = {
        "task": "autoencode",
        "feature_names": list("abcd"),
        "label_classes": ["normal", "x"],
        "normal_classes": ["normal"],
        "scaler": {"mean": [0.0] * 4, "std": [1.0] * 4},
        "forward": {"solver": "picard", "tol": 1e-4, "max_iter": 50},
    }
    m.meta["calibration"] = {"mean": 1.0, "std": 0.5, "threshold": 2.0}
    return m.save(tmp_path_factory.mktemp("fuzz") / "m.npz")


def test_every_malformed_model_header_field_is_one_clear_error(calibrated_model, tmp_path):
    """Each field replaced by each wrong type: a ValueError naming the file, or a model that
    still loads (the value is valid there, e.g. kappa=None) — never another exception."""
    import json

    from dimplicit.model import ImplicitModel

    header = json.loads(str(np.load(calibrated_model)["header"]))
    refused = 0
    for path in header_fields(header):
        for value in WRONG_VALUES:
            bad = tmp_path / "bad.npz"
            rewrite_header(calibrated_model, bad, with_field(header, path, value))
            try:
                ImplicitModel.load(bad)
            except ValueError as exc:
                message = str(exc)
                assert str(bad) in message and "\n" not in message, (path, value, message)
                refused += 1
    assert refused > 100
    for top in ([], "x", 3, None):
        bad = tmp_path / "top.npz"
        rewrite_header(calibrated_model, bad, top)
        with pytest.raises(ValueError, match="malformed"):
            ImplicitModel.load(bad)


def test_a_malformed_model_header_is_exit_2_and_one_line(calibrated_model, tmp_path, capsys):
    import json

    from dimplicit.cli import main

    header = json.loads(str(np.load(calibrated_model)["header"]))
    cases = [
        ("meta", "x"),
        ("meta.training", []),
        ("meta.training.forward", {"unknown_option": 1}),
        ("meta.calibration", {"mean": 1.0}),
        ("activation", 3),
    ]
    for field, value in cases:
        bad = tmp_path / "bad.npz"
        rewrite_header(calibrated_model, bad, with_field(header, tuple(field.split(".")), value))
        code = main(["score", "--model", str(bad), "--data", str(tmp_path), "--out",
                     str(tmp_path / "o.zarr")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (field, err)
        assert field.split(".")[-1] in err or "malformed" in err, (field, err)


def test_every_malformed_checkpoint_header_field_is_one_clear_error(tmp_path):
    import json

    from dimplicit.distributed.checkpoint import load_checkpoint, save_checkpoint
    from dimplicit.model import dense_model

    m = dense_model(3, 4, 2, seed=0)
    good = save_checkpoint(
        tmp_path, params=m.params, state={"m/A": np.zeros(1)}, step=4, epoch=1,
        header={"fingerprint": {"seed": 0}, "selection": {"value": 1.0, "step": 2,
                "bad_evals": 0, "key": [1.0, 1.0]}},
    )  # fmt: skip
    header = json.loads(str(np.load(good)["header"]))
    load_checkpoint(good)
    refused = 0
    for path in header_fields(header):
        for value in WRONG_VALUES:
            bad = tmp_path / "ckpt-bad.npz"
            rewrite_header(good, bad, with_field(header, path, value))
            try:
                load_checkpoint(bad)
            except ValueError as exc:
                assert str(bad) in str(exc) and "\n" not in str(exc)
                refused += 1
    assert refused > 30


def test_astype_keeps_a_computed_structure():
    """The block structure depends on the masks only: a device/dtype copy reuses it."""
    from dimplicit.backend import get_backend
    from dimplicit.model import build_model

    model = build_model("ae-v1:3,8,4", 10, 10, activation="arctan", kappa=None, seed=0)
    fresh = model.astype(get_backend("cpu", "float32"))
    assert "structure" not in fresh.__dict__  # not computed yet: nothing to reuse
    s = model.structure
    assert model.astype(get_backend("cpu", "float32")).structure is s
