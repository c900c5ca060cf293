#!/usr/bin/env python
"""Reproduce the anomaly-detection experiments of Szekeres & Izsák (2024) with dimplicit.

Protocol (fixed; only the training recipe is ours):

* **HTRU2**: rows split 80 / 10 / 10 % into train / validation / test (split seed 2024).  The
  autoencoder trains on the training negatives (class 0) only; the StandardScaler is fitted on
  them.
* **NSL-KDD**: KDDTrain+ split 75 / 25 % into train / validation (split seed 2024); training on
  its normal rows; test on KDDTest+, encoded with the training vocabularies (one-hot
  ``protocol_type``, ``service``, ``flag``) and the training scaler (fitted on the normal
  training rows).
* Loss MSE (reconstruction).  The anomaly score of a row is its reconstruction RMSE, z-scored
  with the mean / std over the *normal validation* rows; the threshold maximises F1 on the
  validation rows; the test metrics use that threshold unchanged.
* Every choice (hyper-parameters, the epoch kept) is made on validation data only; test labels
  are read once, after training and calibration, to compute the reported metrics.
* Runs differ only in the model seed (0 .. K-1: initial weights and mini-batch order); the data
  split stays fixed.

The script prints ONE JSON object (per data set and model: means, 95 % t-intervals and
per-seed values) and writes a Markdown report (default ``docs/results.md``).  Training seconds
are the wall-clock time of the training call only, under ``threadpool_limits(THREADS)``.

Example::

    .venv/bin/python scripts/reproduce_szekeres2024.py --dataset all --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from dimplicit.anomaly.metrics import best_f1_threshold, calibrate, classification_metrics
from dimplicit.data.ingest import ingest_csv
from dimplicit.data.preprocess import standardize
from dimplicit.data.store import open_store
from dimplicit.fit import fit
from dimplicit.forward import predict
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import row_rmse
from dimplicit.model import build_model
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig
from dimplicit.solvers import SolverOptions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "docs" / "results.md"
SPLIT_SEED = 2024
DATASETS = ("nsl-kdd", "htru2")
# Scores are computed at a tighter tolerance than some recipes train with: the reported
# numbers should not depend on how loosely the training solves were allowed to converge.
SCORE_TOL = 1e-4


# --------------------------------------------------------------------------------------
# Models and recipes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One of the compared autoencoders.

    Attributes
    ----------
    arch : str
        Architecture string for :func:`dimplicit.model.build_model`.
    label : str
        The paper's notation, for the report.
    """

    arch: str
    label: str


MODELS = {
    "v0-5-32-16": ModelSpec("ae-v0:5,32,16", "(5;32;16)-v0"),
    "v1-5-32-16": ModelSpec("ae-v1:5,32,16", "(5;32;16)-v1"),
    "v0-7-64-16": ModelSpec("ae-v0:7,64,16", "(7;64;16)-v0"),
    "v1-7-64-16": ModelSpec("ae-v1:7,64,16", "(7;64;16)-v1"),
    "dense-ae": ModelSpec("ae-dense", "dense implicit AE"),
}


@dataclass(frozen=True)
class Recipe:
    """How one model is trained on one data set (chosen on validation data only).

    Attributes
    ----------
    epochs, batch_size : int
    lr : float
        Peak learning rate of Adam; cosine decay to 0 over the run, no warm-up.
    hidden : int
        Hidden neurons of ``ae-dense`` (ignored by the layered models).
    activation : str or None
        φ (None: the architecture's default).
    kappa : float
        Row-ℓ1 radius kept during training (well-posedness, docs/design.md §1): every row of
        ``A`` for ``ae-dense``, the rows of the implicit latent block for the v1 models (the
        paper's v1 is unconstrained); v0 models have nothing to constrain.
    tol : float
        Relative residual of the training-time forward and adjoint solves.
    backward : str
        Gradient method (``implicit``, ``neumann``, ``jfb``, ``phantom-K``).
    check_every : int
        Convergence test interval of Picard.
    select_best_epoch : bool
        Keep the weights of the epoch with the best validation ROC AUC (evaluated after every
        epoch, inside the timed training call) instead of the last epoch's.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    hidden: int = 64
    activation: str | None = None
    kappa: float = 0.95
    tol: float = 1e-4
    backward: str = "implicit"
    check_every: int = 4
    select_best_epoch: bool = False

    def step_config(self) -> StepConfig:
        fwd = SolverOptions("picard", tol=self.tol, check_every=self.check_every)
        return StepConfig("mse", fwd, BackwardOptions(self.backward, solver=fwd))

    def score_options(self) -> SolverOptions:
        return SolverOptions("picard", tol=min(self.tol, SCORE_TOL), check_every=self.check_every)


def recipe_for(dataset: str, name: str) -> Recipe:
    """The training recipe of model ``name`` on ``dataset`` (see docs/results.md for why)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    if dataset == "nsl-kdd":
        # Validation AUC kept rising with epochs on NSL-KDD, so the last epoch is kept.
        epochs = {
            "v0-5-32-16": 10,
            "v1-5-32-16": 15,
            "v0-7-64-16": 15,
            "v1-7-64-16": 40,
            "dense-ae": 20,
        }[name]
        r = Recipe(epochs=epochs, batch_size=256, lr=3e-3)
        if name == "dense-ae":
            r = replace(r, hidden=128, tol=1e-3)
    else:
        # On HTRU2 the validation AUC peaks within the first few epochs and then drifts down
        # (the 8-feature autoencoder starts to reconstruct pulsars too), so the best epoch by
        # validation AUC is kept.
        r = Recipe(epochs=10, batch_size=256, lr=1e-3, select_best_epoch=True)
        if name == "dense-ae":
            r = replace(r, hidden=64, tol=1e-3)
    return r


