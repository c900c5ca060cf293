"""Synchronous data-parallel training over a Zarr store: one driver, two executors.

The data order of a run is computed once (:class:`~dimplicit.distributed.plan.Plan`: which
row-blocks every step consumes).  An *executor* runs that plan:

- :class:`~dimplicit.distributed.executor_local.LocalExecutor`: a plain loop in this process;
- :class:`~dimplicit.distributed.executor_dask.DaskExecutor`: tasks and futures on a cluster.

Both call the same functions on the same blocks and reduce in the same fixed-order tree, so
for the same seed, data and options they give bitwise-identical weights.  The driver
(:class:`Trainer`) owns everything else: resuming, evaluation and keep-best model selection,
early stopping, divergence guards, checkpoints, graceful stops on SIGINT/SIGTERM, metrics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from pathlib import Path

import numpy as np

from dimplicit.data.store import open_store
from dimplicit.distributed import tasks
from dimplicit.distributed.checkpoint import (
    latest_checkpoint,
    lock_directory,
)
from dimplicit.distributed.driver import SELECT_METRICS, DivergenceError, Loop
from dimplicit.distributed.executor_dask import GATHERS
from dimplicit.distributed.plan import Plan
from dimplicit.distributed.spec import TrainingRun
from dimplicit.model import param_names, weights_sha256
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig

log = logging.getLogger("dimplicit")

__all__ = ["DivergenceError", "Trainer"]

PERSIST = ("auto", "always", "never")
EXECUTORS = ("auto", "local", "dask")
ON_DIVERGENCE = ("stop", "skip-step")
# Model-selection metrics computed from reduced validation sums, and whether larger is better.
class Trainer:
    """Train an :class:`~dimplicit.model.ImplicitModel` on a Zarr store.

    Parameters
    ----------
    model : ImplicitModel
        Initial model (host arrays); not modified.
    data : DataSpec
        Store, task, row filter, device and dtype.
    config : StepConfig
        Loss, forward solver, gradient method.
    optimizer : OptimizerConfig
    epochs : int
    batch_size : int
        Rows per step (the global batch), split into blocks of ``block_rows``.
    block_rows : int, optional
        Rows per task (default: ``min(batch_size, chunk rows)``).  Larger blocks amortise the
        scheduler's per-task cost.
    seed : int
        Seeds the data order (block order per epoch, rows inside chunks per epoch).
    checkpoint_dir : path, optional
        Where checkpoints and the final model go; locked for the run's duration.
    checkpoint_every : int
        Steps between checkpoints (0: only at the end, and when stopped by a signal).
    resume : bool
        Continue from the newest checkpoint in ``checkpoint_dir`` (a warning, and step 0,
        when there is none).
    persist : {"auto", "always", "never"}
        Dask executor: keep loaded chunks in worker memory (``auto``: when they fit in half
        the cluster's memory) or re-read them from Zarr in every task (streaming).
    patience : int, optional
        Early stopping: stop after this many evaluations without a better ``select_best``
        metric (``val_loss`` when ``select_best`` is not given); the best weights are kept.
    max_steps : int, optional
        Stop after this many global steps (the run can be resumed later).
    sync_every : int
        Dask executor: steps between gathers/broadcasts of the weights (bounds the lineage
        replayed after failures).
    gather : {"auto", "flat", "tree"}
        Dask executor: how a step's partial sums reach the update: all to its worker
        (``flat``: fewest tasks), or merged pairwise across the workers first (``tree``: no
        worker receives more than ``ceil(log2 W)`` of them, for ``W − 1`` more tasks);
        ``auto``: the tree when the bytes it saves outweigh the extra tasks
        (:func:`~dimplicit.distributed.executor_dask.merge_tree_pays`: weights over 5 MB at
        4 workers, 2.5 MB at 8, 1.7 MB at 16; never below 4).  The weights are bitwise the
        same either way.
    metrics_log : path, optional
        JSON-lines file, one record per step and per evaluation (default:
        ``checkpoint_dir/metrics.jsonl`` when there is a checkpoint directory).
    progress : bool
        Show a progress bar on stderr.
    callback : callable, optional
        Called with every per-step record (on the client, one step behind the cluster).
    epoch_callback : callable, optional
        Called as ``epoch_callback(epoch, model)`` at the end of every epoch with a host copy
        of the current model; returning True stops training after this epoch.
    eval_every : int, optional
        Steps between evaluations of the validation split (default: at the end of every
        epoch).  Evaluations also happen at the last step.
    eval_at_epoch_end : bool
        With ``eval_every``: count its steps within each epoch (restarting at every epoch,
        as a per-epoch loop does) and evaluate at the end of every epoch too — the
        "every 11 mini-batches and at each epoch's end" rule of Szekeres & Izsák (2024).
    select_best : {"val_loss", "val_accuracy", "val_r2", "val_f1", "val_auc", \
"val_f1_grid", "val_f1_exact"}, optional
        Keep the weights of the best evaluation and restore them at the end.  ``val_f1`` and
        ``val_auc`` (autoencoders) come from score histograms; ``val_f1_grid`` is the
        published rule (:func:`~dimplicit.anomaly.metrics.grid_calibrate`: z-scores, the
        best F1 on the grid θ ∈ [−4, 4]) and ``val_f1_exact`` the best F1 over every
        threshold (:func:`~dimplicit.anomaly.metrics.calibrate`), both on the validation
        rows' own scores; their best checkpoint keeps its calibration in ``best_``.
        Ties keep the earlier checkpoint for these two, else are broken by the loss.
    on_divergence : {"stop", "skip-step"}
        A step whose loss, gradients or new weights are not finite is never applied;
        ``stop`` raises :class:`DivergenceError`, ``skip-step`` goes on with the next step
        (and stops after 10 skipped in a row).
    executor : {"auto", "local", "dask"}
        ``local``: in this process, no Dask; ``dask``: on the client's cluster; ``auto``:
        ``dask`` when a client is passed to :meth:`fit`, else ``local``.

    Attributes
    ----------
    model_ : ImplicitModel
        The trained model (the best evaluation's weights with ``select_best``).
    history_ : list of dict
        Per-step records.
    evaluations_ : list of dict
        Per-evaluation records.
    best_ : dict or None
        ``{"metric", "value", "step"}`` of the best evaluation (and ``"calibration"``, a
        :class:`~dimplicit.anomaly.metrics.Calibration` as a dict, for the exact rules).
    summary_ : dict
        The run summary (what ``dimplicit train`` prints).
    """

    def __init__(
        self,
        model,
        data,
        *,
        config: StepConfig = StepConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        epochs: int = 1,
        batch_size: int = 8192,
        block_rows: int | None = None,
        seed: int = 0,
        checkpoint_dir=None,
        checkpoint_every: int = 0,
        resume: bool = False,
        persist: str = "auto",
        patience: int | None = None,
        max_steps: int | None = None,
        sync_every: int = 10,
        gather: str = "auto",
        metrics_log=None,
        progress: bool = False,
        callback=None,
        epoch_callback=None,
        eval_every: int | None = None,
        eval_at_epoch_end: bool = False,
        select_best: str | None = None,
        on_divergence: str = "stop",
        executor: str = "auto",
    ):
        self.model = model
        self.data = data
        self.config = config
        self.optimizer = optimizer
        self.epochs = epochs
        self.batch_size = batch_size
        self.block_rows = block_rows
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.persist = persist
        self.patience = patience
        self.max_steps = max_steps
        self.sync_every = sync_every
        self.gather = gather
        self.metrics_log = metrics_log
        self.progress = progress
        self.callback = callback
        self.epoch_callback = epoch_callback
        self.eval_every = eval_every
        self.eval_at_epoch_end = eval_at_epoch_end
        self.select_best = select_best
        self.on_divergence = on_divergence
        self.executor = executor

    # ------------------------------------------------------------------ validation / setup

    def check(self, store):
        """Validate options against the store without touching a cluster or any file.

        Raises ``ValueError`` with a one-line message naming the store or the parameter.
        """
        for name, value, allowed in (
            ("persist", self.persist, PERSIST),
            ("gather", self.gather, GATHERS),
            ("on_divergence", self.on_divergence, ON_DIVERGENCE),
            ("executor", self.executor, EXECUTORS),
            ("select_best", self.select_best, (None, *SELECT_METRICS)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("sync_every", 1),
                          ("checkpoint_every", 0), ("block_rows", 1), ("max_steps", 0),
                          ("patience", 1), ("eval_every", 1)):  # fmt: skip
            value = getattr(self, name)
            if value is None and name in ("block_rows", "max_steps", "patience", "eval_every"):
                continue
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        m = self.model
        if m.n_inputs != store.n_features:
            raise ValueError(
                f"{store.path} has {store.n_features} features but the model expects "
                f"{m.n_inputs} inputs"
            )
        task = self.data.task
        if task == "autoencode" and m.n_outputs != store.n_features:
            raise ValueError(f"an autoencoder needs {store.n_features} outputs, has {m.n_outputs}")
        if task == "classify" and m.n_outputs != len(store.label_classes):
            raise ValueError(
                f"{store.path} has {len(store.label_classes)} label classes but the model has "
                f"{m.n_outputs} outputs"
            )
        if task == "regress" and store.targets is not None:
            if m.n_outputs != len(store.target_names):
                raise ValueError(
                    f"{store.path} has {len(store.target_names)} regression targets but the "
                    f"model has {m.n_outputs} outputs"
                )
        elif task == "regress":
            try:
                [float(c) for c in store.label_classes]
            except ValueError:
                raise ValueError(
                    f"{store.path}: task regress needs float targets (ingest with a target "
                    f"column) or numeric labels, found label classes like "
                    f"{store.label_classes[:3]}"
                ) from None
        metric_task = {
            "val_accuracy": "classify",
            "val_r2": "regress",
            "val_f1": "autoencode",
            "val_auc": "autoencode",
            "val_f1_grid": "autoencode",
            "val_f1_exact": "autoencode",
        }.get(self.select_best)
        if metric_task and metric_task != task:
            raise ValueError(f"select_best={self.select_best!r} needs task {metric_task!r}")
        want_loss = {"classify": "cross_entropy", "autoencode": "mse"}.get(task)
        if (
            want_loss
            and self.config.loss != want_loss
            and not (task == "classify" and self.config.loss == "bce")
        ):
            raise ValueError(f"task {task!r} uses loss {want_loss!r}, not {self.config.loss!r}")
        if self.checkpoint_dir is not None and not self.resume:
            existing = latest_checkpoint(self.checkpoint_dir)
            if existing is not None:
                raise ValueError(
                    f"{self.checkpoint_dir} already holds checkpoints ({existing.name}); pass "
                    "resume=True to continue them or choose another checkpoint_dir"
                )

    def _plan(self, store):
        counts = self._chunk_counts(store, "train")
        rows = self.block_rows or min(self.batch_size, store.chunk_rows)
        return Plan(counts, rows, max(1, round(self.batch_size / rows)), self.seed)

    def planned_steps(self, store) -> int:
        """Steps this run will take (epochs × steps per epoch, capped by ``max_steps``)."""
        total = self.epochs * self._plan(store).steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)

    def _chunk_counts(self, store, split_name):
        """Eligible rows per Zarr chunk (reads only labels and split: 5 bytes a row)."""
        c = store.chunk_rows
        counts = []
        for k in range(math.ceil(store.n_rows / c)):
            sl = slice(k * c, min((k + 1) * c, store.n_rows))
            keep = tasks.eligible_mask(
                store, store.labels[sl], store.split[sl], self.data, split_name
            )
            counts.append(int(keep.sum()))
        return tuple(counts)

    def _fingerprint(self, plan) -> dict:
        """What must match for a checkpoint to be resumable by this run."""
        return {
            "seed": self.seed,
            "store": _store_id(self.data.store),
            "data": {f.name: getattr(self.data, f.name) for f in fields(self.data)}
            | {"store": None},
            "plan": {
                "chunks": list(plan.chunk_counts),
                "block_rows": plan.block_rows,
                "blocks_per_step": plan.blocks_per_step,
            },
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "shapes": [self.model.n_inputs, self.model.n_hidden, self.model.n_outputs],
        } | ({"gate": self.model.gate_units.tolist()} if self.model.gated else {})  # v2: β

    def training_run(self, store) -> TrainingRun:
        """Everything fixed before the first step: the plan, the row counts, the template."""
        return TrainingRun(
            data=self.data,
            plan=self._plan(store),
            counts={
                "train": self._chunk_counts(store, "train"),
                "validation": self._chunk_counts(store, "validation"),
            },
            config=self.config,
            optimizer=self.optimizer,
            seed=self.seed,
            template=self.model,
            n_rows_stored=store.n_rows,
            n_features=store.n_features,
        )

    def resolve_executor(self, client) -> str:
        """``local`` or ``dask``, as :meth:`fit` will run."""
        if self.executor != "auto":
            return self.executor
        return "dask" if client is not None else "local"

    def _make_executor(self, client, run):
        if self.resolve_executor(client) == "local":
            from dimplicit.distributed.executor_local import LocalExecutor

            return LocalExecutor(run)
        from dimplicit.distributed.executor_dask import DaskExecutor, should_persist

        if client is None:
            from distributed import get_client

            try:
                client = get_client()
            except ValueError:
                raise ValueError(
                    "executor='dask' needs a Dask client: pass one to fit() or create one first"
                ) from None
        persist = self.persist == "always" or (
            self.persist == "auto" and should_persist(client, run)
        )
        return DaskExecutor(client, run, persist, gather=self.gather)

    # ------------------------------------------------------------------ training

    def fit(self, client=None):
        """Train; returns ``self``.

        Parameters
        ----------
        client : distributed.Client, optional
            The cluster of the Dask executor.  Without one, ``executor="auto"`` trains in
            this process and ``executor="dask"`` uses ``distributed.get_client()``.
        """
        store = open_store(self.data.store)
        self.check(store)
        opt = self.optimizer
        if opt.schedule == "cosine" and opt.total_steps == 0:
            raise ValueError("the cosine schedule needs total_steps (set it to epochs × steps)")
        with lock_directory(self.checkpoint_dir):
            self.check(store)  # again, now that no other run can write there
            run = self.training_run(store)
            executor = self._make_executor(client, run)
            try:
                Loop(self, run, executor).run()
            finally:
                executor.close()
            self._finish(store, run, executor)
        return self

    def _finish(self, store, run, executor):
        loop = self._loop
        final = loop.best_params if loop.best_params is not None else loop.final_params
        self.model_ = tasks.with_params(self.model, final)
        self.model_.meta = {**self.model.meta, "training": self._model_meta(store)}
        model_path = None
        if self.checkpoint_dir is not None:
            model_path = str(self.model_.save(Path(self.checkpoint_dir) / "model.npz"))
        self.history_ = loop.history
        self.evaluations_ = loop.evaluations
        self.best_ = loop.best()
        last = loop.history[-1] if loop.history else {}
        steps_done = loop.step
        self.summary_ = {
            "steps": steps_done,
            "steps_this_run": steps_done - loop.start,
            "epochs": steps_done / run.plan.steps_per_epoch,
            "final_loss": last.get("loss"),
            "val_loss": loop.val_loss,
            "best_val_loss": loop.best_val_loss,
            "best": self.best_,
            "stopped_early": loop.stopped_early,
            "skipped_steps": loop.skipped,
            "resumed_from": loop.start if self.resume else None,
            "samples_per_s": loop.rows_done / loop.elapsed if loop.elapsed > 0 else None,
            "seconds": loop.elapsed,
            "forward_iters": last.get("forward_iters"),
            "backward_iters": last.get("backward_iters"),
            "rows_per_epoch": run.plan.n_rows,
            "blocks_per_step": run.plan.blocks_per_step,
            "block_rows": run.plan.block_rows,
            **executor.info(),
            "weights_sha256": weights_sha256(final),
            "weights_hash_order": f"sha256 over {', '.join(param_names(final))} "
            "(C-contiguous bytes)",
            "checkpoint": str(loop.last_checkpoint) if loop.last_checkpoint else None,
            "model": model_path,
        }

    def _model_meta(self, store) -> dict:
        return {
            "task": self.data.task,
            "store": str(store.path),
            "normal_only": self.data.normal_only,
            "feature_names": store.feature_names,
            "label_classes": store.label_classes,
            "normal_classes": store.normal_classes,
            "scaler": {"mean": store.mean.tolist(), "std": store.std.tolist()}
            if self.data.standardize
            else None,
            "target_names": store.target_names,
            "target_scaler": {"mean": store.target_mean.tolist(), "std": store.target_std.tolist()}
            if self.data.standardize and self.data.task == "regress" and store.targets is not None
            else None,
            "loss": self.config.loss,
            "forward": self.config.forward.to_dict(),
        }


def _store_id(store) -> str:
    """A store's identity in a checkpoint's fingerprint (its absolute path)."""
    path = getattr(store, "path", store)
    return str(path) if str(path).startswith("<") else str(Path(path).resolve())


