"""The Dask executor: each step of the plan as a graph of futures on a cluster (docs/design.md §4).

Per step, with the step's blocks in store order and every worker holding a contiguous range
of the chunks (:meth:`Plan.chunk_slots`), so that each worker's blocks form one run::

    weights ──► binomial broadcast tree of copies (one per worker with blocks this step,
            and one on the update's worker that the tree starts from)
        ──► one `group_sums` task per worker: its blocks' sums, reduced to the maximal
            sub-trees of the fixed reduction tree inside its run
        ──► gather="flat": nothing; gather="tree": a binary tree of `merge` tasks over the
            runs in order, each on its left run's worker (the root on the first run's)
        ──► `finish_step` task: completes the tree, optimizer + projection
        ──► new weights (kept as a future), optimizer state, the step's summary

With the flat gather, at most ``2W + 4`` tasks per step on ``W`` workers, whatever the number
of blocks; no worker sends more than ``ceil(log2 W)`` copies of the weights plus its run's
partial sums (one gradient-sized array per maximal sub-tree, usually one), but the update's
worker receives the partial sums of all ``W − 1`` other runs.  The merge tree costs up to
``W − 1`` more tasks and ``ceil(log2 W)`` more dependent hops, and then no worker receives
more than ``ceil(log2 W)`` node lists a step; ``gather="auto"`` picks it when the bytes it
saves outweigh that (:func:`merge_tree_pays`).  The additions are those of
:func:`~dimplicit.partition.tree_reduce` in its order (:mod:`.reduce`), so the weights are
bitwise those of the in-process executor, of any number of workers and of either gather.
Tasks are pinned to their worker with ``allow_other_workers``: a dead worker's share runs
elsewhere.

The client only *submits*; :meth:`DaskExecutor.results` fetches the small per-step summaries
one step behind, so the cluster is never idle waiting for it.  :meth:`DaskExecutor.weights`
gathers the weights and places them back: this bounds the lineage Dask would replay after
losing a worker (the trainer calls it every ``sync_every`` steps).
"""

from __future__ import annotations

import operator
import uuid

from dimplicit.distributed import tasks
from dimplicit.distributed.reduce import (
    broadcast_parents,
    finish_step,
    group_sums,
    merge,
    runs_of,
)
from dimplicit.partition import tree_reduce

#: Dask priority of the weight broadcast's copy tasks (higher runs first; default 0).
BROADCAST_PRIORITY = 10

#: How a step's partial sums reach the update (``DaskExecutor(gather=…)``).
GATHERS = ("auto", "flat", "tree")

# The cost model of gather="auto" (docs/scaling.md): scheduler time a task, latency of a
# dependent hop (task done → scheduler → next task starts), and the rate at which a worker
# takes in partial sums (receive + deserialise + add).  1 ms a task and a hop is the order of
# magnitude Dask documents and docs/scaling.md's projection assumes; 1 GB/s is about what
# Dask's TCP comms move between two worker processes on one host (transfer logs on the 2-core
# development machine: 1.1 GB/s for 16 MB arrays, 1.4 for 64 MB, 0.67 for 4 MB) and below a
# cluster's links, so on a cluster the tree is chosen early rather than late.
TASK_SECONDS = 1e-3
HOP_SECONDS = 1e-3
GATHER_BYTES_PER_S = 1e9


