"""Float regression targets: ingested with --target, stored apart from label classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data.ingest import ingest_csv
from dimplicit.data.preprocess import assign_splits
from dimplicit.data.store import open_store

N = 600


@pytest.fixture
def regression_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(N, 3)), 4)
    price = np.round(x @ [1.0, -2.0, 0.5] + 100 + 0.1 * rng.normal(size=N), 3)
    tons = np.round(rng.uniform(0, 5, N), 2)
    path = tmp_path / "houses.csv"
    with open(path, "w") as f:
        f.write("a,b,c,kind,price,tons\n")
        for i in range(N):
            f.write(f"{x[i, 0]},{x[i, 1]},{x[i, 2]},{'xyz'[i % 3]},{price[i]},{tons[i]}\n")
    return path, x, price, tons


def test_target_column_stored_as_targets(regression_csv, tmp_path, capsys):
    path, x, price, tons = regression_csv
    out = tmp_path / "reg.zarr"
    assert main(["ingest", str(path), "--header", "--target", "price", "--label", "kind",
                 "--out", str(out), "--chunk-rows", "128"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["targets"] == ["price"] and report["format"] == "generic"
    st = open_store(out)
    assert st.target_names == ["price"] and st.targets.shape == (N, 1)
    assert st.targets.chunks == (128, 1)
    np.testing.assert_array_equal(st.targets[:, 0], price.astype(np.float32))
    # not a label: the label stays the class column, and price is not a feature either
    assert st.label_classes == ["x", "y", "z"] and "price" not in st.feature_names
    assert st.feature_names == ["a", "b", "c", "tons"]
    train = assign_splits(0, 0, N, (0.8, 0.1, 0.1)) == 0
    tr = price.astype(np.float32).astype(np.float64)[train]
    np.testing.assert_allclose(st.target_mean, tr.mean(), rtol=1e-6)
    np.testing.assert_allclose(st.target_std, tr.std(), rtol=1e-6)
    assert st.attrs["target_stats"]["count"] == int(train.sum())

    ck = tmp_path / "ck"
    args = ["train", "--data", str(out), "--task", "regress", "--epochs", "2",
            "--batch-size", "128", "--hidden", "8", "--checkpoint-dir", str(ck),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert np.isfinite(summary["final_loss"]) and (ck / "model.npz").exists()


def test_several_targets_and_bad_values(regression_csv, tmp_path):
    path, _, price, tons = regression_csv
    text = path.read_text().splitlines()
    text[5] = text[5].rsplit(",", 2)[0] + ",n/a," + text[5].rsplit(",", 1)[1]  # row 6: price
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"row 6: unparsable number 'n/a' in column price"):
        ingest_csv(bad, tmp_path / "s.zarr", fmt="generic", header=True, label="kind",
                   targets="price,tons")  # fmt: skip
    rep = ingest_csv(bad, tmp_path / "s.zarr", fmt="generic", header=True, label="kind",
                     targets=["price", "5"], on_bad_rows="skip")  # fmt: skip
    st = open_store(tmp_path / "s.zarr")
    assert rep["bad_rows"]["rows"] == [6] and st.target_names == ["price", "tons"]
    keep = np.delete(np.arange(N), 4)
    np.testing.assert_array_equal(st.targets[:], np.c_[price, tons][keep].astype(np.float32))
    with pytest.raises(ValueError, match="cannot be both target and categorical"):
        ingest_csv(path, tmp_path / "t.zarr", fmt="generic", header=True, targets="price",
                   categorical="price,kind")  # fmt: skip
    with pytest.raises(ValueError, match="apply only to generic"):
        ingest_csv(path, tmp_path / "t.zarr", fmt="htru2", targets="price")


def test_reference_keeps_targets(regression_csv, tmp_path):
    path, *_ = regression_csv
    ref = tmp_path / "ref.zarr"
    ingest_csv(path, ref, fmt="generic", header=True, targets="price", categorical="kind")
    rep = ingest_csv(path, tmp_path / "new.zarr", header=True, reference=ref)
    st = open_store(tmp_path / "new.zarr")
    assert st.target_names == ["price"] and rep["format_detected"].startswith("the format of")
    with pytest.raises(ValueError, match="target columns"):
        ingest_csv(path, tmp_path / "x.zarr", header=True, reference=ref, targets="tons")


def test_regress_without_targets_says_so(regression_csv, tmp_path, capsys):
    path, *_ = regression_csv
    out = tmp_path / "labels_only.zarr"
    ingest_csv(path, out, fmt="generic", header=True, label="kind")  # no --target
    assert open_store(out).targets is None
    args = ["train", "--data", str(out), "--task", "regress", "--epochs", "1",
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "regress needs float targets" in err
