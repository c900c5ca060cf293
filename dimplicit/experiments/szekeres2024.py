"""The protocol of Szekeres & Izsák (2024), as library code.

B. J. Szekeres, F. Izsák, *On the computation of the gradient in implicit neural networks*,
J. Supercomputing 2024, doi 10.1007/s11227-024-06117-6.  The facts (split calls, columns,
scaler, training recipe, selection rule, published means) are those of the authors' public
repository as summarised in the project's protocol notes; nothing of their code is used.

Two protocols share one split of each data set:

``paper``
    Exactly as published: NSL-KDD keeps the ``level`` column (difficulty score) as a feature
    (117 columns); the threshold is chosen on the z-score grid θ ∈ [−4, 4]
    (:func:`dimplicit.anomaly.metrics.grid_calibrate`).
``clean``
    The same splits, ``level`` dropped (116 columns: it is derived from the labels), and the
    threshold free of the cap (best validation F1 over every threshold,
    :func:`dimplicit.anomaly.metrics.calibrate`).

Data preparation (both protocols):

* HTRU2: ``train_test_split(rows, test_size=0.1, random_state=2024)`` → rest / test, then
  ``train_test_split(rest, test_size=0.1/0.9, random_state=2024)`` → train / validation;
  training keeps its negatives; a ``StandardScaler`` fitted on them.
* NSL-KDD: label 1 for every attack; ``protocol_type``, ``service``, ``flag`` one-hot encoded
  on each file separately (column names = the raw category values); KDDTrain+ split by
  ``train_test_split(X, y, test_size=0.25, random_state=2024)``; the six training-only dummies
  dropped; training keeps its normal rows; a ``StandardScaler`` fitted on them over all
  columns (scale 1 for a zero-variance column), applied to training, validation and KDDTest+.

Column order (pandas ``get_dummies`` order, rebuilt with NumPy since pandas is not a
dependency): the numeric columns in file order (``level`` last, when kept), then the dummies
of ``protocol_type``, ``service`` and ``flag``, each block sorted by category value (Python
string order, upper case first).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dimplicit.anomaly.metrics import calibrate, grid_calibrate
from dimplicit.data.schema import NSLKDD_COLUMNS, NSLKDD_NORMAL

PROTOCOLS = ("paper", "clean")
DATASETS = ("nsl-kdd", "htru2")
SPLIT_SEED = 2024
FIRST_SEED = 2025  # the published runs use seeds 2025 … 2034
NSL_CATEGORICAL = ("protocol_type", "service", "flag")
# Dummies of KDDTrain+ whose value never occurs in KDDTest+ (dropped: 123 → 117 columns).
TRAIN_ONLY_DUMMIES = ("http_8001", "http_2784", "red_i", "harvest", "aol", "urh_i")
LEVEL = "level"
LABELS = ("normal", "anomaly")  # label codes 0 / 1 of the stores
THRESHOLD_RULES = {"paper": grid_calibrate, "clean": calibrate}
SELECT_RULES = {"paper": "val_f1_grid", "clean": "val_f1_exact"}


def threshold_rule(protocol: str):
    """The calibration function of ``protocol`` (raw validation scores, labels) → Calibration."""
    _check(protocol, PROTOCOLS, "protocol")
    return THRESHOLD_RULES[protocol]


def _check(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One data set prepared under one protocol.

    Attributes
    ----------
    name, protocol : str
    feature_names : list of str
    X_train, X_val, X_test : ndarray (float64)
        Raw (unscaled) features; ``X_train`` holds only the normal training rows.
    y_val, y_test : ndarray of bool
        True for anomalies.
    mean, scale : ndarray
        The ``StandardScaler`` fitted on ``X_train`` (``scale`` is 1 where the variance is 0).
    """

    name: str
    protocol: str
    feature_names: list
    X_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    info: dict = field(default_factory=dict)

    def scaled(self, split: str) -> np.ndarray:
        """Standardised float32 features of ``split`` (``train``, ``val`` or ``test``)."""
        X = {"train": self.X_train, "val": self.X_val, "test": self.X_test}[split]
        return np.ascontiguousarray((X - self.mean) / self.scale, dtype=np.float32)

    def counts(self) -> dict:
        """Rows per split and anomalies per split (what the protocol's tests check)."""
        return {
            "n_features": len(self.feature_names),
            "train_normal": len(self.X_train),
            "validation": len(self.X_val),
            "validation_anomalous": int(self.y_val.sum()),
            "test": len(self.X_test),
            "test_anomalous": int(self.y_test.sum()),
        }