# Published means (Szekeres & Izsák 2024), training seconds on a GTX 1080.
PUBLISHED = [
    # dataset, row label, our counterpart, test F1, test recall, valid AUC, train s
    ("nsl-kdd", "(5;32;16)-v0", "v0-5-32-16", 0.899, 0.878, 0.973, 62),
    ("nsl-kdd", "(5;32;16)-v1", "v1-5-32-16", 0.922, 0.925, 0.981, 260),
    ("nsl-kdd", "best implicit (v2)", None, 0.924, 0.927, 0.983, 256),
    ("htru2", "(5;32;16)-v0", "v0-5-32-16", 0.765, 0.893, 0.943, 35),
    ("htru2", "best (7;64;16)-v2", None, 0.771, 0.901, 0.950, 135),
]

# Time budget per run: 1/10 of the published seconds of the nearest published model
# (feedforward rows against the v0 row, implicit rows against the implicit rows).
BUDGET_S = {
    ("nsl-kdd", "v0-5-32-16"): 6.2,
    ("nsl-kdd", "v0-7-64-16"): 6.2,
    ("nsl-kdd", "v1-5-32-16"): 26.0,
    ("nsl-kdd", "v1-7-64-16"): 26.0,
    ("nsl-kdd", "dense-ae"): 25.6,
    ("htru2", "v0-5-32-16"): 3.5,
    ("htru2", "v0-7-64-16"): 13.5,
    ("htru2", "v1-5-32-16"): 13.5,
    ("htru2", "v1-7-64-16"): 13.5,
    ("htru2", "dense-ae"): 13.5,
}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class Data:
    """Standardized arrays of one data set.

    ``*_y`` are True for anomalies.  ``train`` holds only the normal training rows.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    val_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray
    info: dict = field(default_factory=dict)


def _arrays(store):
    X = standardize(store.features[:].astype(np.float32), store.mean, store.std)
    return X, ~store.is_normal(store.labels[:]), np.asarray(store.split[:])


def load_dataset(name: str, data_dir: Path, workdir: Path, max_train_rows=None) -> Data:
    """Ingest ``name`` from ``data_dir`` into Zarr stores under ``workdir`` and load it.

    Parameters
    ----------
    name : {"nsl-kdd", "htru2"}
    data_dir : Path
        Folder holding ``nsl-kdd/`` and ``htru2/`` (see ``shared/data/README.md``).
    workdir : Path
        Where the stores are written (overwritten if present).
    max_train_rows : int, optional
        Keep only the first this many normal training rows (quick checks only; the
        statistics are still those of all normal training rows).
    """
    common = dict(split_seed=SPLIT_SEED, stats_rows="train", stats_normal_only=True)
    if name == "htru2":
        path = workdir / "htru2.zarr"
        ingest_csv(
            data_dir / "htru2" / "HTRU_2.csv", path, fmt="htru2", splits=(0.8, 0.1, 0.1),
            overwrite=True, **common,
        )  # fmt: skip
        X, anom, split = _arrays(open_store(path))
        test, test_y = X[split == 2], anom[split == 2]
    elif name == "nsl-kdd":
        train_path, test_path = workdir / "kddtrain.zarr", workdir / "kddtest.zarr"
        ingest_csv(
            data_dir / "nsl-kdd" / "KDDTrain+.txt", train_path, fmt="nsl-kdd",
            splits=(0.75, 0.25, 0.0), overwrite=True, **common,
        )  # fmt: skip
        # KDDTest+ with the training vocabularies and scaler; every row is a test row.
        ingest_csv(
            data_dir / "nsl-kdd" / "KDDTest+.txt", test_path, fmt="nsl-kdd",
            splits=(0.0, 0.0, 1.0), split_seed=SPLIT_SEED, reference=train_path, overwrite=True,
        )  # fmt: skip
        X, anom, split = _arrays(open_store(train_path))
        test, test_y, _ = _arrays(open_store(test_path))
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")
    train = X[(split == 0) & ~anom]
    if max_train_rows is not None:
        train = train[:max_train_rows]
    data = Data(name, np.ascontiguousarray(train), X[split == 1], anom[split == 1], test, test_y)
    data.info = {
        "n_features": int(X.shape[1]),
        "train_rows_normal": len(data.train),
        "validation_rows": len(data.val),
        "validation_anomalous": int(data.val_y.sum()),
        "test_rows": len(data.test),
        "test_anomalous": int(data.test_y.sum()),
    }
    return data


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def oracle_f1(y, scores, min_recall=0.0) -> float:
    """The best F1 of any threshold on these labels with recall ≥ ``min_recall``.

    A diagnostic upper bound computed on the *test* labels: it tells whether a detector's
    ranking could meet a target at all, whatever the threshold rule.  Never used to choose.
    """
    return best_f1_threshold(y, scores, min_recall)[1]


def _auc(y, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def evaluate_scores(data: Data, val_raw, test_raw) -> dict:
    """Calibrate on the validation rows, then measure the test rows at that threshold.

    Returns
    -------
    dict
        Test ``f1``, ``recall``, ``precision``, ``accuracy``, ``mcc``, ``roc_auc``; the
        validation ``val_f1``, ``val_recall`` (at the chosen threshold) and ``val_auc``; the
        test-label diagnostics ``oracle_f1`` and ``oracle_f1_r90``
        (:func:`oracle_f1`, never used to choose); the z-score ``threshold``.
    """
    cal = calibrate(val_raw, data.val_y)
    zv, z = cal.zscore(val_raw), cal.zscore(test_raw)
    test = classification_metrics(data.test_y, cal.flag(z), z)
    return {
        "f1": test["f1"],
        "recall": test["recall"],
        "precision": test["precision"],
        "accuracy": test["accuracy"],
        "mcc": test["mcc"],
        "roc_auc": test["roc_auc"],
        "val_f1": cal.val_f1,
        "val_recall": float(np.mean(cal.flag(zv[data.val_y]))),
        "val_auc": cal.val_auc,
        "oracle_f1": oracle_f1(data.test_y, z),
        "oracle_f1_r90": oracle_f1(data.test_y, z, 0.90),
        "threshold": cal.threshold,
    }


def run_one(data: Data, name: str, recipe: Recipe, seed: int, threads: int = 2) -> dict:
    """Train model ``name`` with ``recipe`` and seed ``seed``; calibrate; score the test rows.

    Returns
    -------
    dict
        The metrics of :func:`evaluate_scores`, ``train_s``, ``epochs_run``, ``best_epoch``,
        mean solver iterations and the number of unconverged scoring solves.
    """
    spec = MODELS[name]
    p = data.train.shape[1]
    model = build_model(
        spec.arch, p, p, hidden=recipe.hidden, activation=recipe.activation,
        kappa=recipe.kappa, seed=seed, dtype="float32",
    )  # fmt: skip
    steps = recipe.epochs * math.ceil(len(data.train) / recipe.batch_size)
    opt = OptimizerConfig("adam", lr=recipe.lr, schedule="cosine", total_steps=steps)
    score_opts = recipe.score_options()
    best = {"auc": -math.inf, "epoch": None, "model": None}

    def keep_best(epoch, current):
        # Model selection on validation labels only; counted in the training time.
        Yv, _, _ = predict(current, data.val, score_opts)
        auc = _auc(data.val_y, row_rmse(Yv, data.val))
        if auc > best["auc"]:
            best.update(auc=auc, epoch=epoch, model=current)
        return False

    with threadpool_limits(threads):
        t0 = time.perf_counter()
        trained, history = fit(
            model, data.train, data.train, config=recipe.step_config(), optimizer=opt,
            epochs=recipe.epochs, batch_size=recipe.batch_size, seed=seed,
            epoch_callback=keep_best if recipe.select_best_epoch else None,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        if recipe.select_best_epoch:
            trained = best["model"]
        Yv, _, vstats = predict(trained, data.val, score_opts)
        Yt, _, tstats = predict(trained, data.test, score_opts)
    # Calibration uses validation labels only; test labels are used inside to report.
    metrics = evaluate_scores(data, row_rmse(Yv, data.val), row_rmse(Yt, data.test))
    tail = history[-min(len(history), 50) :]
    return {
        "seed": seed,
        **metrics,
        "train_s": train_s,
        "epochs_run": history[-1]["epoch"] + 1,
        "best_epoch": best["epoch"] + 1 if recipe.select_best_epoch else None,
        "final_loss": float(np.mean([h["loss"] for h in tail])),
        "forward_iters": float(np.mean([h["forward_iters"] for h in history])),
        "backward_iters": float(np.mean([h["backward_iters"] for h in history])),
        "train_unconverged_steps": int(sum(h["forward_unconverged"] > 0 for h in history)),
        "score_unconverged_rows": int(vstats.n_unconverged + tstats.n_unconverged),
    }


# --------------------------------------------------------------------------------------
# Classical detectors: a ceiling check for the targets
# --------------------------------------------------------------------------------------


def _knn_score(k):
    def score(train, seed):
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k).fit(train)
        return lambda X: nn.kneighbors(X)[0].mean(axis=1)

    return score


def _pca_score(k):
    def score(train, seed):
        from sklearn.decomposition import PCA

        pca = PCA(k, random_state=seed).fit(train)
        return lambda X: np.linalg.norm(X - pca.inverse_transform(pca.transform(X)), axis=1)

    return score


def _mahalanobis(train, seed):
    from sklearn.covariance import EmpiricalCovariance

    cov = EmpiricalCovariance().fit(train)
    return lambda X: np.sqrt(cov.mahalanobis(X))


def _isolation_forest(train, seed):
    from sklearn.ensemble import IsolationForest

    f = IsolationForest(random_state=seed).fit(train)
    return lambda X: -f.score_samples(X)


# Non-neural detectors fitted on the same normal training rows and calibrated by the same rule
# (threshold maximising validation F1).  They are not competitors: their *oracle* F1 (best
# threshold on the test labels) shows how far any ranking of these features gets, which tells
# whether a target is out of reach of the protocol rather than of our models.
BASELINES = {
    "pca-2": _pca_score(2),
    "pca-4": _pca_score(4),
    "mahalanobis": _mahalanobis,
    "knn-20": _knn_score(20),
    "isolation-forest": _isolation_forest,
}


def run_baseline(data: Data, name: str, seed: int = 0) -> dict:
    """Fit baseline ``name`` on the normal training rows and evaluate it like the models."""
    t0 = time.perf_counter()
    score = BASELINES[name](data.train.astype(np.float64), seed)
    fit_s = time.perf_counter() - t0
    val_raw = score(data.val.astype(np.float64))
    test_raw = score(data.test.astype(np.float64))
    return {"name": name, **evaluate_scores(data, val_raw, test_raw), "fit_s": fit_s}


# --------------------------------------------------------------------------------------
# Statistics and report
# --------------------------------------------------------------------------------------

# Two-sided 95 % Student t quantiles t_{0.975, df}, used when SciPy is not installed.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000,
    120: 1.980,
}  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        # Conservative: the largest tabulated df not above df (quantiles fall with df).
        return _T975[max(k for k in _T975 if k <= df)] if df < 1000 else 1.960


METRICS = (
    "f1", "recall", "precision", "accuracy", "mcc", "roc_auc", "val_f1", "val_recall",
    "val_auc", "oracle_f1", "oracle_f1_r90",
)  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Mean and 95 % t-interval half-width of every metric and of ``train_s``."""
    out = {"n": len(runs), "mean": {}, "ci95": {}}
    for k in (*METRICS, "train_s", "forward_iters", "backward_iters"):
        v = np.array([r[k] for r in runs], dtype=float)
        out["mean"][k] = float(v.mean())
        half = t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else None
        out["ci95"][k] = None if half is None else float(half)
    out["max"] = {"train_s": float(max(r["train_s"] for r in runs))}
    return out


