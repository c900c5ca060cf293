"""In-process training on in-memory arrays (no Dask): the reference loop.

Each step evaluates :func:`dimplicit.partition.partition_sums` on one mini-batch, divides by the
row count, applies the optimizer and the projection.  The distributed trainer runs the same
three functions as Dask tasks.
"""

from __future__ import annotations

import time

import numpy as np

from dimplicit.backend import get_backend, to_host
from dimplicit.optim import OptimizerConfig, apply_update, init_state
from dimplicit.partition import StepConfig, mean_gradients, partition_sums, summarize_stats


def fit(
    model,
    U,
    Y,
    *,
    config: StepConfig = StepConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    backend=None,
    callback=None,
    epoch_callback=None,
):
    """Train ``model`` on ``(U, Y)`` in this process.

    Parameters
    ----------
    model : ImplicitModel
        Initial model (not modified).
    U : array (N × p)
    Y : array (N × q) or (N,) class indices
    config : StepConfig
        Loss, forward solver and gradient method.
    optimizer : OptimizerConfig
    epochs, batch_size, seed : int
        Rows are visited in a fresh permutation every epoch, drawn from ``seed``.
    backend : Backend, optional
        Device and dtype (default: CPU, the model's dtype).
    callback : callable, optional
        Called as ``callback(record)`` after every step with the step's statistics.
    epoch_callback : callable, optional
        Called as ``epoch_callback(epoch, model)`` after every epoch with a host copy of the
        current model (0-based ``epoch``), e.g. to score a validation set and keep the best
        epoch's weights.  If it returns True, training stops after this epoch.

    Returns
    -------
    model : ImplicitModel
        The trained model (weights on the host).
    history : list of dict
        One record per step: ``step``, ``epoch``, ``loss``, iterations, residuals, ``lr``.
    """
    U = np.asarray(U)
    Y = np.asarray(Y)
    if U.ndim != 2 or U.shape[1] != model.n_inputs:
        raise ValueError(f"U must be (N, {model.n_inputs}), got shape {U.shape}")
    if len(Y) != len(U):
        raise ValueError(f"U has {len(U)} rows but Y has {len(Y)}")
    if not np.isfinite(U).all():
        raise ValueError("U contains NaN or Inf")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    be = backend or get_backend("cpu", model.params["A"].dtype)
    dev = model.astype(be)
    state = init_state(optimizer, dev.params)
    rng = np.random.default_rng(seed)
    n = len(U)
    history = []
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            t0 = time.perf_counter()
            idx = order[start : start + batch_size]
            Ub = be.asarray(U[idx])
            Yb = be.asarray(Y[idx], dtype=None if Y.dtype.kind == "f" else Y.dtype)
            res = partition_sums(dev, Ub, Yb, config)
            grads = mean_gradients(res)
            dev.params, state = apply_update(
                optimizer, dev.params, grads, state, step, dev.masks, dev.kappa, dev.structure
            )
            rec = {"step": step, "epoch": epoch, **summarize_stats(res)}
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            if callback is not None:
                callback(rec)
            step += 1
        if epoch_callback is not None and epoch_callback(epoch, _host_model(model, dev)):
            break
    return _host_model(model, dev), history


def _host_model(model, dev):
    """A copy of ``model`` holding ``dev``'s current weights on the host."""
    out = model.copy()
    # Copies, so that a caller keeping an epoch's model is unaffected by later steps even
    # where to_host returns the device array itself (NumPy backend).
    out.params = {k: np.array(to_host(v)) for k, v in dev.params.items()}
    return out
