"""The "Dask cluster" flags shared by the commands that compute, and how they reach connect.

:func:`~dimplicit.distributed.connect.connect` names its parameters in errors
(``scheduler_file``); here they are renamed to the flags the user typed (``--scheduler-file``).
Its warnings go through :mod:`logging`, which the CLI prints as one line each.

Nothing here imports ``distributed``: building the parser (``dimplicit --help``) does not pay
for it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dimplicit.commands._types import gpus, positive_int, seconds
from dimplicit.distributed.errors import OptionError, SchedulerConnectionError
from dimplicit.distributed.tls import TLSConfig

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from distributed import Client

__all__ = [
    "FLAGS",
    "add_cluster_arguments",
    "add_workers_argument",
    "connect_from_args",
    "flag",
    "tls_from_args",
]

#: connect() parameter -> the flag(s) that set it.
FLAGS = {
    "workers": "--workers",
    "threads_per_worker": "--threads-per-worker",
    "blas_threads": "--blas-threads",
    "processes=False": "--no-processes",
    "scheduler": "--scheduler",
    "scheduler_file": "--scheduler-file",
    "gpus": "--gpus",
    "tls": "--tls-ca-file/--tls-cert/--tls-key",
    "timeout": "--connect-timeout",
}

_TLS_FLAGS = {"tls_ca_file": "--tls-ca-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}


def flag(parameter: str) -> str:
    """The flag of a :func:`~dimplicit.distributed.connect.connect` parameter (or the name)."""
    return FLAGS.get(parameter, parameter)


def add_workers_argument(parser) -> None:
    """``--workers W``, the one definition (also for commands without the other cluster flags)."""
    parser.add_argument(
        "--workers", metavar="W", type=positive_int, default=None,
        help="number of local worker processes (default: 1)",
    )  # fmt: skip


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the shared "Dask cluster" flags to a sub-command's parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    argparse._ArgumentGroup
        The group, so that a command can add its own cluster-related flags to it. Read the
        flags back with :func:`connect_from_args`.
    """
    group = parser.add_argument_group(
        "Dask cluster",
        # Explicit line breaks: some commands use RawDescriptionHelpFormatter, which keeps them
        # (the default formatter re-wraps the text anyway).
        "By default a private cluster of worker processes is started on this machine\n"
        "(listening on 127.0.0.1 only) and stopped at exit. --scheduler/--scheduler-file\n"
        "join a running one instead (see cluster/README.md).",
    )
    add_workers_argument(group)
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show Dask's own logs (worker warnings, tracebacks of failed tasks); without it "
        "a failing task is reported as one line (default off)",
    )
    group.add_argument(
        "--threads-per-worker", metavar="T", type=positive_int, default=1,
        help="task threads per local worker; BLAS in each worker is limited to T threads too "
        "(default: 1). Keep W x T <= the number of cores",
    )  # fmt: skip
    group.add_argument(
        "--blas-threads", metavar="B", type=positive_int, default=None,
        help="BLAS/OpenMP threads per worker process (default: the worker's task threads). "
        "Use 1 when each worker runs many BLAS-heavy tasks at once",
    )  # fmt: skip
    group.add_argument(
        "--no-processes", dest="processes", action="store_false",
        help="run the local workers as threads of this process instead of separate processes "
        "(less start-up time and no data copies, but Python code holding the GIL serialises)",
    )  # fmt: skip
    group.add_argument(
        "--scheduler", metavar="ADDR", default=None,
        help="join the running Dask scheduler at ADDR, e.g. tcp://10.0.0.5:8786 or "
        "tls://node1:8786 (its workers are started separately; never shut down from here) "
        "(default: none, start a local cluster)",
    )  # fmt: skip
    group.add_argument(
        "--scheduler-file", metavar="PATH", default=None,
        help="join the scheduler described by PATH, the JSON file written by "
        "'dask scheduler --scheduler-file PATH' (batch jobs: see cluster/slurm) "
        "(default: none, start a local cluster)",
    )  # fmt: skip
    group.add_argument(
        "--gpus", metavar="N", type=gpus, default=None,
        help="start a local GPU cluster with N GPUs (or 'all'), one worker per GPU; needs "
        "dask-cuda (pip install dask-cuda) (default: none, CPU workers)",
    )  # fmt: skip
    group.add_argument(
        "--tls-ca-file", metavar="PEM", default=None,
        help="CA certificate(s) that signed the scheduler's and workers' certificates; with "
        "--tls-cert and --tls-key, connect with mutual TLS (tls:// addresses)",
    )  # fmt: skip
    group.add_argument(
        "--tls-cert", metavar="PEM", default=None,
        help="this client's TLS certificate, signed by the CA of --tls-ca-file",
    )  # fmt: skip
    group.add_argument(
        "--tls-key", metavar="PEM", default=None,
        help="private key of --tls-cert (keep it mode 0600)",
    )  # fmt: skip
    group.add_argument(
        "--connect-timeout", metavar="SECONDS", type=seconds, default=20.0,
        help="give up if the scheduler does not answer within SECONDS (default: 20)",
    )  # fmt: skip
    return group


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """TLSConfig from ``--tls-ca-file/--tls-cert/--tls-key``: all three or none.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    TLSConfig or None
        None when none of the three flags is given.

    Raises
    ------
    ValueError
        Only some of the three are given.
    """
    values = {k: getattr(args, k, None) for k in _TLS_FLAGS}
    if not any(values.values()):
        return None
    missing = [name for k, name in _TLS_FLAGS.items() if not values[k]]
    if missing:
        raise ValueError(
            f"TLS needs --tls-ca-file, --tls-cert and --tls-key; missing {', '.join(missing)}"
        )
    return TLSConfig(values["tls_ca_file"], values["tls_cert"], values["tls_key"])


def connect_from_args(
    args: argparse.Namespace, **overrides: Any
) -> contextlib.AbstractContextManager[Client]:
    """:func:`~dimplicit.distributed.connect.connect` configured from the cluster flags.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by a parser that has :func:`add_cluster_arguments`; flags it lacks take
        ``connect``'s defaults.
    **overrides
        Passed to ``connect`` as they are (e.g. ``quiet=True``); they win over the flags.

    Returns
    -------
    context manager
        Yields the ``distributed.Client``. Entering it raises ``connect``'s errors with the
        flags in their messages.

    Raises
    ------
    ValueError
        The TLS flags are incomplete (at once, not on entering).
    """
    options: dict[str, Any] = dict(
        workers=getattr(args, "workers", None),
        threads_per_worker=getattr(args, "threads_per_worker", 1),
        scheduler=getattr(args, "scheduler", None),
        scheduler_file=getattr(args, "scheduler_file", None),
        processes=getattr(args, "processes", True),
        gpus=getattr(args, "gpus", None),
        tls=tls_from_args(args),
        timeout=getattr(args, "connect_timeout", 20.0),
        blas_threads=getattr(args, "blas_threads", None),
        verbose=getattr(args, "verbose", False),
    )
    options.update(overrides)
    return _connect_speaking_flags(options)


@contextlib.contextmanager
def _connect_speaking_flags(options: dict[str, Any]) -> Iterator[Client]:
    from dimplicit.distributed.connect import connect

    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(connect(**options))
        except (OptionError, SchedulerConnectionError) as exc:
            exc.args = (exc.message(flag),)  # the same error, in the user's vocabulary
            raise
        yield client
