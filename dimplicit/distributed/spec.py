"""What a training run reads and what it fixes before its first step.

:class:`DataSpec` names the rows and targets of a store; :class:`TrainingRun` is everything a
run fixes before its first step (the plan, the row counts, the step configuration, the
template model): what the executors need to carry out the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dimplicit.distributed.plan import Plan
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig

TASKS = ("classify", "regress", "autoencode")


@dataclass(frozen=True)
class DataSpec:
    """Which rows of a store a training run reads, and how it turns them into (U, Y).

    Parameters
    ----------
    store : str or Store
        Path of the Zarr store, or an opened :class:`~dimplicit.data.store.Store` (e.g. one
        built in memory from arrays, for the in-process executor).
    task : {"classify", "regress", "autoencode"}
        ``classify``: Y = label codes (cross-entropy); ``regress``: Y = numeric label value;
        ``autoencode``: Y = U (reconstruction).
    normal_only : bool
        Keep only rows whose label is a normal class (anomaly detection trains on these).
    standardize : bool
        Apply the store's stored mean/std (computed at ingest) to the features.
    device, dtype : str
        Backend of the loaded arrays.
    """

    store: Any
    task: str = "classify"
    normal_only: bool = False
    standardize: bool = True
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


@dataclass(frozen=True)
class TrainingRun:
    """What a run fixes before its first step; what executors need to run the plan."""

    data: DataSpec
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