def machine_info() -> dict:
    """What the timings ran on."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    blas = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "platform": platform.platform(),
    }


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _pm(summary, key, digits=3) -> str:
    m, h = summary["mean"][key], summary["ci95"][key]
    return f"{m:.{digits}f}" if h is None else f"{m:.{digits}f} ± {h:.{digits}f}"


def write_report(path: Path, result: dict) -> None:
    """Write the Markdown report of ``result`` (the JSON object :func:`main` prints)."""
    res = result["results"]
    lines = [
        "# Reproduction of Szekeres & Izsák (2024): implicit autoencoders for anomaly detection",
        "",
        "B. J. Szekeres, F. Izsák, *On the computation of the gradient in implicit neural "
        "networks*, J. Supercomputing 2024, doi 10.1007/s11227-024-06117-6.",
        "",
        "Generated by `scripts/reproduce_szekeres2024.py`; do not edit by hand, except below the "
        "closing marker (kept when the report is regenerated).",
        "",
        "## Command and machine",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- CPU: {result['machine']['cpu']}, {result['machine']['logical_cpus']} logical CPUs "
        f"(shared with other users); BLAS threads limited to {result['threads']} "
        f"(`threadpoolctl`).",
        f"- BLAS: {', '.join(result['machine']['blas']) or 'unknown'}; NumPy "
        f"{result['machine']['numpy']}, Python {result['machine']['python']}.",
        f"- Load average (1, 5, 15 min) at start {result['load_start']}, at end "
        f"{result['load_end']}; total wall time {result['wall_s']:.0f} s. Training times on a "
        "shared machine are noisy: another process on one of the two cores can slow a run "
        "several-fold, so the table shows the mean and the maximum.",
        "- Published times are on a GTX 1080 GPU; ours are float32 on the CPU.",
        "",
        "## Protocol",
        "",
        "- **HTRU2**: split 80 / 10 / 10 % train / validation / test (split seed 2024); training "
        "on the training negatives (class 0) only; StandardScaler fitted on them.",
        "- **NSL-KDD**: KDDTrain+ split 75 / 25 % train / validation (split seed 2024); training "
        "on its normal rows; test on KDDTest+ encoded with the training vocabularies (one-hot "
        "`protocol_type`, `service`, `flag`) and scaler (fitted on the normal training rows).",
        "- Loss MSE (reconstruction). Score = per-row reconstruction RMSE, z-scored with the "
        "mean / std over the normal validation rows; threshold = the one maximising F1 on the "
        "validation rows; test metrics at that threshold.",
        "- Runs differ only in the model seed (initial weights and mini-batch order), "
        f"seeds 0..{result['seeds'] - 1}; the data split is fixed.",
        "- **No test data was used for any choice.** Hyper-parameters were tuned by hand on "
        "validation metrics only (validation F1 and ROC AUC over a few seeds); the epoch kept "
        "on HTRU2 is chosen by validation AUC. Test labels are read only to report.",
        "- Intervals are mean ± the half-width of the 95 % Student-t confidence interval over "
        "the seeds.",
        "",
        "## Results",
        "",
        "| data | model | test F1 | test recall | test precision | valid F1 | valid AUC | "
        "test AUC | train s (mean / max) | budget s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ds, models in res.items():
        for name, r in models.items():
            s = r["summary"]
            budget = BUDGET_S.get((ds, name))
            lines.append(
                f"| {ds} | {MODELS[name].label} (`{name}`) | {_pm(s, 'f1')} | "
                f"{_pm(s, 'recall')} | {_pm(s, 'precision')} | {_pm(s, 'val_f1')} | "
                f"{_pm(s, 'val_auc')} | "
                f"{_pm(s, 'roc_auc')} | {s['mean']['train_s']:.1f} / {s['max']['train_s']:.1f} "
                f"| {budget if budget is not None else '–'} |"
            )
    lines += [
        "",
        "Budget: 1/10 of the published GPU seconds of the nearest published model (v0 rows "
        "against the (5;32;16)-v0 row, implicit and (7;64;16) rows against the implicit rows).",
        "",
        "### Published means (Szekeres & Izsák 2024) beside ours",
        "",
        "| data | published model | test F1 | test recall | (implied precision) | valid AUC | "
        "train s (GTX 1080) | ours: model | test F1 | test recall | test precision | valid AUC "
        "| train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ds, label, ours, f1, rec, auc, secs in PUBLISHED:
        if ds not in res:
            continue
        if ours is None:  # compare with our best implicit model by validation AUC
            cands = {n: r for n, r in res[ds].items() if not n.startswith("v0")}
            if label.startswith("best (7;64;16)"):
                cands = {n: r for n, r in cands.items() if "7-64-16" in n} or cands
            ours = (
                max(cands, key=lambda n: cands[n]["summary"]["mean"]["val_auc"]) if cands else None
            )
        r = res[ds].get(ours) if ours else None
        mine = (
            f"{MODELS[ours].label} | {_pm(r['summary'], 'f1')} | {_pm(r['summary'], 'recall')} | "
            f"{_pm(r['summary'], 'precision')} | {_pm(r['summary'], 'val_auc')} | "
            f"{r['summary']['mean']['train_s']:.1f}"
            if r
            else "(not run) | | | | |"
        )
        lines.append(
            f"| {ds} | {label} | {f1} | {rec} | ({implied_precision(f1, rec):.3f}) | {auc} | "
            f"{secs} | {mine} |"
        )
    lines += [
        "",
        "Implied precision: not published; solved from the published mean F1 and recall as "
        "P = F1·R / (2R − F1) (exact for one run, approximate for means).",
        "",
        '"best" rows: our implicit model (v1 or dense; for the (7;64;16) row a (7;64;16) '
        "implicit model when run) with the highest mean *validation* AUC.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {t}" for t in result["targets"]]
    lines += [
        "",
        "## Ceiling check: can any detector meet the targets under this protocol?",
        "",
        "The same protocol applied to classical detectors fitted on the same normal training "
        "rows (`BASELINES` in the script: PCA reconstruction error, Mahalanobis distance, mean "
        "distance to the 20 nearest training rows, isolation forest; scikit-learn, one fit "
        "each), beside our models' means. *Oracle* columns use the test labels to pick the "
        "best threshold afterwards: an upper bound for any threshold "
        "rule, computed only as a diagnostic and never used to choose anything.",
        "",
        *ceiling(result),
    ]
    lines += ["## Discussion", ""] + [f"- {t}" for t in discussion(res)]
    lines += ["", "## How the recipes were chosen (validation only)", ""]
    lines += [f"- {t}" for t in TUNING_LOG]
    lines += [
        "",
        "## Hyper-parameters",
        "",
        "Adam (β = 0.9, 0.999, ε = 1e-8), cosine decay from the peak learning rate to 0 over the "
        "run, no warm-up, no weight decay; float32; Picard forward solver (max 300 iterations); "
        f"scores computed with tolerance {SCORE_TOL:g}. Well-posedness: ‖A‖∞ ≤ κ for the dense "
        "AE; for v1 only the implicit latent block is kept at row-ℓ1 norm ≤ κ (the paper leaves "
        "it free), which bounds λ_pf(|A|) by κ. The layered models are solved layer by "
        "layer (`SolverOptions.layerwise`): one exact pass for v0 (ordinary backpropagation for "
        "the implicit gradient), Picard iterations on the latent layer only for v1; the "
        "iteration counts below are those of the implicit blocks (1 = one feedforward pass).",
        "",
        "| data | model | arch | epochs | batch | lr | gradient | train tol | hidden | "
        "best epoch by val AUC | fwd / bwd iters (mean) | epoch kept (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ds, models in res.items():
        for name, r in models.items():
            h = r["recipe"]
            kept = [x["best_epoch"] for x in r["per_seed"] if x["best_epoch"] is not None]
            s = r["summary"]["mean"]
            lines.append(
                f"| {ds} | `{name}` | `{MODELS[name].arch}` | {h['epochs']} | {h['batch_size']} "
                f"| {h['lr']:g} | {h['backward']} | {h['tol']:g} | "
                f"{h['hidden'] if name == 'dense-ae' else '–'} | "
                f"{'yes' if h['select_best_epoch'] else 'no (last)'} | "
                f"{s['forward_iters']:.1f} / {s['backward_iters']:.1f} | "
                f"{np.mean(kept) if kept else h['epochs']:.1f} |"
            )
    lines += ["", "## Data", ""]
    for ds, info in result["data"].items():
        lines.append(f"- {ds}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    old = path.read_text() if path.exists() else ""
    if KEEP_MARKER in old:  # hand-maintained figures (e.g. scoring benchmarks) survive
        text += "\n" + old[old.index(KEEP_MARKER) :]
    path.write_text(text)


# Everything from this line on in an existing report is kept when the report is rewritten.
KEEP_MARKER = "<!-- Not generated: kept as is when the report is regenerated. -->"


# What was tried before the recipes above were fixed.  Every comparison used validation F1 and
# validation ROC AUC only (1-4 seeds per setting); the test metrics were first computed in the
# final 10-seed run, and nothing was changed after it.
TUNING_LOG = [
    "NSL-KDD, (5;32;16) v0/v1: epochs 3-20, batch 128-4096, lr 1e-3-1e-2 (Adam, cosine). "
    "Validation AUC rose with epochs and was best at lr 3e-3, batch 128-256; v1 plateaued at "
    "validation F1 ≈ 0.93, AUC ≈ 0.981. Epochs were then set to fit the time budget.",
    "NSL-KDD, dense implicit AE (ReLU, ‖A‖∞ ≤ 0.95): hidden 32 / 64 / 128 / 256, 5-20 epochs, "
    "lr 1e-3 / 3e-3 / 1e-2, batch 128 / 256 / 1024, training tolerance 1e-4 / 1e-3. Validation "
    "F1 and AUC grew with width up to 128 and with epochs (hidden 128, 20 epochs: validation F1 "
    "≈ 0.967, AUC ≈ 0.993, the best of all models), so it was chosen, before any test "
    "metric was computed, as the candidate for the NSL-KDD target. Tolerance 1e-3 gave the "
    "same validation metrics in fewer iterations.",
    "After the layer-by-layer solver made the layered models 3-5x faster, the epochs of the "
    "(7;64;16) models on NSL-KDD were re-chosen the same way (3 seeds, validation only): v0 "
    "5 / 10 / 15 epochs gave validation AUC 0.979 / 0.982 / 0.983, v1 8 / 20 / 40 epochs "
    "0.984 / 0.986 / 0.987, so 15 and 40 epochs (the most that fit the time budget with a "
    "margin). (5;32;16) models had plateaued (v0 10 / 20 / 30 epochs: 0.981 each; v1 15 / 30 / "
    "60: 0.981 each) and kept their epochs.",
    "v1 models with the latent block unconstrained, as in the paper, lost the contraction in "
    "one of 10 seeds of (7;64;16) on NSL-KDD (seed 3: 179 Picard iterations per solve on "
    "average, 4,104 of 7,880 training steps unconverged, 43 s instead of 16 s). Keeping the "
    "block's rows in the ℓ1 ball of radius 0.95 (the default `kappa`) removed that and gave "
    "the same validation metrics (NSL-KDD (7;64;16)-v1 seeds 2-3: validation AUC 0.987 vs "
    "0.986; (5;32;16)-v1 seeds 0-2: 0.981 both), so all v1 runs now use it.",
    "HTRU2, all models (also latent widths 2 and 4, lr 3e-4-3e-3, batch 64-256, 3-20 "
    "epochs): validation AUC peaked within the first 1-4 epochs and then drifted down while the "
    "training loss kept falling, for every setting; hence 10 epochs at lr 1e-3 with the epoch "
    "of best validation AUC kept.",
    "Not a choice, a check (it read the test labels, so it changed nothing above): to see "
    "whether any other model breaks the NSL-KDD ceiling below, these variants were run on 2-3 "
    "seeds with the oracle diagnostic: dense AE with hidden 64 or 256, leaky ReLU, κ 0.5; v1 "
    "(5;64;32), (3;32;8), (7;128;32); v1 (5;32;16) with lr 1e-2 or batch 64; v0 (5;32;16) with "
    "tanh. Their mean oracle test F1 was 0.904-0.926, none above the 0.927 of the dense AE.",
]


def _ranks(v) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(v, dtype=float))).astype(float)


def implied_precision(f1: float, recall: float) -> float:
    """Precision that gives ``f1`` at ``recall`` (F1 = 2PR / (P + R) solved for P)."""
    return f1 * recall / (2 * recall - f1)


def discussion(res: dict) -> list[str]:
    """Observations computed from the results (no hand-written numbers)."""
    out = []
    for ds, models in res.items():
        if len(models) < 2:
            continue
        names = list(models)
        m = {n: models[n]["summary"]["mean"] for n in names}
        by_val = max(names, key=lambda n: m[n]["val_auc"])
        by_test = max(names, key=lambda n: m[n]["f1"])
        rv = _ranks([m[n]["val_auc"] for n in names])
        rt = _ranks([m[n]["f1"] for n in names])
        rho = float(np.corrcoef(rv, rt)[0, 1]) if rv.std() > 0 and rt.std() > 0 else float("nan")
        gap = np.mean([m[n]["val_f1"] - m[n]["f1"] for n in names])
        out.append(
            f"{ds}: the highest mean validation AUC is `{by_val}` "
            f"({m[by_val]['val_auc']:.3f}, test F1 {m[by_val]['f1']:.3f}); the highest mean "
            f"test F1 is `{by_test}` ({m[by_test]['f1']:.3f}). Spearman correlation between the "
            f"models' validation-AUC and test-F1 rankings: {rho:.2f}. Mean validation F1 minus "
            f"test F1: {gap:+.3f}."
        )
        rec = np.mean([m[n]["recall"] for n in names])
        prec = np.mean([m[n]["precision"] for n in names])
        favour = "precision over recall" if prec > rec else "recall over precision"
        out.append(
            f"{ds}: at the validation-F1-optimal threshold the models favour {favour} on the "
            f"test set (mean recall {rec:.3f}, mean precision {prec:.3f} over the models)."
        )
    for ds in res:
        pub = [(f1, rec) for d, _, _, f1, rec, _, _ in PUBLISHED if d == ds]
        ours = [r["summary"]["mean"]["precision"] for r in res[ds].values()]
        if not pub or not ours:
            continue
        implied = [implied_precision(f1, rec) for f1, rec in pub]
        recalls = [rec for _, rec in pub]
        out.append(
            f"{ds}: published recall {min(recalls):.3f}-{max(recalls):.3f} at an implied "
            f"precision of {min(implied):.3f}-{max(implied):.3f}; ours {min(ours):.3f}-"
            f"{max(ours):.3f}."
        )
    if "nsl-kdd" in res:
        out.append(
            "nsl-kdd: the validation rows come from KDDTrain+ (22 attack types, about 46 % "
            "attacks); KDDTest+ adds 17 attack types never seen in training and has about 57 % "
            "attacks. A model that separates the *known* attacks best (highest validation AUC) "
            "need not generalise best to the novel ones, and the F1-optimal threshold moves with "
            "the attack share, so validation-based choices transfer imperfectly to the test set."
        )
    return out


def _detectors(result: dict, ds: str) -> dict:
    """Mean metrics of every detector run on ``ds``: our models, then the baselines."""
    out = {n: r["summary"]["mean"] for n, r in result["results"].get(ds, {}).items()}
    out.update(result.get("baselines", {}).get(ds, {}))
    return out


def ceiling(result: dict) -> list[str]:
    """Markdown lines: can *any* detector meet the targets under this protocol?"""
    lines = []
    for ds in result["results"]:
        det = _detectors(result, ds)
        if not det:
            continue
        lines += [
            f"### {ds}",
            "",
            "| detector | test F1 | test recall | test precision | valid AUC | test AUC | "
            "valid recall at threshold | oracle test F1 | oracle test F1 at recall ≥ 0.90 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n, m in det.items():
            kind = f"`{n}`" + ("" if n in MODELS else " (baseline)")
            lines.append(
                f"| {kind} | {m['f1']:.3f} | {m['recall']:.3f} | {m['precision']:.3f} | "
                f"{m['val_auc']:.3f} | {m['roc_auc']:.3f} | {m['val_recall']:.3f} | "
                f"{m['oracle_f1']:.3f} | {m['oracle_f1_r90']:.3f} |"
            )
        best = max(det, key=lambda n: det[n]["oracle_f1"])
        best90 = max(det, key=lambda n: det[n]["oracle_f1_r90"])
        lines.append("")
        if ds == "nsl-kdd":
            top = det[best]["oracle_f1"]
            lines.append(
                f"The best test F1 that *any* threshold gives *any* of these {len(det)} "
                f"detectors is {top:.3f} (`{best}`). "
                + (
                    "That is below the target (0.93): no threshold rule, however clever, "
                    "reaches it with these rankings of the KDDTest+ rows; only a detector that "
                    "ranks them better than all of these could."
                    if top < 0.93
                    else "The target is within reach of that ranking."
                )
            )
        else:
            top90 = det[best90]["oracle_f1_r90"]
            vrec = max(m["val_recall"] for m in det.values())
            lines.append(
                f"At recall ≥ 0.90 the best test F1 of any threshold on any of these "
                f"{len(det)} detectors is {top90:.3f} (`{best90}`) "
                + (
                    "(target 0.78). The target asks for recall ≥ 0.90 *and* F1 ≥ 0.78 at once; "
                    "these rankings cannot give both at any threshold. The validation rule "
                    f"agrees: the F1-optimal validation thresholds keep validation recall at "
                    f"≤ {vrec:.3f} for every detector."
                    if top90 < 0.78
                    else "(target 0.78): the ranking allows it; the threshold rule decides."
                )
            )
        lines.append("")
    return lines


def check_targets(res: dict) -> list[str]:
    """The project's targets, stated against the mean test metrics."""
    out = []
    if "nsl-kdd" in res:
        impl = {n: r for n, r in res["nsl-kdd"].items() if not n.startswith("v0")}
        if impl:
            # "Best" by validation AUC, so that the claim itself involves no test peeking.
            n = max(impl, key=lambda k: impl[k]["summary"]["mean"]["val_auc"])
            f1 = impl[n]["summary"]["mean"]["f1"]
            ok = "met" if f1 >= 0.93 else "NOT met"
            out.append(
                f"NSL-KDD: best implicit model by validation AUC is `{n}` with mean test F1 "
                f"{f1:.3f} (target ≥ 0.93: {ok})."
            )
    if "htru2" in res:
        parts = []
        for n, r in res["htru2"].items():
            m = r["summary"]["mean"]
            ok = "met" if m["f1"] >= 0.78 and m["recall"] >= 0.90 else "not met"
            parts.append(f"`{n}` F1 {m['f1']:.3f} / recall {m['recall']:.3f} ({ok})")
        out.append("HTRU2 (target mean test F1 ≥ 0.78 with recall ≥ 0.90): " + "; ".join(parts))
    times = []
    for ds, models in res.items():
        for n, r in models.items():
            b = BUDGET_S.get((ds, n))
            s = r["summary"]
            if b is not None:
                verdict = "within" if s["mean"]["train_s"] <= b else "OVER"
                times.append(f"{ds} `{n}` {s['mean']['train_s']:.2f} s vs {b} s ({verdict})")
    if times:
        out.append("Mean training time per run against the budget: " + "; ".join(times) + ".")
    return out


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Reproduce Szekeres & Izsák (2024): implicit autoencoders on NSL-KDD and "
        "HTRU2 under the paper's protocol. Prints one JSON object; writes a Markdown report.",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder with nsl-kdd/ and htru2/ (default: {DEFAULT_DATA})",
    )
    p.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated model names (default: all): {', '.join(MODELS)}",
    )
    p.add_argument("--seeds", type=int, default=10, help="model seeds 0..K-1 (default 10)")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="Markdown report to write (default: docs/results.md); 'none' writes nothing",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the Zarr stores (default: a temporary folder, removed at the end)",
    )
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the classical detectors of the ceiling check (PCA, Mahalanobis, kNN, "
        "isolation forest)",
    )
    p.add_argument(
        "--report-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: re-write the report from the JSON a previous run printed",
    )
    q = p.add_argument_group("quick checks (change the recipe: not for reported results)")
    q.add_argument("--max-epochs", type=int, default=None, help="cap every recipe's epochs")
    q.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="train on only the first this many normal training rows",
    )
    args = p.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if args.seeds < 1:
        p.error("--seeds must be ≥ 1")
    args.models = names
    return args


