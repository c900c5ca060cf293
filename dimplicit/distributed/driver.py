"""The driver of a training run: the step loop and everything around it, in named steps.

:class:`Loop` runs one :class:`~dimplicit.distributed.trainer.Trainer` run on an executor
(:mod:`.executor_local` or :mod:`.executor_dask`): it submits the plan's steps, collects
their summaries (metrics log, progress, divergence guard), evaluates and selects the best
weights, syncs, checkpoints, stops on signals and replays steps Dask lost.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dimplicit.distributed import tasks
from dimplicit.distributed.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dimplicit.interrupt import TrainingInterrupted, graceful_stop
from dimplicit.optim import init_state

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from dimplicit.distributed.spec import TrainingRun
    from dimplicit.distributed.trainer import Trainer

log = logging.getLogger("dimplicit")

SELECT_METRICS = {
    "val_loss": False,
    "val_accuracy": True,
    "val_r2": True,
    "val_f1": True,
    "val_auc": True,
    "val_f1_grid": True,
    "val_f1_exact": True,
}
# Selection rules computed from the validation rows' own scores (not histograms); each also
# fixes the calibration (z-score mean, std, threshold) kept with the best weights.
EXACT_RULES = ("val_f1_grid", "val_f1_exact")
MAX_SKIPPED_IN_A_ROW = 10
MAX_REPLAYS = 3


class DivergenceError(ValueError):
    """The loss, a gradient or a weight stopped being finite."""


class Loop:
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
        self.best_calibration = None
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
        if sel.get("calibration") is not None:
            from dimplicit.anomaly.metrics import Calibration

            self.best_calibration = Calibration(**sel["calibration"])
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
            # Only Dask loses results; its exception types are imported only for it.
            lost = _lost_future_errors() if self.ex.name == "dask" else ()
            with graceful_stop() as stop:
                while self.final_params is None:
                    try:
                        while self.step < self.total_steps and not self.stopped_early:
                            if stop.requested:
                                self._stop_on_signal(stop.requested)
                            self._one_step()
                        self._collect(keep=0)
                        self.final_params, _ = self.ex.weights()
                    except lost as exc:
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
        # eval_at_epoch_end: count eval_every within the epoch, as a per-epoch loop does,
        # and evaluate at every epoch's end too.
        counted = done - epoch * plan.steps_per_epoch if t.eval_at_epoch_end else done
        eval_due = (t.eval_every is not None and counted % t.eval_every == 0) or (
            t.eval_at_epoch_end and end_of_epoch
        )
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
        calibration = None
        if self.metric in EXACT_RULES and rec.get("val_f1") is not None:
            from dimplicit.anomaly import metrics as am

            rule = am.grid_calibrate if self.metric == "val_f1_grid" else am.calibrate
            calibration = rule(ev["scores"], ~ev["normal"])
            rec[self.metric], rec["val_auc"] = calibration.val_f1, calibration.val_auc
            rec["calibration"] = calibration.to_dict()
        rec["val_unconverged"] = ev["unconverged"]
        self.val_loss = rec["val_loss"]
        if self.best_val_loss is None or self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
        if self.metric is not None:
            value = rec.get(self.metric)
            # Ties (an accuracy that saturates on a small validation set) are broken by the
            # validation loss, so the weights keep improving after the first perfect score.
            # The exact rules keep the first checkpoint of the best F1 (strict improvements).
            tie = 0.0 if self.metric in EXACT_RULES else self.val_loss
            key = None if value is None else _selection_key(self.metric, value, tie)
            improved = key is not None and (self.best_key is None or key < self.best_key)
            if improved:
                self.best_value, self.best_step, self.bad_evals = value, self.step, 0
                self.best_key, self.best_calibration = key, calibration
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
                  "stopped_early", "val_loss", "best_val_loss", "best_calibration")  # fmt: skip

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
                "calibration": None
                if self.best_calibration is None
                else self.best_calibration.to_dict(),
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
        out = {"metric": self.metric, "value": self.best_value, "step": self.best_step}
        if self.best_calibration is not None:
            out["calibration"] = self.best_calibration.to_dict()
        return out


def _selection_key(metric: str, value: float, val_loss: float) -> tuple:
    """Smaller is better: the metric (negated when larger is better), then the loss."""
    return (-value if SELECT_METRICS[metric] else value, val_loss)


def _lost_future_errors():
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # older distributed
        from concurrent.futures import CancelledError as FutureCancelledError
    from concurrent.futures import CancelledError

    return (FutureCancelledError, CancelledError)




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
