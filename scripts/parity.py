"""Default dimplicit estimators against scikit-learn's MLP with its defaults (README table).

Seeded 70/15/15 split of each bundled data set (``train_test_split``, ``random_state=0``: the
15 % validation part is not used by either side: dimplicit holds out its own 10 % of the
training rows for keep-best), the MLP on standardised inputs, both with ``random_state=0``.
Prints one JSON object and the Markdown table.

    .venv/bin/python scripts/parity.py
"""

from __future__ import annotations

import json
import time
import warnings

from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

from dimplicit import ImplicitClassifier, ImplicitRegressor

CASES = [
    ("breast_cancer", load_breast_cancer, MLPClassifier, ImplicitClassifier, "accuracy"),
    ("wine", load_wine, MLPClassifier, ImplicitClassifier, "accuracy"),
    ("digits", load_digits, MLPClassifier, ImplicitClassifier, "accuracy"),
    ("diabetes", load_diabetes, MLPRegressor, ImplicitRegressor, "R²"),
]


def split(loader):
    X, y = loader(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, random_state=0)
    _, X_test, _, y_test = train_test_split(X_rest, y_rest, test_size=0.5, random_state=0)
    return X_train, y_train, X_test, y_test


def main() -> None:
    rows = []
    for name, loader, mlp_cls, ours_cls, metric in CASES:
        X_train, y_train, X_test, y_test = split(loader)
        scaler = StandardScaler().fit(X_train)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp = mlp_cls(random_state=0).fit(scaler.transform(X_train), y_train)
        t_mlp = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = ours_cls(random_state=0).fit(X_train, y_train)
        t_ours = time.perf_counter() - t0
        rows.append(
            {
                "data": name,
                "metric": metric,
                "train_rows": len(X_train),
                "test_rows": len(X_test),
                "mlp": round(float(mlp.score(scaler.transform(X_test), y_test)), 4),
                "dimplicit": round(float(ours.score(X_test, y_test)), 4),
                "mlp_seconds": round(t_mlp, 2),
                "dimplicit_seconds": round(t_ours, 2),
                "dimplicit_steps": ours.n_iter_,
                "dimplicit_best": ours.best_,
            }
        )
    print(json.dumps(rows))
    for r in rows:
        print(
            f"| {r['data']} ({r['metric']}, {r['test_rows']} test rows) | {r['mlp']:.4f} | "
            f"{r['dimplicit']:.4f} | {r['dimplicit_seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
