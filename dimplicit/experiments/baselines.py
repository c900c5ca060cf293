"""Classical anomaly detectors: a ceiling check for the autoencoders' targets.

Each detector is fitted on the normal training rows, scores the validation and test rows,
and is calibrated by the same rule as the autoencoders (a protocol's threshold rule, on the
validation rows only).  They are not competitors: their *oracle* test F1 (the best threshold
chosen afterwards on the test labels) shows how far any ranking of these features gets, so it
tells whether a target is out of reach of the protocol rather than of one model.
"""

from __future__ import annotations

import time

import numpy as np


def _knn(k):
    def fit(train, seed):
        from sklearn.neighbors import NearestNeighbors

        # Brute force: BLAS distance blocks beat trees in 100+ dimensions.
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train)
        return lambda X: nn.kneighbors(X)[0].mean(axis=1)

    return fit


def _pca(k):
    def fit(train, seed):
        from sklearn.decomposition import PCA

        pca = PCA(k, random_state=seed).fit(train)
        return lambda X: np.linalg.norm(X - pca.inverse_transform(pca.transform(X)), axis=1)

    return fit


def _mahalanobis(train, seed):
    from sklearn.covariance import EmpiricalCovariance

    cov = EmpiricalCovariance().fit(train)
    return lambda X: np.sqrt(cov.mahalanobis(X))


def _isolation_forest(train, seed):
    from sklearn.ensemble import IsolationForest

    f = IsolationForest(random_state=seed).fit(train)
    return lambda X: -f.score_samples(X)


BASELINES = {
    "pca-2": _pca(2),
    "pca-4": _pca(4),
    "mahalanobis": _mahalanobis,
    "knn-20": _knn(20),
    "isolation-forest": _isolation_forest,
}
"""Name → ``fit(train, seed)`` returning a scorer ``X → raw score`` (larger: more anomalous)."""


def raw_scores(name: str, train, val, test, seed: int = 0):
    """Fit baseline ``name`` on ``train``; return ``(val_raw, test_raw, fit_seconds)``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    t0 = time.perf_counter()
    score = BASELINES[name](np.asarray(train, np.float64), seed)
    fit_s = time.perf_counter() - t0
    return score(np.asarray(val, np.float64)), score(np.asarray(test, np.float64)), fit_s


def run_baseline(name: str, train, val, y_val, test, y_test, rules: dict, seed: int = 0) -> dict:
    """Fit ``name`` once and evaluate it under every threshold rule of ``rules``.

    Parameters
    ----------
    rules : dict
        Rule name → calibration function ``(val_raw, y_val) → Calibration``, e.g.
        :func:`dimplicit.anomaly.metrics.grid_calibrate`.

    Returns
    -------
    dict
        ``{rule: metrics}`` (:func:`dimplicit.experiments.szekeres2024.evaluate`) and
        ``fit_s``.
    """
    from dimplicit.experiments.szekeres2024 import evaluate

    val_raw, test_raw, fit_s = raw_scores(name, train, val, test, seed)
    out = {r: evaluate(cal(val_raw, y_val), val_raw, y_val, test_raw, y_test)
           for r, cal in rules.items()}  # fmt: skip
    out["fit_s"] = fit_s
    return out
