"""Synchronous data-parallel training on a Dask cluster over a Zarr store (DESIGN §4).

Per step::

    block tasks (one per row-block of the step)  ──►  fixed-order tree of `combine` tasks
        ──►  `update` task (optimizer + projection)  ──►  new weights, kept as a future

The client only *submits*; it fetches a small per-step summary one step behind, so the
cluster is never idle waiting for it.  Every ``sync_every`` steps (and at checkpoints) the
weights are gathered and broadcast back to all workers: this bounds the lineage Dask would
replay after losing a worker, and a checkpoint needs the weights on the client anyway.
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dimplicit.data.store import open_store
from dimplicit.distributed import tasks
from dimplicit.distributed.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dimplicit.distributed.plan import Plan
from dimplicit.model import weights_sha256
from dimplicit.optim import OptimizerConfig, init_state
from dimplicit.partition import StepConfig

PERSIST = ("auto", "always", "never")


class Trainer:
    """Train an :class:`~dimplicit.model.ImplicitModel` on a Zarr store with Dask.

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
        Where checkpoints and the final model go.
    checkpoint_every : int
        Steps between checkpoints (0: only at the end).
    resume : bool
        Continue from the newest checkpoint in ``checkpoint_dir``.
    persist : {"auto", "always", "never"}
        Keep loaded chunks in worker memory (``auto``: when they fit in half the cluster's
        memory) or re-read them from Zarr in every task (out-of-core streaming).
    patience : int, optional
        Early stopping: stop after this many epochs without a better validation loss.
    max_steps : int, optional
        Stop after this many global steps (the run can be resumed later).
    sync_every : int
        Steps between gathers/broadcasts of the weights (bounds the lineage after failures).
    metrics_log : path, optional
        JSON-lines file, one record per step and per epoch.
    progress : bool
        Show a progress bar on stderr.
    callback : callable, optional
        Called with every per-step record (on the client, one step behind the cluster).

    Attributes
    ----------
    model_ : ImplicitModel
        The trained model.
    history_ : list of dict
        Per-step records.
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

    # ------------------------------------------------------------------ validation / setup

    def check(self, store):
        """Validate options against the store without touching a cluster or any file.

        Raises ``ValueError`` with a one-line message naming the store or the option.
        """
        if self.persist not in PERSIST:
            raise ValueError(f"persist must be one of {PERSIST}, got {self.persist!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be ≥ 1")
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
        if task == "regress":
            try:
                [float(c) for c in store.label_classes]
            except ValueError:
                raise ValueError(
                    f"{store.path}: --task regress needs numeric labels, found classes like "
                    f"{store.label_classes[:3]}"
                ) from None
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
                    "--resume to continue them or choose another --checkpoint-dir"
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
            "store": str(Path(self.data.store).resolve()),
            "data": asdict(self.data) | {"store": None},
            "plan": {
                "chunks": list(plan.chunk_counts),
                "block_rows": plan.block_rows,
                "blocks_per_step": plan.blocks_per_step,
            },
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "shapes": [self.model.n_inputs, self.model.n_hidden, self.model.n_outputs],
        }

    def _should_persist(self, client, store) -> bool:
        if self.persist != "auto":
            return self.persist == "always"
        itemsize = 8 if self.data.dtype == "float64" else 4
        need = store.n_rows * store.n_features * itemsize
        workers = client.scheduler_info().get("workers", {}).values()
        memory = sum(w.get("memory_limit", 0) or 0 for w in workers)
        return memory == 0 or need < 0.5 * memory

    # ------------------------------------------------------------------ training

    def fit(self, client):
        """Train on the cluster behind ``client``; returns ``self``."""
        store = open_store(self.data.store)
        self.check(store)
        plan = self._plan(store)
        train_counts, rows = plan.chunk_counts, plan.block_rows
        val_counts = self._chunk_counts(store, "validation")
        total_steps = self.planned_steps(store)
        fingerprint = self._fingerprint(plan)

        params = {k: np.asarray(v) for k, v in self.model.params.items()}
        opt = self.optimizer
        if opt.schedule == "cosine" and opt.total_steps == 0:
            raise ValueError("the cosine schedule needs total_steps (set it to epochs × steps)")
        state = init_state(opt, params)
        start, best_val, bad_epochs = 0, math.inf, 0
        if self.resume and self.checkpoint_dir is not None:
            ck_path = latest_checkpoint(self.checkpoint_dir)
            if ck_path is not None:
                ck = load_checkpoint(ck_path)
                if ck["header"].get("fingerprint") != json.loads(json.dumps(fingerprint)):
                    raise ValueError(
                        f"{ck_path} was written by a run with other data, model, seed or options; "
                        "it cannot be resumed by this one"
                    )
                params, state, start = ck["params"], ck["state"], int(ck["header"]["step"])
                best_val = ck["header"].get("best_val", math.inf)
                bad_epochs = ck["header"].get("bad_epochs", 0)

        run = uuid.uuid4().hex[:8]
        spec, cfg, dev, dt = self.data, self.config, self.data.device, self.data.dtype
        template = _broadcast(client, self.model)
        persist = self._should_persist(client, store)

        def chunk_futures(counts, split_name):
            if not persist:
                return {}
            return {
                c: client.submit(
                    tasks.load_chunk, spec, c, split_name, key=f"chunk-{split_name}-{c}-{run}"
                )
                for c, n in enumerate(counts)
                if n > 0
            }

        train_chunks = chunk_futures(train_counts, "train")
        val_chunks = chunk_futures(val_counts, "validation")

        def data_of(futs, c, split_name):
            # Persisted: the chunk future (data stays on its worker).  Streaming: a load task
            # that the block task depends on, re-reading Zarr every time.
            if c in futs:
                return futs[c]
            return client.submit(tasks.load_chunk, spec, c, split_name, pure=False)

        def tree(futs, fn, tag):
            level = list(futs)
            depth = 0
            while len(level) > 1:
                nxt = [
                    client.submit(fn, level[i], level[i + 1], key=f"{tag}-{depth}-{i}-{run}")
                    for i in range(0, len(level) - 1, 2)
                ]
                if len(level) % 2:
                    nxt.append(level[-1])
                level, depth = nxt, depth + 1
            return level[0]

        params_f, state_f = _broadcast(client, params), _broadcast(client, state)
        # Every weight future since the last sync stays referenced by the client: scattered
        # data has no recipe, so if the client let go of it, a worker lost later could not be
        # rebuilt from it and Dask would cancel the whole step chain.
        lineage = [params_f, state_f]

        log = _MetricsLog(self.metrics_log)
        bar = _progress(self.progress, total_steps, start)
        history, pending = [], []
        rows_done, t0 = 0, time.perf_counter()
        stopped_early = False
        last_ckpt = None
        val_loss = None

        def drain(keep: int):
            nonlocal rows_done
            while len(pending) > keep:
                s, epoch, fut = pending.pop(0)
                rec = {"step": s, "epoch": epoch, **fut.result()}
                rows_done += rec["count"]
                rec["samples_per_s"] = rows_done / (time.perf_counter() - t0)
                history.append(rec)
                log.write({"kind": "step", **rec})
                if self.callback is not None:
                    self.callback(rec)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch,
                    loss=f"{rec['loss']:.4g}",
                    fwd=f"{rec['forward_iters']:.0f}",
                    bwd=f"{rec['backward_iters']:.0f}",
                    sps=f"{rec['samples_per_s']:.0f}",
                )

        def sync():
            # Gather the weights and broadcast them back: cuts the lineage (see module doc).
            nonlocal params_f, state_f
            p, s = client.gather([params_f, state_f])
            params_f, state_f = _broadcast(client, p), _broadcast(client, s)
            lineage[:] = [params_f, state_f]
            return p, s

        def checkpoint(step, epoch, p, s):
            header = {
                "fingerprint": fingerprint,
                "best_val": best_val,
                "bad_epochs": bad_epochs,
                "seed": self.seed,
                "rng": "numpy default_rng([seed, epoch(, chunk)])",
            }
            return save_checkpoint(
                self.checkpoint_dir,
                params=p,
                state=s,
                step=step,
                epoch=epoch,
                header=header,
                order=plan.epoch_order(epoch),
            )

        for step in range(start, total_steps):
            epoch, blocks = plan.step_blocks(step)
            sums = [
                client.submit(
                    tasks.block_sums,
                    params_f,
                    template,
                    data_of(train_chunks, c, "train"),
                    cfg,
                    self.seed,
                    epoch,
                    c,
                    j,
                    rows,
                    dev,
                    dt,
                    key=f"block-{step}-{i}-{run}",
                )
                for i, (c, j) in enumerate(blocks)
            ]
            total_f = tree(sums, tasks.combine, f"reduce-{step}")
            out_f = client.submit(
                tasks.update,
                params_f,
                state_f,
                total_f,
                step,
                opt,
                template,
                key=f"update-{step}-{run}",
            )
            params_f = client.submit(operator.getitem, out_f, 0, key=f"params-{step}-{run}")
            state_f = client.submit(operator.getitem, out_f, 1, key=f"state-{step}-{run}")
            lineage += [params_f, state_f]
            pending.append(
                (
                    step,
                    epoch,
                    client.submit(tasks.step_summary, total_f, key=f"summary-{step}-{run}"),
                )
            )
            drain(keep=1)  # fetch the previous step's summary while this one runs

            done = step + 1
            end_of_epoch = done % plan.steps_per_epoch == 0 or done == total_steps
            want_ckpt = self.checkpoint_dir is not None and (
                (self.checkpoint_every and done % self.checkpoint_every == 0) or done == total_steps
            )
            if end_of_epoch and any(val_counts):
                drain(keep=0)
                evals = [
                    client.submit(
                        tasks.eval_sums,
                        params_f,
                        template,
                        data_of(val_chunks, c, "validation"),
                        cfg,
                        dev,
                        dt,
                        key=f"eval-{step}-{c}-{run}",
                    )
                    for c, n in enumerate(val_counts)
                    if n > 0
                ]
                ev = tree(evals, tasks.add_eval, f"evalsum-{step}").result()
                val_loss = ev["loss"] / max(ev["count"], 1)
                improved = val_loss < best_val
                best_val, bad_epochs = (val_loss, 0) if improved else (best_val, bad_epochs + 1)
                log.write(
                    {
                        "kind": "epoch",
                        "epoch": epoch,
                        "step": done,
                        "val_loss": val_loss,
                        "val_unconverged": ev["unconverged"],
                    }
                )
                if self.patience is not None and bad_epochs >= self.patience:
                    stopped_early = True
            if want_ckpt or done % self.sync_every == 0 or stopped_early:
                drain(keep=0)
                p, s = sync()
                if want_ckpt or stopped_early and self.checkpoint_dir is not None:
                    last_ckpt = checkpoint(done, epoch, p, s)
            if stopped_early:
                break
        drain(keep=0)
        elapsed = time.perf_counter() - t0
        final_params, _ = client.gather([params_f, state_f])
        bar.close()
        log.close()
        for f in (*train_chunks.values(), *val_chunks.values()):
            f.release()

        self.model_ = tasks.with_params(self.model, final_params)
        self.model_.meta = {**self.model.meta, "training": self._model_meta(store)}
        model_path = None
        if self.checkpoint_dir is not None:
            model_path = str(self.model_.save(Path(self.checkpoint_dir) / "model.npz"))
        self.history_ = history
        last = history[-1] if history else {}
        self.summary_ = {
            "steps": start + len(history),
            "steps_this_run": len(history),
            "epochs": (start + len(history)) / plan.steps_per_epoch,
            "final_loss": last.get("loss"),
            "val_loss": val_loss,
            "best_val_loss": None if math.isinf(best_val) else best_val,
            "stopped_early": stopped_early,
            "samples_per_s": rows_done / elapsed if elapsed > 0 else None,
            "seconds": elapsed,
            "forward_iters": last.get("forward_iters"),
            "backward_iters": last.get("backward_iters"),
            "rows_per_epoch": plan.n_rows,
            "blocks_per_step": plan.blocks_per_step,
            "block_rows": rows,
            "persisted": persist,
            "weights_sha256": weights_sha256(final_params),
            "weights_hash_order": "sha256 over A, B, C, D, b_x, b_y (C-contiguous bytes)",
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "model": model_path,
        }
        return self

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
            "loss": self.config.loss,
            "forward": self.config.forward.to_dict(),
        }


def _broadcast(client, obj):
    """Copy ``obj`` to every worker as ONE future with a fresh unique key.

    ``client.scatter(some_dict)`` would scatter each value under the dict's own keys ("A",
    "B", ...); a later scatter under the same keys is taken for the same data and silently
    keeps the old weights.  Wrapping in a list gives one object and a new random key.
    """
    return client.scatter([obj], broadcast=True, hash=False)[0]


class _MetricsLog:
    """Append-only JSON-lines metrics file (or nothing)."""

    def __init__(self, path):
        self.fh = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

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
