"""Metrics and plots of a prediction or score output against the truth in a data store.

The task comes from the output (``attrs["task"]`` of ``dimplicit predict``; a ``dimplicit
score`` output holds anomaly scores), the truth from the store the output was computed from
(or another store of the same rows):

``classify``
    accuracy, balanced accuracy, macro F1 and the confusion matrix (rows: true class,
    columns: predicted class, both in ``classes`` order) over the labelled rows; classes are
    matched by name, so a store ingested without ``--reference`` is evaluated correctly.
``regress``
    R², MAE and RMSE against the store's ``targets`` (averaged over targets, and per target
    when there are several).
``autoencode`` (anomaly scores)
    F1, precision, recall, accuracy, MCC and ROC AUC of the flags against "the label is not a
    normal class".

Rows whose forward solve did not converge have no prediction (``predicted`` -1, NaN): they
are left out of the classify/regress metrics and counted in ``unconverged_rows``.  Anomaly
scores count them as flagged (their score is infinite).  Every metric is scikit-learn's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from dimplicit.anomaly.metrics import classification_metrics
from dimplicit.data.store import SPLIT_CODES, open_store
from dimplicit.predict import open_output

__all__ = ["evaluate", "load_scored", "plot"]


def _truth_store(g, output_path, data_path):
    """The store holding the true labels/targets of output ``g``, checked row for row."""
    if data_path is None:
        source = Path(g.attrs.get("source", ""))
        if not source.exists():
            raise ValueError(
                f"{output_path} was computed from {source}, which no longer exists (a file "
                "ingested on the fly); pass --data with a labelled store of the same rows"
            )
        data_path = source
    store = open_store(data_path)
    rows = int(g.attrs.get("rows", store.n_rows))
    if store.n_rows != rows:
        raise ValueError(
            f"{output_path} has {rows} rows but {store.path} has {store.n_rows}: not the "
            "outputs of this store"
        )
    return store


def _selected(store, split):
    """Boolean mask of the rows of ``split`` (all rows for None)."""
    if split is None:
        return np.ones(store.n_rows, dtype=bool)
    return store.split[:] == SPLIT_CODES[split]


def load_scored(scores_path, data_path=None, split: str | None = None):
    """``(z, flagged, is_anomalous, calibration)`` arrays of the selected labelled rows."""
    from dimplicit.anomaly.score import open_scores

    g = open_scores(scores_path)
    store = _truth_store(g, scores_path, data_path)
    z, flag, labels = g["score"][:], g["is_anomaly"][:], store.labels[:]
    keep = (labels >= 0) & _selected(store, split)  # unlabelled rows cannot be evaluated
    return z[keep], flag[keep], ~store.is_normal(labels[keep]), g.attrs.get("calibration")


def load_classified(output, data_path=None, split: str | None = None):
    """``(true, predicted, classes, unconverged)`` of the selected labelled rows.

    ``true`` and ``predicted`` are codes into ``classes``: the model's classes, then any
    class of the store the model never saw.  Unconverged rows are left out (counted).
    """
    g, task = open_output(output)
    if task != "classify":
        raise ValueError(f"{output} holds {task} outputs, not class predictions")
    store = _truth_store(g, output, data_path)
    classes = list(g.attrs["label_classes"])
    names = store.label_classes
    classes += [c for c in names if c not in classes]
    lut = np.asarray([classes.index(c) for c in names] or [0], dtype=np.int32)
    labels = store.labels[:]
    keep = (labels >= 0) & _selected(store, split)
    if not keep.any():
        raise ValueError(f"{store.path} has no labelled rows to evaluate (check --split)")
    pred = np.asarray(g["predicted"][:])[keep]
    true = lut[labels[keep]]
    ok = pred >= 0
    return true[ok], pred[ok], classes, int((~ok).sum())


def load_regressed(output, data_path=None, split: str | None = None):
    """``(true, predicted, target_names, unconverged)`` (n, t) arrays of the selected rows."""
    g, task = open_output(output)
    if task != "regress":
        raise ValueError(f"{output} holds {task} outputs, not regression predictions")
    store = _truth_store(g, output, data_path)
    if store.targets is None:
        raise ValueError(
            f"{store.path} has no regression targets to compare with (ingest them with "
            "'dimplicit ingest --target COLS')"
        )
    names = list(g.attrs["target_names"])
    if sorted(names) != sorted(store.target_names):
        raise ValueError(
            f"{output} predicts targets {names} but {store.path} has {store.target_names}"
        )
    order = [store.target_names.index(n) for n in names]
    keep = _selected(store, split)
    if not keep.any():
        raise ValueError(f"no rows to evaluate in split {split!r}")
    pred = np.asarray(g["prediction"][:], dtype=np.float64)[keep]
    true = np.asarray(store.targets[:], dtype=np.float64)[keep][:, order]
    ok = np.isfinite(pred).all(axis=1)
    return true[ok], pred[ok], names, int((~ok).sum())


def _classify_metrics(true, pred, classes) -> dict:
    with warnings.catch_warnings():
        # A predicted class absent from the true labels is expected, not a problem.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = skm.balanced_accuracy_score(true, pred)
    return {
        "accuracy": float(skm.accuracy_score(true, pred)),
        "balanced_accuracy": float(balanced),
        "f1_macro": float(skm.f1_score(true, pred, average="macro", zero_division=0)),
        "classes": classes,
        "confusion_matrix": skm.confusion_matrix(
            true, pred, labels=np.arange(len(classes))
        ).tolist(),
    }


def _regress_metrics(true, pred, names) -> dict:
    def three(y, p):
        return {
            "r2": float(skm.r2_score(y, p)),
            "mae": float(skm.mean_absolute_error(y, p)),
            "rmse": float(skm.root_mean_squared_error(y, p)),
        }

    out = three(true, pred)
    if len(names) > 1:
        out["per_target"] = {n: three(true[:, j], pred[:, j]) for j, n in enumerate(names)}
    return out


def evaluate(output, data_path=None, split: str | None = None) -> dict:
    """Metrics of a prediction or score output against the truth (see the module docstring).

    Parameters
    ----------
    output : path
        Written by ``dimplicit predict`` (:func:`dimplicit.predict.predict_store`) or
        ``dimplicit score`` (:func:`dimplicit.anomaly.score.score_store`).
    data_path : path, optional
        The store with the true labels/targets (default: the store the output was computed
        from, recorded in it).
    split : {"train", "validation", "test"}, optional
        Only these rows (default: all).

    Returns
    -------
    dict
        ``task``, ``split``, ``n`` and the task's metrics.
    """
    _, task = open_output(output)
    if task == "classify":
        true, pred, classes, unconverged = load_classified(output, data_path, split)
        if true.size == 0:
            raise ValueError("no converged labelled rows to evaluate")
        out = {"task": task, **_classify_metrics(true, pred, classes)}
    elif task == "regress":
        true, pred, names, unconverged = load_regressed(output, data_path, split)
        if true.shape[0] == 0:
            raise ValueError("no converged rows to evaluate")
        out = {"task": task, **_regress_metrics(true, pred, names)}
    else:
        z, flag, y, cal = load_scored(output, data_path, split)
        if y.size == 0:
            raise ValueError("no labelled rows to evaluate (check --split)")
        finite = np.where(np.isfinite(z), z, np.finfo(np.float32).max)
        out = {"task": task, **classification_metrics(y, flag, finite)}
        out["threshold"] = cal["threshold"] if cal else None
        return {**out, "split": split or "all"}
    out["n"] = int(true.shape[0])
    out["unconverged_rows"] = unconverged
    out["split"] = split or "all"
    return out


def plot(output, out_dir, data_path=None, split: str | None = None) -> list[str]:
    """PNG plots of an output against the truth; returns their paths.

    classify: ``confusion_matrix.png``; regress: ``prediction_vs_target.png``; anomaly scores:
    ``score_histogram.png`` (normal vs anomalous, threshold marked) and ``roc_curve.png``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    _, task = open_output(output)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if task == "classify":
        return [_plot_confusion(plt, output, out_dir, data_path, split)]
    if task == "regress":
        return [_plot_regression(plt, output, out_dir, data_path, split)]
    return _plot_scores(plt, output, out_dir, data_path, split)


