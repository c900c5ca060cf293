"""Outputs for every task: predict (classify, regress, autoencode), evaluate, score's refusals."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import zarr
from conftest import write_teacher_store
from sklearn import metrics as skm

from dimplicit.anomaly.evaluate import evaluate, plot
from dimplicit.anomaly.score import score_store
from dimplicit.cli import main
from dimplicit.data.preprocess import standardize
from dimplicit.data.store import (
    PREDICTIONS_FORMAT,
    OutputExistsError,
    StoreWriter,
    open_store,
    output_kind,
)
from dimplicit.data.synth import synth_traffic
from dimplicit.forward import predict
from dimplicit.losses import row_rmse
from dimplicit.model import build_model, dense_model
from dimplicit.predict import predict_store

pytestmark = pytest.mark.timeout(240)

CHUNK = 700  # 3000 rows: four full chunks and a short last one


def local(fn, *args, **kw):
    """Run on the threaded local scheduler (no cluster start in these tests)."""
    with dask.config.set(scheduler="threads"):
        return fn(*args, **kw)


def in_memory(model, store):
    """``Ŷ`` of every row at once, standardised as the model was trained: the reference."""
    U = standardize(store.features[:].astype(np.float32), store.mean, store.std)
    return predict(model, U)[0].astype(np.float64)


def training_meta(store, task, **more):
    return {
        "task": task,
        "store": str(store.path),
        "feature_names": store.feature_names,
        "label_classes": store.label_classes,
        "normal_classes": store.normal_classes,
        "scaler": {"mean": store.mean.tolist(), "std": store.std.tolist()},
        **more,
    }


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A 3-class store (normal class "0") and a classifier of its features."""
    path = write_teacher_store(tmp_path_factory.mktemp("clf") / "c.zarr", n=3000, chunk=CHUNK)
    store = open_store(path)
    model = dense_model(store.n_features, 8, 3, seed=0)
    model.meta["training"] = training_meta(store, "classify")
    return store, model