class DaskExecutor:
    """Run a plan's steps as Dask futures on the cluster behind ``client``.

    Parameters
    ----------
    client : distributed.Client
    run : TrainingRun
        What the trainer fixed for this run (data, plan, config, template model).
    persist : bool
        Keep loaded chunks in worker memory, or re-read them from Zarr in every task.
    gather : {"auto", "flat", "tree"}
        How the runs' partial sums reach the update: all to its worker (``flat``: fewest
        tasks), or merged pairwise in a tree of tasks across the workers first (``tree``:
        no worker receives more than ``ceil(log2 W)`` of them); ``auto``: the tree when
        :func:`merge_tree_pays` for the step's runs and the weights' size.
    """

    name = "dask"

    def __init__(self, client, run, persist: bool, gather: str = "auto"):
        if gather not in GATHERS:
            raise ValueError(f"gather must be one of {GATHERS}, got {gather!r}")
        self.client = client
        self.run = run
        self.persist = persist
        self.gather = gather
        # Partial sums are gradient-sized: the weights' bytes (S of docs/scaling.md).
        self.weight_bytes = sum(getattr(v, "nbytes", 0) for v in run.template.params.values())
        self.key = uuid.uuid4().hex[:8]
        # Placement only (never the arithmetic): the workers present now, in a fixed order;
        # chunk c lives on slot chunk_slots[c].  Workers that join later get no share.
        self.workers = worker_addresses(client)
        self.slots = run.plan.chunk_slots(max(len(self.workers), 1))
        # A copy of the template on every worker, under its own key there: a replica that
        # a worker merely fetched may be dropped by Dask's memory manager between steps and
        # fetched again in the next one.  Slot 0 keeps the original (see _spread).
        template = _broadcast(client, run.template, self._where(0))
        self.template = self._spread(template, range(len(self.workers)), "template")
        self.template[0] = template
        self.chunks = {
            split: self._persist_chunks(counts, split) for split, counts in run.counts.items()
        }
        self.pending = []  # (step, epoch, summary future), oldest first
        self.params_f = self.state_f = None
        # Every weight future since the last sync stays referenced by the client, so a
        # worker lost later can be rebuilt from the recipes (see _broadcast).
        self.lineage = []

    def _where(self, slot) -> dict:
        """Pin a task to a slot's worker, loosely: if that worker is gone, any other."""
        if not self.workers:
            return {}
        return {"workers": [self.workers[slot]], "allow_other_workers": True}

    def _slot(self, chunk) -> int:
        return self.slots[chunk] if chunk < len(self.slots) else 0

    # ------------------------------------------------------------------ data

    def _persist_chunks(self, counts, split):
        if not self.persist:
            return {}
        return {
            c: self.client.submit(
                tasks.load_chunk,
                self.run.data,
                c,
                split,
                key=f"chunk-{split}-{c}-{self.key}",
                **self._where(self._slot(c)),
            )
            for c, n in enumerate(counts)
            if n > 0
        }

    def _chunk(self, c, split):
        # Persisted: the chunk future (data stays on its worker).  Streaming: a load task
        # that the caller depends on, re-reading Zarr every time.
        if c in self.chunks[split]:
            return self.chunks[split][c]
        return self.client.submit(
            tasks.load_chunk, self.run.data, c, split, pure=False, **self._where(self._slot(c))
        )

    def _reduce(self, futures, fn, tag):
        def pair(a, b, depth, i):
            return self.client.submit(fn, a, b, key=f"{tag}-{depth}-{i}-{self.key}")

        return tree_reduce(futures, pair)

    def _spread(self, root, slots, tag) -> dict:
        """Copies of ``root`` (a future on slot 0) on ``slots``' workers: slot → future.

        A binomial broadcast tree: every copy is a task (a recipe, so a lost copy is
        recomputed) that fetches from a worker that already has one, so no worker sends more
        than ``ceil(log2 len(slots))`` copies.  The tree starts from a copy made on slot 0,
        so that ``root`` itself never leaves slot 0: Dask's memory manager keeps one replica
        of a key, and the one it dropped was often slot 0's (where the next update needs
        the weights), which then travelled back.
        """
        members = [0] + sorted(set(slots) - {0})
        if len(members) == 1:
            return {0: root}
        # The copies go first on every worker: a relay that waited behind its own worker's
        # compute task (which needs the same weights, so both become ready together) would
        # idle every worker downstream of it for a whole task.
        first = {"priority": BROADCAST_PRIORITY}
        copies = {
            0: self.client.submit(_same, root, key=f"{tag}-0-{self.key}", **first, **self._where(0))
        }
        for j, parent in enumerate(broadcast_parents(len(members))):
            if parent is not None:
                copies[members[j]] = self.client.submit(
                    _same, copies[members[parent]], key=f"{tag}-{members[j]}-{self.key}",
                    **first, **self._where(members[j]),
                )  # fmt: skip
        return copies

    # ------------------------------------------------------------------ the step

    def start(self, params, state) -> None:
        """Place the weights and optimizer state on the update's worker (slot 0)."""
        self.params_f = _broadcast(self.client, params, self._where(0))
        self.state_f = _broadcast(self.client, state, self._where(0))
        self.lineage = [self.params_f, self.state_f]
        self.pending = []

    def submit(self, step: int, epoch: int, blocks) -> None:
        """Submit step ``step``'s tasks (module docstring); return at once."""
        r, c, k, n = self.run, self.client, self.key, len(blocks)
        runs = runs_of([self._slot(chunk) for chunk, _ in blocks])
        copies = self._spread(self.params_f, [slot for slot, _, _ in runs], f"weights-{step}")
        copies[0] = self.params_f  # slot 0 computes with the update's own output
        parts = []
        for slot, a, b in runs:
            mine = blocks[a:b]
            if self.persist:
                data, spec = [self._chunk(chunk, "train") for chunk, _ in mine], None
            else:  # streaming: the group task reads its chunks itself (no extra tasks)
                data, spec = [chunk for chunk, _ in mine], r.data
            parts.append(c.submit(
                group_sums, copies[slot], self.template[slot], data,
                [r.block_args(epoch, chunk, j) for chunk, j in mine], a, n, spec,
                key=f"group-{step}-{a}-{k}", **self._where(slot),
            ))  # fmt: skip
        if self._tree(len(parts)):
            parts = [self._merge_tree(parts, runs, n, step)]
        out_f = c.submit(
            finish_step, self.params_f, self.state_f, parts, n, step, r.optimizer,
            self.template[0], key=f"update-{step}-{k}", **self._where(0),
        )  # fmt: skip
        self.params_f, self.state_f, summary = (
            c.submit(operator.getitem, out_f, i, key=f"{name}-{step}-{k}", **self._where(0))
            for i, name in enumerate(("params", "state", "summary"))
        )
        self.lineage += [self.params_f, self.state_f]
        self.pending.append((step, epoch, summary))

    def _tree(self, runs: int) -> bool:
        """Merge this step's ``runs`` node lists in a tree of tasks (``gather``)?"""
        if self.gather == "auto":
            return merge_tree_pays(runs, self.weight_bytes)
        return self.gather == "tree" and runs > 1

    def _merge_tree(self, parts, runs, n, step):
        """One future of the root's node list: ``parts`` merged pairwise, in run order.

        ``tree_reduce`` over the runs: at level ``d`` the item at position ``i`` covers the
        runs from ``i·2^d`` on, and its merge with its right neighbour runs on that first
        run's worker, so each worker receives one node list a level at most (``ceil(log2
        R)`` for R runs) and the root lands on the first run's worker, normally slot 0's,
        where ``finish_step`` runs.  Merges are recipes (a lost one is recomputed) pinned
        loosely like every other task.
        """

        def pair(left, right, depth, i):
            slot = runs[i << depth][0]
            return self.client.submit(
                merge, left, right, n, key=f"merge-{step}-{depth}-{i}-{self.key}",
                **self._where(slot),
            )  # fmt: skip

        return tree_reduce(parts, pair)

    def results(self, keep: int = 0):
        """Summaries of finished steps, oldest first, leaving the newest ``keep`` pending."""
        while len(self.pending) > keep:
            step, epoch, fut = self.pending.pop(0)
            yield step, epoch, fut.result()

    def weights(self):
        """Gather ``(params, state)`` to the client and place them back (cuts lineage)."""
        p, s = self.client.gather([self.params_f, self.state_f])
        self.start(p, s)
        return p, s

    def evaluate(self) -> dict:
        """Validation sums with the current weights, reduced on the cluster."""
        r, tag = self.run, uuid.uuid4().hex[:8]
        chunks = [c for c, n in enumerate(r.counts["validation"]) if n > 0]
        slots = [self._slot(c) for c in chunks]
        copies = self._spread(self.params_f, slots, f"evalweights-{tag}")
        copies[0] = self.params_f
        evals = [
            self.client.submit(
                tasks.eval_sums,
                copies[self._slot(c)],
                self.template[self._slot(c)],
                self._chunk(c, "validation"),
                *r.eval_args(),
                key=f"eval-{c}-{tag}",
                **self._where(self._slot(c)),
            )  # fmt: skip
            for c in chunks
        ]
        return self._reduce(evals, tasks.add_eval, f"evalsum-{tag}").result()

    def close(self) -> None:
        """Release the persisted chunks and everything this run still holds on the cluster."""
        for futs in self.chunks.values():
            for f in futs.values():
                f.release()
        self.pending, self.lineage, self.template = [], [], {}
        self.params_f = self.state_f = None

    def info(self) -> dict:
        w = max(len(self.workers), 1)
        gather = self.gather
        if gather == "auto":
            gather = "tree" if merge_tree_pays(w, self.weight_bytes) else "flat"
        return {"executor": self.name, "persisted": self.persist, "gather": gather}


