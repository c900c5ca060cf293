"""The in-process executor: the plan's steps as a plain loop in this process, no Dask.

It calls the very functions the Dask executor runs as tasks (:func:`tasks.load_chunk`,
:func:`tasks.block_sums`, the fixed reduction tree of :func:`~dimplicit.partition.combine`,
:func:`tasks.update`), with the same arguments in the same order, so for the same plan it
produces bitwise the same weights as the Dask executor with any number of workers.  It pays
no scheduler cost per step, which is what small data sets need.
"""

from __future__ import annotations

import time

from dimplicit.distributed import tasks
from dimplicit.partition import tree_reduce


class LocalExecutor:
    """Run a plan's steps in this process.

    Parameters
    ----------
    run : TrainingRun
        What the trainer fixed for this run (data, plan, config, template model).
    """

    name = "local"

    def __init__(self, run):
        self.run = run
        self.template = run.template
        self.chunks = {split: {} for split in run.counts}
        self.pending = []
        self.params = self.state = None

    def _chunk(self, c, split):
        # Loaded once, on first use: the auto executor picks this one only for data that
        # fits comfortably in memory.
        if c not in self.chunks[split]:
            self.chunks[split][c] = tasks.load_chunk(self.run.data, c, split)
        return self.chunks[split][c]

    def start(self, params, state) -> None:
        self.params, self.state = params, state
        self.pending = []

    def submit(self, step: int, epoch: int, blocks) -> None:
        r = self.run
        sums = [
            tasks.block_sums(
                self.params, self.template, self._chunk(chunk, "train"),
                *r.block_args(epoch, chunk, j),
            )  # fmt: skip
            for chunk, j in blocks
        ]
        t0 = time.perf_counter()
        total = tree_reduce(sums)
        self.params, self.state, finite = tasks.update(
            self.params, self.state, total, step, r.optimizer, self.template
        )
        summary = tasks.step_summary(total, finite)
        # As the Dask executor's `finish_step` reports it.
        summary["update_seconds"] = time.perf_counter() - t0
        self.pending.append((step, epoch, summary))

    def results(self, keep: int = 0):
        while len(self.pending) > keep:
            yield self.pending.pop(0)

    def weights(self):
        return self.params, self.state

    def evaluate(self) -> dict:
        r = self.run
        chunks = [self._chunk(c, "validation") for c, n in enumerate(r.counts["validation"]) if n]
        evals = [tasks.eval_sums(self.params, self.template, d, *r.eval_args()) for d in chunks]

        def pair(a, b, depth, index):
            return tasks.add_eval(a, b)

        return tree_reduce(evals, pair)

    def close(self) -> None:
        self.chunks = {split: {} for split in self.chunks}
        self.pending = []

    def info(self) -> dict:
        return {"executor": self.name, "persisted": True}
