"""Anomaly scores → decisions → metrics (scikit-learn does the counting).

Protocol of Szekeres & Izsák (2024): the score of a row is its reconstruction RMSE, z-scored
with the mean/std over *normal validation* rows; the threshold is the one that maximises F1 on
the validation rows; test metrics use that threshold unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class Calibration:
    """How raw scores become z-scores and flags.

    Attributes
    ----------
    mean, std : float
        Of the raw score over normal validation rows.
    threshold : float
        On the z-score: ``z > threshold`` flags an anomaly.
    val_f1, val_auc : float
        Validation F1 at the threshold and validation ROC AUC (for reports).
    """

    mean: float
    std: float
    threshold: float
    val_f1: float | None = None
    val_auc: float | None = None

    def zscore(self, raw):
        return (raw - self.mean) / (self.std if self.std > 0 else 1.0)

    def flag(self, z):
        return z > self.threshold

    def to_dict(self) -> dict:
        return asdict(self)


def best_f1_threshold(y_true, scores, min_recall: float = 0.0) -> tuple[float, float]:
    """The threshold maximising F1 (``score > t`` is positive); returns ``(t, f1)``.

    Uses the precision-recall curve, so every distinct score is a candidate.  The threshold is
    placed halfway between the chosen score and the next lower one, so ``>`` and ``≥`` agree.
    ``min_recall`` restricts the candidates to thresholds reaching at least that recall.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("choosing a threshold needs both normal and anomalous validation rows")
    prec, rec, thr = skm.precision_recall_curve(y, s)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0)[:-1]
    # The lowest threshold has recall 1, so some candidate always qualifies.
    f1 = np.where(rec[:-1] >= min_recall, f1, -1.0)
    i = int(np.argmax(f1))
    below = s[s < thr[i]]
    t = 0.5 * (thr[i] + below.max()) if below.size else thr[i] - 1e-12
    return float(t), float(f1[i])


def calibrate(raw_scores, is_anomaly) -> Calibration:
    """Calibration from validation raw scores and labels (``True`` = anomaly)."""
    raw = np.asarray(raw_scores, dtype=np.float64)
    y = np.asarray(is_anomaly).astype(bool)
    normal = raw[~y]
    if normal.size < 2:
        raise ValueError("calibration needs at least two normal validation rows")
    mean, std = float(normal.mean()), float(normal.std())
    z = (raw - mean) / (std if std > 0 else 1.0)
    t, f1 = best_f1_threshold(y, z)
    return Calibration(mean, std, t, f1, float(skm.roc_auc_score(y, z)))


def classification_metrics(y_true, flagged, scores=None) -> dict:
    """F1, precision, recall, accuracy, MCC (and ROC AUC when scores are given)."""
    y = np.asarray(y_true).astype(bool)
    f = np.asarray(flagged).astype(bool)
    out = {
        "f1": float(skm.f1_score(y, f, zero_division=0)),
        "precision": float(skm.precision_score(y, f, zero_division=0)),
        "recall": float(skm.recall_score(y, f, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y, f)),
        "mcc": float(skm.matthews_corrcoef(y, f)),
        "n": int(y.size),
        "n_anomalous": int(y.sum()),
        "n_flagged": int(f.sum()),
    }
    if scores is not None and 0 < y.sum() < y.size:
        out["roc_auc"] = float(skm.roc_auc_score(y, np.asarray(scores, dtype=np.float64)))
    return out
