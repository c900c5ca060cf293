"""A Dask scheduler and workers as separate processes on 127.0.0.1, for tests.

The Python twin of ``cluster/local/start.sh`` / ``stop.sh``: tests use it to exercise "join an
external scheduler" for real, and to kill a worker in the middle of a computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from distributed import Client

from dimplicit.distributed.blas import BLAS_ENV_VARS
from dimplicit.distributed.join import read_scheduler_file
from dimplicit.distributed.local import LOCALHOST
from dimplicit.distributed.tls import TLSConfig

__all__ = ["ProcessCluster", "start_local_processes"]

_DASK = [sys.executable, "-m", "dask"]


@dataclasses.dataclass
class ProcessCluster:
    """A scheduler and workers running as separate processes; see :func:`start_local_processes`.

    Each process leads its own process group, so a worker's nanny and the worker it spawned
    can be signalled together.

    Attributes
    ----------
    directory : Path
        Holds ``scheduler.json``, the logs (``scheduler.log``, ``worker-<i>.log``) and the
        workers' scratch directories.
    scheduler_file : Path
    address : str
        ``tcp://127.0.0.1:PORT`` or ``tls://127.0.0.1:PORT``.
    scheduler_proc : subprocess.Popen
    worker_procs : list of subprocess.Popen
        One per worker (the nanny process if ``nanny=True``).
    tls : TLSConfig or None
        The credentials the scheduler and workers were started with.
    """

    directory: Path
    scheduler_file: Path
    address: str
    scheduler_proc: subprocess.Popen
    worker_procs: list[subprocess.Popen]
    tls: TLSConfig | None = None

    def kill_worker(self, index: int, sig: int = signal.SIGKILL, timeout: float = 10) -> None:
        """Send ``sig`` to worker ``index``'s whole process group and wait for it to exit."""
        proc = self.worker_procs[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: Ctrl-C in a terminal does not reach it half-way, and teardown
            # can signal a nanny together with the worker process it spawned.
            start_new_session=True,
        )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_processes(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` seconds, reap all."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # Also for exited leaders: a nanny's worker child may still be alive in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _scheduler_command(scheduler_file: Path, dashboard: bool, tls_args: list[str]) -> list[str]:
    return [
        *_DASK, "scheduler",
        "--host", LOCALHOST, "--port", "0",
        "--scheduler-file", str(scheduler_file),
        # The HTTP server (health, metrics) listens even with --no-dashboard, on all
        # interfaces unless told otherwise: always pin it to 127.0.0.1.
        "--dashboard-address", f"{LOCALHOST}:0",
        *([] if dashboard else ["--no-dashboard"]),
        *tls_args,
    ]  # fmt: skip


def _worker_command(
    index: int, directory: Path, threads: int, nanny: bool, tls_args: list[str]
) -> list[str]:
    return [
        *_DASK, "worker",
        "--scheduler-file", str(directory / "scheduler.json"),
        "--host", LOCALHOST,
        "--nthreads", str(threads),
        "--nworkers", "1",
        "--name", f"worker-{index}",
        "--dashboard-address", f"{LOCALHOST}:0",  # see _scheduler_command
        "--no-dashboard",
        "--nanny" if nanny else "--no-nanny",
        "--local-directory", str(directory / f"worker-{index}"),
        # Exit by themselves if the scheduler is gone, even if teardown never runs.
        "--death-timeout", "30",
        *tls_args,
    ]  # fmt: skip


def _wait_for_scheduler_file(path: Path, proc: subprocess.Popen, log: Path, deadline: float) -> str:
    """Poll until the scheduler has written its address to ``path``; return the address."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dask scheduler exited with status {proc.returncode}; last lines of {log}:\n"
                f"{_log_tail(log)}"
            )
        try:
            return read_scheduler_file(path)
        except (FileNotFoundError, ValueError):  # not written yet, or written half-way
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dask scheduler did not write {path} in time; see {log}")
        time.sleep(0.05)


def _wait_for_workers(
    client: Client, procs: list[subprocess.Popen], directory: Path, deadline: float, timeout: float
) -> None:
    """Poll until all ``procs`` have registered; fail early with the log of one that died."""
    while len(client.nthreads()) < len(procs):
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                log = directory / f"worker-{i}.log"
                raise RuntimeError(
                    f"dask worker {i} exited with status {proc.returncode}; "
                    f"last lines of {log}:\n{_log_tail(log)}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(client.nthreads())} of {len(procs)} Dask workers registered "
                f"within {timeout:g} s; logs in {directory}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def start_local_processes(
    n_workers: int,
    directory: str | Path,
    tls: TLSConfig | None = None,
    *,
    threads_per_worker: int = 1,
    nanny: bool = True,
    dashboard: bool = False,
    timeout: float = 60,
) -> Iterator[ProcessCluster]:
    """Run ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Ports are chosen by the OS (port 0). Everything is torn down on exit, also when starting
    fails half-way or the body raises.

    Parameters
    ----------
    n_workers : int
        Worker processes to start and wait for.
    directory : str or Path
        Receives ``scheduler.json`` (a stale one is removed first), logs and worker scratch.
    tls : TLSConfig, optional
        Scheduler/worker credentials (e.g. ``make_test_certificates(d).server``); the cluster
        then only speaks ``tls://`` and only accepts peers signed by the same CA.
    threads_per_worker : int, default 1
        ``dask worker --nthreads``; BLAS variables are set to the same value.
    nanny : bool, default True
        Start each worker under a nanny (restarts, memory limits) like ``start.sh`` does;
        ``False`` starts bare workers (one process less each, faster).
    dashboard : bool, default False
        Serve the scheduler dashboard on 127.0.0.1 (random port).
    timeout : float, default 60
        Seconds to wait for the scheduler file and for all workers to register.

    Yields
    ------
    ProcessCluster
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    # A file left by an earlier run points at a dead scheduler: never wait on it.
    scheduler_file.unlink(missing_ok=True)
    env = {**os.environ, **{k: str(threads_per_worker) for k in BLAS_ENV_VARS}}
    tls_args = ["--protocol", "tls", *tls.cli_args()] if tls is not None else []
    deadline = time.monotonic() + timeout
    procs: list[subprocess.Popen] = []
    try:
        scheduler_log = directory / "scheduler.log"
        command = _scheduler_command(scheduler_file, dashboard, tls_args)
        procs.append(_spawn(command, scheduler_log, env))
        address = _wait_for_scheduler_file(scheduler_file, procs[0], scheduler_log, deadline)
        for i in range(n_workers):
            command = _worker_command(i, directory, threads_per_worker, nanny, tls_args)
            procs.append(_spawn(command, directory / f"worker-{i}.log", env))

        security = tls.security() if tls is not None else None
        remaining = max(1.0, deadline - time.monotonic())
        with Client(address, security=security, timeout=remaining) as client:
            _wait_for_workers(client, procs[1:], directory, deadline, timeout)

        yield ProcessCluster(
            directory=directory,
            scheduler_file=scheduler_file,
            address=address,
            scheduler_proc=procs[0],
            worker_procs=procs[1:],
            tls=tls,
        )
    finally:
        # Workers first: a worker whose scheduler vanished keeps retrying until death-timeout.
        _stop_processes(procs[1:])
        _stop_processes(procs[:1])