def _scaler(X):
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(X)
    return sc.mean_.copy(), sc.scale_.copy()


def _split(n, test_size):
    from sklearn.model_selection import train_test_split

    # Index arrays give the same rows as passing the frames: the permutation depends only on
    # the row count, test_size and random_state.
    return train_test_split(np.arange(n), test_size=test_size, random_state=SPLIT_SEED)


def _read_rows(path, n_columns):
    import csv

    with open(path, newline="") as fh:  # csv handles \r, \n and \r\n line ends
        rows = [r for r in csv.reader(fh) if r]
    bad = [i for i, r in enumerate(rows) if len(r) != n_columns]
    if bad:
        n = len(rows[bad[0]])
        raise ValueError(f"{path}: row {bad[0] + 1} has {n} fields, not {n_columns}")
    return rows


def prepare_htru2(path, protocol: str = "paper") -> Prepared:
    """HTRU2 (``HTRU_2.csv``: 8 features, class in column 9) under ``protocol``.

    Both protocols prepare HTRU2 identically; they differ in the threshold rule only.
    """
    _check(protocol, PROTOCOLS, "protocol")
    data = np.asarray(_read_rows(path, 9), dtype=np.float64)
    X, y = data[:, :8], data[:, 8] == 1
    rest, test = _split(len(X), 0.1)
    tr, va = _split(len(rest), 0.1 / 0.9)
    tr, va = rest[tr], rest[va]
    n_train = len(tr)
    tr = tr[~y[tr]]
    mean, scale = _scaler(X[tr])
    names = ["mean_ip", "std_ip", "kurtosis_ip", "skewness_ip",
             "mean_dmsnr", "std_dmsnr", "kurtosis_dmsnr", "skewness_dmsnr"]  # fmt: skip
    p = Prepared("htru2", protocol, names, X[tr], X[va], y[va], X[test], y[test], mean, scale)
    p.info = {"train_all": n_train, **p.counts()}
    return p


def one_hot_frame(rows, keep_level: bool):
    """Encode NSL-KDD rows like pandas ``get_dummies`` on that file alone.

    Returns
    -------
    X : ndarray (n, k) float64
    names : list of str
        Numeric columns in file order (``level`` last when kept), then each categorical
        column's dummies, sorted, named by the raw value.
    y : ndarray of bool
        True for attacks.
    """
    cols = NSLKDD_COLUMNS  # 41 features, the attack label, the difficulty level
    label_i, level_i = cols.index("label"), cols.index("difficulty")
    cat_i = [cols.index(c) for c in NSL_CATEGORICAL]
    num_i = [i for i in range(41) if i not in cat_i] + ([level_i] if keep_level else [])
    names = [cols[i] for i in num_i[:38]] + ([LEVEL] if keep_level else [])
    X_num = np.asarray([[r[i] for i in num_i] for r in rows], dtype=np.float64)
    blocks = [X_num]
    for i in cat_i:
        values = np.asarray([r[i] for r in rows])
        cats = sorted(set(values.tolist()))
        blocks.append((values[:, None] == np.asarray(cats)[None, :]).astype(np.float64))
        names += cats
    if len(set(names)) != len(names):
        raise ValueError("duplicate column names after one-hot encoding")
    y = np.asarray([r[label_i] != NSLKDD_NORMAL for r in rows])
    return np.hstack(blocks), names, y