def write_regression_store(path, n=3000, chunk=CHUNK, seed=0):
    """Features, two float targets far from mean 0 / std 1 (so the unscaling shows)."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, 5)).astype(np.float32)
    T = np.stack([50 + 10 * U[:, 0] - 5 * U[:, 1], -3 + 0.5 * U[:, 2]], axis=1)
    T += 0.1 * rng.standard_normal(T.shape)
    split = rng.integers(0, 3, n).astype(np.int8)
    names = [f"x{i}" for i in range(5)]
    stats = {"mean": U.mean(0).tolist(), "std": U.std(0).tolist(), "count": n, "rows": "all"}
    with StoreWriter(path, names, chunk_rows=chunk, target_names=["y", "z"]) as w:
        w.append(U, np.full(n, -1, np.int32), split, targets=T)
        w.close({"format": "generic", "stats": stats, "columns": names, "categories": {}})
    return path


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    store = open_store(write_regression_store(tmp_path_factory.mktemp("reg") / "r.zarr"))
    model = dense_model(store.n_features, 8, 2, seed=1)
    scaler = {"mean": store.target_mean.tolist(), "std": store.target_std.tolist()}
    model.meta["training"] = training_meta(
        store, "regress", target_names=store.target_names, target_scaler=scaler
    )
    return store, model


@pytest.fixture(scope="module")
def ae(tmp_path_factory):
    path = tmp_path_factory.mktemp("ae") / "t.zarr"
    synth_traffic(2000, path, seed=3, chunk_rows=CHUNK)
    store = open_store(path)
    model = build_model("ae-v1:5,32,16", store.n_features, store.n_features, seed=0)
    model.meta["training"] = training_meta(store, "autoencode")
    return store, model


# ----------------------------------------------------------------------------- predict


def test_classify_predictions_are_chunk_aligned_and_equal_in_memory(clf, tmp_path):
    store, model = clf
    report = local(predict_store, model, store.path, tmp_path / "p.zarr")
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert g.attrs["format"] == PREDICTIONS_FORMAT and g.attrs["task"] == "classify"
    assert g.attrs["label_classes"] == store.label_classes
    assert g["predicted"].dtype == np.int32 and g["proba"].dtype == np.float32
    assert g["predicted"].shape == (3000,) and g["proba"].shape == (3000, 3)
    # Aligned with the input: every output chunk is one input chunk.
    assert g["predicted"].chunks == (CHUNK,) and g["proba"].chunks == (CHUNK, 3)
    Y = in_memory(model, store)
    P = np.exp(Y - Y.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    np.testing.assert_allclose(g["proba"][:], P, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(g["predicted"][:], P.argmax(1))
    assert report["task"] == "classify" and report["rows"] == 3000
    assert report["unconverged_rows"] == 0
    assert sum(report["class_counts"].values()) == 3000


def test_regress_predictions_are_in_the_targets_units(reg, tmp_path):
    store, model = reg
    local(predict_store, model, store.path, tmp_path / "p.zarr")
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert g.attrs["task"] == "regress" and g.attrs["target_names"] == ["y", "z"]
    assert g["prediction"].dtype == np.float32 and g["prediction"].chunks == (CHUNK, 2)
    expect = in_memory(model, store) * store.target_std + store.target_mean
    np.testing.assert_allclose(g["prediction"][:], expect, rtol=1e-4, atol=1e-4)
    # A model trained without target standardisation predicts as is.
    plain = model.copy()
    plain.meta["training"] = {**model.meta["training"], "target_scaler": None}
    local(predict_store, plain, store.path, tmp_path / "q.zarr")
    q = zarr.open_group(tmp_path / "q.zarr", mode="r")["prediction"][:]
    np.testing.assert_allclose(q, in_memory(model, store), rtol=1e-4, atol=1e-5)


def test_autoencode_predictions_are_the_anomaly_scores(ae, tmp_path):
    store, model = ae
    report = local(predict_store, model, store.path, tmp_path / "p.zarr")
    local(score_store, model, store.path, tmp_path / "s.zarr")
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    s = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert output_kind(tmp_path / "p.zarr") == PREDICTIONS_FORMAT
    assert g.attrs["task"] == "autoencode" and report["task"] == "autoencode"
    for name in ("raw_score", "score", "is_anomaly"):
        assert g[name].chunks == (CHUNK,)
        np.testing.assert_array_equal(g[name][:], s[name][:])
    U = standardize(store.features[:].astype(np.float32), store.mean, store.std)
    np.testing.assert_allclose(g["raw_score"][:], row_rmse(predict(model, U)[0], U), rtol=2e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_unconverged_rows_get_no_prediction(clf, tmp_path):
    """relu with A = 2I and a positive drive has no fixed point: no row gets a class."""
    store, model = clf
    bad = model.copy()
    bad.params["A"] = 2 * np.eye(bad.n_hidden, dtype=np.float32)
    bad.params["B"] = 0.01 * bad.params["B"]
    bad.params["b_x"] = np.full_like(bad.params["b_x"], 5.0)  # a positive drive for every row
    bad.meta["training"] = {**model.meta["training"], "forward": {"max_iter": 20}}
    report = local(predict_store, bad, store.path, tmp_path / "p.zarr")
    g = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert report["unconverged_rows"] == 3000 == g.attrs["unconverged_rows"]
    assert (g["predicted"][:] == -1).all() and np.isnan(g["proba"][:]).all()
    with pytest.raises(ValueError, match="no converged labelled rows"):
        evaluate(tmp_path / "p.zarr")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_classify_equals_scikit_learn(clf, tmp_path):
    store, model = clf
    out = tmp_path / "p.zarr"
    local(predict_store, model, store.path, out)
    pred = zarr.open_group(out, mode="r")["predicted"][:]
    test = store.split[:] == 0  # the teacher store has train (0) and validation (1) rows
    y, p = store.labels[:][test], pred[test]
    m = evaluate(out, split="train")
    assert m["task"] == "classify" and m["n"] == int(test.sum()) and m["split"] == "train"
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p, labels=[0, 1, 2]).tolist()
    assert m["classes"] == ["0", "1", "2"]
    paths = plot(out, tmp_path / "plots", split="train")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["confusion_matrix.png"]


def test_evaluate_classify_matches_classes_by_name(clf, tmp_path):
    """The truth store may code the classes differently: names decide, not codes."""
    store, model = clf
    out = tmp_path / "p.zarr"
    local(predict_store, model, store.path, out)
    # The same rows, classes listed in another order plus one the model never saw.
    classes = ["2", "new", "0", "1"]
    recode = np.asarray([classes.index(c) for c in store.label_classes], dtype=np.int32)
    with StoreWriter(tmp_path / "other.zarr", store.feature_names, chunk_rows=CHUNK) as w:
        w.append(store.features[:], recode[store.labels[:]], store.split[:])
        w.close({**store.attrs, "label_classes": classes})
    same = evaluate(out)
    other = evaluate(out, tmp_path / "other.zarr")
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "n"):
        assert other[key] == pytest.approx(same[key])
    assert other["classes"] == ["0", "1", "2", "new"]
    assert np.asarray(other["confusion_matrix"])[:3, :3].tolist() == same["confusion_matrix"]


def test_evaluate_regress_equals_scikit_learn(reg, tmp_path):
    store, model = reg
    out = tmp_path / "p.zarr"
    local(predict_store, model, store.path, out)
    pred = zarr.open_group(out, mode="r")["prediction"][:].astype(np.float64)
    test = store.split[:] == 2
    y, p = store.targets[:][test].astype(np.float64), pred[test]
    m = evaluate(out, split="test")
    assert m["task"] == "regress" and m["n"] == int(test.sum())
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y, p))
    for j, name in enumerate(["y", "z"]):
        t = m["per_target"][name]
        assert t["r2"] == pytest.approx(skm.r2_score(y[:, j], p[:, j]))
        assert t["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y[:, j], p[:, j])))
        assert t["mae"] == pytest.approx(skm.mean_absolute_error(y[:, j], p[:, j]))
    paths = plot(out, tmp_path / "plots", split="test")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["prediction_vs_target.png"]


def test_evaluate_regress_needs_targets(reg, clf, tmp_path):
    store, model = reg
    out = tmp_path / "p.zarr"
    local(predict_store, model, store.path, out)
    with pytest.raises(ValueError, match="has 3000 rows"):
        evaluate(out, write_teacher_store(tmp_path / "small.zarr", n=100, chunk=50))
    with pytest.raises(ValueError, match="no regression targets"):
        evaluate(out, clf[0].path)


def test_evaluate_anomaly_scores_of_predict_and_score_agree(ae, tmp_path):
    store, model = ae
    local(predict_store, model, store.path, tmp_path / "p.zarr")
    local(score_store, model, store.path, tmp_path / "s.zarr")
    a, b = evaluate(tmp_path / "p.zarr"), evaluate(tmp_path / "s.zarr")
    assert a == b and a["task"] == "autoencode" and {"f1", "mcc", "n"} <= set(a)


# ----------------------------------------------------------------------------- score


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_score_refuses_models_without_anomaly_scores(clf, reg, tmp_path, capsys):
    """Regression models and classifiers without normal classes: one line, exit 2."""
    no_normal = clf[1].copy()
    no_normal.meta["training"] = {**clf[1].meta["training"], "normal_classes": []}
    for model, store, what in (
        (reg[1], reg[0], "a regress model"),
        (no_normal, clf[0], "a classify model without normal classes"),
    ):
        path = model.save(tmp_path / "m.npz")
        code, out, err = cli(
            capsys, "score", "--model", path, "--data", store.path, "--out", tmp_path / "s.zarr"
        )
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and what in err and "'dimplicit predict'" in err, err
        assert not (tmp_path / "s.zarr").exists()
        with pytest.raises(ValueError, match="no anomaly score"):
            score_store(model, store.path, tmp_path / "s.zarr")


def test_score_of_a_classifier_with_normal_classes_flags_the_likelier_attacks(clf, tmp_path):
    """P(not normal) per row, flagged above 0.5 without a calibration: never all ones."""
    store, model = clf
    report = local(score_store, model, store.path, tmp_path / "s.zarr")
    g = zarr.open_group(tmp_path / "s.zarr", mode="r")
    Y = in_memory(model, store)
    P = np.exp(Y - Y.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    raw = 1 - P[:, store.label_classes.index("0")]
    np.testing.assert_allclose(g["raw_score"][:], raw, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(g["is_anomaly"][:], g["raw_score"][:] > 0.5)
    assert 0 < report["flagged"] < 3000 and not report["calibrated"]
    assert g.attrs["calibration"]["threshold"] == 0.5


# ----------------------------------------------------------------------------- --overwrite


def test_predict_overwrite_replaces_only_an_earlier_prediction(clf, tmp_path):
    store, model = clf
    out = tmp_path / "p.zarr"
    local(predict_store, model, store.path, out)
    with pytest.raises(OutputExistsError):
        local(predict_store, model, store.path, out)
    assert local(predict_store, model, store.path, out, overwrite=True)["rows"] == 3000
    # A score output is not a prediction output: --overwrite refuses it, untouched.
    local(score_store, model, store.path, tmp_path / "s.zarr")
    before = sorted(p.name for p in (tmp_path / "s.zarr").rglob("*"))
    with pytest.raises(FileExistsError, match="is a dimplicit score output, not a prediction"):
        local(predict_store, model, store.path, tmp_path / "s.zarr", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "s.zarr").rglob("*")) == before
    # Nor an arbitrary directory, nor the input store.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a dimplicit prediction output"):
        local(predict_store, model, store.path, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "precious"
    with pytest.raises(FileExistsError, match="overlaps the input"):
        local(predict_store, model, store.path, store.path, overwrite=True)
    assert open_store(store.path).n_rows == 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p.zarr", "s.zarr"]


def test_cli_predict_overwrite_guard_is_one_line(clf, tmp_path, capsys):
    store, model = clf
    path = model.save(tmp_path / "m.npz")
    args = ("predict", "--model", path, "--data", store.path, "--out", tmp_path / "p.zarr",
            "--workers", "1", "--no-processes")  # fmt: skip
    assert cli(capsys, *args)[0] == 0
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.endswith("pass --overwrite to replace it\n")
    assert "overwrite=" not in err
    code, out, err = cli(capsys, *args, "--overwrite")
    assert code == 0 and json.loads(out)["rows"] == 3000


# ----------------------------------------------------------------------------- end to end


def test_train_predict_evaluate_from_the_command_line(tmp_path, capsys):
    """A model trained by 'dimplicit train' carries what predict and evaluate need."""
    store = write_teacher_store(tmp_path / "t.zarr", n=2000, chunk=500)

    def run(*args):
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        return json.loads(out)

    summary = run("train", "--data", store, "--task", "classify", "--epochs", "3",
                  "--batch-size", "500", "--hidden", "16", "--lr", "0.01", "--executor", "local",
                  "--checkpoint-dir", tmp_path / "run", "--quiet")  # fmt: skip
    report = run("predict", "--model", summary["model"], "--data", store, "--out",
                 tmp_path / "p.zarr", "--workers", "1", "--no-processes")  # fmt: skip
    assert report["task"] == "classify" and report["rows"] == 2000
    metrics = run("evaluate", "--predictions", tmp_path / "p.zarr", "--split", "validation",
                  "--plot", tmp_path / "plots")  # fmt: skip
    assert metrics["task"] == "classify" and metrics["accuracy"] > 0.5, metrics
    assert (tmp_path / "plots" / "confusion_matrix.png").stat().st_size > 5000


def test_predict_a_csv_and_a_parquet_file_on_the_fly(tmp_path, capsys):
    """Files are ingested with the training store's encoders, then removed."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    n = 400
    cols = {"a": rng.standard_normal(n), "b": rng.standard_normal(n),
            "kind": rng.choice(["x", "y"], n), "label": rng.choice(["ok", "bad"], n)}  # fmt: skip
    csv = tmp_path / "rows.csv"
    lines = ["a,b,kind,label"] + [
        f"{a:.6f},{b:.6f},{k},{lab}"
        for a, b, k, lab in zip(cols["a"], cols["b"], cols["kind"], cols["label"], strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    ref = tmp_path / "ref.zarr"
    code, _, err = cli(capsys, "ingest", csv, "--out", ref, "--format", "generic", "--header",
                       "--label", "label", "--categorical", "kind", "--normal", "ok")  # fmt: skip
    assert code == 0, err
    store = open_store(ref)
    model = dense_model(store.n_features, 6, len(store.label_classes), seed=2)
    model.meta["training"] = training_meta(store, "classify")
    path = model.save(tmp_path / "m.npz")
    pq.write_table(pa.table(cols), tmp_path / "rows.parquet")
    expect = None
    for data in (csv, tmp_path / "rows.parquet"):
        out = tmp_path / f"{data.suffix[1:]}.zarr"
        code, stdout, err = cli(capsys, "predict", "--model", path, "--data", data, "--out", out,
                                "--workers", "1", "--no-processes")  # fmt: skip
        assert code == 0, err
        report = json.loads(stdout)
        assert report["rows"] == n and report["ingest"]["rows"] == n
        got = zarr.open_group(out, mode="r")["predicted"][:]
        expect = got if expect is None else expect
        np.testing.assert_array_equal(got, expect)
    # The ingested temporaries are gone.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_predict_refuses_a_zarr_that_is_not_a_store(clf, tmp_path, capsys):
    store, model = clf
    path = model.save(tmp_path / "m.npz")
    zarr.open_array(tmp_path / "raw.zarr", mode="w", shape=(10, 6), dtype="f4", zarr_format=3)
    code, _, err = cli(capsys, "predict", "--model", path, "--data", tmp_path / "raw.zarr",
                       "--out", tmp_path / "p.zarr")  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "dimplicit ingest --zarr-features" in err


# ----------------------------------------------------------------------------- progress


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_store_with_progress_writes_whole_chunk_groups(scheduler, tmp_path, monkeypatch, capsys):
    import contextlib

    import dask.array as da

    from dimplicit import progress

    monkeypatch.setattr(progress, "_MAX_GROUPS", 8)  # distributed: 8 groups of 4 chunks
    x = da.arange(3000 * 3, chunks=300).reshape(3000, 3).rechunk((100, 3)).astype("f4")
    y = x.sum(axis=1)
    targets = [zarr.create_array(tmp_path / name, shape=a.shape, chunks=a.chunksize,
                                 dtype=a.dtype) for name, a in (("x", x), ("y", y))]  # fmt: skip
    regions = []
    real = da.store
    spy = lambda *a, **kw: regions.append(kw.get("regions")) or real(*a, **kw)  # noqa: E731
    monkeypatch.setattr(da, "store", spy)
    if scheduler == "distributed":
        from distributed import Client

        cluster = Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)
    else:
        cluster = contextlib.nullcontext(dask.config.set(scheduler="threads"))
    with cluster:
        progress.store_with_progress([x, y], targets, "predict", enabled=True)
    np.testing.assert_array_equal(targets[0][:], x.compute())
    np.testing.assert_array_equal(targets[1][:], y.compute())
    if scheduler == "distributed":  # groups of whole chunks, each its own lazy store
        assert len(regions) == 8
        assert regions[0] == [(slice(0, 400), slice(None)), (slice(0, 400),)]
        assert regions[-1] == [(slice(2800, 3000), slice(None)), (slice(2800, 3000),)]
    else:  # one store, the rows counted as the blocks land
        assert regions == [None]
    err = capsys.readouterr().err
    assert "predict" in err and "3.00k/3.00k" in err and "rows/s" in err


def test_progress_is_off_unless_stderr_is_a_terminal(capsys):
    from dimplicit.progress import progress_enabled, row_progress

    assert not progress_enabled()  # pytest captures stderr: not a terminal
    with row_progress(100, "ingest") as bar:
        bar.update(100)
    with row_progress(100, "ingest", enabled=True) as bar:
        bar.update(100)
    err = capsys.readouterr().err
    assert err.count("ingest") >= 1 and "100/100" in err


def test_predict_with_progress_writes_the_same_output(clf, tmp_path, monkeypatch, capsys):
    from dimplicit import progress

    store, model = clf
    local(predict_store, model, store.path, tmp_path / "a.zarr")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "progress_enabled", lambda quiet=False: not quiet)
    local(predict_store, model, store.path, tmp_path / "b.zarr", quiet=True)
    assert capsys.readouterr().err == ""  # --quiet
    local(predict_store, model, store.path, tmp_path / "c.zarr")
    assert "predict" in capsys.readouterr().err
    a, c = (zarr.open_group(tmp_path / n, mode="r") for n in ("a.zarr", "c.zarr"))
    for name in ("predicted", "proba"):
        np.testing.assert_array_equal(a[name][:], c[name][:])
