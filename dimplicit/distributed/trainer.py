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

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from dimplicit.data.store import open_store
from dimplicit.distributed import tasks
from dimplicit.distributed.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    lock_directory,
    save_checkpoint,
)
from dimplicit.distributed.plan import Plan
from dimplicit.interrupt import TrainingInterrupted, graceful_stop
from dimplicit.model import weights_sha256
from dimplicit.optim import OptimizerConfig, init_state
from dimplicit.partition import StepConfig

log = logging.getLogger("dimplicit")

PERSIST = ("auto", "always", "never")
EXECUTORS = ("auto", "local", "dask")
ON_DIVERGENCE = ("stop", "skip-step")
# Model-selection metrics computed from reduced validation sums, and whether larger is better.
SELECT_METRICS = {
    "val_loss": False,
    "val_accuracy": True,
    "val_r2": True,
    "val_f1": True,
    "val_auc": True,
}
MAX_SKIPPED_IN_A_ROW = 10
MAX_REPLAYS = 3


class DivergenceError(ValueError):
    """The loss, a gradient or a weight stopped being finite."""


@dataclass(frozen=True)
class TrainingRun:
    """What a run fixes before its first step; what executors need to run the plan."""

    data: tasks.DataSpec
    plan: Plan
    counts: dict  # split name -> eligible rows per chunk
    config: StepConfig
    optimizer: OptimizerConfig
    seed: int
    template: object  # ImplicitModel: activation, masks, κ (its weights are not used)
    n_rows_stored: int
    n_features: int

    def block_args(self, epoch: int, chunk: int, block: int) -> tuple:
        """The arguments of :func:`tasks.block_sums` after ``(params, template, data)``."""
        d = self.data
        return (self.config, self.seed, epoch, chunk, block, self.plan.block_rows, d.device,
                d.dtype)  # fmt: skip

    def eval_args(self) -> tuple:
        """The arguments of :func:`tasks.eval_sums` after ``(params, template, data)``."""
        return (self.config, self.data.device, self.data.dtype)


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
    select_best : {"val_loss", "val_accuracy", "val_r2"}, optional
        Keep the weights of the best evaluation and restore them at the end.
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
        ``{"metric", "value", "step"}`` of the best evaluation.
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
        metrics_log=None,
        progress: bool = False,
        callback=None,
        epoch_callback=None,
        eval_every: int | None = None,
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
        self.metrics_log = metrics_log
        self.progress = progress
        self.callback = callback
        self.epoch_callback = epoch_callback
        self.eval_every = eval_every
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
        }

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
        return DaskExecutor(client, run, persist)

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
                _Loop(self, run, executor).run()
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
            "weights_hash_order": "sha256 over A, B, C, D, b_x, b_y (C-contiguous bytes)",
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