def prepare_nslkdd(train_path, test_path, protocol: str = "paper") -> Prepared:
    """NSL-KDD (``KDDTrain+.txt`` and ``KDDTest+.txt``) under ``protocol``."""
    _check(protocol, PROTOCOLS, "protocol")
    keep_level = protocol == "paper"
    X, names, y = one_hot_frame(_read_rows(train_path, 43), keep_level)
    tr, va = _split(len(X), 0.25)
    keep = [j for j, n in enumerate(names) if n not in TRAIN_ONLY_DUMMIES]
    X, names = X[:, keep], [names[j] for j in keep]
    Xt, tnames, yt = one_hot_frame(_read_rows(test_path, 43), keep_level)
    if set(tnames) != set(names):
        extra, missing = sorted(set(tnames) - set(names)), sorted(set(names) - set(tnames))
        raise ValueError(
            f"{test_path}: its columns differ from the training columns after dropping "
            f"{TRAIN_ONLY_DUMMIES} (extra {extra[:5]}, missing {missing[:5]})"
        )
    Xt = Xt[:, [tnames.index(n) for n in names]]  # the training file's column order
    n_train = len(tr)
    tr = tr[~y[tr]]
    mean, scale = _scaler(X[tr])
    p = Prepared("nsl-kdd", protocol, names, X[tr], X[va], y[va], Xt, yt, mean, scale)
    p.info = {"train_all": n_train, **p.counts()}
    return p


def prepare(name: str, data_dir, protocol: str = "paper") -> Prepared:
    """Data set ``name`` from ``data_dir`` (``htru2/HTRU_2.csv``, ``nsl-kdd/KDD*+.txt``)."""
    _check(name, DATASETS, "data set")
    d = Path(data_dir)
    if name == "htru2":
        return prepare_htru2(d / "htru2" / "HTRU_2.csv", protocol)
    return prepare_nslkdd(d / "nsl-kdd" / "KDDTrain+.txt", d / "nsl-kdd" / "KDDTest+.txt",
                          protocol)  # fmt: skip


def to_store(data: Prepared, path=None):
    """Write ``data`` as a dimplicit store (one chunk; in memory when ``path`` is None).

    Raw features, the split codes (train 0: the normal training rows, validation 1, test 2),
    labels ``normal``/``anomaly`` and the protocol's scaler as the store's statistics, so a
    reader standardising with ``store.mean``/``store.std`` gets the protocol's inputs (in
    float32).  Returns the opened store (in memory) or its path.
    """
    from dimplicit.data.store import StoreWriter

    X = np.vstack([data.X_train, data.X_val, data.X_test]).astype(np.float32)
    y = np.concatenate([np.zeros(len(data.X_train), bool), data.y_val, data.y_test])
    split = np.repeat(np.int8([0, 1, 2]), [len(data.X_train), len(data.X_val), len(data.X_test)])
    attrs = {
        "format": "generic",
        "source": f"Szekeres & Izsák (2024) protocol '{data.protocol}', {data.name}",
        "columns": list(data.feature_names),
        "label_classes": list(LABELS),
        "normal_classes": [LABELS[0]],
        "categories": {},
        "stats": {
            "mean": [float(v) for v in data.mean],
            "std": [float(v) for v in data.scale],
            "count": len(data.X_train),
            "rows": "normal training rows (StandardScaler; scale 1 for zero variance)",
        },
    }
    with StoreWriter(path, list(data.feature_names), len(X), overwrite=True) as w:
        w.append(X, y.astype(np.int32), split)
        return w.close(attrs)


# --------------------------------------------------------------------------------------
# Models and the published numbers
# --------------------------------------------------------------------------------------

SIZES = ((5, 32, 8), (5, 32, 16), (5, 64, 8), (5, 64, 16), (7, 64, 8), (7, 64, 16))
FAMILIES = ("v0", "v1", "v2")


@dataclass(frozen=True)
class ModelSpec:
    """One published model: ``name`` (``v1-5-32-16``), ``arch`` (``ae-v1:5,32,16``), label."""

    name: str
    family: str
    size: tuple

    @property
    def arch(self) -> str:
        return f"ae-{self.family}:{','.join(map(str, self.size))}"

    @property
    def label(self) -> str:
        return f"({';'.join(map(str, self.size))})-{self.family}"

    def activation(self, dataset: str) -> str:
        """Hidden activation: v0 Leaky-ReLU 0.1, v1 arctan, v2 arctan (NSL-KDD) / Leaky-ReLU."""
        if self.family == "v1" or (self.family == "v2" and dataset == "nsl-kdd"):
            return "arctan"
        return "leaky_relu:0.1"


