"""Adopting existing Zarr (and NumPy/Dask) arrays as dimplicit stores."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

from dimplicit.cli import main
from dimplicit.data.adopt import adopt_zarr
from dimplicit.data.preprocess import assign_splits
from dimplicit.data.store import open_store

N, P = 2600, 5


@pytest.fixture
def group(tmp_path):
    """A Zarr group written with zarr itself: features (chunks of 400 rows) and labels."""
    rng = np.random.default_rng(0)
    g = zarr.open_group(tmp_path / "src.zarr", mode="w")
    x = (rng.normal(size=(N, P)) * [1, 10, 100, 0.1, 1] + [0, 5, -3, 1e4, 0]).astype("float32")
    g.create_array("features", data=x, chunks=(400, P))
    g.create_array("labels", data=rng.integers(0, 3, N).astype("int64"), chunks=(300,))
    g.create_array("y", data=rng.normal(size=(N, 2)), chunks=(1000, 2))
    return tmp_path / "src.zarr", x, g["labels"][:], g["y"][:]


def test_adopt_group_round_trip(group, tmp_path):
    src, x, labels, _ = group
    rep = adopt_zarr(str(src), tmp_path / "s.zarr", normal="0")
    st = open_store(tmp_path / "s.zarr")
    assert rep["rows"] == st.n_rows == N and rep["format"] == "zarr"
    assert rep["arrays"] == {"features": f"{src}:features", "labels": f"{src}:labels"}
    assert st.chunk_rows == 400 and st.features.chunks == (400, P)  # the source's chunking
    np.testing.assert_array_equal(st.features[:], x)
    assert st.feature_names == [f"f{i}" for i in range(P)]
    np.testing.assert_array_equal(np.asarray(st.label_classes)[st.labels[:]], labels.astype(str))
    assert st.label_classes[0] == "0" and st.normal_classes == ["0"]
    split = assign_splits(0, 0, N, (0.8, 0.1, 0.1))
    np.testing.assert_array_equal(st.split[:], split)
    x64 = x.astype(np.float64)[split == 0]
    np.testing.assert_allclose(st.attrs["stats"]["mean"], x64.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(st.attrs["stats"]["std"], x64.std(0), rtol=1e-9, atol=1e-9)
    assert st.attrs["stats"]["count"] == int((split == 0).sum())
    assert st.attrs["source"] == f"{src.resolve()}:features"


def test_adopt_arrays_and_targets(group, tmp_path):
    src, x, labels, y = group
    g = zarr.open_group(src, mode="r")
    rep = adopt_zarr(g["features"], tmp_path / "a.zarr", targets=f"{src}:y", chunk_rows=1000,
                     feature_names=["a", "b", "c", "d", "e"], split_seed=3)  # fmt: skip
    st = open_store(tmp_path / "a.zarr")
    assert st.chunk_rows == 1000 and st.feature_names == list("abcde")
    assert st.target_names == ["target0", "target1"] and rep["targets"] == st.target_names
    np.testing.assert_allclose(st.targets[:], y.astype(np.float32))
    ytr = y[assign_splits(3, 0, N, (0.8, 0.1, 0.1)) == 0].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(st.attrs["target_stats"]["mean"], ytr.mean(0), rtol=1e-9)
    assert (st.labels[:] == -1).all() and st.label_classes == []

    # NumPy and Dask arrays, text labels
    words = np.array(["web", "dns", "web", "ssh"] * 25)
    adopt_zarr(x[:100], tmp_path / "n.zarr", labels=words)
    adopt_zarr(da.from_array(x[:100], chunks=30), tmp_path / "d.zarr", labels=words)
    n, d = open_store(tmp_path / "n.zarr"), open_store(tmp_path / "d.zarr")
    assert n.label_classes == d.label_classes == ["web", "dns", "ssh"]
    assert d.chunk_rows == 30
    np.testing.assert_array_equal(n.features[:], d.features[:])


def test_adopt_bad_rows(tmp_path):
    x = np.arange(40.0).reshape(20, 2)
    x[4, 1] = np.nan
    x[11, 0] = np.inf
    with pytest.raises(ValueError, match=r"row 5: non-finite value nan in column f1"):
        adopt_zarr(x, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    rep = adopt_zarr(x, tmp_path / "s.zarr", on_bad_rows="skip", labels=np.arange(20) % 2)
    st = open_store(tmp_path / "s.zarr")
    assert rep["bad_rows"]["rows"] == [5, 12] and st.n_rows == 18
    keep = np.delete(np.arange(20), [4, 11])
    np.testing.assert_array_equal(st.features[:], x[keep].astype(np.float32))
    np.testing.assert_array_equal(st.split[:], assign_splits(0, 0, 20, (0.8, 0.1, 0.1))[keep])


def test_adopt_errors(group, tmp_path):
    src, *_ = group
    with pytest.raises(ValueError, match="has no array 'nope'"):
        adopt_zarr(f"{src}:nope", tmp_path / "a.zarr")
    with pytest.raises(FileNotFoundError):
        adopt_zarr(tmp_path / "missing.zarr", tmp_path / "a.zarr")
    with pytest.raises(ValueError, match=r"labels .* must have shape \(2600,\)"):
        adopt_zarr(f"{src}:features", tmp_path / "a.zarr", labels=np.zeros(5))
    with pytest.raises(ValueError, match="1-D or 2-D array of numbers"):
        adopt_zarr(np.array(["a", "b"]), tmp_path / "a.zarr")
    with pytest.raises(FileExistsError, match="overlaps the input"):
        adopt_zarr(str(src), src / "inside.zarr")


def test_cli_adopt(group, tmp_path, capsys):
    src, x, *_ = group
    out = tmp_path / "cli.zarr"
    args = ["ingest", "--zarr-features", f"{src}:features", "--zarr-labels", f"{src}:labels",
            "--zarr-targets", f"{src}:y", "--out", str(out), "--chunk-rows", "800"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == N and report["format"] == "zarr"
    st = open_store(out)
    assert st.chunk_rows == 800 and st.target_names == ["target0", "target1"]
    np.testing.assert_array_equal(st.features[:], x)

    # the store is usable at once: train reads it
    ck = tmp_path / "ck"
    assert main(["train", "--data", str(out), "--epochs", "1", "--hidden", "4",
                 "--checkpoint-dir", str(ck), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()

    assert main(["ingest", str(src), "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--zarr-features" in err and err.count("\n") == 1
    assert main(["ingest", "--zarr-features", str(src), "--label", "y", "--out",
                 str(tmp_path / "x.zarr")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--label applies to INPUT files" in err and err.count("\n") == 1


def test_adopt_with_reference(group, tmp_path):
    src, x, labels, _ = group
    ref = tmp_path / "ref.zarr"
    adopt_zarr(str(src), ref, normal="1", stats_rows="all")
    rep = adopt_zarr(x[:50], tmp_path / "new.zarr", labels=np.r_[labels[:49], 7],
                     reference=ref)  # fmt: skip
    st, r = open_store(tmp_path / "new.zarr"), open_store(ref)
    assert st.attrs["stats"]["mean"] == r.attrs["stats"]["mean"] and rep["stats_rows"] == N
    assert st.label_classes[:3] == r.label_classes and st.label_classes[3] == "7"
    assert st.normal_classes == ["1"] and st.attrs["reference"] == str(ref)
    with pytest.raises(ValueError, match="feature names"):
        adopt_zarr(x[:50], tmp_path / "bad.zarr", feature_names="a,b,c,d,e", reference=ref)