class _Loop:
    """One run of the step loop: the driver's state, in named steps instead of closures."""

    def __init__(self, trainer: Trainer, run: TrainingRun, executor):
        self.t, self.run_, self.ex = trainer, run, executor
        trainer._loop = self
        plan = run.plan
        self.total_steps = trainer.epochs * plan.steps_per_epoch
        if trainer.max_steps is not None:
            self.total_steps = min(self.total_steps, trainer.max_steps)
        self.fingerprint = trainer._fingerprint(plan)
        self.metric = trainer.select_best or ("val_loss" if trainer.patience else None)
        self.history, self.evaluations = [], []
        self.start = self.step = 0
        self.best_value, self.best_step, self.best_params, self.bad_evals = None, None, None, 0
        self.best_key = None
        self.val_loss = self.best_val_loss = None
        self.stopped_early = False
        self.skipped = self.skipped_in_a_row = 0
        self.rows_done, self.elapsed = 0, 0.0
        self.last_checkpoint = None
        self.final_params = None
        self._logged = set()

    # ------------------------------------------------------------------ start

    def _initial_state(self):
        t = self.t
        params = {k: np.asarray(v) for k, v in t.model.params.items()}
        state = init_state(t.optimizer, params)
        if not (t.resume and t.checkpoint_dir is not None):
            return params, state
        path = latest_checkpoint(t.checkpoint_dir)
        if path is None:
            log.warning("no checkpoint in %s to resume; starting at step 0", t.checkpoint_dir)
            return params, state
        ck = load_checkpoint(path)
        head = ck["header"]
        if head.get("fingerprint") != json.loads(json.dumps(self.fingerprint)):
            raise ValueError(
                f"{path} was written by a run with other data, model, seed or options; "
                "it cannot be resumed by this one"
            )
        self.start = self.step = int(head["step"])
        sel = head.get("selection") or {}
        self.best_value, self.best_step = sel.get("value"), sel.get("step")
        self.bad_evals = int(sel.get("bad_evals", 0))
        if sel.get("key") is not None:
            self.best_key = tuple(sel["key"])
        self.best_params = ck["best"]
        self.last_checkpoint = path
        return ck["params"], ck["state"]

    # ------------------------------------------------------------------ the loop

    def run(self):
        t = self.t
        params, state = self._initial_state()
        metrics = t.metrics_log
        if metrics is None and t.checkpoint_dir is not None:
            metrics = Path(t.checkpoint_dir) / "metrics.jsonl"
        self.metrics = _MetricsLog(metrics, keep_before=self.start)
        self.bar = _progress(t.progress, self.total_steps, self.start)
        self.ex.start(params, state)
        self.synced = (params, state, self.start)
        self._snapshot()
        self.replays = 0
        self.t0 = time.perf_counter()
        try:
            with graceful_stop() as stop:
                while self.final_params is None:
                    try:
                        while self.step < self.total_steps and not self.stopped_early:
                            if stop.requested:
                                self._stop_on_signal(stop.requested)
                            self._one_step()
                        self._collect(keep=0)
                        self.final_params, _ = self.ex.weights()
                    except _LOST_FUTURE as exc:
                        self._replay(exc)
        finally:
            self.elapsed = time.perf_counter() - self.t0
            self.bar.close()
            self.metrics.close()

    def _one_step(self):
        t, plan = self.t, self.run_.plan
        epoch, blocks = plan.step_blocks(self.step)
        self.ex.submit(self.step, epoch, blocks)
        self.step += 1
        self._collect(keep=1)  # the previous step's summary, while this one runs
        done = self.step
        last = done == self.total_steps
        end_of_epoch = done % plan.steps_per_epoch == 0
        eval_due = t.eval_every is not None and done % t.eval_every == 0
        if any(self.run_.counts["validation"]) and (
            eval_due or last or (t.eval_every is None and end_of_epoch)
        ):
            self._evaluate(epoch)
        if t.epoch_callback is not None and (end_of_epoch or last):
            params = {k: np.array(v) for k, v in self._sync()[0].items()}
            if t.epoch_callback(epoch, tasks.with_params(t.model.copy(), params)):
                self.stopped_early = True
        want_ckpt = t.checkpoint_dir is not None and (
            (t.checkpoint_every and done % t.checkpoint_every == 0) or last or self.stopped_early
        )
        if want_ckpt or done % t.sync_every == 0:
            self._sync()
            if want_ckpt:
                self._checkpoint(epoch)

    def _collect(self, keep):
        """Take finished steps' summaries: log them, guard divergence, update the bar."""
        for step, epoch, summary in self.ex.results(keep):
            rec = {"step": step, "epoch": epoch, **summary}
            self.rows_done += rec["count"]
            rec["samples_per_s"] = self.rows_done / max(time.perf_counter() - self.t0, 1e-9)
            self.history.append(rec)
            self._log({"kind": "step", **rec})
            if not rec["finite"]:
                self._diverged(rec)
            else:
                self.skipped_in_a_row = 0
            if self.t.callback is not None:
                self.t.callback(rec)
            self.bar.update(1)
            self.bar.set_postfix(
                epoch=epoch, loss=f"{rec['loss']:.4g}", fwd=f"{rec['forward_iters']:.0f}",
                bwd=f"{rec['backward_iters']:.0f}", sps=f"{rec['samples_per_s']:.0f}",
            )  # fmt: skip

    def _diverged(self, rec):
        t = self.t
        self.skipped += 1
        self.skipped_in_a_row += 1
        if t.on_divergence == "skip-step" and self.skipped_in_a_row < MAX_SKIPPED_IN_A_ROW:
            log.warning("step %d: loss or gradients not finite; step skipped", rec["step"])
            return
        self._log({"kind": "diverged", "step": rec["step"], "loss": rec["loss"]})
        saved = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written"
        )
        why = (
            f"{self.skipped_in_a_row} steps in a row were skipped"
            if t.on_divergence == "skip-step"
            else "the step was not applied"
        )
        raise DivergenceError(
            f"training diverged at step {rec['step']} (loss {rec['loss']:.4g}; the loss, a "
            f"gradient or a new weight is not finite); {why} "
            f"and no model was written; {saved}; try a smaller learning rate than "
            f"lr={t.optimizer.lr:g}" + ("" if t.on_divergence == "skip-step" else
            " or on_divergence=skip-step")
        )

    def _evaluate(self, epoch):
        self._collect(keep=0)
        ev = self.ex.evaluate()
        n = max(ev["count"], 1)
        rec = {"kind": "eval", "epoch": epoch, "step": self.step, "val_loss": ev["loss"] / n}
        if self.t.data.task == "classify":
            rec["val_accuracy"] = ev["correct"] / n
        if self.t.data.task == "regress":
            total_ss = ev["y_sq_sum"] - ev["y_sum"] ** 2 / n
            rec["val_r2"] = 1.0 - ev["sse"] / total_ss if total_ss > 0 else None
        if self.t.data.task == "autoencode" and ev["hist_anomalous"].sum() > 0:
            from dimplicit.anomaly.metrics import metrics_from_histograms

            rec |= metrics_from_histograms(ev["hist_normal"], ev["hist_anomalous"])
        rec["val_unconverged"] = ev["unconverged"]
        self.val_loss = rec["val_loss"]
        if self.best_val_loss is None or self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
        if self.metric is not None:
            value = rec.get(self.metric)
            # Ties (an accuracy that saturates on a small validation set) are broken by the
            # validation loss, so the weights keep improving after the first perfect score.
            key = None if value is None else _selection_key(self.metric, value, self.val_loss)
            improved = key is not None and (self.best_key is None or key < self.best_key)
            if improved:
                self.best_value, self.best_step, self.bad_evals = value, self.step, 0
                self.best_key = key
                self.best_params = {k: np.array(v) for k, v in self._sync()[0].items()}
            else:
                self.bad_evals += 1
            rec["best"] = improved
            if self.t.patience is not None and self.bad_evals >= self.t.patience:
                self.stopped_early = True
        self.evaluations.append(rec)
        self._log(rec)
        if self.synced[2] == self.step:
            self._snapshot()

    def _sync(self):
        """Drain, fetch the weights (cuts the Dask lineage) and remember them for replays."""
        self._collect(keep=0)
        params, state = self.ex.weights()
        self.synced = (params, state, self.step)
        self._snapshot()
        return params, state

    _SELECTION = ("best_value", "best_step", "best_key", "best_params", "bad_evals",
                  "stopped_early", "val_loss", "best_val_loss")  # fmt: skip

    def _snapshot(self):
        """The selection state as of the synced step (what a replay starts from)."""
        self.synced_selection = {k: getattr(self, k) for k in self._SELECTION}

    def _checkpoint(self, epoch):
        params, state, step = self.synced
        header = {
            "fingerprint": self.fingerprint,
            "selection": {
                "metric": self.metric,
                "value": self.best_value,
                "step": self.best_step,
                "bad_evals": self.bad_evals,
                "key": self.best_key,
            },
            "seed": self.t.seed,
            "rng": "numpy default_rng([seed, epoch(, chunk)])",
        }
        self.last_checkpoint = save_checkpoint(
            self.t.checkpoint_dir, params=params, state=state, step=step, epoch=epoch,
            header=header, order=self.run_.plan.epoch_order(epoch), best=self.best_params,
        )  # fmt: skip

    def _stop_on_signal(self, name):
        """Finish what was submitted, checkpoint if there is a directory, then raise."""
        try:
            self._sync()
        except Exception as exc:  # the workers may have received the signal too
            log.warning("could not fetch the newest weights (%s); using step %d's", exc,
                        self.synced[2])  # fmt: skip
            self.step = self.synced[2]
        path = None
        if self.t.checkpoint_dir is not None and self.synced[2] > 0:
            epoch = (self.synced[2] - 1) // self.run_.plan.steps_per_epoch
            self._checkpoint(epoch)
            path = str(self.last_checkpoint)
        raise TrainingInterrupted(name, self.synced[2], path)

    def _replay(self, exc):
        """Dask lost a future it cannot recompute: restart from the last synced weights.

        The plan is deterministic, so replaying the steps since the last sync gives bitwise
        the same weights; their records are not logged twice.
        """
        self.replays += 1
        if self.replays > MAX_REPLAYS:
            raise exc
        params, state, step = self.synced
        log.warning("lost a step's result (%s); replaying from step %d", exc, step)
        self.ex.start(params, state)
        for k, v in self.synced_selection.items():
            setattr(self, k, v)
        self.history = [r for r in self.history if r["step"] < step]
        self.evaluations = [r for r in self.evaluations if r["step"] <= step]
        self.rows_done = sum(r["count"] for r in self.history)
        self.bar.reset(total=self.total_steps)
        self.bar.update(step)
        self.step = step

    def _log(self, rec):
        key = (rec["kind"], rec["step"])
        if key not in self._logged:
            self._logged.add(key)
            self.metrics.write(rec)

    def best(self):
        if self.metric is None or self.best_value is None:
            return None
        return {"metric": self.metric, "value": self.best_value, "step": self.best_step}


