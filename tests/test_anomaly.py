"""Anomaly detection: metrics, calibration, out-of-core scoring, CSV scoring, end to end."""

import json

import numpy as np
import pytest
import zarr

from dimplicit.anomaly.metrics import best_f1_threshold, calibrate, classification_metrics
from dimplicit.anomaly.score import raw_scores_block, score_store
from dimplicit.cli import main
from dimplicit.data.preprocess import standardize
from dimplicit.data.store import open_store
from dimplicit.data.synth import synth_traffic, synth_traffic_csv
from dimplicit.forward import predict
from dimplicit.losses import row_rmse
from dimplicit.model import build_model

pytestmark = pytest.mark.timeout(240)


def test_metrics_match_hand_counts_on_a_fixed_case():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    f = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    s = np.array([0.9, 0.3, 0.8, 0.7, 0.1, 0.2, 0.4, 0.95, 0.05, 0.15])
    m = classification_metrics(y, f, s)
    tp, fp, fn, tn = 3, 1, 1, 5
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx((tp + tn) / 10)
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc)
    # AUC = P(score of an anomaly > score of a normal row), counted pair by pair.
    pairs = [(a > b) for a in s[y] for b in s[~y]]
    assert m["roc_auc"] == pytest.approx(np.mean(pairs))


def test_best_threshold_maximises_f1_by_brute_force():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.standard_normal(300) + 1.5 * y
    t, f1 = best_f1_threshold(y, s)
    brute = max(classification_metrics(y, s > c)["f1"] for c in np.unique(s) - 1e-9)
    assert f1 == pytest.approx(brute)
    assert classification_metrics(y, s > t)["f1"] == pytest.approx(f1)


def test_best_threshold_under_a_recall_floor_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    s = rng.standard_normal(300) + 1.5 * y
    for floor in (0.5, 0.9, 1.0):
        t, f1 = best_f1_threshold(y, s, min_recall=floor)
        ok = [classification_metrics(y, s > c) for c in np.unique(s) - 1e-9]
        brute = max(m["f1"] for m in ok if m["recall"] >= floor)
        assert f1 == pytest.approx(brute)
        assert classification_metrics(y, s > t)["recall"] >= floor
    assert best_f1_threshold(y, s, 0.9)[1] < best_f1_threshold(y, s)[1]


def test_calibration_zscores_on_normal_rows():
    rng = np.random.default_rng(1)
    raw = np.concatenate([rng.normal(1.0, 0.2, 500), rng.normal(3.0, 0.5, 50)])
    y = np.r_[np.zeros(500, bool), np.ones(50, bool)]
    cal = calibrate(raw, y)
    assert cal.mean == pytest.approx(raw[:500].mean())
    assert cal.std == pytest.approx(raw[:500].std())
    assert cal.val_auc > 0.99 and cal.val_f1 > 0.9
    with pytest.raises(ValueError, match="both"):
        best_f1_threshold(np.zeros(5, bool), np.arange(5.0))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    d = tmp_path_factory.mktemp("traffic")
    synth_traffic(6000, d / "t.zarr", seed=3, chunk_rows=1000)
    path = d / "t.zarr"
    store = open_store(path)
    model = build_model("ae-v1:5,32,16", store.n_features, store.n_features, seed=0)
    model.meta["training"] = {
        "task": "autoencode",
        "store": str(path),
        "feature_names": store.feature_names,
        "scaler": {"mean": store.mean.tolist(), "std": store.std.tolist()},
    }
    return path, model


def test_scoring_is_chunk_aligned_and_equals_in_memory_scoring(traffic, tmp_path):
    import dask

    path, model = traffic
    store = open_store(path)
    with dask.config.set(scheduler="threads"):
        report = score_store(model, path, tmp_path / "s.zarr")
    g = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert report["rows"] == store.n_rows == g["raw_score"].shape[0]
    for name in ("raw_score", "score", "is_anomaly"):
        assert g[name].chunks == (store.chunk_rows,)
    # In memory, independently of the chunked path: all rows at once.
    U = standardize(store.features[:].astype(np.float32), store.mean, store.std)
    expect = row_rmse(predict(model, U)[0], U)
    np.testing.assert_allclose(g["raw_score"][:], expect, rtol=2e-5, atol=1e-6)
    # Refuses to overwrite, and a second run with --overwrite replaces it.
    with pytest.raises(FileExistsError):
        score_store(model, path, tmp_path / "s.zarr")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_raw_scores_flag_unconverged_rows_as_infinite():
    """relu with A = 2I and a positive drive has no fixed point: every row must score inf."""
    m = build_model("ae-dense", 5, 5, hidden=4, kappa=None)
    m.meta["training"] = {"task": "autoencode"}
    m.params["A"] = 2 * np.eye(4, dtype=np.float32)
    m.params["B"] = np.abs(m.params["B"]) + 0.1
    U = np.abs(np.random.default_rng(0).standard_normal((7, 5))).astype(np.float32)
    from dimplicit.solvers import SolverOptions

    s = raw_scores_block(U, m, SolverOptions(max_iter=50))
    assert np.isinf(s).all()


