"""scikit-learn estimators over the one training core: classifier, regressor, autoencoder.

``fit`` accepts a NumPy array (trained in this process, no Dask), a ``dask.array.Array``
(trained on the Dask executor, its row chunks as partitions) or the path of a dimplicit store.
Either way it builds a :class:`~dimplicit.distributed.trainer.Trainer` and runs the same plan,
so an estimator fitted on a laptop and one fitted on a cluster hold the same weights.

Inputs are standardised with statistics of the training rows, learned in ``fit`` (regression
targets too, undone in ``predict``).  Prediction batches rows (a batch iterates until its slowest
row converges, so outputs agree across batchings to the solver tolerance, not bitwise);
NumPy in gives NumPy out, Dask in gives a lazy Dask array out.  ``save``/``load`` round-trip
a fitted estimator through ``.npz`` (no pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    OutlierMixin,
    RegressorMixin,
    TransformerMixin,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

# Rows per prediction batch: bounds memory whatever the input size.
PREDICT_ROWS = 65536


class _ImplicitEstimator(TransformerMixin, BaseEstimator):
    """Parameters and the fit/predict machinery shared by the three estimators.

    Parameters
    ----------
    arch : str
        Architecture (see :func:`dimplicit.model.build_model`): ``dense`` (``hidden``
        neurons), ``layered:W1,W2,...``, ``ae-v0:M,S,L``, ``ae-v1:M,S,L``, ``ae-dense``.
    hidden : int
        Hidden neurons of the dense architectures.
    activation : str, optional
        relu, leaky_relu[:α], tanh, arctan, sigmoid, identity (default: the architecture's).
    kappa : float or None
        Keep ‖A‖∞ ≤ κ (well-posedness); None leaves A unconstrained.
    solver : {"auto", "picard", "anderson"}
    tol : float
        Relative residual per sample at which a fixed-point solve stops.
    max_iter : int
        Iteration limit per solve.
    method : str
        Gradient: ``implicit``, ``neumann``, ``jfb``, ``phantom-K``.
    optimizer : {"adam", "sgd"}
    lr, weight_decay, momentum : float
    group_lasso : float
        Feature selection: λ of the penalty λ Σ_j ‖[B; D][:, j]‖₂ on the input columns,
        applied as a proximal step after every update (:mod:`dimplicit.sparsity`); the
        features whose column ends at zero are unused (``selected_features_``).  0: none.
    nesterov : bool
    epochs : int
        Passes over the training rows.
    batch_size : int
        Rows per step.
    validation_fraction : float
        Share of the rows held out (seeded) for ``select_best`` / ``patience``; used only
        when one of them is set.
    eval_every : int, optional
        Steps between validation evaluations (default: once per epoch).
    select_best : str or None
        Keep and restore the best evaluation's weights: ``val_loss``, ``val_accuracy``
        (classifier), ``val_r2`` (regressor); ``auto`` (default): ``val_accuracy`` for the
        classifier, ``val_loss`` otherwise; None: keep the last weights.
    patience : int, optional
        Stop after this many evaluations without improvement (keeps the best weights);
        default 20.
    random_state : int, RandomState or None
        Seeds weights, data order and the validation split.
    device : {"cpu", "gpu"}
    dtype : {"float32", "float64"}
    executor : {"auto", "local", "dask"}
        ``auto``: Dask for Dask-array input or with ``scheduler``, else in this process.
    scheduler : str, optional
        Address of a Dask scheduler for the Dask executor (default: the current client,
        or a local in-process cluster).
    temp_dir : str, optional
        Where Dask-array input is written as a temporary store; it must be visible to every
        worker (shared storage on a multi-node cluster).  Default: the system's.
    """

    _task = "classify"
    _loss = "cross_entropy"
    _default_select = "val_accuracy"

    def __init__(
        self,
        arch="dense",
        hidden=128,
        activation=None,
        kappa=0.95,
        solver="auto",
        tol=1e-4,
        max_iter=300,
        method="implicit",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        group_lasso=0.0,
        momentum=0.9,
        nesterov=False,
        epochs=100,
        batch_size=32,
        validation_fraction=0.1,
        eval_every=None,
        select_best="auto",
        patience=20,
        random_state=None,
        device="cpu",
        dtype="float32",
        executor="auto",
        scheduler=None,
        temp_dir=None,
    ):
        self.arch = arch
        self.hidden = hidden
        self.activation = activation
        self.kappa = kappa
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.method = method
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.group_lasso = group_lasso
        self.momentum = momentum
        self.nesterov = nesterov
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.select_best = select_best
        self.patience = patience
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.executor = executor
        self.scheduler = scheduler
        self.temp_dir = temp_dir

    # ------------------------------------------------------------------ fit

    def _fit(self, X, y, normal_only=False):
        """Train on ``X`` (array, Dask array or store path); returns the store used."""
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        self._fit_seed = seed
        if isinstance(X, str | os.PathLike):
            store = self._store_from_path(X, y)
            return self._train(store, seed, normal_only, client_needed=False)
        if _is_dask(X):
            from dimplicit.atomic import make_temporary_dir, remove_temporary

            tmp = make_temporary_dir(self.temp_dir or tempfile.gettempdir(), "dimplicit-fit")
            try:
                store = self._store_from_dask(X, y, tmp / "data.zarr", seed)
                return self._train(store, seed, normal_only, client_needed=True)
            finally:
                remove_temporary(tmp)
        X, Y = self._validate_fit(X, y)
        store = self._store_from_arrays(X, Y, seed)
        return self._train(store, seed, normal_only, client_needed=False)

    def _validate_fit(self, X, y):
        """Validated ``X`` and the training target array (task-specific)."""
        raise NotImplementedError

    def _wants_validation(self) -> bool:
        return (self.select_best is not None or self.patience is not None) and (
            self.validation_fraction > 0
        )

    def _split(self, n, seed):
        split = np.zeros(n, dtype=np.int8)
        if self._wants_validation() and n >= 4:
            rng = np.random.default_rng(seed)
            k = max(1, int(round(self.validation_fraction * n)))
            split[rng.permutation(n)[:k]] = 1
        return split

    def _store_from_arrays(self, X, Y, seed):
        from dimplicit.fit import memory_store

        split = self._split(len(X), seed)
        store, _ = memory_store(
            np.asarray(X, dtype=np.float32), Y, self._loss, self._n_outputs(Y), split
        )
        return store

    def _store_from_dask(self, X, y, path, seed):
        """Stream a Dask array (and labels) into a temporary store, chunk by chunk."""
        import dask

        from dimplicit.data.preprocess import RunningStats
        from dimplicit.data.store import StoreWriter

        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got {X.ndim} dimensions")
        rows = int(X.chunks[0][0])
        X = X.rechunk({0: rows, 1: -1})
        self.n_features_in_ = int(X.shape[1])
        Y = None
        if y is not None:
            Y = y.rechunk({0: rows}) if _is_dask(y) else np.asarray(y)
        names = [f"x{j}" for j in range(X.shape[1])]
        targets = self._task == "regress"
        n_t = (1 if (Y is None or Y.ndim == 1) else Y.shape[1]) if targets else 0
        tnames = [f"y{j}" for j in range(n_t)]
        stats = RunningStats(X.shape[1])
        split = self._split(int(X.shape[0]), seed)
        start = 0
        with StoreWriter(path, names, rows, target_names=tnames) as w:
            for k in range(X.numblocks[0]):
                xb = np.asarray(X.blocks[k].compute(), dtype=np.float32)
                n = len(xb)
                yb = None
                if Y is not None:
                    yb = Y.blocks[k] if _is_dask(Y) else Y[start : start + n]
                    yb = np.asarray(dask.compute(yb)[0])
                sb = split[start : start + n]
                if not np.isfinite(xb).all():
                    raise ValueError(f"X contains NaN or Inf (in rows {start}..{start + n - 1})")
                stats.update(xb[sb == 0])
                labels, tb = self._encode_block(yb, n)
                w.append(xb, labels, sb, tb)
                start += n
            w.close(self._store_attrs(names, stats))
        from dimplicit.data.store import open_store

        return open_store(path)

    def _store_from_path(self, path, y):
        from dimplicit.data.store import open_store

        if y is not None:
            raise ValueError("y must be None when X is a store path (the store holds the labels)")
        store = open_store(path)
        self.n_features_in_ = store.n_features
        if self._task == "classify":
            self.classes_ = np.asarray(store.label_classes)
        return store

    def _encode_block(self, yb, n):
        """Label codes and float targets of one block of ``y`` (task-specific)."""
        return np.full(n, -1, dtype=np.int32), None

    def _store_attrs(self, names, stats) -> dict:
        return {
            "format": "generic",
            "source": "dask array",
            "columns": names,
            "label_classes": [str(c) for c in getattr(self, "classes_", [])],
            "normal_classes": [],
            "categories": {},
            "stats": stats.to_attr("train split rows"),
        }

    def _n_outputs(self, Y) -> int:
        return len(self.classes_)

    def _model_outputs(self, store) -> int:
        return len(store.label_classes)

    def _train(self, store, seed, normal_only, client_needed):
        from dimplicit.distributed.spec import DataSpec
        from dimplicit.distributed.trainer import Trainer
        from dimplicit.gradients import BackwardOptions
        from dimplicit.model import build_model
        from dimplicit.optim import OptimizerConfig
        from dimplicit.partition import StepConfig
        from dimplicit.solvers import SolverOptions

        forward = SolverOptions(self.solver, tol=self.tol, max_iter=self.max_iter)
        config = StepConfig(self._loss, forward, BackwardOptions(self.method, solver=forward))
        model = build_model(
            self.arch, store.n_features, self._model_outputs(store), hidden=self.hidden,
            activation=self.activation, kappa=self.kappa, seed=seed, dtype=self.dtype,
        )  # fmt: skip
        optimizer = OptimizerConfig(
            self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            momentum=self.momentum, nesterov=self.nesterov, group_lasso=self.group_lasso,
        )  # fmt: skip
        has_val = bool((store.split[:] == 1).any())
        spec = DataSpec(store, self._task, normal_only, True, self.device, self.dtype)
        trainer = Trainer(
            model, spec, config=config, optimizer=optimizer, epochs=self.epochs,
            batch_size=self.batch_size, block_rows=self.batch_size, seed=seed,
            eval_every=self.eval_every if has_val else None,
            select_best=self._select_best() if has_val else None,
            patience=self.patience if has_val else None,
            executor=self._executor(client_needed),
        )  # fmt: skip
        if trainer.executor == "dask":
            with _dask_client(self.scheduler) as client:
                trainer.fit(client)
        else:
            trainer.fit()
        self.model_ = trainer.model_
        self.history_ = trainer.history_
        self.evaluations_ = trainer.evaluations_
        self.best_ = trainer.best_
        self.n_iter_ = len(trainer.history_)
        self.summary_ = {k: v for k, v in trainer.summary_.items() if k != "model"}
        return store

    def _select_best(self):
        if self.select_best == "auto":
            return self._default_select
        return self.select_best

    def _executor(self, dask_input) -> str:
        if self.executor != "auto":
            return self.executor
        return "dask" if (dask_input or self.scheduler) else "local"

    # ------------------------------------------------------------------ forward

    def _outputs(self, X, what="y"):
        """Model outputs (``y``: Ŷ in standardised target units; ``x``: the state) of ``X``."""
        check_is_fitted(self, "model_")
        X = _from_zarr(X)
        if _is_dask(X):
            return self._outputs_dask(X, what)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._outputs_numpy(X, what, warn=True)

    def _outputs_numpy(self, X, what, warn=False):
        from dimplicit.data.preprocess import standardize
        from dimplicit.forward import predict
        from dimplicit.solvers import SolverOptions

        model = self.model_
        train = model.meta["training"]
        dtype = model.params["A"].dtype
        options = SolverOptions(**train["forward"])
        out, unconverged = [], 0
        for start in range(0, len(X), PREDICT_ROWS):
            U = np.array(X[start : start + PREDICT_ROWS], dtype=dtype)
            scaler = train.get("scaler")
            if scaler is not None:
                U = standardize(U, np.asarray(scaler["mean"]), np.asarray(scaler["std"]))
            Yhat, state, stats = predict(model, U, options)
            unconverged += int(stats.n_unconverged)
            out.append(Yhat if what == "y" else state)
        if warn and unconverged:
            warnings.warn(
                f"{unconverged} of {len(X)} rows did not reach the fixed point (tol={self.tol}, "
                f"max_iter={self.max_iter}); their outputs are the last iterate",
                ConvergenceWarning,
                stacklevel=3,
            )
        width = model.n_outputs if what == "y" else model.n_hidden
        return np.concatenate(out) if out else np.zeros((0, width), dtype=dtype)

    def _outputs_dask(self, X, what):
        width = self.model_.n_outputs if what == "y" else self.model_.n_hidden
        X = X.rechunk({1: -1})
        return X.map_blocks(
            self._outputs_numpy, what, chunks=(X.chunks[0], (width,)),
            dtype=self.model_.params["A"].dtype,
        )  # fmt: skip

    def transform(self, X):
        """The equilibrium state ``x`` of every row (NumPy in: NumPy out; Dask: lazy)."""
        return self._outputs(X, "x")

    # ------------------------------------------------------------------ feature selection

    @property
    def feature_norms_(self):
        """‖[B; D][:, j]‖₂ of every input feature (standardised units); 0 = feature unused."""
        from dimplicit.sparsity import column_norms

        check_is_fitted(self, "model_")
        return column_norms(self.model_)

    @property
    def selected_features_(self):
        """Indices of the input features the fitted model uses (non-zero column norm); with
        ``group_lasso > 0`` the others are exactly zero."""
        from dimplicit.sparsity import selected_features

        return selected_features(self.feature_norms_)

    # ------------------------------------------------------------------ persistence

    _FITTED = ("n_features_in_", "n_iter_", "best_")

    def save(self, path):
        """Write the fitted estimator to ``path`` (``.npz``: weights and JSON, no pickle)."""
        check_is_fitted(self, "model_")
        model = self.model_.copy()
        fitted = {k: _jsonable(getattr(self, k)) for k in self._FITTED if hasattr(self, k)}
        params = {k: _jsonable(v) for k, v in self.get_params().items()}
        model.meta["estimator"] = {
            "class": type(self).__name__,
            "params": params,
            "fitted": fitted,
            "history": self.history_,
            "evaluations": self.evaluations_,
        }
        return model.save(path)

    @classmethod
    def load(cls, path):
        """Read an estimator written by :meth:`save`."""
        from dimplicit.model import ImplicitModel

        model = ImplicitModel.load(path)
        info = model.meta.get("estimator")
        if not isinstance(info, dict) or info.get("class") != cls.__name__:
            found = info.get("class") if isinstance(info, dict) else "no estimator"
            raise ValueError(f"{path} holds {found}, not a {cls.__name__}")
        est = cls(**info["params"])
        for k, v in info["fitted"].items():
            setattr(est, k, np.asarray(v) if k == "classes_" else v)
        est.history_, est.evaluations_ = info["history"], info["evaluations"]
        model.meta = {k: v for k, v in model.meta.items() if k != "estimator"}
        est.model_ = model
        return est

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        # Outputs are computed in the model's dtype, whatever the input's.
        tags.transformer_tags.preserves_dtype = [str(np.dtype(self.dtype))]
        return tags


class ImplicitClassifier(ClassifierMixin, _ImplicitEstimator):
    """Implicit-network classifier (softmax cross-entropy).

    Parameters are those of the module's shared base (see :class:`_ImplicitEstimator`).

    Attributes
    ----------
    classes_ : ndarray
        The class labels.
    model_ : ImplicitModel
        The trained network (input scaler in ``model_.meta["training"]``).
    history_, evaluations_ : list of dict
        Per-step and per-evaluation records.
    best_ : dict or None
        The best evaluation (with ``select_best``/``patience``).
    n_features_in_, n_iter_ : int
    feature_norms_ : ndarray of float
        ‖[B; D][:, j]‖₂ of every input feature (see ``group_lasso``).
    selected_features_ : ndarray of int
        Indices of the features with a non-zero column norm.
    """

    _FITTED = ("classes_", *_ImplicitEstimator._FITTED)

    def fit(self, X, y=None):
        """Train on ``X`` (array, Dask or Zarr array, store path) and class labels ``y``."""
        X, y = _from_zarr(X), _from_zarr(y)
        if _is_dask(X):
            import dask

            self.classes_ = np.unique(np.asarray(dask.compute(y)[0]))
        self._fit(X, y)
        return self

    def _validate_fit(self, X, y):
        from sklearn.utils.multiclass import check_classification_targets

        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the training labels hold one class only ({self.classes_[0]!r})")
        return X, codes.astype(np.int64)

    def _encode_block(self, yb, n):
        if yb is None:
            raise ValueError("a classifier needs y")
        codes = np.searchsorted(self.classes_, yb).astype(np.int32)
        return codes, None

    def decision_function(self, X):
        """Logits (n, classes); for two classes, the logit difference (n,)."""
        z = self._outputs(X, "y")
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits)."""
        z = self._outputs(X, "y")
        if _is_dask(z):
            return z.map_blocks(_softmax, dtype=z.dtype)
        return _softmax(z)

    def predict(self, X):
        """The most probable class of every row."""
        z = self._outputs(X, "y")
        if _is_dask(z):
            classes = self.classes_
            return z.map_blocks(
                lambda b: classes[b.argmax(axis=1)], drop_axis=1, dtype=classes.dtype
            )
        return self.classes_[z.argmax(axis=1)]


class ImplicitRegressor(RegressorMixin, _ImplicitEstimator):
    """Implicit-network regressor (mean squared error on standardised targets).

    Parameters are those of the module's shared base (see :class:`_ImplicitEstimator`).

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.
    model_ : ImplicitModel
        The trained network; input and target scalers in ``model_.meta["training"]``.
    history_, evaluations_, best_, n_features_in_, n_iter_, feature_norms_, selected_features_
        As for :class:`ImplicitClassifier`.
    """

    _task = "regress"
    _loss = "mse"
    _default_select = "val_loss"
    _FITTED = ("n_outputs_", "y_1d_", *_ImplicitEstimator._FITTED)

    def fit(self, X, y=None):
        """Train on ``X`` (array, Dask or Zarr array, store path) and targets ``y``."""
        X, y = _from_zarr(X), _from_zarr(y)
        if _is_dask(X):
            self.y_1d_ = y.ndim == 1
            self.n_outputs_ = 1 if y.ndim == 1 else int(y.shape[1])
        self._fit(X, y)
        if isinstance(X, str | os.PathLike):
            self.n_outputs_ = len(self.model_.meta["training"].get("target_names") or [0])
            self.y_1d_ = self.n_outputs_ == 1
        return self

    def _validate_fit(self, X, y):
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True
        )
        self.y_1d_ = y.ndim == 1
        self.n_outputs_ = 1 if y.ndim == 1 else int(y.shape[1])
        return X, np.asarray(y, dtype=np.float32).reshape(len(X), -1)

    def _n_outputs(self, Y) -> int:
        return Y.shape[1]

    def _model_outputs(self, store) -> int:
        return len(store.target_names) or 1

    def _encode_block(self, yb, n):
        if yb is None:
            raise ValueError("a regressor needs y")
        return np.full(n, -1, dtype=np.int32), np.asarray(yb, dtype=np.float32).reshape(n, -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predictions in the units of the training targets."""
        z = self._outputs(X, "y")
        ts = self.model_.meta["training"].get("target_scaler")
        mean = np.asarray(ts["mean"], dtype=z.dtype) if ts else 0.0
        std = np.asarray(ts["std"], dtype=z.dtype) if ts else 1.0
        std = np.where(np.asarray(std) == 0, 1, std).astype(z.dtype)
        # scikit-learn's regressors answer in float64, whatever the model computes in.
        y = (z * std + mean).astype(np.float64)
        return y[:, 0] if self.y_1d_ else y


class ImplicitAutoencoder(OutlierMixin, _ImplicitEstimator):
    """Implicit autoencoder for anomaly detection (scikit-learn's outlier convention).

    The anomaly score of a row is its reconstruction RMSE on standardised features.
    ``score_samples`` is its negative (higher = more normal), ``decision_function`` is
    ``score_samples - offset_`` (negative = anomaly) and ``predict`` gives +1 (normal) or
    -1 (anomaly).

    Parameters
    ----------
    contamination : float
        Without labels: the share of training rows expected to be anomalies; the threshold
        is that quantile of the training scores.
    arch : str
        Default ``ae-v1:5,32,16``, the Szekeres & Izsák implicit autoencoder.
    **others
        As for the other estimators (see :class:`_ImplicitEstimator`).

    Notes
    -----
    With labels ``y`` (1 or True = anomaly), ``fit`` trains on the normal rows only and
    chooses the threshold on the held-out validation rows by the rule of
    :mod:`dimplicit.anomaly` (z-scored RMSE, F1-optimal threshold); ``calibration_``
    records it.
    """

    _task = "autoencode"
    _loss = "mse"
    _default_select = "val_loss"
    _FITTED = ("offset_", "calibration_", *_ImplicitEstimator._FITTED)

    def __init__(
        self,
        contamination=0.01,
        arch="ae-v1:5,32,16",
        hidden=128,
        activation=None,
        kappa=0.95,
        solver="auto",
        tol=1e-4,
        max_iter=300,
        method="implicit",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        group_lasso=0.0,
        momentum=0.9,
        nesterov=False,
        epochs=20,
        batch_size=64,
        validation_fraction=0.2,
        eval_every=None,
        select_best=None,
        patience=None,
        random_state=None,
        device="cpu",
        dtype="float32",
        executor="auto",
        scheduler=None,
        temp_dir=None,
    ):
        self.contamination = contamination
        super().__init__(
            arch=arch, hidden=hidden, activation=activation, kappa=kappa, solver=solver,
            tol=tol, max_iter=max_iter, method=method, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, group_lasso=group_lasso, momentum=momentum,
            nesterov=nesterov, epochs=epochs,
            batch_size=batch_size, validation_fraction=validation_fraction,
            eval_every=eval_every, select_best=select_best, patience=patience,
            random_state=random_state, device=device, dtype=dtype, executor=executor,
            scheduler=scheduler, temp_dir=temp_dir,
        )  # fmt: skip

    def fit(self, X, y=None):
        """Train on the rows of ``X`` (``y`` ignored); the threshold from ``contamination``."""
        X = _from_zarr(X)
        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {self.contamination!r}")
        self.calibration_ = None
        if isinstance(X, str | os.PathLike):
            store = self._fit(X, None, normal_only=True)
            self._calibrate_on_store(store)
            return self
        if _is_dask(X):
            self._fit(X, None)
            raw = self._raw(X)
            import dask.array as da

            q = da.percentile(raw, 100 * (1 - self.contamination)).compute()
            self.offset_ = -float(q[0])
            return self
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if len(X) < 2:
            raise ValueError(f"n_samples={len(X)}: an autoencoder needs at least 2 rows")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        self._fit_seed = seed
        self._train(self._autoencoder_store(X, seed), seed, False, client_needed=False)
        self.offset_ = -float(np.quantile(self._raw(X), 1.0 - self.contamination))
        return self

    def calibrate(self, X, y):
        """Set the threshold on labelled rows (``y``: 1 or True = anomaly).

        The anomaly rule of :mod:`dimplicit.anomaly`: raw scores z-scored over the normal
        rows, threshold maximising F1.  Use rows not seen in ``fit``.
        """
        from dimplicit.anomaly.metrics import calibrate

        check_is_fitted(self, "model_")
        X = _from_zarr(X)
        if not _is_dask(X):
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        anomalous = np.asarray(y).astype(bool).reshape(-1)
        raw = np.asarray(self._raw(X))
        if len(raw) != len(anomalous):
            raise ValueError(f"X has {len(raw)} rows but y has {len(anomalous)}")
        cal = calibrate(raw, anomalous)
        self.calibration_ = cal.to_dict()
        self.offset_ = -float(cal.mean + cal.threshold * (cal.std or 1.0))
        return self

    def _calibrate_on_store(self, store):
        from dimplicit.anomaly.score import calibrate_on_store

        self.offset_ = None
        val = store.split[:] == 1
        normal = store.is_normal(store.labels[:][val])
        if normal.sum() >= 2 and not normal.all():
            cal = calibrate_on_store(self.model_, store.path, "validation")
            self.calibration_ = cal.to_dict()
            self.offset_ = -float(cal.mean + cal.threshold * (cal.std or 1.0))

    def _model_outputs(self, store) -> int:
        return store.n_features

    def _autoencoder_store(self, X, seed):
        from dimplicit.fit import memory_store

        split = np.zeros(len(X), dtype=np.int8)
        if self._wants_validation():
            rng = np.random.default_rng(seed)
            k = max(1, int(round(self.validation_fraction * len(X))))
            split[rng.permutation(len(X))[:k]] = 1
        X = np.asarray(X, dtype=np.float32)
        return memory_store(X, X, "mse", X.shape[1], split)[0]

    def _raw(self, X):
        from dimplicit.losses import row_rmse

        if _is_dask(X):
            return X.map_blocks(self._raw, drop_axis=1, dtype=np.float32)
        U = self._standardized(X)
        return np.asarray(row_rmse(self._outputs_numpy(X, "y"), U), dtype=np.float64)

    def _standardized(self, X):
        from dimplicit.data.preprocess import standardize

        scaler = self.model_.meta["training"]["scaler"]
        U = np.array(X, dtype=self.model_.params["A"].dtype)
        return standardize(U, np.asarray(scaler["mean"]), np.asarray(scaler["std"]))

    def score_samples(self, X):
        """Negative reconstruction RMSE: higher means more normal."""
        check_is_fitted(self, "model_")
        X = _from_zarr(X)
        if not _is_dask(X):
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return -self._raw(X)

    def decision_function(self, X):
        """``score_samples - offset_``: negative for anomalies."""
        check_is_fitted(self, "offset_")
        if self.offset_ is None:
            raise ValueError("no threshold: fit on arrays (or labelled data) to get offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal rows, -1 for anomalies."""
        d = self.decision_function(X)
        if _is_dask(d):
            return d.map_blocks(lambda b: np.where(b < 0, -1, 1), dtype=np.int64)
        return np.where(d < 0, -1, 1)


# --------------------------------------------------------------------------------- helpers


def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.array")


def _from_zarr(x):
    """A ``zarr.Array`` is read chunk by chunk, as the Dask array over its chunks."""
    if type(x).__module__.startswith("zarr") and hasattr(x, "chunks") and hasattr(x, "shape"):
        import dask.array as da

        return da.from_zarr(x)
    return x


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    try:
        json.dumps(v)
    except TypeError:
        return repr(v)
    return v


class _dask_client:
    """The client for the Dask executor: a scheduler address, the current client, or a
    temporary in-process cluster (closed afterwards)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.owned = []

    def __enter__(self):
        from distributed import Client, LocalCluster, get_client

        if self.scheduler is not None:
            client = Client(self.scheduler)
            self.owned = [client]
            return client
        try:
            return get_client()
        except ValueError:
            cluster = LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
            )
            client = Client(cluster)
            self.owned = [client, cluster]
            return client

    def __exit__(self, *exc):
        for obj in self.owned:
            obj.close()
        return False