def _selection_key(metric: str, value: float, val_loss: float) -> tuple:
    """Smaller is better: the metric (negated when larger is better), then the loss."""
    return (-value if SELECT_METRICS[metric] else value, val_loss)


def _store_id(store) -> str:
    """A store's identity in a checkpoint's fingerprint (its absolute path)."""
    path = getattr(store, "path", store)
    return str(path) if str(path).startswith("<") else str(Path(path).resolve())


def _lost_future_errors():
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # older distributed
        from concurrent.futures import CancelledError as FutureCancelledError
    from concurrent.futures import CancelledError

    return (FutureCancelledError, CancelledError)


_LOST_FUTURE = _lost_future_errors()


class _MetricsLog:
    """Append-only JSON-lines metrics file (or nothing).

    ``keep_before``: a resumed run first drops the records of steps at or after its starting
    step (those a killed run wrote after its last checkpoint), so every step appears once.
    """

    def __init__(self, path, keep_before: int = 0):
        self.fh = None
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_before is not None and path.exists():
            self._truncate(path, keep_before)
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    @staticmethod
    def _truncate(path, step):
        from dimplicit.atomic import write_file

        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            # A step record's "step" is the step's index; an evaluation's, the steps done.
            limit = step if rec.get("kind") == "step" else step + 1
            if rec.get("step", 0) < limit:
                kept.append(line)
        if step == 0:
            kept = []
        text = "".join(line + "\n" for line in kept).encode()
        write_file(path, lambda fh: fh.write(text))

    def write(self, rec):
        if self.fh:
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()

    def close(self):
        if self.fh:
            self.fh.close()


def _progress(enabled, total, initial):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
