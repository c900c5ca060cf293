"""Parquet ingest: same rules as CSV, streamed file by file, row group by row group."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from dimplicit.cli import main  # noqa: E402
from dimplicit.data import parquet as parquet_mod  # noqa: E402
from dimplicit.data.ingest import ingest_csv  # noqa: E402
from dimplicit.data.parquet import ingest_parquet  # noqa: E402
from dimplicit.data.preprocess import assign_splits  # noqa: E402
from dimplicit.data.sources import ingest  # noqa: E402
from dimplicit.data.store import open_store  # noqa: E402

N = 1500


def _columns(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dur": np.round(rng.exponential(2.0, n), 4),
        "bytes": rng.integers(0, 10**6, n),
        "syn": rng.random(n) < 0.3,
        "proto": rng.choice(["tcp", "udp", "icmp"], n),
        "service": rng.choice(["http", "dns", "ssh", "ftp"], n),
        "label": rng.choice(["normal", "scan", "flood"], n, p=[0.7, 0.2, 0.1]),
        "price": np.round(rng.normal(50, 10, n), 3),
    }


def _table(cols):
    arrays = dict(cols)
    arrays["service"] = pa.array(cols["service"]).dictionary_encode()
    return pa.table(arrays)


def _write_csv(path, cols):
    names = list(cols)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for i in range(len(cols["dur"])):
            row = []
            for c in names:
                v = cols[c][i]
                row.append(str(int(v)) if isinstance(v, np.bool_) else str(v))
            f.write(",".join(row) + "\n")


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """Three files, row groups of 100 rows (not aligned with the store chunks)."""
    d = tmp_path_factory.mktemp("pq") / "flows"
    (d / "sub").mkdir(parents=True)  # sorted after part-1: files go in path order
    table = _table(_columns())
    pq.write_table(table.slice(0, 700), d / "part-0.parquet", row_group_size=100)
    pq.write_table(table.slice(700, 500), d / "part-1.parquet", row_group_size=100)
    pq.write_table(table.slice(1200), d / "sub" / "part-2.parquet", row_group_size=100)
    (d / "_SUCCESS").write_text("")
    return d


def test_parquet_equals_csv_of_the_same_rows(parquet_dir, tmp_path):
    csv = tmp_path / "flows.csv"
    _write_csv(csv, _columns())
    opts = dict(label="label", normal="normal", targets="price", chunk_rows=128)
    a = ingest_parquet(parquet_dir, tmp_path / "p.zarr", **opts)
    b = ingest_csv(csv, tmp_path / "c.zarr", fmt="generic", header=True,
                   categorical="proto,service", **opts)  # fmt: skip
    p, c = open_store(tmp_path / "p.zarr"), open_store(tmp_path / "c.zarr")
    assert a["rows"] == b["rows"] == p.n_rows == N
    assert a["files"] == 3 and a["format"] == "parquet" and p.attrs["format"] == "parquet"
    assert p.feature_names == c.feature_names == [
        "dur", "bytes", "syn", "proto=icmp", "proto=tcp", "proto=udp", "proto=<unknown>",
        "service=dns", "service=ftp", "service=http", "service=ssh", "service=<unknown>",
    ]  # fmt: skip
    for name in ("features", "labels", "split", "targets"):
        np.testing.assert_array_equal(getattr(p, name)[:], getattr(c, name)[:])
    assert p.label_classes == c.label_classes and p.label_classes[0] == "normal"
    for key in ("stats", "target_stats"):  # equal up to the order of summation
        for what in ("mean", "std"):
            np.testing.assert_allclose(p.attrs[key][what], c.attrs[key][what], rtol=1e-12)
        assert p.attrs[key]["count"] == c.attrs[key]["count"]
    assert a["splits"] == b["splits"] and a["labels"] == b["labels"]
    assert p.chunk_rows == 128 and p.features.chunks == (128, 12)


def test_parquet_round_trip_statistics_and_splits(parquet_dir, tmp_path):
    cols = _columns()
    rep = ingest_parquet(parquet_dir, tmp_path / "s.zarr", label="label", chunk_rows=256,
                         stats_rows="all")  # fmt: skip
    st = open_store(tmp_path / "s.zarr")
    x = st.features[:].astype(np.float64)
    np.testing.assert_array_equal(x[:, 0], cols["dur"].astype(np.float32))
    np.testing.assert_array_equal(x[:, 2], cols["syn"])
    np.testing.assert_allclose(st.attrs["stats"]["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st.attrs["stats"]["std"], x.std(0), rtol=1e-9, atol=1e-12)
    assert rep["stats_rows"] == N
    np.testing.assert_array_equal(st.split[:], assign_splits(0, 0, N, (0.8, 0.1, 0.1)))
    np.testing.assert_array_equal(np.asarray(st.label_classes)[st.labels[:]], cols["label"])
    assert st.targets is None  # price is a feature here
    assert "price" in st.feature_names


def test_file_directory_and_glob_agree(parquet_dir, tmp_path):
    one = tmp_path / "one.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in parquet_mod.parquet_files(
        parquet_dir)]), one, row_group_size=333)  # fmt: skip
    ingest(one, tmp_path / "a.zarr", label="label")
    ingest(parquet_dir, tmp_path / "b.zarr", label="label")
    rep = ingest(str(parquet_dir / "**" / "*.parquet"), tmp_path / "c.zarr", label="label")
    assert rep["format"] == "parquet" and "match the pattern" in rep["format_detected"]
    a, b, c = (open_store(tmp_path / f"{k}.zarr") for k in "abc")
    for name in ("features", "labels", "split"):
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:])
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(c, name)[:])


def _bad_table():
    cols = _columns(12, seed=1)
    t = {k: pa.array(v) for k, v in cols.items()}
    dur = cols["dur"].tolist()
    dur[2] = None  # row 3: null
    dur[5] = float("nan")  # row 6: NaN
    t["dur"] = pa.array(dur, pa.float64())
    price = cols["price"].tolist()
    price[7] = float("inf")  # row 8: target inf
    t["price"] = pa.array(price)
    proto = cols["proto"].tolist()
    proto[9] = None  # a null category is the empty string, not a bad row
    t["proto"] = pa.array(proto)
    label = cols["label"].tolist()
    label[10] = None  # a null label: unlabelled row
    t["label"] = pa.array(label)
    return pa.table(t)


def test_bad_rows_error_and_skip(tmp_path):
    src = tmp_path / "bad.parquet"
    pq.write_table(_bad_table(), src, row_group_size=5)
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError) as err:
        ingest_parquet(src, out, label="label", targets="price", batch_rows=5)
    msg = str(err.value)
    assert "row 3: null value in column dur" in msg and "rows 1-5" in msg
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]

    rep = ingest_parquet(src, out, label="label", targets="price", on_bad_rows="skip")
    assert rep["bad_rows"]["rows"] == [3, 6, 8]
    reasons = [e["reason"] for e in rep["bad_rows"]["examples"]]
    assert reasons == ["null value in column dur", "non-finite value nan in column dur",
                       "non-finite value inf in column price"]  # fmt: skip
    st = open_store(out)
    assert st.n_rows == 9 and st.attrs["bad_rows"]["rows"] == [3, 6, 8]
    keep = [0, 1, 3, 4, 6, 8, 9, 10, 11]
    np.testing.assert_array_equal(st.split[:], assign_splits(0, 0, 12, (0.8, 0.1, 0.1))[keep])
    assert "proto=" in st.feature_names  # the null category
    assert st.labels[:][keep.index(10)] == -1


def test_bad_rows_name_the_file_when_there_are_several(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    pq.write_table(_table(_columns(10)), d / "a.parquet")
    pq.write_table(_bad_table(), d / "b.parquet")
    rep = ingest_parquet(d, tmp_path / "s.zarr", label="label", on_bad_rows="skip")
    assert rep["bad_rows"]["rows"] == [13, 16, 18]
    assert rep["bad_rows"]["examples"][0]["reason"] == "null value in column dur (b.parquet row 3)"


def test_column_kinds(tmp_path):
    n = 20
    rng = np.random.default_rng(2)
    table = pa.table({
        "ts": pa.array([datetime.datetime(2024, 1, 1)] * n),
        "uid": [f"C{i}" for i in range(n)],
        "x": rng.normal(size=n),
        "k": rng.integers(0, 3, n),
        "t": [str(v) for v in rng.normal(size=n)],
    })  # fmt: skip
    src = tmp_path / "k.parquet"
    pq.write_table(table, src)
    with pytest.raises(ValueError, match=r"column 'ts' has type timestamp.*ignore=ts"):
        ingest_parquet(src, tmp_path / "a.zarr", ignore="uid")
    rep = ingest_parquet(src, tmp_path / "a.zarr", ignore="ts,uid", categorical="k", targets="t")
    st = open_store(tmp_path / "a.zarr")
    assert st.feature_names == ["x", "k=0", "k=1", "k=2", "k=<unknown>"]
    np.testing.assert_allclose(st.targets[:, 0], [float(v) for v in table["t"].to_pylist()],
                               rtol=1e-6)  # fmt: skip
    assert rep["targets"] == ["t"] and st.attrs["ignored_columns"] == ["ts", "uid"]


def test_many_valued_text_column_needs_a_decision(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_mod, "MAX_AUTO_CATEGORIES", 5)
    src = tmp_path / "u.parquet"
    pq.write_table(pa.table({"uid": [f"C{i}" for i in range(8)], "x": np.arange(8.0)}), src)
    with pytest.raises(ValueError, match="'uid' has more than 5 distinct values.*ignore=uid"):
        ingest_parquet(src, tmp_path / "a.zarr")
    ingest_parquet(src, tmp_path / "a.zarr", ignore="uid")
    ingest_parquet(src, tmp_path / "b.zarr", categorical="uid")
    assert open_store(tmp_path / "b.zarr").n_features == 8 + 1 + 1


def test_files_must_share_columns(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), d / "1.parquet")
    pq.write_table(pa.table({"a": [1.0], "c": [2.0]}), d / "2.parquet")
    with pytest.raises(ValueError, match="every file must have the same columns"):
        ingest_parquet(d, tmp_path / "s.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        ingest_parquet(tmp_path / "empty", tmp_path / "t.zarr")


def test_reference_encoders(parquet_dir, tmp_path):
    ingest_parquet(parquet_dir, tmp_path / "train.zarr", label="label", normal="normal")
    cols = {k: v.tolist() for k, v in _columns(10, seed=5).items()}
    cols["proto"][3] = "sctp"
    cols["label"][4] = "zero_day"
    src = tmp_path / "new.parquet"
    pq.write_table(_table(cols), src)
    rep = ingest(src, tmp_path / "new.zarr", reference=tmp_path / "train.zarr")
    ref, st = open_store(tmp_path / "train.zarr"), open_store(tmp_path / "new.zarr")
    assert st.feature_names == ref.feature_names and st.attrs["stats"]["mean"] == ref.attrs[
        "stats"]["mean"]  # fmt: skip
    assert rep["unknown_categories"] == {"proto": 1, "service": 0}
    assert st.features[3, st.feature_names.index("proto=<unknown>")] == 1
    assert st.label_classes[: len(ref.label_classes)] == ref.label_classes
    assert st.label_classes[st.labels[4]] == "zero_day"


def test_cli_detects_parquet(parquet_dir, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["ingest", str(parquet_dir), "--out", str(out), "--label", "label",
                 "--target", "price", "--chunk-rows", "500"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["format"] == "parquet" and report["format_detected"]
    assert "format parquet, detected: directory of 3 Parquet file(s)" in captured.err
    st = open_store(out)
    assert st.chunk_rows == 500 and st.target_names == ["price"]
    np.testing.assert_allclose(st.targets[:, 0], _columns()["price"], rtol=1e-6)

    assert main(["ingest", str(parquet_dir), "--out", str(tmp_path / "x.zarr"),
                 "--sep", "tab"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "apply only to CSV/TSV input" in err and err.count("\n") == 1
