"""Anomaly detection: calibration, out-of-core scoring, metrics and plots."""

from dimplicit.anomaly.evaluate import evaluate, plot
from dimplicit.anomaly.metrics import Calibration, calibrate, classification_metrics
from dimplicit.anomaly.score import calibrate_on_store, score_store

__all__ = [
    "Calibration",
    "calibrate",
    "calibrate_on_store",
    "classification_metrics",
    "evaluate",
    "plot",
    "score_store",
]
