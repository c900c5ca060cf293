"""A private Dask cluster on this machine: ``LocalCluster`` or ``LocalCUDACluster``.

Every listening socket binds to 127.0.0.1: a cluster started here is reachable from this
machine only (anyone who can reach a scheduler can run code on its workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from dimplicit.backend import DeviceUnavailableError
from dimplicit.distributed.blas import blas_environment
from dimplicit.distributed.tls import TLSConfig

__all__ = [
    "LOCALHOST",
    "start_local_cluster",
    "usable_cores",
    "warn_if_oversubscribed",
]

log = logging.getLogger(__name__)

#: Every listening socket of a cluster started here binds to this address (never 0.0.0.0).
LOCALHOST = "127.0.0.1"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a batch scheduler may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def warn_if_oversubscribed(workers: int, threads_per_worker: int) -> bool:
    """Log a warning when ``workers * threads_per_worker`` exceeds :func:`usable_cores`.

    Not an error: it works, only slower than fewer threads would (each task thread also runs
    BLAS, so the extra threads time-slice the same cores and cost memory).

    Parameters
    ----------
    workers, threads_per_worker : int
        Of the local cluster about to be started.

    Returns
    -------
    bool
        Whether it warned.
    """
    threads, cores = workers * threads_per_worker, usable_cores()
    if threads <= cores:
        return False
    # Counts rather than parameter names: the same line reads right from Python and the CLI.
    log.warning(
        "%d task threads (%d worker(s) x %d thread(s) each) on %d core(s): the threads "
        "beyond %d only compete for the cores",
        threads, workers, threads_per_worker, cores, cores,
    )  # fmt: skip
    return True


def _count_visible_gpus() -> int:
    """Number of GPUs workers could use, without creating a CUDA context in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import pynvml  # shipped with dask-cuda (nvidia-ml-py); NVML makes no CUDA context

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no device: all mean "no GPU visible"
        return 0


def _local_cuda_cluster_class(gpus: int | str) -> type:
    """``dask_cuda.LocalCUDACluster``, after checking that ``gpus`` GPUs are visible."""
    # DeviceUnavailableError (a RuntimeError) is one of the CLI's one-line user errors.
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise DeviceUnavailableError(
            f"gpus={gpus!r} needs dask-cuda: pip install dask-cuda "
            "(or pip install 'dimplicit[cuda-cluster]')"
        ) from None
    available = _count_visible_gpus()
    if available == 0:
        raise DeviceUnavailableError(
            f"gpus={gpus!r}: no GPU visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        )
    if gpus != "all" and int(gpus) > available:
        raise DeviceUnavailableError(f"gpus={gpus!r} but only {available} GPU(s) visible")
    return LocalCUDACluster


#: Dask's background work that a private cluster turns down: the 20 ms / 500 ms event-loop
#: and system monitors and, unless a dashboard is served, the statistical profiler (every
#: 10 ms in each worker, for the dashboard's profile page).  Together they took ~0.14 of a
#: core at rest with 2 workers on the 2-core CI machine: 7 % of it, taken from the compute
#: exactly when every core has a worker (docs/scaling.md).
QUIET_BACKGROUND = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.profile.enabled": False,
}


def _quiet_background(dashboard: bool) -> dict:
    """:data:`QUIET_BACKGROUND` for a new local cluster.

    Leaves out every key the user set to other than Dask's default, and the profiler when a
    dashboard will be served (``dashboard`` and bokeh installed).
    """
    import importlib.util

    import dask.config
    import distributed  # noqa: F401  (registers its defaults with dask.config)

    keep = {}
    if dashboard and importlib.util.find_spec("bokeh") is not None:
        keep = {"distributed.worker.profile.enabled"}
    defaults = dask.config.merge(*dask.config.defaults)
    return {
        key: value
        for key, value in QUIET_BACKGROUND.items()
        if key not in keep and dask.config.get(key) == dask.config.get(key, config=defaults)
    }


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start worker processes with SIGINT ignored (they inherit it; Python keeps it).

    Ctrl-C in a terminal reaches every process of the foreground group; the workers must not
    die of it (four tracebacks) while the client finishes the step and writes its
    checkpoint.  The client process stops them when it closes the cluster.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_local_cluster(
    stack: contextlib.ExitStack,
    workers: int | None,
    threads_per_worker: int,
    processes: bool,
    memory_limit: Any,
    tls: TLSConfig | None,
    gpus: int | str | None,
    dashboard: bool,
    verbose: bool,
    blas_threads: int,
) -> Any:
    """Start a LocalCluster / LocalCUDACluster bound to 127.0.0.1; closed by ``stack``.

    Parameters
    ----------
    stack : contextlib.ExitStack
        Receives the cluster's ``close`` (and, for threads, the restored BLAS limit).
    workers, threads_per_worker, processes, memory_limit, tls, gpus, dashboard, verbose
        As for :func:`~dimplicit.distributed.connect.connect`, already checked.
    blas_threads : int
        Threads per BLAS pool of each worker.

    Returns
    -------
    distributed.LocalCluster or dask_cuda.LocalCUDACluster
    """
    kwargs: dict[str, Any] = dict(
        threads_per_worker=threads_per_worker,
        scheduler_port=0,  # a free port: several clusters may run side by side
        # The scheduler's HTTP server (health, metrics, and the dashboard if bokeh is
        # installed) runs even without a dashboard; pin it to 127.0.0.1 and a free port.
        dashboard_address=f"{LOCALHOST}:0",
        scheduler_kwargs={"dashboard": bool(dashboard)},
        memory_limit=memory_limit,
        # Worker errors reach the user as one line through the client; Dask's own logging
        # of them ("Compute Failed" with a traceback, per worker) only with verbose.
        silence_logs=logging.WARNING if verbose else logging.CRITICAL,
    )
    if processes:
        # Scheduler, nannies and workers listen here only. (Threads talk in-process over
        # "inproc://", which has no host.)
        kwargs["host"] = LOCALHOST
    if tls is not None:
        kwargs.update(security=tls.cluster_security(), protocol="tls://")
    if gpus is not None:
        cluster_cls = _local_cuda_cluster_class(gpus)
        kwargs["n_workers"] = None if gpus == "all" else int(gpus)
    else:
        from distributed import LocalCluster

        cluster_cls = LocalCluster
        kwargs.update(n_workers=workers or 1, processes=processes)

    import dask.config

    # Read when the scheduler and the nannies start (nannies pass it on to their workers).
    with dask.config.set(_quiet_background(dashboard)):
        if processes:
            with blas_environment(blas_threads), _workers_ignore_sigint():
                cluster = cluster_cls(**kwargs)
        else:
            # Worker threads share this process's BLAS: limit it here, restore it on exit.
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=blas_threads))
            cluster = cluster_cls(**kwargs)
    stack.callback(cluster.close)
    return cluster
