"""``dimplicit bench distributed``: throughput with 1 and 2 workers, speedup, overhead, bytes.

The data is a random Zarr store of ``blocks_per_step × block_rows`` rows, one block per Zarr
chunk; every worker is a separate process with one task thread and one BLAS thread.  Every
worker count is timed ``repeats`` times, the counts interleaved (their clusters stay up side
by side), and the medians are reported: the machine may be shared and noisy.

``overhead_fraction = 1 − Σ(compute time inside block tasks) / (workers × wall time)``: the
share of the workers' time not spent in the per-partition function (scheduling, transfers,
reduction, update, idle), measured over the timed steps.  Also per timed step: the tasks the
workers ran, the CPU time of this process (client and scheduler: the coordination cost), and
the bytes every worker sent to and received from other workers (Dask's transfer logs).
"""

from __future__ import annotations

import contextlib
import statistics
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


def worker_traffic(client, since: float, until: float) -> dict:
    """Bytes and transfers between workers in the wall-clock window ``[since, until]``.

    Parameters
    ----------
    client : distributed.Client
    since, until : float
        ``time.time()`` bounds; a transfer counts when it started inside them.

    Returns
    -------
    dict
        ``{worker address: {"sent": bytes, "received": bytes, "transfers_out": count}}``,
        from every worker's ``transfer_outgoing_log`` / ``transfer_incoming_log``; transfers
        to or from the client (summaries, gathers) are left out.
    """

    def logs(dask_worker):
        def keep(log):
            return [(e["start"], e["who"], e["total"]) for e in log]

        return keep(dask_worker.transfer_outgoing_log), keep(dask_worker.transfer_incoming_log)

    raw = client.run(logs)
    out = {}
    for w, (sent, received) in raw.items():
        mine = [b for t, who, b in sent if since <= t <= until and who in raw]
        got = [b for t, who, b in received if since <= t <= until and who in raw]
        out[w] = {"sent": sum(mine), "received": sum(got), "transfers_out": len(mine)}
    return out


def timed_fit(client, model, spec, *, config, optimizer, steps, rows, block_rows, seed,
              gather="auto") -> dict:  # fmt: skip
    """Train one warm-up step and ``steps`` timed steps on ``client``; the per-step figures.

    The data is one step per epoch (``batch_size = rows``).  The timed window runs from the
    arrival of step 0's summary to the arrival of the last one.  ``gather``: the trainer's
    option (how partial sums reach the update).
    """
    from distributed import get_task_stream

    trainer = Trainer(model, spec, config=config, optimizer=optimizer, epochs=steps + 1,
                      batch_size=rows, block_rows=block_rows, seed=seed, persist="always",
                      sync_every=10**9, gather=gather)  # fmt: skip
    marks = []  # (perf_counter, time, process CPU) at every summary's arrival
    trainer.callback = lambda rec: marks.append(
        (time.perf_counter(), time.time(), time.process_time())
    )
    with get_task_stream(client) as stream:
        trainer.fit(client)
    (p0, w0, c0), (p1, w1, c1) = marks[0], marks[-1]
    hist = trainer.history_[1:]
    n, wall = len(hist), p1 - p0
    workers = len(client.scheduler_info().get("workers", {}))
    task = sum(h["task_seconds"] for h in hist)
    k_f = float(np.mean([h["forward_iters"] for h in hist]))
    k_b = float(np.mean([h["backward_iters"] for h in hist]))
    flops = step_flops(rows, model.n_hidden, model.n_inputs, model.n_outputs, k_f, k_b) * n
    ran = [
        t for t in stream.data
        if any(w0 < s["start"] <= w1 for s in t["startstops"] if s["action"] == "compute")
    ]  # fmt: skip
    traffic = worker_traffic(client, w0, w1)
    sent = [v["sent"] / n for v in traffic.values()]
    received = [v["received"] / n for v in traffic.values()]
    weight_bytes = sum(np.asarray(v).nbytes for v in model.params.values())
    return {
        "workers": workers,
        "samples_per_s": rows * n / wall,
        "seconds_per_step": wall / n,
        "task_seconds_per_step": task / n,
        "update_seconds_per_step": sum(h.get("update_seconds", 0.0) for h in hist) / n,
        "overhead_fraction": max(0.0, 1 - task / (workers * wall)),
        "gflops": flops / wall / 1e9,
        "forward_iters": k_f,
        "backward_iters": k_b,
        "tasks_per_step": len(ran) / n,
        "coordinator_cpu_seconds_per_step": (c1 - c0) / n,
        "weight_bytes": weight_bytes,
        "bytes_sent_per_step_max": max(sent, default=0.0),
        "bytes_received_per_step_max": max(received, default=0.0),
        "bytes_sent_per_step_mean": float(np.mean(sent)) if sent else 0.0,
        "weights_sha256": trainer.summary_["weights_sha256"],
        "gather": trainer.summary_.get("gather"),
    }