def main(argv=None) -> dict:
    """Run the experiments; print and return the JSON result."""
    args = parse_args(argv)
    if args.report_from is not None:
        result = json.loads(Path(args.report_from).read_text())
        # Re-derive the generated text so that a report-format change needs no re-run.
        result["targets"] = check_targets(result["results"])
        if str(args.out).lower() != "none":
            write_report(Path(args.out), result)
        print(json.dumps(result, indent=1))
        return result
    t_start = time.perf_counter()
    load_start = _load()
    datasets = list(DATASETS) if args.dataset == "all" else [args.dataset]
    cmd = argv if argv is not None else sys.argv[1:]
    result = {
        "paper": "Szekeres & Izsák (2024), doi 10.1007/s11227-024-06117-6",
        "command": shlex.join([".venv/bin/python", "scripts/reproduce_szekeres2024.py", *cmd]),
        "machine": machine_info(),
        "threads": args.threads,
        "seeds": args.seeds,
        "split_seed": SPLIT_SEED,
        "quick_check": {"max_epochs": args.max_epochs, "max_train_rows": args.max_train_rows},
        "data": {},
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="szekeres2024-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            data = load_dataset(ds, Path(args.data), workdir, args.max_train_rows)
            result["data"][ds] = data.info
            result["results"][ds] = {}
            if args.baselines:
                result.setdefault("baselines", {})[ds] = {
                    b: run_baseline(data, b) for b in BASELINES
                }
            for name in args.models:
                recipe = recipe_for(ds, name)
                if args.max_epochs is not None:
                    recipe = replace(recipe, epochs=min(recipe.epochs, args.max_epochs))
                runs = []
                for seed in range(args.seeds):
                    r = run_one(data, name, recipe, seed, args.threads)
                    runs.append(r)
                    print(
                        f"[{ds} {name} seed {seed}] test F1 {r['f1']:.4f} recall "
                        f"{r['recall']:.4f} val AUC {r['val_auc']:.4f} train {r['train_s']:.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                result["results"][ds][name] = {
                    "label": MODELS[name].label,
                    "arch": MODELS[name].arch,
                    "recipe": asdict(recipe),
                    "summary": summarize(runs),
                    "per_seed": runs,
                }
    result["load_start"], result["load_end"] = load_start, _load()
    result["wall_s"] = time.perf_counter() - t_start
    result["targets"] = check_targets(result["results"])
    if args.max_epochs is not None or args.max_train_rows is not None:
        result["notes"] = ["Quick check: recipes capped by --max-epochs / --max-train-rows."]
    if str(args.out).lower() != "none":
        write_report(Path(args.out), result)
        result["report"] = str(args.out)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
