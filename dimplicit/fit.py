"""Train on in-memory arrays in this process: a thin call into the in-process executor.

:func:`fit` wraps ``(U, Y)`` in an in-memory store and runs the same
:class:`~dimplicit.distributed.trainer.Trainer` (and so the same plan, the same
:func:`~dimplicit.partition.partition_sums` and the same reduction tree) as every other entry
point, on the :class:`~dimplicit.distributed.executor_local.LocalExecutor`.  There is one
training loop in dimplicit; this is its shortest door.
"""

from __future__ import annotations

import numpy as np

from dimplicit.backend import get_backend, to_host
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig

# Rows per in-memory chunk.  Rows regroup into new mini-batches every epoch only inside a
# chunk (see dimplicit.distributed.plan), so chunks are large: data up to this size is
# shuffled as a whole every epoch.
MEMORY_CHUNK_ROWS = 65536


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
    Y : array (N × q) targets, or (N,) class indices (cross-entropy)
    config : StepConfig
        Loss, forward solver and gradient method.
    optimizer : OptimizerConfig
    epochs, batch_size, seed : int
        The data order is the plan's (dimplicit.distributed.plan), keyed on ``seed``.
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
        One record per step: ``step``, ``epoch``, ``loss``, iterations, residuals.
    """
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer

    U = np.asarray(to_host(U))
    Y = np.asarray(to_host(Y))
    if U.ndim != 2 or U.shape[1] != model.n_inputs:
        raise ValueError(f"U must be (N, {model.n_inputs}), got shape {U.shape}")
    if len(Y) != len(U):
        raise ValueError(f"U has {len(U)} rows but Y has {len(Y)}")
    if not np.isfinite(U).all():
        raise ValueError("U contains NaN or Inf")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    be = backend or get_backend("cpu", model.params["A"].dtype)
    store, task = memory_store(U, Y, config.loss, model.n_outputs)
    spec = DataSpec(store, task, standardize=False, device=be.device, dtype=be.dtype)
    trainer = Trainer(
        model, spec, config=config, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        block_rows=batch_size, seed=seed, callback=callback, epoch_callback=epoch_callback,
        executor="local",
    )  # fmt: skip
    trainer.fit()
    trained = trainer.model_
    trained.meta = dict(model.meta)
    return trained, trainer.history_


def memory_store(U, Y, loss: str, n_outputs: int, split=None, chunk_rows=MEMORY_CHUNK_ROWS):
    """An in-memory store holding ``(U, Y)``, and the task that reads ``Y`` back.

    Class indices (cross-entropy) become label codes (task ``classify``); anything else
    becomes float targets (task ``regress``: mse or bce against ``Y``).  ``split``: the
    rows' split codes (default: all train).  Statistics are those of the train rows.
    """
    from dimplicit.data.preprocess import RunningStats
    from dimplicit.data.store import StoreWriter

    n, p = U.shape
    split = np.zeros(n, dtype=np.int8) if split is None else np.asarray(split, dtype=np.int8)
    classify = loss == "cross_entropy" and Y.ndim == 1
    names = [f"x{j}" for j in range(p)]
    targets = None if classify else Y.reshape(n, -1).astype(np.float32)
    tnames = () if classify else [f"y{j}" for j in range(targets.shape[1])]
    labels = Y.astype(np.int32) if classify else np.full(n, -1, dtype=np.int32)
    stats = RunningStats(p)
    stats.update(U[split == 0])
    with StoreWriter(None, names, min(chunk_rows, max(n, 1)), target_names=tnames) as w:
        w.append(U, labels, split, targets)
        store = w.close(
            {
                "format": "generic",
                "source": "in-memory arrays",
                "columns": names,
                "label_classes": [str(k) for k in range(n_outputs)] if classify else [],
                "normal_classes": [],
                "categories": {},
                "stats": stats.to_attr("train split rows"),
            }
        )
    return store, "classify" if classify else "regress"
