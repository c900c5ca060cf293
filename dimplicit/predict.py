"""Outputs of a trained model for every row of a store: out of core, chunk-aligned, atomic.

:func:`predict_store` writes, for the task recorded in the model (``meta["training"]``):

``classify``
    ``predicted`` int32 (N,): the most probable class, a code into ``attrs["label_classes"]``;
    ``proba`` float32 (N, k): the class probabilities (softmax of the outputs).
``regress``
    ``prediction`` float32 (N, t): in the units of the training targets
    (``attrs["target_names"]``), the target standardisation (``target_scaler``) undone; a
    model trained without it predicts as is.
``autoencode``
    ``raw_score``, ``score`` and ``is_anomaly``, exactly what ``dimplicit score`` writes
    (:func:`dimplicit.anomaly.score.score_store`).

A row whose forward solve did not converge gets no prediction that could pass for one:
``predicted`` -1 and ``proba`` NaN, ``prediction`` NaN, ``raw_score`` inf; the count is in the
report and in ``attrs["unconverged_rows"]``.

The output is a Zarr v3 group with ``attrs["format"] == PREDICTIONS_FORMAT`` and ``task``,
``source``, ``rows``, ``chunk_rows``.  As for scoring, the computation is one task per input
chunk (``map_blocks``), stored with ``da.store`` into arrays chunked like the input, built in a
temporary sibling and renamed into place (:func:`~dimplicit.data.store.new_output_dir`,
:func:`~dimplicit.data.store.publish_output`): ``overwrite`` replaces only an earlier
prediction output.

The helpers here (the model's task and solver options, one block through the model, writing
an output) are shared with :mod:`dimplicit.anomaly.score`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr

from dimplicit.atomic import remove_temporary
from dimplicit.data.preprocess import standardize
from dimplicit.data.store import (
    PREDICTIONS_FORMAT,
    SCORES_FORMAT,
    as_dask,
    new_output_dir,
    open_store,
    output_kind,
    publish_output,
)
from dimplicit.forward import predict
from dimplicit.solvers import SolverOptions
from dimplicit.solvers.result import relative_residual

__all__ = ["TASKS", "model_task", "open_output", "predict_store"]

TASKS = ("classify", "regress", "autoencode")


# ----------------------------------------------------------------------------- the model


def model_task(model) -> str:
    """The task the model was trained for (``meta["training"]["task"]``).

    Raises
    ------
    ValueError
        The model records no (known) task: it was not written by the trainer.
    """
    task = model.meta.get("training", {}).get("task")
    if task not in TASKS:
        raise ValueError(
            "the model records no task (classify, regress or autoencode); use a model "
            "written by 'dimplicit train'"
        )
    return task


def forward_options(model) -> SolverOptions:
    """The forward solver options the model was trained with (defaults if none recorded)."""
    fwd = model.meta.get("training", {}).get("forward")
    return SolverOptions(**fwd) if fwd else SolverOptions()


def check_model_fits(model, store) -> None:
    """Raise ``ValueError`` unless ``store``'s features are laid out as the model's were."""
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


def solve_block(U, model, options: SolverOptions):
    """One block of raw feature rows through the model.

    Returns
    -------
    U : array (n, p)
        The rows as the model saw them (standardised with the training scaler, if any).
    Yhat : array (n, q)
        The outputs.
    converged : array of bool (n,)
        Per row: its own relative residual after one more application of the map is below
        ``options.tol`` (all true when the whole solve converged).
    """
    train = model.meta.get("training", {})
    U = np.asarray(U, dtype=model.params["A"].dtype)
    scaler = train.get("scaler")
    if scaler is not None:
        U = standardize(U, np.asarray(scaler["mean"]), np.asarray(scaler["std"]), copy=True)
    Yhat, X, stats = predict(model, U, options)
    if stats.converged:
        return U, Yhat, np.ones(U.shape[0], dtype=bool)
    P, S = model.params, model.structure
    fx = model.phi.apply_(S.A.matmul_t(X, P["A"]) + S.B.matmul_t(U, P["B"]) + P["b_x"])
    return U, Yhat, relative_residual(fx, X, np) < options.tol


def softmax(Yhat):
    """Row-wise softmax of the outputs (class probabilities of a classifier)."""
    z = Yhat - Yhat.max(axis=1, keepdims=True)
    P = np.exp(z)
    P /= P.sum(axis=1, keepdims=True)
    return P


def classify_block(U, model, options: SolverOptions):
    """``[predicted code, P(class 0), ..., P(class k-1)]`` per row, float32 (n, k+1).

    One array so that a chunk is solved once for both outputs; unconverged rows: -1, NaN.
    """
    k = model.n_outputs
    if U.shape[0] == 0:
        return np.zeros((0, k + 1), dtype=np.float32)
    _, Yhat, ok = solve_block(U, model, options)
    P = softmax(np.asarray(Yhat, dtype=np.float64))
    out = np.empty((U.shape[0], k + 1), dtype=np.float32)
    out[:, 0] = np.where(ok, P.argmax(axis=1), -1)
    out[:, 1:] = np.where(ok[:, None], P, np.nan)
    return out


def regress_block(U, model, options: SolverOptions):
    """Predictions in the targets' units, float32 (n, t); unconverged rows NaN."""
    t = model.n_outputs
    if U.shape[0] == 0:
        return np.zeros((0, t), dtype=np.float32)
    _, Yhat, ok = solve_block(U, model, options)
    Y = np.asarray(Yhat, dtype=np.float64)
    ts = model.meta.get("training", {}).get("target_scaler")
    if ts:
        std = np.asarray(ts["std"], dtype=np.float64)
        Y = Y * np.where(std == 0, 1.0, std) + np.asarray(ts["mean"], dtype=np.float64)
    return np.where(ok[:, None], Y, np.nan).astype(np.float32)


