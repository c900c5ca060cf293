"""What every benchmark measures the same way: useful FLOPs, the GEMM peak, peak memory."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np


def step_flops(b, n, p, q, k_f, k_b) -> float:
    """Flops of one training step (docs/design.md §6) with ``k_f`` forward, ``k_b`` adjoint
    iterations.  The forward solve starts from zeros, whose first iterate takes no GEMM
    (:func:`dimplicit.forward.equilibrium`): ``k_f − 1`` forward GEMMs are counted."""
    return 2.0 * b * n * n * (max(k_f - 1, 0) + k_b) + 4.0 * b * n * (p + q)


def gemm_peak_gflops(b: int, n: int, backend, repeats: int = 5) -> float:
    """Best measured GFLOP/s of a (b × n) @ (n × n) GEMM with this backend's dtype and threads."""
    return 2.0 * b * n * n / gemm_seconds(b, n, backend, repeats) / 1e9


def gemm_seconds(b: int, n: int, backend, repeats: int = 5) -> float:
    """Best measured time (s) of one (b × n) @ (n × n) GEMM with this backend's dtype/threads."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    X = backend.asarray(rng.standard_normal((b, n)))
    W = backend.asarray(rng.standard_normal((n, n)))
    out = xp.empty((b, n), dtype=X.dtype)
    xp.matmul(X, W.T, out=out)  # warm-up (thread pool, cuBLAS handle)
    best = float("inf")
    for _ in range(repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        xp.matmul(X, W.T, out=out)
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20
