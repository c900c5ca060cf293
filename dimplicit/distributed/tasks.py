"""Functions that run *on the workers*: load a chunk, compute a block's sums, update weights.

They are pure functions of their arguments, so Dask may run them anywhere and re-run them
after a worker dies; the trained weights cannot tell the difference (docs/design.md §4).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from dimplicit.backend import array_module, get_backend, to_host
from dimplicit.data.preprocess import standardize
from dimplicit.data.store import SPLIT_CODES, open_store
from dimplicit.distributed.spec import DataSpec
from dimplicit.model import ImplicitModel
from dimplicit.optim import apply_update
from dimplicit.partition import (
    combine,
    mean_gradients,
    partition_sums,
    summarize_stats,
    to_host_result,
)


def eligible_mask(store, labels, split, spec: DataSpec, split_name: str) -> np.ndarray:
    """Rows of a chunk that belong to ``split_name`` (and are normal, if asked).

    An autoencoder's validation split keeps its anomalies: they are what the anomaly
    metrics (``val_f1``, ``val_auc``) are about; its loss still counts only the normal rows
    (see :func:`load_chunk`).
    """
    keep = np.asarray(split) == SPLIT_CODES[split_name]
    if spec.normal_only and not _labelled_validation(store, spec, split_name):
        keep &= store.is_normal(labels)
    return keep


def _labelled_validation(store, spec, split_name) -> bool:
    return spec.task == "autoencode" and split_name == "validation" and bool(store.normal_classes)


def load_chunk(spec: DataSpec, chunk: int, split_name: str):
    """Read Zarr chunk ``chunk`` and return ``(U, Y)`` for its eligible rows, on the device.

    Runs on a worker; the result stays in that worker's memory (persisted) and later block
    tasks take rows from it, so data is read once and never travels.
    """
    store = open_store(spec.store)
    c = store.chunk_rows
    sl = slice(chunk * c, min((chunk + 1) * c, store.n_rows))
    labels = store.labels[sl]
    keep = eligible_mask(store, labels, store.split[sl], spec, split_name)
    U = np.asarray(store.features[sl], dtype=np.float64 if spec.dtype == "float64" else np.float32)
    finite = np.isfinite(U).all(axis=1)
    if not finite.all():
        bad = sl.start + int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{spec.store}: features contain NaN/Inf ({int((~finite).sum())} row(s) in chunk "
            f"{chunk}, first at row {bad}, 0-based); re-ingest with --on-bad-rows skip"
        )
    U = U[keep]
    if spec.standardize:
        U = standardize(U, store.mean, store.std)
    labels = labels[keep]
    if spec.task == "classify":
        Y = labels.astype(np.int64)
    elif spec.task == "regress" and store.targets is not None:
        Y = np.asarray(store.targets[sl], dtype=U.dtype)[keep]
        if spec.standardize:  # undone at prediction time (meta["training"]["target_scaler"])
            Y = standardize(Y, store.target_mean, store.target_std)
    elif spec.task == "regress":  # stores from before float targets: numeric label classes
        values = np.asarray([float(v) for v in store.label_classes], dtype=U.dtype)
        Y = values[labels][:, None]
    elif _labelled_validation(store, spec, split_name):
        Y = store.is_normal(labels)  # the target is U; Y says which rows are normal
    else:
        Y = None  # autoencode: the target is U itself
    be = get_backend(spec.device, spec.dtype)
    Ud = be.asarray(U)
    Yd = Ud if Y is None else be.asarray(Y, dtype=Y.dtype)
    return Ud, Yd


def block_rows(seed: int, epoch: int, chunk: int, n_rows: int, block: int, rows: int):
    """Row indices (into a chunk's eligible rows) of block ``block`` in ``epoch``.

    A chunk's rows are permuted afresh every epoch by a generator keyed on
    ``(seed, epoch, chunk)``, so the blocks regroup rows each epoch and any worker derives
    the same indices without being sent them.  The result is a read-only view.
    """
    perm = _epoch_permutation(seed, epoch, chunk, n_rows)
    return perm[block * rows : (block + 1) * rows]


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, chunk: int, n_rows: int) -> np.ndarray:
    """The permutation of a chunk's rows in ``epoch``, drawn once and shared by its blocks.

    Drawing it costs about a millisecond for 50,000 rows, as much as a whole step of a small
    batch, and every block of the epoch needs the same one.  A few entries suffice: a worker
    holds the chunks it serves, and steps walk an epoch in order.  Read-only, since every
    block of the epoch shares it.
    """
    perm = np.random.default_rng([seed, epoch, chunk]).permutation(n_rows)
    perm.flags.writeable = False
    return perm


def _quiet_float_errors(fn):
    """Run ``fn`` without NumPy's overflow/invalid warnings: a diverging step is detected
    explicitly (``update`` checks every value) and reported once, as one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


@_quiet_float_errors
def block_sums(params, template, data, config, seed, epoch, chunk, block, rows, device, dtype):
    """Loss/gradient sums of one block (a task); the result is on the host (it travels)."""
    t0 = time.perf_counter()
    U, Y = data
    idx = block_rows(seed, epoch, chunk, U.shape[0], block, rows)
    be = get_backend(device, dtype)
    model = _model_on(be, template, params)
    if device == "gpu":
        idx = be.xp.asarray(idx)
    res = to_host_result(partition_sums(model, U[idx], Y[idx], config))
    # Compute time inside the task, summed by `combine`: the benchmark's overhead measure.
    res["stats"]["task_seconds"] = time.perf_counter() - t0
    return res


@_quiet_float_errors
def eval_sums(params, template, data, config, device, dtype):
    """Validation sums of a whole chunk: forward only, no gradients.

    Besides the loss, the sums every model-selection metric needs, so that metrics are
    computed from reduced sums and rows never travel to the client: ``correct``
    (classification), ``sse``, ``y_sum``, ``y_sq_sum`` (R² of regression targets), and for
    an autoencoder whose validation rows carry normal/anomaly labels (``Y`` boolean: normal),
    histograms of the rows' reconstruction RMSE, normal and anomalous apart
    (:func:`dimplicit.anomaly.metrics.metrics_from_histograms`), and the rows' RMSE itself
    (``scores``, float64, with ``normal`` beside it) for the exact selection rules
    (``val_f1_grid``, ``val_f1_exact``): 9 bytes a validation row travel to the client.
    """
    from dimplicit.anomaly.metrics import score_histogram
    from dimplicit.forward import predict
    from dimplicit.losses import loss_sum, mse_sum

    U, Y = data
    out = {"loss": 0.0, "count": 0, "unconverged": 0, "correct": 0}
    out |= {"sse": 0.0, "y_sum": 0.0, "y_sq_sum": 0.0}
    out |= {"hist_normal": score_histogram([]), "hist_anomalous": score_histogram([])}
    out |= {"scores": np.zeros(0), "normal": np.zeros(0, dtype=bool)}
    if U.shape[0] == 0:
        return out
    be = get_backend(device, dtype)
    model = _model_on(be, template, fresh_copies(params))
    Yhat, _, stats = predict(model, U, config.forward)
    out["unconverged"] = stats.n_unconverged
    if Y.dtype == bool:  # autoencoder, labelled validation rows
        return out | _labelled_reconstruction_sums(Yhat, U, Y, config.loss)
    out["count"] = int(Y.shape[0])
    if Y.ndim == 1:  # class codes
        out["loss"] = float(loss_sum(config.loss, Yhat, Y))
        out["correct"] = int((Yhat.argmax(axis=1) == Y).sum())
        return out
    R = Yhat - Y
    sse = (R * R).sum()
    loss = mse_sum(sse, R.shape[1]) if config.loss == "mse" else loss_sum(config.loss, Yhat, Y)
    out |= {"loss": float(loss), "sse": float(sse)}
    out |= {"y_sum": float(Y.sum()), "y_sq_sum": float((Y * Y).sum())}
    return out


def _labelled_reconstruction_sums(Yhat, U, normal, loss: str) -> dict:
    """:func:`eval_sums` of an autoencoder's labelled validation rows.

    Every row's score (reconstruction RMSE) and the score histograms; the loss and ``sse`` of
    the normal rows (the reconstruction target is ``U``).  ``y_sum`` and ``y_sq_sum`` serve R²
    of regression targets only: they are left out, as are passes over ``Ŷ`` once ``R = Ŷ − U``
    is formed (in ``Yhat``'s buffer: ``Ŷ`` is not needed after).
    """
    from dimplicit.anomaly.metrics import score_histogram
    from dimplicit.losses import loss_sum, mse_sum, residual_rmse

    xp = array_module(U)
    Yhat_n = None if loss == "mse" else Yhat[normal]  # other losses read Ŷ itself
    R = xp.subtract(Yhat, U, out=Yhat)
    scores = np.asarray(to_host(residual_rmse(R)), dtype=np.float64)
    mask = np.asarray(to_host(normal))
    out = {"hist_normal": score_histogram(scores[mask]), "scores": scores, "normal": mask,
           "hist_anomalous": score_histogram(scores[~mask])}  # fmt: skip
    if not mask.any():
        return out
    Rn = xp.compress(normal, R, axis=0)  # = R[normal], a third faster than boolean indexing
    sse = xp.square(Rn, out=Rn).sum()  # in place: Rn is not read again
    value = mse_sum(sse, R.shape[1]) if loss == "mse" else loss_sum(loss, Yhat_n, U[normal])
    return out | {"loss": float(value), "count": int(Rn.shape[0]), "sse": float(sse)}


# Per-row arrays of eval_sums: merged by concatenation (in chunk order), not added.
ROW_KEYS = ("scores", "normal")


def add_eval(a, b):
    """Merge two chunks' validation sums (counts, sums and histograms add; rows concatenate)."""
    return {k: np.concatenate([a[k], b[k]]) if k in ROW_KEYS else a[k] + b[k] for k in a}


@_quiet_float_errors
def update(params, state, total, step, optimizer, template):
    """Optimizer step + projection from reduced sums (a task).

    Returns ``(params, state, finite)``.  When the loss, a gradient or a new weight is not
    finite, the step is not applied: the old weights and state come back with
    ``finite=False``, so no NaN ever reaches a checkpoint or the next step.
    """
    finite = _all_finite(total["loss"], total["grads"].values())
    if finite:
        grads = mean_gradients(total)
        new_params, new_state = apply_update(
            optimizer, params, grads, state, step, template.masks, template.kappa,
            template.structure,
        )  # fmt: skip
        finite = _all_finite(0.0, new_params.values())
        if finite:
            return new_params, new_state, True
    return params, state, False


def _all_finite(loss, arrays) -> bool:
    if not np.isfinite(loss):
        return False
    for a in arrays:
        if not bool(array_module(a).isfinite(a).all()):
            return False
    return True


def step_summary(total, finite=True):
    """The small per-step record fetched by the client (loss, iterations, divergence)."""
    return {
        **summarize_stats(total),
        "count": total["count"],
        "task_seconds": total["stats"].get("task_seconds", 0.0),
        "finite": bool(finite),
    }


def fresh_copies(params: dict) -> dict:
    """Host copies of weights that arrived over the network, in fresh (aligned) buffers.

    A received array may sit at an odd offset inside a message frame, and NumPy's SIMD loops
    round differently on data of another alignment: computing with fresh copies, as the
    in-process executor does, keeps results bitwise the same for any number of workers.
    """
    return {k: np.array(v) for k, v in params.items()}


def with_params(template: ImplicitModel, params: dict) -> ImplicitModel:
    """``template`` (activation, masks, κ) with other weights.

    The block structure is the template's, computed once: its masks do not change.
    """
    model = ImplicitModel(params, template.activation, template.masks, template.kappa,
                          template.meta)  # fmt: skip
    return model.reuse_structure(template)


def _model_on(backend, template: ImplicitModel, params: dict) -> ImplicitModel:
    """``with_params(template, params).astype(backend)``, built once when the weights and
    masks are already on ``backend``'s device and dtype (the in-process executor's case): the
    second construction would only apply the masks again (a no-op on masked weights)."""
    model = with_params(template, params)
    arrays = (*model.params.values(), *model.masks.values())
    return model if all(backend.asarray(a) is a for a in arrays) else model.astype(backend)


__all__ = [
    "load_chunk",
    "block_rows",
    "block_sums",
    "eval_sums",
    "add_eval",
    "update",
    "step_summary",
    "combine",
]
