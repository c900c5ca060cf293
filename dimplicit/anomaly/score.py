"""Out-of-core scoring: any Zarr store in, per-row ``score`` / ``is_anomaly`` Zarr out.

The computation is a ``dask.array`` over the input's Zarr chunks (``map_blocks``), stored with
``da.store`` into output arrays whose chunks are aligned with the input's, so every task reads
one chunk and writes one chunk: memory stays at a few chunks per worker whatever the row count.
The output is built in a temporary sibling directory and renamed into place on success.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr

from dimplicit.anomaly.metrics import Calibration, calibrate
from dimplicit.data.store import as_dask, open_store, standardize
from dimplicit.forward import predict
from dimplicit.losses import row_rmse
from dimplicit.solvers import SolverOptions
from dimplicit.solvers.result import relative_residual

SCORES_FORMAT = "dimplicit-scores"


def raw_scores_block(U, model, options: SolverOptions):
    """Raw anomaly score of every row of a (raw-feature) block.

    Autoencoders: reconstruction RMSE of the standardised features.  Classifiers: the
    probability mass on non-normal classes.  Non-converged rows score ``inf`` (never silently
    normal).
    """
    train = model.meta.get("training", {})
    U = np.asarray(U, dtype=model.params["A"].dtype)
    if U.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    scaler = train.get("scaler")
    if scaler is not None:
        U = standardize(U.copy(), np.asarray(scaler["mean"]), np.asarray(scaler["std"]))
    Yhat, X, stats = predict(model, U, options)
    if train.get("task", "autoencode") == "autoencode":
        s = row_rmse(Yhat, U)
    else:
        classes = train.get("label_classes", [])
        normal = [classes.index(c) for c in train.get("normal_classes", []) if c in classes]
        z = Yhat - Yhat.max(axis=1, keepdims=True)
        P = np.exp(z)
        P /= P.sum(axis=1, keepdims=True)
        s = 1.0 - P[:, normal].sum(axis=1)
    if not stats.converged:
        # Rows whose solve did not converge get an infinite score: flagged and counted, never
        # silently normal.  One more application of the map gives each row's own residual.
        P, S = model.params, model.structure
        fx = model.activation.apply_(S.A.matmul_t(X, P["A"]) + S.B.matmul_t(U, P["B"]) + P["b_x"])
        r = relative_residual(fx, X, np)
        s = np.where(r < options.tol, s, np.inf)
    return s.astype(np.float32)


def _options(model) -> SolverOptions:
    fwd = model.meta.get("training", {}).get("forward")
    return SolverOptions(**fwd) if fwd else SolverOptions()


def _raw_scores(features, model, options):
    """Lazy per-row raw scores of a dask feature array, one task per chunk."""
    # The model goes in once as a delayed object, not copied into every task.
    return features.map_blocks(
        raw_scores_block, dask.delayed(model), options, drop_axis=1, dtype=np.float32
    )


def calibrate_on_store(model, store_path, split: str = "validation", client=None) -> Calibration:
    """Calibrate the z-score and the F1-optimal threshold on a store's validation rows."""
    store = open_store(store_path)
    code = {"train": 0, "validation": 1, "test": 2}[split]
    arrays = as_dask(store)
    raw = _raw_scores(arrays.features, model, _options(model))
    keep = arrays.split == code
    r, labels, k = dask.compute(raw, arrays.labels, keep)
    r, labels = r[k], labels[k]
    anomalous = ~store.is_normal(labels)
    return calibrate(r, anomalous)


def calibrate_model(model, store, save_to=None) -> dict | None:
    """Calibrate ``model`` on ``store``'s validation rows; record it in ``model.meta``.

    Returns the calibration as a dict, or ``None`` (with a note on stderr) when the validation
    rows do not hold both normal and anomalous labels.  ``save_to``: re-save the model there.
    """
    import sys

    val = store.split[:] == 1
    normal = store.is_normal(store.labels[:][val])
    if normal.sum() < 2 or normal.all():
        print(
            f"{store.path}: no labelled anomalies among the validation rows; scores stay raw "
            "(not calibrated)",
            file=sys.stderr,
        )
        return None
    cal = calibrate_on_store(model, store.path, "validation")
    model.meta["calibration"] = cal.to_dict()
    if save_to:
        model.save(save_to)
    return cal.to_dict()


def score_store(
    model,
    data,
    out,
    *,
    calibration: Calibration | None = None,
    overwrite: bool = False,
    options: SolverOptions | None = None,
) -> dict:
    """Score every row of store ``data`` into a new store at ``out``.

    Runs on the current Dask client (or the local scheduler).  ``out`` gets ``raw_score``
    (float32), ``score`` (z-score, float32) and ``is_anomaly`` (bool), chunked like the input.

    Parameters
    ----------
    model : ImplicitModel
        A trained model whose ``meta["training"]`` holds the scaler (see the trainer).
    data : path
        Input store (``dimplicit ingest`` / ``dimplicit synth`` output).
    out : path
        Output store; refused if it exists unless ``overwrite``.
    calibration : Calibration, optional
        Default: ``model.meta["calibration"]``; without one, ``score`` equals ``raw_score`` and
        nothing is flagged.
    """
    store = open_store(data)
    if store.n_features != model.n_inputs:
        raise ValueError(
            f"{store.path} has {store.n_features} features but the model expects {model.n_inputs}"
        )
    train_names = model.meta.get("training", {}).get("feature_names")
    if train_names is not None and list(train_names) != store.feature_names:
        raise ValueError(
            f"{store.path}: feature layout differs from the training store's; ingest it with "
            "--reference TRAINING_STORE so categories map to the same columns"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if calibration is None and "calibration" in model.meta:
        calibration = Calibration(**model.meta["calibration"])
    opts = options or _options(model)
    t0 = time.perf_counter()
    arrays = as_dask(store)
    raw = _raw_scores(arrays.features, model, opts)
    if calibration is not None:
        z = ((raw - calibration.mean) / (calibration.std or 1.0)).astype(np.float32)
        flag = z > calibration.threshold
    else:
        z, flag = raw, da.zeros_like(raw, dtype=bool)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        chunks = (store.chunk_rows,)
        targets = [
            group.create_array(name, shape=(store.n_rows,), chunks=chunks, dtype=dt)
            for name, dt in (("raw_score", "float32"), ("score", "float32"), ("is_anomaly", "bool"))
        ]
        da.store([raw, z, flag], targets, lock=False)
        n_flag = int(da.from_zarr(targets[2]).sum().compute())
        n_inf = int((~da.isfinite(da.from_zarr(targets[0]))).sum().compute())
        group.attrs.update(
            {
                "format": SCORES_FORMAT,
                "source": str(store.path),
                "rows": store.n_rows,
                "chunk_rows": store.chunk_rows,
                "calibration": calibration.to_dict() if calibration else None,
                "flagged": n_flag,
                "unconverged_rows": n_inf,
            }
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    return {
        "rows": store.n_rows,
        "flagged": n_flag,
        "unconverged_rows": n_inf,
        "seconds": seconds,
        "rows_per_s": store.n_rows / seconds if seconds > 0 else None,
        "out": str(out),
        "calibrated": calibration is not None,
    }


def open_scores(path):
    """Open a scores store; a clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no scores store at {path}")
    g = zarr.open_group(path, mode="r", zarr_format=3)
    if g.attrs.get("format") != SCORES_FORMAT:
        raise ValueError(f"{path} is not a dimplicit scores store")
    return g
