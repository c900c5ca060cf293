"""Start or join the Dask cluster that dimplicit computes on.

Every command gets its :class:`distributed.Client` from :func:`connect`, in one of three ways:

* **embedded** (the default): an in-process ``LocalCluster`` whose scheduler, workers and nannies
  all listen on 127.0.0.1 only (:mod:`.local`); it is shut down when the ``with`` block ends;
* **join** a running scheduler by address (``tcp://host:8786``, ``tls://host:8786``) or by the
  JSON file that ``dask scheduler --scheduler-file`` writes (batch jobs, see ``cluster/``;
  :mod:`.join`); a joined scheduler is never shut down from here;
* **GPUs**: ``gpus=N`` starts a ``dask_cuda.LocalCUDACluster`` with one worker per GPU.

Errors name :func:`connect`'s parameters (:class:`~.errors.OptionError`); the command line
renames them to its flags (:mod:`dimplicit.commands._cluster`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed import Client

from dimplicit.distributed.blas import set_worker_blas_threads
from dimplicit.distributed.errors import OptionError
from dimplicit.distributed.join import join
from dimplicit.distributed.local import start_local_cluster, warn_if_oversubscribed
from dimplicit.distributed.summary import describe, format_description
from dimplicit.distributed.tls import TLSConfig

__all__ = ["connect"]


def on_client(client=None):
    """Run the Dask computations of a ``with`` block on ``client``.

    The library's one convention for clusters: a function that computes with Dask takes
    ``client=None``; ``None`` means the current client (the one a ``Client(...)`` or
    :func:`connect` made current, :func:`distributed.get_client`), and without one Dask's
    local scheduler.
    """
    import dask

    if client is None:
        return contextlib.nullcontext()
    return dask.config.set(scheduler=client)


def _exclusive(a: str, b: str, why: str = "") -> OptionError:
    template = "options {0} and {1} are mutually exclusive" + (": {why}" if why else "")
    return OptionError(template, a, b, why=why)


def _check_values(
    workers: int | None,
    threads_per_worker: int,
    gpus: int | str | None,
    timeout: float,
    tls: TLSConfig | None,
    blas_threads: int | None,
) -> None:
    """Reject values that are invalid on their own."""
    for what, value in (
        ("workers", workers),
        ("threads_per_worker", threads_per_worker),
        ("blas_threads", blas_threads),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise OptionError("{0} must be a positive integer, got {value!r}", what, value=value)
    if gpus is not None and gpus != "all":
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise OptionError(
                "{0} must be a positive integer or 'all', got {value!r}", "gpus", value=gpus
            )
    if not timeout or timeout <= 0:
        raise OptionError("{0} must be positive, got {value!r}", "timeout", value=timeout)
    if tls is not None and not isinstance(tls, TLSConfig):
        raise TypeError(f"tls must be a TLSConfig, got {type(tls).__name__}")


def _check_combination(
    workers: int | None,
    threads_per_worker: int,
    scheduler: str | None,
    scheduler_file: str | Path | None,
    processes: bool,
    memory_limit: Any,
    tls: TLSConfig | None,
    gpus: int | str | None,
) -> None:
    """Reject options that contradict each other."""
    if scheduler is not None and scheduler_file is not None:
        raise _exclusive("scheduler", "scheduler_file", "give the address or the file, not both")
    if scheduler is not None or scheduler_file is not None:
        external = "scheduler" if scheduler is not None else "scheduler_file"
        why = "they configure a local cluster, but this joins a running scheduler"
        if workers is not None:
            raise _exclusive(external, "workers", why)
        if threads_per_worker != 1:
            raise _exclusive(external, "threads_per_worker", why + " (use dask worker --nthreads)")
        if gpus is not None:
            raise _exclusive(external, "gpus", why + " (start GPU workers with dask cuda worker)")
        if not processes:
            raise _exclusive(external, "processes=False", why)
        if memory_limit != "auto":
            raise _exclusive(external, "memory_limit", why + " (use dask worker --memory-limit)")
    if gpus is not None:
        if workers is not None:
            raise _exclusive("gpus", "workers", "a GPU cluster runs one worker per GPU")
        if not processes:
            raise _exclusive("gpus", "processes=False", "each GPU needs its own worker process")
    if tls is not None and not processes and scheduler is None and scheduler_file is None:
        raise _exclusive("tls", "processes=False", "in-process workers do not use the network")


@contextlib.contextmanager
def connect(
    workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    scheduler_file: str | Path | None = None,
    processes: bool = True,
    memory_limit: str | int | float | None = "auto",
    tls: TLSConfig | None = None,
    gpus: int | str | None = None,
    timeout: float = 20,
    dashboard: bool = True,
    quiet: bool = False,
    verbose: bool = False,
    blas_threads: int | None = None,
) -> Iterator[Client]:
    """Start or join a Dask cluster for the duration of a ``with`` block.

    Parameters
    ----------
    workers : int, optional
        Worker count of the local cluster (default 1). Not with ``scheduler``/``gpus``.
    threads_per_worker : int, default 1
        Task threads per local worker.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port`` or ``tls://host:port``) to join.
    scheduler_file : str or Path, optional
        JSON file written by ``dask scheduler --scheduler-file``; joins that scheduler.
    processes : bool, default True
        Local workers as separate processes (False: threads of this process; no TLS/GPUs).
    memory_limit : str, int, float or None, default "auto"
        Per-worker memory limit of the local cluster (``"4GB"``, a fraction, ``0`` for none).
    tls : TLSConfig, optional
        Mutual-TLS credentials: the client's, and the cluster's when one is started here.
    gpus : int or "all", optional
        Start a ``dask_cuda.LocalCUDACluster`` with this many GPUs, one worker each.
    timeout : float, default 20
        Seconds to wait for the scheduler to answer. A service at ``scheduler`` that is not a
        Dask scheduler is recognised within this time too.
    dashboard : bool, default True
        Serve the dashboard of a local cluster on 127.0.0.1 (random port; needs ``bokeh``).
    quiet : bool, default False
        If False, print a one-line summary of the cluster (with the dashboard link) on stderr;
        if True print nothing, and a local cluster's workers log errors only. A local cluster
        with more task threads (``workers * threads_per_worker``) than cores is logged as a
        warning either way.
    verbose : bool, default False
        Let Dask's own logs through (worker warnings, "Compute Failed" tracebacks). Off,
        a failing task reaches the user only as the one-line error its exception becomes.
    blas_threads : int, optional
        BLAS threads per worker process. Default: the worker's task threads
        (``threads_per_worker`` locally, each worker's ``nthreads`` when joining). Use 1 when a
        worker's task threads all run BLAS-heavy tasks at the same time. When joining, the
        limit is registered on the cluster as a worker plugin and outlives the block.

    Yields
    ------
    distributed.Client
        Also the default client of this process while the block runs.

    Raises
    ------
    OptionError
        Mutually exclusive or invalid options (a ValueError; the message names them).
    FileNotFoundError
        ``scheduler_file`` or a TLS file does not exist.
    SchedulerConnectionError
        The scheduler did not answer within ``timeout`` seconds, refused the connection, or
        is not a Dask scheduler (a ConnectionError with a one-line message).
    RuntimeError
        ``gpus`` given but dask-cuda is not installed or no GPU is visible.

    Examples
    --------
    >>> with connect(workers=2) as client:                      # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    >>> with connect(scheduler_file="runs/dask/scheduler.json") as client:  # doctest: +SKIP
    ...     pass
    """
    _check_values(workers, threads_per_worker, gpus, timeout, tls, blas_threads)
    _check_combination(
        workers, threads_per_worker, scheduler, scheduler_file, processes, memory_limit, tls, gpus
    )
    joining = scheduler is not None or scheduler_file is not None
    if not joining and gpus is None:
        warn_if_oversubscribed(workers or 1, threads_per_worker)

    with contextlib.ExitStack() as stack:
        if joining:
            client = join(scheduler, scheduler_file, tls, timeout)
            stack.callback(client.close)
            set_worker_blas_threads(client, blas_threads)
        else:
            cluster = start_local_cluster(
                stack, workers, threads_per_worker, processes, memory_limit, tls, gpus,
                dashboard, verbose, blas_threads or threads_per_worker,
            )  # fmt: skip
            security = tls.security() if tls is not None else None
            client = Client(cluster, security=security, timeout=timeout, set_as_default=True)
            stack.callback(client.close)  # LIFO: the client closes before its cluster
        if not quiet:
            info = describe(client)
            if not dashboard and not joining:
                info["dashboard"] = None  # the HTTP port is up, but no dashboard behind it
            # A log record, not a print: the CLI shows it on stderr, a library user decides.
            logging.getLogger("dimplicit").info(format_description(info))
        yield client
