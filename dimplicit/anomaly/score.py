"""Out-of-core scoring: any Zarr store in, per-row ``score`` / ``is_anomaly`` Zarr out.

The computation is a ``dask.array`` over the input's Zarr chunks (``map_blocks``), stored with
``da.store`` into output arrays whose chunks are aligned with the input's, so every task reads
one chunk and writes one chunk: memory stays at a few chunks per worker whatever the row count.
The output is built in a temporary sibling directory and renamed into place on success
(:func:`dimplicit.predict.write_output`).

Which models have an anomaly score: autoencoders (reconstruction RMSE) and classifiers whose
training labels had normal classes (the probability of the non-normal classes; flagged above
0.5 unless calibrated).  Regression models and classifiers without normal classes do not:
scoring them is an error that points to ``dimplicit predict``.
"""

from __future__ import annotations

import time

import dask
import dask.array as da
import numpy as np

from dimplicit.anomaly.metrics import Calibration, calibrate
from dimplicit.data.store import SCORES_FORMAT, SPLIT_CODES, as_dask, open_store, publish_output
from dimplicit.losses import row_rmse
from dimplicit.predict import (
    blocks,
    check_model_fits,
    forward_options,
    model_task,
    open_output,
    softmax,
    solve_block,
    write_output,
)
from dimplicit.solvers import SolverOptions

#: Without a calibration, a classifier flags a row when its non-normal classes are more
#: probable than its normal ones.
CLASSIFIER_THRESHOLD = 0.5


def _normal_codes(model) -> list[int]:
    train = model.meta.get("training", {})
    classes = list(train.get("label_classes") or [])
    return [classes.index(c) for c in train.get("normal_classes") or [] if c in classes]


def anomaly_task(model) -> str:
    """The model's task if it has an anomaly score, else a one-line ``ValueError``.

    Autoencoders score a row by its reconstruction RMSE; classifiers trained on labels with
    normal classes by the probability of the non-normal classes.  Regression models and
    classifiers without normal classes have no anomaly score: their outputs come from
    :func:`dimplicit.predict.predict_store` (``dimplicit predict``).
    """
    task = model_task(model)
    if task == "autoencode" or (task == "classify" and _normal_codes(model)):
        return task
    what = "a regress model" if task == "regress" else "a classify model without normal classes"
    raise ValueError(
        f"the model is {what}, which has no anomaly score; use 'dimplicit predict' for its "
        "predictions (and 'dimplicit evaluate' for their metrics)"
    )


def raw_scores_block(U, model, options: SolverOptions):
    """Raw anomaly score of every row of a (raw-feature) block.

    Autoencoders: reconstruction RMSE of the standardised features.  Classifiers with normal
    classes: the probability mass on non-normal classes.  Other models: ``ValueError`` (see
    :func:`anomaly_task`).  Non-converged rows score ``inf`` (never silently normal).
    """
    task = anomaly_task(model)
    if U.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    U, Yhat, converged = solve_block(U, model, options)
    if task == "autoencode":
        s = row_rmse(Yhat, U)
    else:
        s = 1.0 - softmax(Yhat)[:, _normal_codes(model)].sum(axis=1)
    # Rows whose solve did not converge get an infinite score: flagged and counted, never
    # silently normal.
    return np.where(converged, s, np.inf).astype(np.float32)


def _raw_scores(features, model, options):
    """Lazy per-row raw scores of a dask feature array, one task per chunk."""
    return blocks(features, raw_scores_block, model, options, None)


def calibrate_on_store(model, store_path, split: str = "validation", client=None) -> Calibration:
    """Calibrate the z-score and the F1-optimal threshold on a store's validation rows.

    ``client``: the Dask client to compute on (default: the current one, see
    :func:`dimplicit.distributed.connect.on_client`).
    """
    from dimplicit.distributed.connect import on_client

    store = open_store(store_path)
    code = SPLIT_CODES[split]
    arrays = as_dask(store)
    raw = _raw_scores(arrays.features, model, forward_options(model))
    keep = arrays.split == code
    with on_client(client):
        r, labels, k = dask.compute(raw, arrays.labels, keep)
    r, labels = r[k], labels[k]
    anomalous = ~store.is_normal(labels)
    return calibrate(r, anomalous)