def merge_tree_pays(runs: int, weight_bytes: int) -> bool:
    """``gather="auto"``: is the merge tree cheaper than the flat gather for this step?

    With ``R`` runs of partial sums of ``S = weight_bytes`` each, ``L = ceil(log2 R)``, the
    flat gather makes the update's worker take in ``(R − 1)·S`` bytes one after another; the
    tree makes every worker take in at most ``L·S`` in ``L`` rounds, at the price of ``R − 1``
    more tasks and ``L`` more dependent hops.  So the tree pays when

        (R − 1 − L) · S / GATHER_BYTES_PER_S  >  (R − 1) · TASK_SECONDS + L · HOP_SECONDS,

    i.e. roughly when the partial sums pass ``GATHER_BYTES_PER_S · TASK_SECONDS`` ≈ 1 MB
    (5 MB at R = 4, 2.5 MB at 8, 1.7 MB at 16, 1.2 MB at 64); never for ``R ≤ 3``, where
    both gathers receive the same number of partial sums.
    """
    if runs <= 1:
        return False
    levels = (runs - 1).bit_length()
    saved = (runs - 1 - levels) * weight_bytes / GATHER_BYTES_PER_S
    return saved > (runs - 1) * TASK_SECONDS + levels * HOP_SECONDS


def should_persist(client, run) -> bool:
    """``persist="auto"``: keep chunks in worker memory when they fit in half of it."""
    itemsize = 8 if run.data.dtype == "float64" else 4
    need = run.n_rows_stored * run.n_features * itemsize
    workers = client.scheduler_info().get("workers", {}).values()
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers)
    return memory == 0 or need < 0.5 * memory