def median_run(runs: list[dict]) -> dict:
    """The medians of the repeats' numeric figures (the rest from the first repeat)."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, float):
            out[k] = statistics.median(r[k] for r in runs)
    return out


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
    repeats=3,
) -> dict:
    """Run the same training on each worker count (and in-process); return the JSON record.

    Every worker count runs ``repeats`` times, interleaved; each figure of ``runs`` is the
    median over the repeats, ``speedup`` the median of the repeats' speedups.
    """
    rows = block_rows * blocks_per_step
    config = StepConfig("cross_entropy", backward=BackwardOptions(method))
    opt = OptimizerConfig(lr=1e-3)
    out = {"benchmark": "distributed", "hidden": hidden, "block_rows": block_rows,
           "blocks_per_step": blocks_per_step, "inputs": inputs, "outputs": outputs,
           "steps": steps, "method": method, "dtype": dtype, "repeats": repeats,
           "load_average": list(_load_average()), "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        path = _random_store(Path(tmp) / "bench.zarr", rows, inputs, outputs, block_rows, seed)
        model = dense_model(inputs, hidden, outputs, seed=seed, dtype=dtype)
        spec = DataSpec(str(path), "classify", dtype=dtype)
        clients = {
            w: stack.enter_context(
                connect(workers=w, threads_per_worker=1, quiet=True, dashboard=False)
            )
            for w in workers
        }
        timed = {w: [] for w in workers}
        for _ in range(repeats):
            for w, client in clients.items():
                timed[w].append(timed_fit(client, model, spec, config=config, optimizer=opt,
                                          steps=steps, rows=rows, block_rows=block_rows,
                                          seed=seed))  # fmt: skip
        for w in workers:
            out["runs"][str(w)] = median_run(timed[w]) | {
                "samples_per_s_repeats": [r["samples_per_s"] for r in timed[w]],
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
            pairs = zip(timed[1], timed[2], strict=True)
            speedups = [b["samples_per_s"] / a["samples_per_s"] for a, b in pairs]
            out["speedup"] = statistics.median(speedups)
            out["speedup_repeats"] = speedups
            out["overhead_fraction"] = runs["2"]["overhead_fraction"]
            out["same_weights_1_vs_2"] = runs["1"]["weights_sha256"] == runs["2"]["weights_sha256"]
        hashes = {r["weights_sha256"] for rs in timed.values() for r in rs}
        out["same_weights_all_worker_counts"] = len(hashes) == 1
        out["same_weights_as_in_process"] = hashes == {out["in_process_weights_sha256"]}
        if "1" in runs:
            out["one_worker_vs_in_process"] = (
                runs["1"]["samples_per_s"] / out["in_process_samples_per_s"]
            )
    out["load_average_after"] = list(_load_average())
    out["peak_rss_mb_client"] = peak_rss_mb()
    return out


def _load_average() -> tuple:
    import os

    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # not on every platform
        return ()