def calibrate_model(model, store, save_to=None, client=None) -> dict | None:
    """Calibrate ``model`` on ``store``'s validation rows; record it in ``model.meta``.

    Returns the calibration as a dict, or ``None`` (with a logged warning) when the
    validation rows do not hold both normal and anomalous labels.  ``save_to``: re-save the
    model there.
    """
    import logging

    val = store.split[:] == 1
    normal = store.is_normal(store.labels[:][val])
    if normal.sum() < 2 or normal.all():
        logging.getLogger("dimplicit").warning(
            "%s: no labelled anomalies among the validation rows; scores stay raw "
            "(not calibrated)",
            store.path,
        )
        return None
    cal = calibrate_on_store(model, store.path, "validation", client)
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
    protect=(),
    quiet: bool = False,
    kind: str = SCORES_FORMAT,
    client=None,
) -> dict:
    """Score every row of store ``data`` into a new store at ``out``.

    Runs on ``client`` (default: the current one, else the local scheduler; see
    :func:`dimplicit.distributed.connect.on_client`).  ``out`` gets ``raw_score``
    (float32), ``score`` (z-score, float32) and ``is_anomaly`` (bool), chunked like the input.

    Parameters
    ----------
    model : ImplicitModel
        A trained model whose ``meta["training"]`` holds the scaler (see the trainer): an
        autoencoder, or a classifier whose training labels had normal classes (its raw
        score is the probability of the non-normal classes).  Any other model is a
        ``ValueError`` pointing to :func:`dimplicit.predict.predict_store`.
    data : path
        Input store (``dimplicit ingest`` / ``dimplicit synth`` output).
    out : path
        Output store; refused if it exists unless ``overwrite``, and even then unless it is
        an earlier output of the same ``kind`` (see :func:`dimplicit.data.store.check_output`).
    calibration : Calibration, optional
        Default: ``model.meta["calibration"]``.  Without one, an autoencoder's ``score``
        equals ``raw_score`` and nothing is flagged; a classifier's too, and a row is flagged
        when its raw score exceeds :data:`CLASSIFIER_THRESHOLD` (0.5).
    protect : sequence of paths
        Further inputs (the model file, its checkpoint directory) that ``out`` may not touch;
        the input store always is.
    quiet : bool
        No progress bar on stderr (it is shown only on a terminal anyway).
    kind : str
        ``SCORES_FORMAT`` (``dimplicit score``) or ``PREDICTIONS_FORMAT`` (``dimplicit
        predict`` of an autoencoder: the same arrays, with ``attrs["task"]``).
    """
    task = anomaly_task(model)
    store = open_store(data)
    check_model_fits(model, store)
    if calibration is None and "calibration" in model.meta:
        calibration = Calibration(**model.meta["calibration"])
    calibrated = calibration is not None
    if calibration is None and task == "classify":
        calibration = Calibration(0.0, 1.0, CLASSIFIER_THRESHOLD)
    opts = options or forward_options(model)
    t0 = time.perf_counter()
    raw = _raw_scores(as_dask(store).features, model, opts)
    if calibration is not None:
        z = ((raw - calibration.mean) / (calibration.std or 1.0)).astype(np.float32)
        flag = z > calibration.threshold
    else:
        z, flag = raw, da.zeros_like(raw, dtype=bool)

    def summarize(group):
        return {
            "flagged": int(da.from_zarr(group["is_anomaly"]).sum().compute()),
            "unconverged_rows": int((~da.isfinite(da.from_zarr(group["raw_score"]))).sum()
                                    .compute()),
        }  # fmt: skip

    attrs = {"calibration": calibration.to_dict() if calibration else None}
    if kind != SCORES_FORMAT:
        attrs["task"] = task
    columns = [("raw_score", raw, "float32"), ("score", z, "float32"), ("is_anomaly", flag, "bool")]
    written = write_output(
        store, out, kind, columns, attrs, overwrite=overwrite, protect=protect,
        summarize=summarize, desc="score", quiet=quiet,
        publish=publish_output,  # this module's name, looked up now (tests replace it)
        client=client,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {
        "rows": store.n_rows,
        "flagged": written["flagged"],
        "unconverged_rows": written["unconverged_rows"],
        "seconds": seconds,
        "rows_per_s": store.n_rows / seconds if seconds > 0 else None,
        "out": str(out),
        "calibrated": calibrated,
    }


def open_scores(path):
    """Open an output of anomaly scores (``dimplicit score``, or ``dimplicit predict`` of an
    autoencoder); a one-line error if it is something else."""
    g, task = open_output(path)
    if "raw_score" not in g:
        raise ValueError(f"{path} holds {task} predictions, not anomaly scores")
    return g