def worker_addresses(client) -> list[str]:
    """Addresses of the cluster's workers now, sorted (a fixed order for placement)."""
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers, not just the first few
    except TypeError:  # distributed < 2025
        info = client.scheduler_info()
    return sorted(info.get("workers", {}))


def _broadcast(client, obj, where=None):
    """Place ``obj`` on the cluster as ONE future that Dask can always rebuild.

    The object travels inside the task that returns it, so the scheduler holds a recipe for
    it: if every worker holding a copy dies, it is recomputed from the recipe.  Scattered data
    has no recipe, and Dask's memory manager trims broadcast replicas down to one copy, so
    losing that one worker made every later step unrecoverable ("already forgotten").  A
    fresh unique key per call: reusing keys would silently keep old weights.  ``where``:
    placement keywords of ``client.submit`` (``workers``, ``allow_other_workers``).
    """
    import warnings

    with warnings.catch_warnings():
        # Weights of large models exceed Dask's "large object in graph" hint (1 MB); they
        # travel once per sync either way.
        warnings.filterwarnings("ignore", message=".*Large object.*")
        warnings.filterwarnings("ignore", message=".*large graph.*")
        return client.submit(
            _same, obj, key=f"weights-{uuid.uuid4().hex}", pure=False, **(where or {})
        )


def _same(obj):
    return obj
