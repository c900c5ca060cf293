"""The data order of a training run: which row-blocks every step consumes.

Everything here is a pure function of the per-chunk row counts, the block size and the seed,
so the plan is identical on every run, whatever the number of workers, and a resumed run can
recompute it instead of storing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Plan:
    """Blocks and steps of a run.

    Parameters
    ----------
    chunk_counts : tuple of int
        Eligible rows in every Zarr chunk (0 for chunks with none).
    block_rows : int
        Rows per block (per task); a chunk's rows form ``ceil(count / block_rows)`` blocks.
    blocks_per_step : int
        Blocks in one step's global batch.
    seed : int
    """

    chunk_counts: tuple
    block_rows: int
    blocks_per_step: int
    seed: int

    def __post_init__(self):
        if self.block_rows < 1 or self.blocks_per_step < 1:
            raise ValueError("block_rows and blocks_per_step must be ≥ 1")
        if sum(self.chunk_counts) == 0:
            raise ValueError("no rows to train on (check the split and --normal-only filters)")

    @cached_property
    def blocks(self) -> list[tuple[int, int]]:
        """Every block as ``(chunk, index within chunk)``, in store order."""
        return [
            (c, j)
            for c, n in enumerate(self.chunk_counts)
            for j in range(math.ceil(n / self.block_rows))
        ]

    @property
    def n_rows(self) -> int:
        return int(sum(self.chunk_counts))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.blocks) / self.blocks_per_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The seeded permutation of block indices visited in ``epoch``."""
        # Every step of an epoch asks for it: keep the last epoch's (a frozen instance
        # still owns a __dict__ for such caches).
        cached = self.__dict__.get("_order")
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
            self.__dict__["_order"] = cached = (epoch, order)
        return cached[1]

    def step_blocks(self, step: int) -> tuple[int, list[tuple[int, int]]]:
        """``(epoch, blocks)`` of global step ``step`` (0-based).

        The epoch's permutation decides *which* blocks a step takes; the step lists them in
        store order.  The reduction tree follows this list, so in store order every worker's
        blocks (it holds a contiguous range of chunks) form one contiguous run of it, whose
        sub-trees that worker reduces by itself (:mod:`dimplicit.distributed.reduce`).
        """
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        sel = np.sort(order[k * self.blocks_per_step : (k + 1) * self.blocks_per_step])
        blocks = self.blocks
        return epoch, [blocks[i] for i in sel]

    def chunk_slots(self, n_slots: int) -> list[int]:
        """Which of ``n_slots`` workers holds each chunk: contiguous ranges, balanced by blocks.

        Chunk ``c`` goes to the slot of its middle block, ``⌊(blocks before c + half of its
        own) · n_slots / blocks⌋``, so slots own contiguous, nearly equal shares of the blocks
        (a chunk apart at most) and a step's store-ordered block list splits into at most
        ``n_slots`` runs.  Only placement: the weights never depend on it.
        """
        per_chunk = [math.ceil(n / self.block_rows) for n in self.chunk_counts]
        total, before, slots = max(sum(per_chunk), 1), 0, []
        for nb in per_chunk:
            slots.append(min((2 * before + nb) * n_slots // (2 * total), n_slots - 1))
            before += nb
        return slots
