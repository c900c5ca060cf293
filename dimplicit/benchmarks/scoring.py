"""``dimplicit bench score``: out-of-core scoring throughput and peak memory vs row count.

Generates ``rows`` of synthetic traffic into a temporary store (or uses ``--data``), scores it
with an implicit autoencoder on a local cluster of worker processes, and reports rows/s and the
peak resident memory of the client and of every worker.  Memory that does not grow between
1M and 10M rows is what "out-of-core" means.

Two bounds put the rows/s in context:

- ``io_bound_rows_per_s``: the same store read and decompressed by the same cluster, chunk by
  chunk, with nothing computed but a per-chunk sum (what scoring could reach with a free
  model);
- ``compute_bound_rows_per_s``: the scoring computation (:func:`raw_scores_block`) on the
  same cluster, on chunks already persisted in the workers' memory (up to 8 chunks): what
  scoring could reach with free I/O.

``bound`` names the one scoring is nearer to (the smaller of the two), and ``of_io_bound`` /
``of_compute_bound`` are the fractions reached.  ``read_and_score_rows_per_s`` locates the
rest of the gap: the same scores computed on the cluster from the store, summed instead of
written (scoring minus its output path).

``chunk_cpu_seconds`` is the median CPU time of that computation on the store's first chunk,
on one worker's thread (``chunk_cpu_rows_per_s`` = chunk rows / that time): the cost of the
model alone, which other processes' load barely moves, unlike the wall-clock rates.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from dimplicit.anomaly.score import raw_scores_block, score_store
from dimplicit.benchmarks.measure import peak_rss_mb
from dimplicit.data.store import as_dask, open_store
from dimplicit.data.synth import synth_traffic
from dimplicit.distributed.connect import connect
from dimplicit.model import build_model


def _worker_peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_up(model):
    """What a scoring task imports and runs, once, on a few rows: no rate includes the
    imports or the first call of the compiled kernels (dimplicit.kernels)."""
    from dimplicit.predict import forward_options

    block = np.zeros((8, model.n_inputs), dtype=np.float32)
    raw_scores_block(block, model, forward_options(model))


def _io_rows_per_s(store) -> float:
    """Rows/s of reading and decompressing every feature chunk on the current cluster."""
    features = as_dask(store).features
    t0 = time.perf_counter()
    features.sum(axis=1, dtype=np.float64).sum().compute()
    return store.n_rows / (time.perf_counter() - t0)


def _read_and_score_rows_per_s(model, store) -> float:
    """Rows/s of computing the raw scores on the cluster from the store, without writing."""
    from dimplicit.predict import blocks, forward_options

    raw = blocks(as_dask(store).features, raw_scores_block, model, forward_options(model), None)
    t0 = time.perf_counter()
    raw.sum().compute()
    return store.n_rows / (time.perf_counter() - t0)


def _compute_rows_per_s(model, store, max_chunks=8) -> float:
    """Rows/s of the scoring computation on chunks already in the workers' memory.

    The first ``max_chunks`` chunks are persisted on the current cluster first, so the timed
    pass reads nothing from disk; the same workers, threads and load as the scoring run.
    """
    from dask.distributed import wait

    from dimplicit.predict import blocks, forward_options

    rows = min(store.n_rows, max_chunks * store.chunk_rows)
    features = as_dask(store).features[:rows].persist()
    wait(features)
    raw = blocks(features, raw_scores_block, model, forward_options(model), None)
    t0 = time.perf_counter()
    raw.sum().compute()
    seconds = time.perf_counter() - t0
    del features
    return rows / seconds


def _chunk_cpu_seconds(model, path, repeats=3) -> float:
    """Median single-thread CPU time (s) of :func:`raw_scores_block` on the first chunk of the
    store at ``path`` (run as a task: the client's memory stays that of a client)."""
    from dimplicit.backend import blas_threads
    from dimplicit.predict import forward_options

    store = open_store(path)
    block = np.asarray(store.features[: store.chunk_rows])
    options = forward_options(model)
    times = []
    with blas_threads(1):
        raw_scores_block(block, model, options)  # warm-up (BLAS buffers, caches)
        for _ in range(repeats):
            t0 = time.thread_time()
            raw_scores_block(block, model, options)
            times.append(time.thread_time() - t0)
    return float(np.median(times))


def bench_score(rows=1_000_000, arch="ae-v1:5,32,16", workers=2, data=None, seed=0) -> dict:
    """Score ``rows`` synthetic rows (or the store ``data``); return the JSON record."""
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        t0 = time.perf_counter()
        if data is None:
            data = Path(tmp) / "traffic.zarr"
            synth_traffic(rows, data, seed=seed)
        synth_s = time.perf_counter() - t0
        store = open_store(data)
        model = build_model(arch, store.n_features, store.n_features, seed=seed)
        model.meta["training"] = {
            "task": "autoencode",
            "feature_names": store.feature_names,
            "scaler": {"mean": store.mean.tolist(), "std": store.std.tolist()},
        }
        with connect(workers=workers, threads_per_worker=1, quiet=True, dashboard=False) as c:
            c.run(_warm_up, model)
            chunk_cpu = c.submit(_chunk_cpu_seconds, model, str(data), pure=False).result()
            io_bound = _io_rows_per_s(store)
            read_and_score = _read_and_score_rows_per_s(model, store)
            compute_bound = _compute_rows_per_s(model, store)
            report = score_store(model, data, Path(tmp) / "scores.zarr")
            worker_peaks = c.run(_worker_peak_rss_mb)
    rate = report["rows_per_s"]
    return {
        "benchmark": "score",
        "rows": store.n_rows,
        "chunk_rows": store.chunk_rows,
        "arch": arch,
        "workers": workers,
        "rows_per_s": rate,
        "io_bound_rows_per_s": io_bound,
        "compute_bound_rows_per_s": compute_bound,
        "read_and_score_rows_per_s": read_and_score,
        "chunk_cpu_seconds": chunk_cpu,
        "chunk_cpu_rows_per_s": min(store.n_rows, store.chunk_rows) / chunk_cpu,
        "bound": "io" if io_bound <= compute_bound else "compute",
        "of_io_bound": rate / io_bound,
        "of_compute_bound": rate / compute_bound,
        "score_seconds": report["seconds"],
        "synth_seconds": synth_s,
        "client_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": max(worker_peaks.values()),
        "input_bytes_uncompressed": store.n_rows * store.n_features * 4,
    }
