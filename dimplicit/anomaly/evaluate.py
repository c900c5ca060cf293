"""Metrics and plots of a scores store against the labels of its source store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dimplicit.anomaly.metrics import classification_metrics
from dimplicit.anomaly.score import open_scores
from dimplicit.data.store import open_store

SPLITS = {"train": 0, "validation": 1, "test": 2}


def load_scored(scores_path, data_path=None, split: str | None = None):
    """``(z, flagged, is_anomalous, calibration)`` arrays of the selected rows."""
    g = open_scores(scores_path)
    store = open_store(data_path or g.attrs["source"])
    if store.n_rows != g["score"].shape[0]:
        raise ValueError(
            f"{scores_path} has {g['score'].shape[0]} rows but {store.path} has "
            f"{store.n_rows}: not the scores of this store"
        )
    z, flag, labels = g["score"][:], g["is_anomaly"][:], store.labels[:]
    keep = labels >= 0  # unlabelled rows cannot be evaluated
    if split is not None:
        keep &= store.split[:] == SPLITS[split]
    return z[keep], flag[keep], ~store.is_normal(labels[keep]), g.attrs.get("calibration")


def evaluate(scores_path, data_path=None, split: str | None = None) -> dict:
    """Metrics (F1, precision, recall, accuracy, MCC, ROC AUC) of the stored flags."""
    z, flag, y, cal = load_scored(scores_path, data_path, split)
    if y.size == 0:
        raise ValueError("no labelled rows to evaluate (check --split)")
    finite = np.where(np.isfinite(z), z, np.finfo(np.float32).max)
    out = classification_metrics(y, flag, finite)
    out["split"] = split or "all"
    out["threshold"] = cal["threshold"] if cal else None
    return out


def plot(scores_path, out_dir, data_path=None, split: str | None = None) -> list[str]:
    """Score histograms (normal vs anomalous, threshold marked) and the ROC curve, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    z, _, y, cal = load_scored(scores_path, data_path, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finite = np.isfinite(z)
    lo, hi = np.percentile(z[finite], [0.5, 99.5]) if finite.any() else (0, 1)
    bins = np.linspace(lo, hi, 80)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(np.clip(z[~y & finite], lo, hi), bins=bins, alpha=0.6, label=f"normal ({(~y).sum()})")
    ax.hist(np.clip(z[y & finite], lo, hi), bins=bins, alpha=0.6, label=f"anomalous ({y.sum()})")
    if cal:
        ax.axvline(cal["threshold"], color="k", ls="--", label=f"threshold {cal['threshold']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (z-scored reconstruction RMSE)")
    ax.set_ylabel("rows")
    ax.set_title(f"Scores of {Path(scores_path).name} ({split or 'all rows'})")
    ax.legend()
    fig.tight_layout()
    hist_path = out_dir / "score_histogram.png"
    fig.savefig(hist_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y, np.where(finite, z, np.finfo(np.float32).max), ax=ax)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_title("ROC curve")
    fig.tight_layout()
    roc_path = out_dir / "roc_curve.png"
    fig.savefig(roc_path, dpi=110)
    plt.close(fig)
    return [str(hist_path), str(roc_path)]