MODELS = {
    f"{f}-{'-'.join(map(str, s))}": ModelSpec(f"{f}-{'-'.join(map(str, s))}", f, s)
    for f in FAMILIES
    for s in SIZES
}

# Published means ± 95 % t half-widths over 10 runs (the authors' result files): test F1,
# precision, recall, validation AUC, training seconds (GTX 1080, validation included).
_PUBLISHED = """
htru2 (5;32;8)-v0 0.758±0.032 0.660±0.054 0.896±0.012 0.942±0.006 28.8±8.6
htru2 (5;32;16)-v0 0.765±0.009 0.669±0.015 0.893±0.008 0.943±0.003 34.5±0.7
htru2 (5;64;8)-v0 0.760±0.025 0.661±0.038 0.897±0.009 0.943±0.006 39.6±0.1
htru2 (5;64;16)-v0 0.768±0.029 0.673±0.049 0.899±0.009 0.943±0.004 40.0±0.1
htru2 (7;64;8)-v0 0.716±0.029 0.600±0.043 0.893±0.007 0.944±0.003 42.1±0.8
htru2 (7;64;16)-v0 0.734±0.026 0.628±0.040 0.889±0.008 0.944±0.004 42.2±1.0
htru2 (5;32;8)-v1 0.751±0.029 0.645±0.040 0.902±0.006 0.946±0.003 149.3±42.0
htru2 (5;32;16)-v1 0.732±0.037 0.622±0.060 0.898±0.008 0.949±0.006 159.4±27.2
htru2 (5;64;8)-v1 0.743±0.035 0.634±0.054 0.906±0.009 0.951±0.008 148.3±43.6
htru2 (5;64;16)-v1 0.748±0.029 0.641±0.042 0.901±0.008 0.949±0.006 232.1±24.8
htru2 (7;64;8)-v1 0.739±0.032 0.630±0.048 0.899±0.007 0.947±0.004 210.1±25.0
htru2 (7;64;16)-v1 0.747±0.029 0.640±0.045 0.902±0.007 0.947±0.006 229.3±29.4
htru2 (5;32;8)-v2 0.746±0.028 0.639±0.041 0.900±0.007 0.947±0.006 112.8±6.2
htru2 (5;32;16)-v2 0.765±0.034 0.671±0.054 0.898±0.007 0.945±0.005 101.2±3.8
htru2 (5;64;8)-v2 0.763±0.027 0.665±0.043 0.898±0.007 0.947±0.007 153.0±8.7
htru2 (5;64;16)-v2 0.740±0.021 0.629±0.033 0.901±0.009 0.948±0.004 136.2±5.9
htru2 (7;64;8)-v2 0.769±0.032 0.678±0.054 0.897±0.014 0.948±0.003 134.9±1.6
htru2 (7;64;16)-v2 0.771±0.027 0.676±0.044 0.901±0.008 0.950±0.003 134.8±2.4
nsl-kdd (5;32;8)-v0 0.893±0.011 0.930±0.012 0.861±0.027 0.973±0.001 82.8±12.6
nsl-kdd (5;32;16)-v0 0.899±0.014 0.924±0.012 0.878±0.036 0.973±0.001 61.8±29.4
nsl-kdd (5;64;8)-v0 0.876±0.041 0.898±0.084 0.872±0.050 0.876±0.220 82.4±20.5
nsl-kdd (5;64;16)-v0 0.900±0.010 0.920±0.007 0.882±0.025 0.973±0.001 29.1±30.3
nsl-kdd (7;64;8)-v0 0.887±0.012 0.941±0.015 0.841±0.030 0.973±0.001 78.1±22.4
nsl-kdd (7;64;16)-v0 0.890±0.011 0.938±0.014 0.849±0.029 0.973±0.001 76.9±28.1
nsl-kdd (5;32;8)-v1 0.912±0.012 0.918±0.005 0.907±0.027 0.980±0.002 235.5±86.8
nsl-kdd (5;32;16)-v1 0.922±0.004 0.919±0.003 0.925±0.011 0.981±0.001 259.5±84.0
nsl-kdd (5;64;8)-v1 0.922±0.006 0.918±0.004 0.927±0.012 0.981±0.002 207.9±121.3
nsl-kdd (5;64;16)-v1 0.918±0.017 0.920±0.003 0.916±0.035 0.982±0.001 153.7±130.0
nsl-kdd (7;64;8)-v1 0.908±0.011 0.920±0.003 0.898±0.024 0.980±0.001 267.4±109.8
nsl-kdd (7;64;16)-v1 0.916±0.006 0.919±0.003 0.914±0.013 0.979±0.001 89.6±56.6
nsl-kdd (5;32;8)-v2 0.917±0.011 0.920±0.003 0.914±0.022 0.983±0.002 268.3±14.5
nsl-kdd (5;32;16)-v2 0.924±0.003 0.921±0.002 0.927±0.007 0.983±0.001 256.4±7.4
nsl-kdd (5;64;8)-v2 0.917±0.009 0.920±0.002 0.915±0.018 0.984±0.001 276.5±10.8
nsl-kdd (5;64;16)-v2 0.922±0.004 0.922±0.002 0.922±0.007 0.987±0.001 291.9±10.4
nsl-kdd (7;64;8)-v2 0.914±0.015 0.920±0.003 0.910±0.032 0.981±0.002 311.5±9.3
nsl-kdd (7;64;16)-v2 0.924±0.008 0.922±0.003 0.925±0.017 0.984±0.001 317.8±8.1
"""
PUBLISHED_KEYS = ("f1", "precision", "recall", "val_auc", "train_s")


