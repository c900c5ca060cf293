"""The Dask executor: each step of the plan as a graph of futures on a cluster (docs/design.md §4).

Per step::

    block tasks (one per row-block of the step)  ──►  fixed-order tree of `combine` tasks
        ──►  `update` task (optimizer + projection)  ──►  new weights, kept as a future

The client only *submits*; :meth:`DaskExecutor.results` fetches the small per-step summaries
one step behind, so the cluster is never idle waiting for it.  :meth:`DaskExecutor.weights`
gathers the weights and broadcasts them back to every worker: this bounds the lineage Dask
would replay after losing a worker (the trainer calls it every ``sync_every`` steps).
"""

from __future__ import annotations

import operator
import uuid

from dimplicit.distributed import tasks
from dimplicit.partition import combine, tree_reduce


class DaskExecutor:
    """Run a plan's steps as Dask futures on the cluster behind ``client``.

    Parameters
    ----------
    client : distributed.Client
    run : TrainingRun
        What the trainer fixed for this run (data, plan, config, template model).
    persist : bool
        Keep loaded chunks in worker memory, or re-read them from Zarr in every task.
    """

    name = "dask"

    def __init__(self, client, run, persist: bool):
        self.client = client
        self.run = run
        self.persist = persist
        self.key = uuid.uuid4().hex[:8]
        self.template = _broadcast(client, run.template)
        self.chunks = {
            split: self._persist_chunks(counts, split) for split, counts in run.counts.items()
        }
        self.pending = []  # (step, epoch, summary future), oldest first
        self.params_f = self.state_f = None
        # Every weight future since the last sync stays referenced by the client: scattered
        # data has no recipe, so if the client let go of it, a worker lost later could not be
        # rebuilt from it and Dask would cancel the whole step chain.
        self.lineage = []

    # ------------------------------------------------------------------ data

    def _persist_chunks(self, counts, split):
        if not self.persist:
            return {}
        return {
            c: self.client.submit(
                tasks.load_chunk, self.run.data, c, split, key=f"chunk-{split}-{c}-{self.key}"
            )
            for c, n in enumerate(counts)
            if n > 0
        }

    def _chunk(self, c, split):
        # Persisted: the chunk future (data stays on its worker).  Streaming: a load task
        # that the block task depends on, re-reading Zarr every time.
        if c in self.chunks[split]:
            return self.chunks[split][c]
        return self.client.submit(tasks.load_chunk, self.run.data, c, split, pure=False)

    def _reduce(self, futures, fn, tag):
        def pair(a, b, depth, i):
            return self.client.submit(fn, a, b, key=f"{tag}-{depth}-{i}-{self.key}")

        return tree_reduce(futures, pair)

    # ------------------------------------------------------------------ the step

    def start(self, params, state) -> None:
        """Place the weights and optimizer state on every worker."""
        self.params_f = _broadcast(self.client, params)
        self.state_f = _broadcast(self.client, state)
        self.lineage = [self.params_f, self.state_f]
        self.pending = []

    def submit(self, step: int, epoch: int, blocks) -> None:
        """Submit step ``step``'s block tasks, reduction and update; return at once."""
        r, c, k = self.run, self.client, self.key
        sums = [
            c.submit(
                tasks.block_sums, self.params_f, self.template, self._chunk(chunk, "train"),
                *r.block_args(epoch, chunk, j), key=f"block-{step}-{i}-{k}",
            )  # fmt: skip
            for i, (chunk, j) in enumerate(blocks)
        ]
        total_f = self._reduce(sums, combine, f"reduce-{step}")
        out_f = c.submit(
            tasks.update, self.params_f, self.state_f, total_f, step, r.optimizer,
            self.template, key=f"update-{step}-{k}",
        )  # fmt: skip
        self.params_f = c.submit(operator.getitem, out_f, 0, key=f"params-{step}-{k}")
        self.state_f = c.submit(operator.getitem, out_f, 1, key=f"state-{step}-{k}")
        finite_f = c.submit(operator.getitem, out_f, 2, key=f"finite-{step}-{k}")
        self.lineage += [self.params_f, self.state_f]
        summary = c.submit(tasks.step_summary, total_f, finite_f, key=f"summary-{step}-{k}")
        self.pending.append((step, epoch, summary))

    def results(self, keep: int = 0):
        """Summaries of finished steps, oldest first, leaving the newest ``keep`` pending."""
        while len(self.pending) > keep:
            step, epoch, fut = self.pending.pop(0)
            yield step, epoch, fut.result()

    def weights(self):
        """Gather ``(params, state)`` to the client and broadcast them back (cuts lineage)."""
        p, s = self.client.gather([self.params_f, self.state_f])
        self.start(p, s)
        return p, s

    def evaluate(self) -> dict:
        """Validation sums with the current weights, reduced on the cluster."""
        r = self.run
        evals = [
            self.client.submit(
                tasks.eval_sums, self.params_f, self.template, self._chunk(c, "validation"),
                *r.eval_args(), key=f"eval-{c}-{uuid.uuid4().hex[:8]}",
            )  # fmt: skip
            for c, n in enumerate(r.counts["validation"])
            if n > 0
        ]
        return self._reduce(evals, tasks.add_eval, f"evalsum-{uuid.uuid4().hex[:6]}").result()

    def close(self) -> None:
        """Release the persisted chunks and everything this run still holds on the cluster."""
        for futs in self.chunks.values():
            for f in futs.values():
                f.release()
        self.pending, self.lineage = [], []
        self.params_f = self.state_f = None

    def info(self) -> dict:
        return {"executor": self.name, "persisted": self.persist}


def should_persist(client, run) -> bool:
    """``persist="auto"``: keep chunks in worker memory when they fit in half of it."""
    itemsize = 8 if run.data.dtype == "float64" else 4
    need = run.n_rows_stored * run.n_features * itemsize
    workers = client.scheduler_info().get("workers", {}).values()
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers)
    return memory == 0 or need < 0.5 * memory


def _broadcast(client, obj):
    """Place ``obj`` on the cluster as ONE future that Dask can always rebuild.

    The object travels inside the task that returns it, so the scheduler holds a recipe for
    it: if every worker holding a copy dies, it is recomputed from the recipe.  Scattered data
    has no recipe, and Dask's memory manager trims broadcast replicas down to one copy, so
    losing that one worker made every later step unrecoverable ("already forgotten").  A
    fresh unique key per call: reusing keys would silently keep old weights.
    """
    import warnings

    with warnings.catch_warnings():
        # Weights of large models exceed Dask's "large object in graph" hint (1 MB); they
        # travel once per sync either way.
        warnings.filterwarnings("ignore", message=".*Large object.*")
        warnings.filterwarnings("ignore", message=".*large graph.*")
        return client.submit(_same, obj, key=f"weights-{uuid.uuid4().hex}", pure=False)


def _same(obj):
    return obj
