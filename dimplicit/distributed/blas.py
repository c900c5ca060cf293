"""How many threads the BLAS library of each Dask worker may use.

Without a limit each worker's OpenBLAS/MKL starts one thread per core, so W workers with T task
threads each would run up to W * T * cores threads on ``cores`` cores and thrash. Two
mechanisms, because the thread count of OpenBLAS is fixed when NumPy is imported:

* clusters started here get the limit as environment variables before their worker processes
  start (:func:`blas_environment`);
* workers that are already running (a joined cluster) get it from a worker plugin that calls
  :func:`threadpoolctl.threadpool_limits` (:func:`set_worker_blas_threads`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from distributed import Client

__all__ = [
    "BLAS_ENV_VARS",
    "BlasThreadsPlugin",
    "blas_environment",
    "set_worker_blas_threads",
]

#: Environment variables that size the thread pools of OpenBLAS, MKL, OpenMP and Accelerate.
#: They only take effect if set before NumPy is imported, i.e. before a worker process starts.
BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@contextlib.contextmanager
def blas_environment(n: int) -> Iterator[None]:
    """Export ``BLAS_ENV_VARS = n`` while a ``LocalCluster`` spawns its worker processes.

    Why both ``os.environ`` and the dask config: the Nanny copies the config key
    ``distributed.nanny.pre-spawn-environ`` into ``os.environ`` right before spawning a worker,
    so the values are in place before the worker imports NumPy (the ``env=`` worker argument is
    applied after that import: too late for OpenBLAS). But it lets *existing* ``os.environ``
    values override the config, and the first cluster of a process leaves ``OMP_NUM_THREADS=1``
    etc. behind, so a second cluster with other settings would silently inherit them. The
    Nanny remembers the values, so workers it restarts later get them too.

    Parameters
    ----------
    n : int
        Threads per BLAS pool in the worker processes spawned inside the block.
    """
    import dask

    value = str(n)
    saved = {k: os.environ.get(k) for k in BLAS_ENV_VARS}
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.update({k: value for k in BLAS_ENV_VARS})
    os.environ.update({k: value for k in BLAS_ENV_VARS})
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class BlasThreadsPlugin(WorkerPlugin):
    """Worker plugin: limit the BLAS/OpenMP thread pools when a worker (re)starts.

    A module-level class, so that it is pickled by reference: workers import this module to
    unpickle it (dimplicit must be installed on them, as it must for the training tasks).

    Parameters
    ----------
    n : int, optional
        Threads per BLAS pool; None means "the worker's own number of task threads".
    """

    # One registration per client session; registering again replaces the old limit.
    name = "dimplicit-blas-threads"

    def __init__(self, n: int | None = None):
        self.n = n

    def setup(self, worker: Any) -> None:
        """Apply the limit in the worker process (distributed calls this on (re)start)."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.n or worker.state.nthreads)


def _blas_thread_count() -> int:
    """Largest thread-pool size among the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return max(
        (lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=0
    )


def set_worker_blas_threads(client: Client, n: int | None = None) -> dict[str, int]:
    """Limit the BLAS thread pools of all workers, now and for workers that join later.

    The limit is applied with :func:`threadpoolctl.threadpool_limits` through a worker plugin,
    which runs on every current worker and on every worker that (re)joins. Use it for external
    clusters; clusters started by :func:`~dimplicit.distributed.connect.connect` get
    environment variables instead.

    Parameters
    ----------
    client : distributed.Client
    n : int, optional
        Threads per BLAS pool. Default: each worker's own number of task threads (its
        ``nthreads``), so a worker never uses more cores than it was given.

    Returns
    -------
    dict
        Worker address -> BLAS pool size it now reports.

    Notes
    -----
    For OpenBLAS built with pthreads (NumPy's wheels) and MKL the limit is process-wide. For
    OpenMP-based BLAS builds the limit set from the worker's event loop thread does not reach
    its task threads; start such workers with ``OMP_NUM_THREADS`` set instead (the scripts in
    ``cluster/`` do). With ``processes=False`` the "workers" are threads of the calling process,
    so this limits the caller's BLAS as well.
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"BLAS threads must be a positive integer, got {n!r}")
    client.register_plugin(BlasThreadsPlugin(n))
    return client.run(_blas_thread_count)