def published() -> dict:
    """``{(dataset, label): {metric: (mean, half_width)}}`` of the paper's result files."""
    out = {}
    for line in _PUBLISHED.strip().splitlines():
        ds, label, *vals = line.split()
        pairs = zip(PUBLISHED_KEYS, vals, strict=True)
        out[(ds, label)] = {k: tuple(float(x) for x in v.split("±")) for k, v in pairs}
    return out


# --------------------------------------------------------------------------------------
# Training as published
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The published training recipe of one data set.

    SGD with Nesterov momentum (0.9: the momentum value is not among the published facts),
    lr 0.01 with cosine decay to 0 over all steps, L2 weight decay 1e-4 on the weight
    matrices (PyTorch's ``weight_decay`` also decays the biases: see the report), MSE,
    fixed point tolerance 1e-5 with at most 50 iterations, U(−1, 1)/√fan-in initialisation,
    validation every 11 mini-batches and at each epoch's end.
    """

    epochs: int
    batch_size: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    tol: float = 1e-5
    max_iter: int = 50
    gradient: str = "implicit"
    eval_every: int = 11
    init: str = "uniform-fan-in"

    def solver(self):
        from dimplicit.solvers import SolverOptions

        return SolverOptions("picard", tol=self.tol, max_iter=self.max_iter, check_every=1)

    def step_config(self):
        from dimplicit.gradients import BackwardOptions
        from dimplicit.partition import StepConfig

        fwd = self.solver()
        return StepConfig("mse", fwd, BackwardOptions(self.gradient, solver=fwd))

    def optimizer(self, total_steps: int):
        from dimplicit.optim import OptimizerConfig

        return OptimizerConfig(
            "sgd", lr=self.lr, momentum=self.momentum, nesterov=True,
            weight_decay=self.weight_decay, schedule="cosine", total_steps=total_steps,
        )  # fmt: skip


RECIPES = {"nsl-kdd": Recipe(epochs=5, batch_size=32), "htru2": Recipe(epochs=20, batch_size=16)}


def evaluate(cal, val_raw, y_val, test_raw, y_test) -> dict:
    """Test metrics at calibration ``cal`` (chosen on validation only), plus diagnostics.

    Returns test ``f1``, ``precision``, ``recall``, ``accuracy``, ``mcc``, ``roc_auc``; the
    calibration's ``val_f1``, ``val_auc``, ``threshold``; ``val_recall`` at the threshold;
    and ``oracle_f1`` / ``oracle_f1_r90``: the best test F1 of any threshold (with recall
    ≥ 0.90), computed from the test labels as an upper bound, never used to choose.
    """
    from dimplicit.anomaly.metrics import best_f1_threshold, classification_metrics

    zv, zt = cal.zscore(np.asarray(val_raw, float)), cal.zscore(np.asarray(test_raw, float))
    m = classification_metrics(y_test, cal.flag(zt), zt)
    return {
        **{k: m[k] for k in ("f1", "precision", "recall", "accuracy", "mcc", "roc_auc")},
        "val_f1": cal.val_f1,
        "val_auc": cal.val_auc,
        "val_recall": float(np.mean(cal.flag(zv[np.asarray(y_val, bool)]))),
        "threshold": cal.threshold,
        "oracle_f1": best_f1_threshold(y_test, zt)[1],
        "oracle_f1_r90": best_f1_threshold(y_test, zt, 0.90)[1],
    }


def build(spec: ModelSpec, dataset: str, n_features: int, seed: int, recipe: Recipe):
    """The published model ``spec`` for ``dataset`` (unconstrained latent block, float32)."""
    from dimplicit.model import build_model

    return build_model(
        spec.arch, n_features, n_features, activation=spec.activation(dataset), kappa=None,
        seed=seed, dtype="float32", init=recipe.init,
    )  # fmt: skip


def train_one(data: Prepared, store, spec: ModelSpec, seed: int, recipe: Recipe | None = None,
              max_steps: int | None = None) -> dict:  # fmt: skip
    """Train ``spec`` with ``seed`` under ``data.protocol``; select; score the test rows.

    The trainer evaluates the validation split every ``recipe.eval_every`` mini-batches and
    at each epoch's end and keeps the checkpoint of the best validation F1 under the
    protocol's threshold rule (``select_best`` ``val_f1_grid`` or ``val_f1_exact``) with its
    calibration; the test rows are scored once, with that checkpoint and calibration.
    ``train_s`` is the wall time of the training call, validation passes included.

    Returns
    -------
    dict
        :func:`evaluate`'s metrics under the protocol's rule, ``other_rule``: the test
        metrics of the same checkpoint under the other protocol's threshold rule, and
        training figures (``train_s``, ``steps``, ``evaluations``, ``best_step``, solver
        iterations, unconverged rows).
    """
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.forward import predict
    from dimplicit.losses import row_rmse

    recipe = recipe or RECIPES[data.name]
    model = build(spec, data.name, len(data.feature_names), seed, recipe)
    steps = recipe.epochs * math.ceil(len(data.X_train) / recipe.batch_size)
    trainer = Trainer(
        model, DataSpec(store, "autoencode", normal_only=True, standardize=True),
        config=recipe.step_config(), optimizer=recipe.optimizer(steps), epochs=recipe.epochs,
        batch_size=recipe.batch_size, seed=seed, eval_every=recipe.eval_every,
        eval_at_epoch_end=True, select_best=SELECT_RULES[data.protocol], executor="local",
        max_steps=max_steps,
    )  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    # CPU seconds too: on a shared machine the wall time depends on the other processes.
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    best = trainer.best_
    from dimplicit.anomaly.metrics import Calibration

    cal = Calibration(**best["calibration"])
    Yv, _, sv = predict(trainer.model_, data.scaled("val"), recipe.solver())
    Yt, _, st = predict(trainer.model_, data.scaled("test"), recipe.solver())
    val_raw, test_raw = row_rmse(Yv, data.scaled("val")), row_rmse(Yt, data.scaled("test"))
    out = {"seed": seed, **evaluate(cal, val_raw, data.y_val, test_raw, data.y_test)}
    other = "clean" if data.protocol == "paper" else "paper"
    cal2 = threshold_rule(other)(val_raw, data.y_val)
    out["other_rule"] = evaluate(cal2, val_raw, data.y_val, test_raw, data.y_test)
    hist = trainer.history_
    out |= {
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "steps": len(hist),
        "evaluations": len(trainer.evaluations_),
        "best_step": best["step"],
        "forward_iters": float(np.mean([h["forward_iters"] for h in hist])),
        "backward_iters": float(np.mean([h["backward_iters"] for h in hist])),
        "train_unconverged_steps": int(sum(h["forward_unconverged"] > 0 for h in hist)),
        "score_unconverged_rows": int(sv.n_unconverged + st.n_unconverged),
    }
    return out


__all__ = [
    "DATASETS", "FIRST_SEED", "MODELS", "PROTOCOLS", "RECIPES", "SPLIT_SEED", "ModelSpec",
    "Prepared", "Recipe", "build", "evaluate", "one_hot_frame", "prepare", "prepare_htru2",
    "prepare_nslkdd", "published", "threshold_rule", "to_store", "train_one",
]  # fmt: skip


# --------------------------------------------------------------------------------------
# A whole experiment
# --------------------------------------------------------------------------------------

RUN_METRICS = ("f1", "precision", "recall", "accuracy", "mcc", "roc_auc", "val_f1", "val_auc",
               "val_recall", "oracle_f1", "oracle_f1_r90", "train_s", "train_cpu_s", "evaluations",
               "forward_iters", "backward_iters")  # fmt: skip


def run(data_dir, *, protocols=("paper",), datasets=DATASETS, models=tuple(MODELS), seeds=(),
        baselines=True, max_steps=None, on_update=None, log=print) -> dict:  # fmt: skip
    """Train and evaluate every (protocol, data set, model, seed); fit the baselines.

    Parameters
    ----------
    data_dir : path
        Folder with ``htru2/`` and ``nsl-kdd/``.
    protocols, datasets, models, seeds : sequences
        What to run (``models``: names of :data:`MODELS`); each model is run for every seed
        before the next model starts.
    baselines : bool
        Fit the classical detectors (:mod:`dimplicit.experiments.baselines`) on every
        (protocol, data set), evaluated under both threshold rules.
    max_steps : int, optional
        Quick checks only: stop every training run after this many steps.
    on_update : callable, optional
        Called with the result after every run (e.g. to write the JSON incrementally).
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``data[protocol][dataset]`` (split counts), ``runs[protocol][dataset][model]``
        (``per_seed`` metrics), ``baselines[protocol][dataset][name]`` (metrics per rule).
    """
    from dimplicit.distributed.driver import DivergenceError
    from dimplicit.experiments.baselines import BASELINES, run_baseline

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(MODELS)}")
    result = {"data": {}, "runs": {}, "baselines": {}, "skipped": []}
    for protocol in protocols:
        for ds in datasets:
            t0 = time.perf_counter()
            data = prepare(ds, data_dir, protocol)
            store = to_store(data)
            result["data"].setdefault(protocol, {})[ds] = data.info
            log(f"[{protocol} {ds}] prepared in {time.perf_counter() - t0:.1f} s: {data.info}")
            if baselines:
                tr, va, te = data.scaled("train"), data.scaled("val"), data.scaled("test")
                rules = {p: threshold_rule(p) for p in PROTOCOLS}
                base = result["baselines"].setdefault(protocol, {}).setdefault(ds, {})
                for b in BASELINES:
                    base[b] = run_baseline(b, tr, va, data.y_val, te, data.y_test, rules)
                    log(f"[{protocol} {ds} baseline {b}] test F1 {base[b][protocol]['f1']:.4f}")
            runs = result["runs"].setdefault(protocol, {}).setdefault(ds, {})
            for name in models:
                try:  # an architecture this version of dimplicit lacks is skipped, and said
                    build(MODELS[name], ds, len(data.feature_names), 0, RECIPES[ds])
                except ValueError as exc:
                    result["skipped"].append(f"{protocol} {ds} {name}: {exc}")
                    log(f"[{protocol} {ds} {name}] skipped: {exc}")
                    continue
                entry = runs.setdefault(name, {"arch": MODELS[name].arch, "per_seed": []})
                for seed in seeds:
                    try:
                        r = train_one(data, store, MODELS[name], seed, max_steps=max_steps)
                    except DivergenceError as exc:  # recorded, not averaged
                        entry.setdefault("failures", []).append({"seed": seed, "error": str(exc)})
                        log(f"[{protocol} {ds} {name} seed {seed}] diverged: {exc}")
                        continue
                    entry["per_seed"].append(r)
                    log(
                        f"[{protocol} {ds} {name} seed {seed}] test F1 {r['f1']:.4f} P "
                        f"{r['precision']:.4f} R {r['recall']:.4f} val AUC {r['val_auc']:.4f} "
                        f"train {r['train_s']:.1f} s ({r['steps']} steps, "
                        f"{r['evaluations']} validations)"
                    )
                    if on_update is not None:
                        on_update(result)
    return result