def blocks(features, fn, model, options, width: int | None):
    """Lazy ``fn(chunk, model, options)`` over a dask feature array, one task per chunk.

    ``width``: columns of the result (None: one value per row).
    """
    # The model goes in once as a delayed object, not copied into every task.
    if width is None:
        return features.map_blocks(fn, dask.delayed(model), options, drop_axis=1, dtype=np.float32)
    return features.map_blocks(
        fn, dask.delayed(model), options, chunks=(features.chunks[0], (width,)),
        dtype=np.float32,
    )  # fmt: skip


# ----------------------------------------------------------------------------- outputs


def write_output(
    store,
    out,
    kind: str,
    columns,
    attrs: dict,
    *,
    overwrite: bool = False,
    protect=(),
    summarize: Callable[[zarr.Group], dict] | None = None,
    desc: str = "",
    quiet: bool = False,
    publish: Callable = publish_output,
    client=None,
) -> dict:
    """Store lazy per-row arrays as a new output of ``kind`` at ``out``, atomically.

    Parameters
    ----------
    store : Store
        The input; fixes the row count and chunking (every output array is chunked
        ``(store.chunk_rows, ...)``, aligned with the input).
    out : path
        Refused if it exists unless ``overwrite``, and then unless it holds an output of the
        same ``kind`` (:func:`~dimplicit.data.store.check_output`).
    kind : str
        ``SCORES_FORMAT`` or ``PREDICTIONS_FORMAT``; written as ``attrs["format"]``.
    columns : list of (name, dask array, dtype)
    attrs : dict
        Further group attributes.
    protect : sequence of paths
        Inputs that ``out`` may not touch (the input store always is one).
    summarize : callable, optional
        ``summarize(group)`` on the written (still temporary) group returns more attributes
        (counts read back from the output), before publication.
    desc, quiet
        Progress bar label and the user's ``--quiet`` (:mod:`dimplicit.progress`).
    publish : callable
        Moves the finished temporary into place (default
        :func:`~dimplicit.data.store.publish_output`, with the same arguments).
    client : distributed.Client, optional
        Where to compute (default: the current client, else the local scheduler).

    Returns
    -------
    dict
        Every attribute written.
    """
    from dimplicit.distributed.connect import on_client
    from dimplicit.progress import store_with_progress

    out = Path(out)
    protect = (store.path, *protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_output_dir(out, kind, overwrite, protect)
    try:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        targets = [
            group.create_array(
                name,
                shape=(store.n_rows, *arr.shape[1:]),
                chunks=(store.chunk_rows, *arr.shape[1:]),
                dtype=dtype,
            )  # fmt: skip
            for name, arr, dtype in columns
        ]
        with on_client(client):
            store_with_progress([arr for _, arr, _ in columns], targets, desc, quiet=quiet)
        full = {
            "format": kind,
            "source": str(Path(store.path).resolve()),
            "rows": store.n_rows,
            "chunk_rows": store.chunk_rows,
            **attrs,
        }
        if summarize is not None:
            full.update(summarize(group))
        group.attrs.update(full)
        publish(tmp, out, kind, overwrite, protect)
    except BaseException:
        remove_temporary(tmp)
        raise
    return full


def open_output(path):
    """Open a score or prediction output; ``(group, task)`` or a one-line error.

    A score output (``dimplicit score``) has the task ``autoencode`` (anomaly scores).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no prediction or score output at {path}")
    kind = output_kind(path)
    if kind in (SCORES_FORMAT, PREDICTIONS_FORMAT):
        g = zarr.open_group(path, mode="r", zarr_format=3)
        task = "autoencode" if kind == SCORES_FORMAT else g.attrs.get("task")
        if task in TASKS:
            return g, task
    raise ValueError(f"{path} is not an output of 'dimplicit predict' or 'dimplicit score'")


def predict_store(
    model,
    data,
    out,
    *,
    overwrite: bool = False,
    options: SolverOptions | None = None,
    protect=(),
    quiet: bool = False,
    client=None,
) -> dict:
    """Predict every row of store ``data`` into a new prediction output at ``out``.

    Runs on ``client`` (default: the current one, else the local scheduler).  What is
    written depends on the model's task: see the module docstring.

    Parameters
    ----------
    model : ImplicitModel
        A trained model whose ``meta["training"]`` holds its task and scaler (the trainer
        writes them).
    data : path or Store
        Input store (``dimplicit ingest`` / ``dimplicit synth`` output), laid out like the
        training store.
    out : path
        Output directory; refused if it exists unless ``overwrite``, and even then unless it
        is an earlier prediction output (not a score output, a store or anything else).
    options : SolverOptions, optional
        Forward solver (default: the one recorded at training).
    protect : sequence of paths
        Further inputs (the model file, its checkpoint directory) that ``out`` may not touch;
        the input store always is one.
    quiet : bool
        No progress bar on stderr (it is shown only on a terminal anyway).

    Returns
    -------
    dict
        ``task``, ``rows``, ``unconverged_rows``, ``seconds``, ``rows_per_s``, ``out``, and per
        task: ``class_counts`` (classify), ``flagged`` and ``calibrated`` (autoencode).
    """
    task = model_task(model)
    store = open_store(data)
    check_model_fits(model, store)
    opts = options or forward_options(model)
    train = model.meta.get("training", {})
    t0 = time.perf_counter()
    if task == "autoencode":
        from dimplicit.anomaly.score import score_store

        report = score_store(
            model, store, out, overwrite=overwrite, options=opts, protect=protect,
            quiet=quiet, kind=PREDICTIONS_FORMAT,
        )  # fmt: skip
        return {"task": task, **report}
    features = as_dask(store).features
    if task == "classify":
        classes = list(train.get("label_classes") or [])
        if len(classes) != model.n_outputs:
            classes = [str(c) for c in range(model.n_outputs)]
        both = blocks(features, classify_block, model, opts, model.n_outputs + 1)
        columns = [("predicted", both[:, 0].astype(np.int32), "int32"),
                   ("proba", both[:, 1:], "float32")]  # fmt: skip
        attrs = {"task": task, "label_classes": classes}

        def summarize(g):
            k = len(classes)
            codes = da.from_zarr(g["predicted"])  # chunk by chunk: memory stays bounded
            counts = da.bincount(da.where(codes >= 0, codes, k), minlength=k + 1).compute()
            return {
                "unconverged_rows": int(counts[k]),
                "class_counts": dict(zip(classes, (int(c) for c in counts[:k]), strict=True)),
            }
    else:
        names = list(train.get("target_names") or [])
        if len(names) != model.n_outputs:
            names = [f"target_{j}" for j in range(model.n_outputs)]
        pred = blocks(features, regress_block, model, opts, model.n_outputs)
        columns = [("prediction", pred, "float32")]
        attrs = {"task": task, "target_names": names,
                 "target_scaler_applied": bool(train.get("target_scaler"))}  # fmt: skip

        def summarize(g):
            bad = (~da.isfinite(da.from_zarr(g["prediction"]))).any(axis=1)
            return {"unconverged_rows": int(bad.sum().compute())}

    written = write_output(
        store, out, PREDICTIONS_FORMAT, columns, attrs, overwrite=overwrite,
        protect=protect, summarize=summarize, desc="predict", quiet=quiet,
        client=client,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    report = {
        "task": task,
        "rows": store.n_rows,
        "unconverged_rows": written["unconverged_rows"],
        "seconds": seconds,
        "rows_per_s": store.n_rows / seconds if seconds > 0 else None,
        "out": str(out),
    }
    if task == "classify":
        report["class_counts"] = written["class_counts"]
    return report