def test_csv_scoring_with_unseen_categories(traffic, tmp_path, capsys):
    """A CSV with a service never seen in training scores fine: it maps to <unknown>."""
    path, model = traffic
    model_path = model.save(tmp_path / "m.npz")
    csv = tmp_path / "log.csv"
    synth_traffic_csv(300, csv, seed=9)
    lines = csv.read_text().splitlines()
    fields = lines[0].split(",")
    fields[2] = "quantum_teleport"  # an unseen service
    lines[0] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    code = main(
        [
            "score",
            "--model",
            str(model_path),
            "--data",
            str(csv),
            "--out",
            str(tmp_path / "s.zarr"),
            "--workers",
            "1",
            "--no-processes",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["rows"] == 300 and report["ingest"]["rows"] == 300
    assert np.isfinite(zarr.open_group(tmp_path / "s.zarr")["raw_score"][:]).all()
    assert not any(p.name.startswith(".ingest-") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_end_to_end_on_an_nsl_kdd_slice(slice_data, tmp_path, capsys):
    """Ingest a KDDTrain+ slice, train an autoencoder on its normal rows, score, evaluate."""
    sl = slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"  # 4014 rows, shipped in tests/data
    store = tmp_path / "kdd.zarr"

    def cli(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        assert code == 0, out.err
        return json.loads(out.out)

    cli(
        "ingest",
        sl,
        "--out",
        store,
        "--format",
        "nsl-kdd",
        "--split",
        "0.6,0.2,0.2",
        "--stats-normal-only",
    )
    summary = cli(
        "train",
        "--data",
        store,
        "--task",
        "autoencode",
        "--normal-only",
        "--arch",
        "ae-v1:5,32,16",
        "--epochs",
        "6",
        "--batch-size",
        "1024",
        "--lr",
        "3e-3",
        "--checkpoint-dir",
        tmp_path / "run",
        "--workers",
        "2",
        "--no-processes",
        "--no-progress",
    )
    assert summary["calibration"]["val_auc"] > 0.9
    cli(
        "score",
        "--model",
        summary["model"],
        "--data",
        store,
        "--out",
        tmp_path / "s.zarr",
        "--workers",
        "1",
        "--no-processes",
    )
    metrics = cli(
        "evaluate", "--scores", tmp_path / "s.zarr", "--split", "test", "--plot", tmp_path / "plots"
    )
    assert metrics["roc_auc"] > 0.9, metrics
    assert metrics["f1"] > 0.8, metrics
    assert all(
        (tmp_path / "plots" / f).stat().st_size > 10_000
        for f in ("score_histogram.png", "roc_curve.png")
    )


def test_metrics_from_histograms_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    from dimplicit.anomaly.metrics import metrics_from_histograms, score_histogram

    rng = np.random.default_rng(4)
    normal = rng.lognormal(0.0, 0.4, 3000)
    odd = rng.lognormal(1.0, 0.5, 300)
    halves = [score_histogram(normal[:1500]) + score_histogram(normal[1500:]),
              score_histogram(odd[:7]) + score_histogram(odd[7:])]  # fmt: skip
    got = metrics_from_histograms(*halves)
    raw = np.r_[normal, odd]
    y = np.r_[np.zeros(3000, bool), np.ones(300, bool)]
    assert got["val_auc"] == pytest.approx(roc_auc_score(y, raw), abs=2e-3)
    best = max(f1_score(y, raw >= t) for t in np.quantile(raw, np.linspace(0.5, 0.999, 400)))
    assert got["val_f1"] == pytest.approx(best, abs=5e-3)
    assert metrics_from_histograms(halves[0], score_histogram([])) == {
        "val_f1": None, "val_auc": None,
    }  # fmt: skip


def test_autoencoder_selects_the_best_validation_auc_on_the_workers(traffic):
    """val_auc from reduced histograms equals the in-memory anomaly rule on the best model."""
    from dimplicit.anomaly.score import calibrate_on_store
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.partition import StepConfig

    path, model = traffic
    t = Trainer(
        model, DataSpec(str(path), "autoencode", normal_only=True), config=StepConfig("mse"),
        epochs=3, batch_size=500, eval_every=4, select_best="val_auc", executor="local",
    ).fit()  # fmt: skip
    aucs = [r["val_auc"] for r in t.evaluations_]
    assert all(a is not None for a in aucs) and t.best_["value"] == max(aucs)
    import dask

    with dask.config.set(scheduler="sync"):
        cal = calibrate_on_store(t.model_, path, "validation")
    assert cal.val_auc == pytest.approx(t.best_["value"], abs=2e-3)


def test_score_histogram_bins_each_score_as_a_search_would():
    """Counting from the sorted scores gives the bins of a per-score search, edges and
    non-finite scores included (NaN counts as +inf: the overflow bin)."""
    from dimplicit.anomaly.metrics import SCORE_EDGES, score_histogram

    def per_score(raw):
        raw = np.asarray(raw, dtype=np.float64).ravel()
        idx = np.searchsorted(SCORE_EDGES, np.where(np.isnan(raw), np.inf, raw), side="right")
        return np.bincount(idx, minlength=len(SCORE_EDGES) + 1)

    rng = np.random.default_rng(0)
    raw = np.exp(rng.standard_normal(5000) * 4)
    raw[:6] = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-4]
    raw[6:40] = SCORE_EDGES[rng.integers(0, len(SCORE_EDGES), 34)]  # exactly on edges
    raw[40] = SCORE_EDGES[-1]
    for x in (raw, raw[:1], raw[:6], [], raw.astype(np.float32)):
        got = score_histogram(x)
        assert got.dtype == np.int64 and got.shape == (len(SCORE_EDGES) + 1,)
        np.testing.assert_array_equal(got, per_score(x))
