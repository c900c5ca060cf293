"""CSV -> Zarr ingest: layout, encoders, statistics, splits, bad rows, reference, CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data import schema
from dimplicit.data.ingest import ingest_csv
from dimplicit.data.preprocess import assign_splits, standardize
from dimplicit.data.store import StoreWriter, as_dask, open_store

KDD_ROWS = 4014  # rows in tests/data/nsl-kdd/KDDTrain+_slice.txt


def _parse(path: Path) -> list[list[str]]:
    """An independent reference parse of a whole (small) CSV file."""
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


@pytest.fixture(scope="module")
def kdd_csv(slice_data) -> Path:
    """The shipped KDDTrain+.txt slice (first 4000 rows + one row per value they lack)."""
    return slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"


@pytest.fixture(scope="module")
def kdd_store(kdd_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("kdd") / "kdd.zarr"
    report = ingest_csv(kdd_csv, out, fmt="nsl-kdd", chunk_rows=1000)
    return out, report


def test_nslkdd_layout_and_one_hot(kdd_csv, kdd_store):
    out, report = kdd_store
    st = open_store(out)
    rows = _parse(kdd_csv)
    assert report["rows"] == st.n_rows == KDD_ROWS
    assert report["bad_rows"]["count"] == 0
    # 38 numeric + (3 + 70 + 11) categories + 3 <unknown> slots
    assert st.n_features == report["n_features"] == 125
    assert st.chunk_rows == 1000
    assert st.attrs["format"] == "nsl-kdd"
    assert st.attrs["columns"] == schema.NSLKDD_COLUMNS
    for col, vocab in schema.NSLKDD_CATEGORIES.items():
        assert st.categories[col] == [*vocab, schema.UNKNOWN]
    names = st.feature_names
    assert "service=http" in names and "service=<unknown>" in names
    assert "label" not in names and "difficulty" not in names

    x = st.features[:]
    numeric = [c for c in schema.NSLKDD_COLUMNS if c not in ("label", "difficulty")]
    numeric = [c for c in numeric if c not in schema.NSLKDD_CATEGORIES]
    for i in (0, 1, 999, 1000, 2345, KDD_ROWS - 1):
        raw = dict(zip(schema.NSLKDD_COLUMNS, rows[i], strict=True))
        for c in numeric:
            assert x[i, names.index(c)] == np.float32(float(raw[c])), (i, c)
        for c in schema.NSLKDD_CATEGORIES:
            block = [j for j, n in enumerate(names) if n.startswith(c + "=")]
            assert x[i, block].sum() == 1.0
            assert x[i, names.index(f"{c}={raw[c]}")] == 1.0
    # every one-hot block sums to one on every row
    for c in schema.NSLKDD_CATEGORIES:
        block = [j for j, n in enumerate(names) if n.startswith(c + "=")]
        np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0)


def test_nslkdd_labels(kdd_csv, kdd_store):
    st = open_store(kdd_store[0])
    rows = _parse(kdd_csv)
    classes = st.attrs["label_classes"]
    assert classes[0] == "normal" and st.attrs["normal_classes"] == ["normal"]
    decoded = np.asarray(classes)[st.labels[:]]
    np.testing.assert_array_equal(decoded, [r[41] for r in rows])
    np.testing.assert_array_equal(st.is_normal(st.labels[:]), decoded == "normal")
    assert kdd_store[1]["labels"]["normal"] == int((decoded == "normal").sum())


def test_stats_match_numpy(kdd_csv, kdd_store, tmp_path):
    st = open_store(kdd_store[0])
    x = st.features[:].astype(np.float64)
    train = st.split[:] == 0
    stats = st.attrs["stats"]
    assert stats["count"] == train.sum()
    np.testing.assert_allclose(stats["mean"], x[train].mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["std"], x[train].std(axis=0), rtol=1e-9, atol=1e-12)
    assert st.mean.dtype == np.float32 and st.std.dtype == np.float32

    out = tmp_path / "all_normal.zarr"
    ingest_csv(kdd_csv, out, stats_rows="all", stats_normal_only=True, chunk_rows=700)
    st2 = open_store(out)
    sel = st2.is_normal(st2.labels[:])
    x2 = st2.features[:].astype(np.float64)
    assert st2.attrs["stats"]["count"] == sel.sum()
    np.testing.assert_allclose(st2.attrs["stats"]["mean"], x2[sel].mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st2.attrs["stats"]["std"], x2[sel].std(0), rtol=1e-9, atol=1e-12)


def test_splits_deterministic_and_chunk_independent(kdd_csv, kdd_store, tmp_path):
    a = open_store(kdd_store[0])
    out = tmp_path / "other_chunks.zarr"
    ingest_csv(kdd_csv, out, chunk_rows=777)
    b = open_store(out)
    assert b.chunk_rows == 777
    for name in ("features", "labels", "split"):
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:])
    split = a.split[:]
    np.testing.assert_array_equal(split, assign_splits(0, 0, KDD_ROWS, (0.8, 0.1, 0.1)))
    # a range drawn on its own equals the same range of a longer draw
    np.testing.assert_array_equal(split[1234:2345], assign_splits(0, 1234, 1111, (0.8, 0.1, 0.1)))
    assert not np.array_equal(split, assign_splits(1, 0, KDD_ROWS, (0.8, 0.1, 0.1)))
    frac = np.bincount(split, minlength=3) / KDD_ROWS
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.03)
    assert a.attrs["split_fractions"] == [0.8, 0.1, 0.1] and a.attrs["split_seed"] == 0


# (data fixture, file, rows, negatives, positives): the shipped slice, and the full file
HTRU2_FILES = {
    "slice": ("slice_data", "HTRU_2_slice.csv", 4475, 4041, 434),
    "full": ("full_data", "HTRU_2.csv", 17898, 16259, 1639),
}


@pytest.mark.parametrize("which", list(HTRU2_FILES))
def test_htru2_file(which, request, tmp_path):
    fixture, name, n_rows, n_neg, n_pos = HTRU2_FILES[which]
    src = request.getfixturevalue(fixture) / "htru2" / name
    out = tmp_path / "htru2.zarr"
    report = ingest_csv(src, out, fmt="htru2", chunk_rows=4096)
    st = open_store(out)
    rows = _parse(src)  # bare CR line endings, no trailing newline
    assert report["rows"] == st.n_rows == len(rows) == n_rows
    assert st.feature_names == schema.HTRU2_COLUMNS[:8]
    expected = np.array([[float(v) for v in r[:8]] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(st.features[:], expected)
    labels = np.asarray(st.attrs["label_classes"])[st.labels[:]]
    np.testing.assert_array_equal(labels, [r[8] for r in rows])
    assert report["labels"] == {"0": n_neg, "1": n_pos}
    assert st.attrs["normal_classes"] == ["0"]
    assert st.is_normal(st.labels[:]).sum() == n_neg


def _htru_rows(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [",".join(f"{v:.4f}" for v in rng.normal(size=8)) + f",{i % 2}" for i in range(n)]


def test_bad_rows_error_keeps_existing_store(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("\n".join(_htru_rows(50)) + "\n")
    out = tmp_path / "store.zarr"
    ingest_csv(good, out, fmt="htru2")
    before = open_store(out).features[:]

    lines = _htru_rows(8, seed=1)
    lines[1] = lines[1].rsplit(",", 2)[0] + ",1"  # row 2: 8 fields
    lines[3] = "abc," + lines[3].split(",", 1)[1]  # row 4: unparsable
    fields = lines[4].split(",")
    fields[2] = "nan"
    lines[4] = ",".join(fields)  # row 5: NaN
    lines[6] = "inf," + lines[6].split(",", 1)[1]  # row 7: inf
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")

    with pytest.raises(ValueError) as err:
        ingest_csv(bad, out, fmt="htru2", overwrite=True)
    msg = str(err.value)
    assert str(bad) in msg
    for r, what in ((2, "expected 9 fields, got 8"), (4, "'abc'"), (5, "'nan'"), (7, "'inf'")):
        assert f"row {r}:" in msg and what in msg
    np.testing.assert_array_equal(open_store(out).features[:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "store.zarr"]

    report = ingest_csv(bad, out, fmt="htru2", on_bad_rows="skip", overwrite=True)
    assert report["bad_rows"]["count"] == 4
    assert report["bad_rows"]["rows"] == [2, 4, 5, 7]
    st = open_store(out)
    assert st.n_rows == report["rows"] == 4
    assert st.attrs["bad_rows"]["rows"] == [2, 4, 5, 7]
    assert st.attrs["bad_rows"]["policy"] == "skip"
    kept = np.array([[float(v) for v in lines[i].split(",")[:8]] for i in (0, 2, 5, 7)])
    np.testing.assert_array_equal(st.features[:], kept.astype(np.float32))


def test_reference_maps_unseen_values(kdd_csv, kdd_store, tmp_path):
    rows = _parse(kdd_csv)[:20]
    rows[3][2] = "brand_new_service"
    rows[5][1] = "sctp"
    rows[7][41] = "zero_day"
    score_csv = tmp_path / "score.txt"
    with open(score_csv, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    ref = open_store(kdd_store[0])
    out = tmp_path / "score.zarr"
    report = ingest_csv(score_csv, out, reference=kdd_store[0])
    st = open_store(out)
    assert st.feature_names == ref.feature_names
    assert st.categories == ref.categories
    names = st.feature_names
    x = st.features[:]
    assert x[3, names.index("service=<unknown>")] == 1.0
    assert x[3, [i for i, n in enumerate(names) if n.startswith("service=")]].sum() == 1.0
    assert x[5, names.index("protocol_type=<unknown>")] == 1.0
    assert report["unknown_categories"] == {"protocol_type": 1, "service": 1, "flag": 0}
    classes = st.attrs["label_classes"]
    assert classes[: len(ref.attrs["label_classes"])] == ref.attrs["label_classes"]
    assert classes[st.labels[7]] == "zero_day"
    np.testing.assert_array_equal(st.mean, ref.mean)
    np.testing.assert_array_equal(st.std, ref.std)
    # every other row encodes exactly as in the reference store
    same = [i for i in range(20) if i not in (3, 5)]
    np.testing.assert_array_equal(x[same], ref.features[:20][same])


def test_generic_header_categorical_and_reference(tmp_path):
    src = tmp_path / "gen.csv"
    src.write_text("a,kind,b,y\n1,x,2.5,ok\n2,z,3.5,bad\n3,x,4.5,ok\n4,y,5.5,ok\n")
    out = tmp_path / "gen.zarr"
    ingest_csv(
        src,
        out,
        fmt="generic",
        header=True,
        label="y",
        categorical="kind",
        normal="ok",
        stats_rows="all",
        stats_normal_only=True,
    )
    st = open_store(out)
    assert st.feature_names == ["a", "kind=x", "kind=y", "kind=z", "kind=<unknown>", "b"]
    np.testing.assert_array_equal(st.features[1], [2, 0, 0, 1, 0, 3.5])
    assert st.attrs["label_classes"] == ["ok", "bad"]
    np.testing.assert_array_equal(st.is_normal(st.labels[:]), [True, False, True, True])
    assert st.attrs["stats"]["count"] == 3
    np.testing.assert_allclose(st.attrs["stats"]["mean"][0], 8 / 3)

    new = tmp_path / "new.csv"
    new.write_text("a,kind,b,y\n5,w,6.5,ok\n")
    out2 = tmp_path / "new.zarr"
    ingest_csv(new, out2, fmt="generic", header=True, reference=out)
    np.testing.assert_array_equal(open_store(out2).features[0], [5, 0, 0, 0, 1, 6.5])


def test_overwrite_refused(tmp_path):
    src = tmp_path / "h.csv"
    src.write_text("\n".join(_htru_rows(10)))
    out = tmp_path / "s.zarr"
    ingest_csv(src, out, fmt="htru2")
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        ingest_csv(src, out, fmt="htru2")
    ingest_csv(src, out, fmt="htru2", overwrite=True)
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a dimplicit store"):
        ingest_csv(src, other, fmt="htru2", overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="nope"):
        open_store(tmp_path / "nope.zarr")
    with pytest.raises(ValueError, match="not a dimplicit store"):
        open_store(other)


def test_writer_aborts_on_exception(tmp_path):
    out = tmp_path / "w.zarr"
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(out, ["a", "b"], 4) as w:
        w.append(np.ones((10, 2)), np.zeros(10), np.zeros(10))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_as_dask_and_standardize(kdd_store):
    st = open_store(kdd_store[0])
    d = as_dask(st)
    chunks = (*[1000] * (KDD_ROWS // 1000), KDD_ROWS % 1000)  # 1000-row chunks, short tail
    assert d.features.chunks[0] == d.labels.chunks[0] == d.split.chunks[0] == chunks
    assert d.features.chunks[1] == (125,)
    block = st.features[:1000]
    expected = (block.astype(np.float64) - st.mean) / np.where(st.std == 0, 1, st.std)
    z = standardize(block, st.mean, st.std)
    assert z is block and np.isfinite(z).all()
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    constant = st.feature_names.index("num_outbound_cmds")
    assert st.std[constant] == 0 and (z[:, constant] == 0).all()


def test_cli_ingest(kdd_csv, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["ingest", str(kdd_csv), "--out", str(out), "--chunk-rows", "1024"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == KDD_ROWS and report["n_features"] == 125
    assert report["rows_per_s"] > 0
    assert open_store(out).chunk_rows == 1024

    # existing store without --overwrite: one-line error, exit status 2
    assert main(["ingest", str(kdd_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1

    bad = tmp_path / "bad.txt"
    shutil.copy(kdd_csv, bad)
    with open(bad, "a") as f:
        f.write("0,tcp,http\n")
    args = ["ingest", str(bad), "--out", str(tmp_path / "b.zarr"), "--split-fractions", "1,0,0"]
    assert main(args) == 2
    assert f"row {KDD_ROWS + 1}: expected 43 fields, got 3" in capsys.readouterr().err
    assert main([*args, "--on-bad-rows", "skip", "--stats-rows", "all"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["bad_rows"]["rows"] == [KDD_ROWS + 1]
    assert "skipped 1 bad row" in captured.err


def test_cli_split_fractions_and_its_old_spelling(kdd_csv, tmp_path, capsys):
    for flag in ("--split-fractions", "--split"):  # --split: hidden alias
        out = tmp_path / f"{flag}.zarr"
        assert main(["ingest", str(kdd_csv), "--out", str(out), "--format", "nsl-kdd", flag,
                     "0,1,0"]) == 0  # fmt: skip
        assert json.loads(capsys.readouterr().out)["splits"] == {
            "train": 0, "validation": KDD_ROWS, "test": 0
        }  # fmt: skip


def test_cli_ingest_progress_on_stderr_unless_quiet(kdd_csv, kdd_store, tmp_path, monkeypatch,
                                                    capsys):  # fmt: skip
    """CSV (rows, rows/s; no total), Parquet and adopted Zarr (rows of a known total)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dimplicit import progress

    parquet = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": np.arange(5000.0), "b": np.ones(5000)}), parquet,
                   row_group_size=1000)  # fmt: skip
    inputs = {
        "csv": [str(kdd_csv), "--format", "nsl-kdd"],
        "parquet": [str(parquet), "--format", "parquet"],
        "zarr": ["--zarr-features", str(kdd_store[0])],
    }
    shown = {"csv": f"{KDD_ROWS / 1000:.2f}krows", "parquet": "5.00k/5.00k",
             "zarr": f"{KDD_ROWS / 1000:.2f}k/{KDD_ROWS / 1000:.2f}k"}  # fmt: skip
    # As on a terminal: progress_enabled says stderr is one.
    monkeypatch.setattr(progress, "progress_enabled", lambda quiet=False: not quiet)
    for kind, given in inputs.items():
        out = ["--out", str(tmp_path / f"{kind}.zarr"), "--overwrite"]
        assert main(["ingest", *given, *out]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["rows"] > 0
        assert "ingest" in captured.err and "rows/s" in captured.err, kind
        assert shown[kind] in captured.err, (kind, captured.err)
        assert main(["ingest", *given, *out, "--quiet"]) == 0
        assert capsys.readouterr().err == "", kind
    monkeypatch.undo()  # stderr is not a terminal under pytest: no bar without --quiet either
    assert main(["ingest", *inputs["csv"], "--out", str(tmp_path / "c.zarr")]) == 0
    assert capsys.readouterr().err == ""
