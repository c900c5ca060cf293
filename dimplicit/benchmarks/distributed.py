"""``dimplicit bench distributed``: throughput with 1 and 2 workers, speedup, overhead.

The data is a random Zarr store of ``blocks_per_step × block_rows`` rows, one block per Zarr
chunk; every worker is a separate process with one task thread and one BLAS thread.

``overhead_fraction = 1 − Σ(compute time inside block tasks) / (workers × wall time)``: the
share of the workers' time not spent in the per-partition function (scheduling, transfers,
reduction, update, idle), measured over the timed steps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from dimplicit.benchmarks.measure import peak_rss_mb, step_flops
from dimplicit.data.store import StoreWriter
from dimplicit.distributed.connect import connect
from dimplicit.distributed.spec import DataSpec
from dimplicit.distributed.trainer import Trainer
from dimplicit.gradients import BackwardOptions
from dimplicit.model import dense_model
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig


def _random_store(path, rows, p, classes, chunk, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(p)]
    attrs = {
        "format": "generic", "label_classes": [str(c) for c in range(classes)],
        "normal_classes": ["0"], "columns": names, "categories": {},
        "stats": {"mean": [0.0] * p, "std": [1.0] * p, "count": rows, "rows": "all"},
    }  # fmt: skip
    with StoreWriter(path, names, chunk_rows=chunk) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            w.append(
                rng.standard_normal((n, p)).astype(np.float32),
                rng.integers(0, classes, n).astype(np.int32),
                np.zeros(n, dtype=np.int8),
            )
        w.close(attrs)
    return path


def bench_distributed(
    hidden=512,
    block_rows=8192,
    blocks_per_step=4,
    inputs=64,
    outputs=10,
    steps=6,
    method="implicit",
    dtype="float32",
    workers=(1, 2),
    seed=0,
) -> dict:
    """Run the same training on 1 and 2 workers (and in-process); return the JSON record."""
    rows = block_rows * blocks_per_step
    config = StepConfig("cross_entropy", backward=BackwardOptions(method))
    opt = OptimizerConfig(lr=1e-3)
    out = {"benchmark": "distributed", "hidden": hidden, "block_rows": block_rows,
           "blocks_per_step": blocks_per_step, "inputs": inputs, "outputs": outputs,
           "steps": steps, "method": method, "dtype": dtype, "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = _random_store(Path(tmp) / "bench.zarr", rows, inputs, outputs, block_rows, seed)
        model = dense_model(inputs, hidden, outputs, seed=seed, dtype=dtype)
        spec = DataSpec(str(path), "classify", dtype=dtype)
        for w in workers:
            # One warm-up step (loads and persists the chunks), then `steps` timed steps.
            with connect(workers=w, threads_per_worker=1, quiet=True, dashboard=False) as client:
                trainer = Trainer(model, spec, config=config, optimizer=opt, epochs=steps + 1,
                                  batch_size=rows, block_rows=block_rows, seed=seed,
                                  persist="always", sync_every=10**9)  # fmt: skip
                ends = []  # client-side arrival time of every step's summary
                trainer.callback = lambda rec, ends=ends: ends.append(time.perf_counter())
                trainer.fit(client)
            hist = trainer.history_[1:]
            wall = ends[-1] - ends[0]  # from the end of step 0 to the end of the last
            task = sum(h["task_seconds"] for h in hist)
            k_f = np.mean([h["forward_iters"] for h in hist])
            k_b = np.mean([h["backward_iters"] for h in hist])
            flops = step_flops(rows, hidden, inputs, outputs, k_f, k_b) * len(hist)
            out["runs"][str(w)] = {
                "workers": w,
                "samples_per_s": rows * len(hist) / wall,
                "seconds_per_step": wall / len(hist),
                "task_seconds_per_step": task / len(hist),
                "overhead_fraction": max(0.0, 1 - task / (w * wall)),
                "gflops": flops / wall / 1e9,
                "forward_iters": float(k_f),
                "backward_iters": float(k_b),
                "weights_sha256": trainer.summary_["weights_sha256"],
            }
        # The in-process reference: the same plan on the in-process executor, one BLAS
        # thread, timed the same way.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            local = Trainer(model, spec, config=config, optimizer=opt, epochs=steps + 1,
                            batch_size=rows, block_rows=block_rows, seed=seed,
                            executor="local")  # fmt: skip
            ends = []
            local.callback = lambda rec, ends=ends: ends.append(time.perf_counter())
            local.fit()
        out["in_process_samples_per_s"] = rows * steps / (ends[-1] - ends[0])
        out["in_process_weights_sha256"] = local.summary_["weights_sha256"]
    runs = out["runs"]
    if "1" in runs and "2" in runs:
        out["speedup"] = runs["2"]["samples_per_s"] / runs["1"]["samples_per_s"]
        out["overhead_fraction"] = runs["2"]["overhead_fraction"]
        out["same_weights_1_vs_2"] = runs["1"]["weights_sha256"] == runs["2"]["weights_sha256"]
        out["same_weights_as_in_process"] = (
            runs["1"]["weights_sha256"] == out["in_process_weights_sha256"]
        )
    if "1" in runs:
        out["one_worker_vs_in_process"] = (
            runs["1"]["samples_per_s"] / out["in_process_samples_per_s"]
        )
    out["peak_rss_mb_client"] = peak_rss_mb()
    return out