def _save(plt, fig, path: Path) -> str:
    """Lay out ``fig``, write it to ``path`` (PNG), close it; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _plot_confusion(plt, output, out_dir, data_path, split) -> str:
    from sklearn.metrics import ConfusionMatrixDisplay

    true, pred, classes, _ = load_classified(output, data_path, split)
    k = len(classes)
    size = min(4 + 0.45 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        true, pred, labels=np.arange(k), display_labels=classes, ax=ax, colorbar=False,
        xticks_rotation="vertical", include_values=k <= 30,
    )  # fmt: skip
    ax.set_title(f"Confusion matrix of {Path(output).name} ({split or 'all rows'})")
    return _save(plt, fig, out_dir / "confusion_matrix.png")


def _plot_regression(plt, output, out_dir, data_path, split) -> str:
    true, pred, names, _ = load_regressed(output, data_path, split)
    shown = names[:4]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4.5), squeeze=False)
    # At most 20000 points per panel, the same rows in every panel.
    rows = np.random.default_rng(0).permutation(len(true))[:20000]
    for j, (ax, name) in enumerate(zip(axes[0], shown, strict=False)):
        y, p = true[rows, j], pred[rows, j]
        ax.scatter(y, p, s=3, alpha=0.3)
        if y.size:
            lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    fig.suptitle(f"Predictions of {Path(output).name} ({split or 'all rows'})")
    return _save(plt, fig, out_dir / "prediction_vs_target.png")


def _plot_scores(plt, scores_path, out_dir, data_path, split) -> list[str]:
    from sklearn.metrics import RocCurveDisplay

    z, _, y, cal = load_scored(scores_path, data_path, split)
    finite = np.isfinite(z)
    lo, hi = np.percentile(z[finite], [0.5, 99.5]) if finite.any() else (0, 1)
    bins = np.linspace(lo, hi, 80)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(np.clip(z[~y & finite], lo, hi), bins=bins, alpha=0.6, label=f"normal ({(~y).sum()})")
    ax.hist(np.clip(z[y & finite], lo, hi), bins=bins, alpha=0.6, label=f"anomalous ({y.sum()})")
    if cal:
        ax.axvline(cal["threshold"], color="k", ls="--", label=f"threshold {cal['threshold']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (z-scored)" if cal else "raw anomaly score")
    ax.set_ylabel("rows")
    ax.set_title(f"Scores of {Path(scores_path).name} ({split or 'all rows'})")
    ax.legend()
    hist_path = _save(plt, fig, out_dir / "score_histogram.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y, np.where(finite, z, np.finfo(np.float32).max), ax=ax)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_title("ROC curve")
    return [hist_path, _save(plt, fig, out_dir / "roc_curve.png")]
