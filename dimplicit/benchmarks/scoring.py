"""``dimplicit bench score``: out-of-core scoring throughput and peak memory vs row count.

Generates ``rows`` of synthetic traffic into a temporary store (or uses ``--data``), scores it
with an implicit autoencoder on a local cluster of worker processes, and reports rows/s and the
peak resident memory of the client and of every worker.  Memory that does not grow between
1M and 10M rows is what "out-of-core" means.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from dimplicit.anomaly.score import score_store
from dimplicit.benchmarks.measure import peak_rss_mb
from dimplicit.data.store import open_store
from dimplicit.data.synth import synth_traffic
from dimplicit.distributed.connect import connect
from dimplicit.model import build_model


def _worker_peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_score(rows=1_000_000, arch="ae-v1:5,32,16", workers=2, data=None, seed=0) -> dict:
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
            report = score_store(model, data, Path(tmp) / "scores.zarr")
            worker_peaks = c.run(_worker_peak_rss_mb)
    return {
        "benchmark": "score",
        "rows": store.n_rows,
        "chunk_rows": store.chunk_rows,
        "arch": arch,
        "workers": workers,
        "rows_per_s": report["rows_per_s"],
        "score_seconds": report["seconds"],
        "synth_seconds": synth_s,
        "client_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": max(worker_peaks.values()),
        "input_bytes_uncompressed": store.n_rows * store.n_features * 4,
    }
