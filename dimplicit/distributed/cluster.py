"""Start or join the Dask cluster that dimplicit computes on.

Every command gets its :class:`distributed.Client` from :func:`connect`, in one of three ways:

* **embedded** (the default): an in-process ``LocalCluster`` whose scheduler, workers and nannies
  all listen on 127.0.0.1 only; it is shut down when the ``with`` block ends;
* **join** a running scheduler by address (``tcp://host:8786``, ``tls://host:8786``) or by the
  JSON file that ``dask scheduler --scheduler-file`` writes (batch jobs, see ``cluster/``); a
  joined scheduler is never shut down from here;
* **GPUs**: ``gpus=N`` starts a ``dask_cuda.LocalCUDACluster`` with one worker per GPU.

The module also holds the BLAS thread control for workers (:func:`set_worker_blas_threads`), the
shared command-line flags (:func:`add_cluster_arguments`, :func:`connect_from_args`), a Python
twin of ``cluster/local/start.sh`` for tests (:func:`start_local_processes`) and a generator of
throw-away TLS certificates (:func:`make_test_certificates`).

``distributed`` is imported lazily, inside the functions that need it, so that building the CLI
parser (``dimplicit --help``) does not pay for importing it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from distributed import Client
    from distributed.security import Security

__all__ = [
    "BLAS_ENV_VARS",
    "CertificateSet",
    "ProcessCluster",
    "TLSConfig",
    "add_cluster_arguments",
    "connect",
    "connect_from_args",
    "dashboard_link",
    "describe",
    "format_description",
    "make_test_certificates",
    "set_worker_blas_threads",
    "start_local_processes",
    "tls_from_args",
]

#: Environment variables that size the thread pools of OpenBLAS, MKL, OpenMP and Accelerate.
#: They only take effect if set before NumPy is imported, i.e. before a worker process starts.
BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

#: Every listening socket of a cluster started here binds to this address (never 0.0.0.0).
LOCALHOST = "127.0.0.1"

# Python parameter -> CLI flag, so error messages make sense to both kinds of caller.
_FLAG = {
    "workers": "--workers",
    "threads_per_worker": "--threads-per-worker",
    "scheduler": "--scheduler",
    "scheduler_file": "--scheduler-file",
    "gpus": "--gpus",
    "processes=False": "--no-processes",
    "tls": "--tls-ca-file/--tls-cert/--tls-key",
    "memory_limit": "--memory-limit",
    "blas_threads": "--blas-threads",
}


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """Mutual-TLS credentials: a CA bundle plus this party's certificate and private key.

    Dask's TLS is mutual: the scheduler only accepts peers (workers, clients) whose certificate
    is signed by its CA, and peers only trust a scheduler signed by theirs.

    Parameters
    ----------
    ca_file : str or Path
        PEM file with the CA certificate(s) used to verify the other side.
    cert_file : str or Path
        PEM certificate of this party (client, worker or scheduler).
    key_file : str or Path
        PEM private key of ``cert_file``.
    """

    ca_file: str | Path
    cert_file: str | Path
    key_file: str | Path

    def check_files(self) -> None:
        """Raise :class:`FileNotFoundError` naming the first credential file that is missing."""
        for what, path in (
            ("CA file", self.ca_file),
            ("certificate", self.cert_file),
            ("key", self.key_file),
        ):
            if not Path(path).is_file():
                raise FileNotFoundError(f"TLS {what} not found: {path}")

    def security(self) -> Security:
        """Client-side :class:`distributed.security.Security` (encryption required)."""
        from distributed.security import Security

        self.check_files()
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert_file),
            tls_client_key=str(self.key_file),
        )

    def cluster_security(self) -> Security:
        """Security for a cluster started here: the same certificate for every role."""
        from distributed.security import Security

        self.check_files()
        cert, key = str(self.cert_file), str(self.key_file)
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.ca_file),
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
        )

    def cli_args(self) -> list[str]:
        """The ``--tls-*`` flags of ``dask scheduler`` / ``dask worker`` for these files."""
        return [
            "--tls-ca-file",
            str(self.ca_file),
            "--tls-cert",
            str(self.cert_file),
            "--tls-key",
            str(self.key_file),
        ]


@dataclasses.dataclass(frozen=True)
class CertificateSet:
    """Files written by :func:`make_test_certificates`.

    Attributes
    ----------
    directory : Path
        Where the PEM files are.
    ca_file : Path
        The CA certificate (``ca.pem``); its key is ``ca-key.pem``.
    server : TLSConfig
        Credentials for the scheduler and workers (``server.pem``, valid for serving *and*
        connecting, since workers also dial the scheduler).
    client : TLSConfig
        Credentials for a client (``client.pem``, client authentication only).
    """

    directory: Path
    ca_file: Path
    server: TLSConfig
    client: TLSConfig


def make_test_certificates(directory: str | Path, *, days: int = 30) -> CertificateSet:
    """Write a throw-away CA and a server and client certificate signed by it.

    The Python twin of ``cluster/tls/make_certs.sh``, for tests that should not depend on the
    ``openssl`` command. Keys are ECDSA P-256 (fast to generate); certificates carry the
    subject alternative names ``localhost`` and ``127.0.0.1``. Needs the ``cryptography``
    package. Not for production: the CA key is left unencrypted next to the certificates.

    Parameters
    ----------
    directory : str or Path
        Created if missing. Files: ``ca.pem``, ``ca-key.pem``, ``server.pem``,
        ``server-key.pem``, ``client.pem``, ``client-key.pem`` (keys are mode 0600).
    days : int, default 30
        Validity period.

    Returns
    -------
    CertificateSet
    """
    import datetime
    import ipaddress

    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "make_test_certificates needs the 'cryptography' package: pip install cryptography "
            "(or use cluster/tls/make_certs.sh, which uses openssl)"
        ) from None

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Backdate a little so that small clock differences between hosts do not matter.
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=days)

    def write_key(key: ec.EllipticCurvePrivateKey, name: str) -> Path:
        path = directory / name
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Create with 0600 directly: the key must never be world-readable, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return path

    def write_cert(cert: x509.Certificate, name: str) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dimplicit test"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("dimplicit test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = write_cert(ca_cert, "ca.pem")
    write_key(ca_key, "ca-key.pem")

    def leaf(common_name: str, usages: list[x509.ObjectIdentifier], stem: str) -> TLSConfig:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(LOCALHOST)),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return TLSConfig(
            ca_file, write_cert(cert, f"{stem}.pem"), write_key(key, f"{stem}-key.pem")
        )

    server = leaf(
        "dimplicit scheduler/worker",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        "server",
    )
    client = leaf("dimplicit client", [ExtendedKeyUsageOID.CLIENT_AUTH], "client")
    return CertificateSet(directory=directory, ca_file=ca_file, server=server, client=client)


# --------------------------------------------------------------------------------------------
# BLAS threads on workers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _blas_environment(n: int) -> Iterator[None]:
    """Export ``BLAS_ENV_VARS = n`` while a ``LocalCluster`` spawns its worker processes.

    Why both ``os.environ`` and the dask config: the Nanny copies the config key
    ``distributed.nanny.pre-spawn-environ`` into ``os.environ`` right before spawning a worker,
    so the values are in place before the worker imports NumPy (the ``env=`` worker argument is
    applied after that import: too late for OpenBLAS). But it lets *existing* ``os.environ``
    values override the config, and the first cluster of a process leaves ``OMP_NUM_THREADS=1``
    etc. behind, so a second cluster with other settings would silently inherit them. The
    Nanny remembers the values, so workers it restarts later get them too.
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


def _make_blas_plugin_class() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    class BlasThreadsPlugin(WorkerPlugin):
        """Worker plugin: limit the BLAS/OpenMP thread pools when a worker (re)starts.

        ``n=None`` means "the worker's own number of task threads".
        """

        # One registration per client session; registering again replaces the old limit.
        name = "dimplicit-blas-threads"

        def __init__(self, n: int | None = None):
            self.n = n

        def setup(self, worker: Any) -> None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=self.n or worker.state.nthreads)

    # Make it look like a module-level class, so it is pickled by reference (by name).
    BlasThreadsPlugin.__module__ = __name__
    BlasThreadsPlugin.__qualname__ = "BlasThreadsPlugin"
    return BlasThreadsPlugin


def __getattr__(name: str) -> Any:
    # PEP 562: ``BlasThreadsPlugin`` subclasses a ``distributed`` class, which we import lazily.
    # Building it on first access keeps it picklable by reference (workers resolve it by name).
    if name == "BlasThreadsPlugin":
        cls = _make_blas_plugin_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _blas_thread_count() -> int:
    """Largest thread-pool size among the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return max(
        (lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=0
    )


def set_worker_blas_threads(client: Client, n: int | None = None) -> dict[str, int]:
    """Limit the BLAS thread pools of all workers, now and for workers that join later.

    Without a limit each worker's OpenBLAS/MKL starts one thread per core, so W workers with T
    task threads each would run up to W * T * cores threads on ``cores`` cores and thrash. The
    limit is applied with :func:`threadpoolctl.threadpool_limits` through a worker plugin, which
    runs on every current worker and on every worker that (re)joins. Use it for external
    clusters; clusters started by :func:`connect` get environment variables instead.

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
    plugin_cls = globals().get("BlasThreadsPlugin") or __getattr__("BlasThreadsPlugin")
    client.register_plugin(plugin_cls(n))
    return client.run(_blas_thread_count)


# --------------------------------------------------------------------------------------------
# connect
# --------------------------------------------------------------------------------------------


def _exclusive(a: str, b: str, why: str = "") -> ValueError:
    msg = f"options {a} ({_FLAG[a]}) and {b} ({_FLAG[b]}) are mutually exclusive"
    return ValueError(msg + (f": {why}" if why else ""))


def _check_options(
    workers: int | None,
    threads_per_worker: int,
    scheduler: str | None,
    scheduler_file: str | Path | None,
    processes: bool,
    memory_limit: Any,
    tls: TLSConfig | None,
    gpus: int | str | None,
    timeout: float,
    blas_threads: int | None = None,
) -> None:
    """Reject contradictory or invalid options before anything is started."""
    for what, value in (
        ("workers", workers),
        ("threads_per_worker", threads_per_worker),
        ("blas_threads", blas_threads),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{what} ({_FLAG[what]}) must be a positive integer, got {value!r}")
    if gpus is not None and gpus != "all":
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise ValueError(f"gpus (--gpus) must be a positive integer or 'all', got {gpus!r}")
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if tls is not None and not isinstance(tls, TLSConfig):
        raise TypeError(f"tls must be a TLSConfig, got {type(tls).__name__}")

    if scheduler is not None and scheduler_file is not None:
        raise _exclusive("scheduler", "scheduler_file", "give the address or the file, not both")
    external = "scheduler" if scheduler is not None else "scheduler_file"
    if scheduler is not None or scheduler_file is not None:
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


def _read_scheduler_file(path: Path) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dask scheduler file not found: {path} "
            "(start the scheduler first, e.g. cluster/local/start.sh)"
        ) from None
    try:
        return str(json.loads(text)["address"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"not a Dask scheduler file (no 'address' in it): {path}") from None


def _join(
    scheduler: str | None,
    scheduler_file: str | Path | None,
    tls: TLSConfig | None,
    timeout: float,
) -> Client:
    """Client for a running scheduler; connection failures become one-line ConnectionErrors."""
    from distributed import Client

    if scheduler_file is not None:
        path = Path(scheduler_file)
        address = _read_scheduler_file(path)
        where = f"{address} (from scheduler file {path})"
    else:
        address = str(scheduler)
        where = address
    # A scheme mismatch would only show up as a timeout; say what is wrong right away.
    if address.startswith("tls://") and tls is None:
        raise ValueError(
            f"scheduler {where} uses TLS: give --tls-ca-file, --tls-cert and --tls-key"
        )
    if tls is not None and not address.startswith("tls://"):
        raise ValueError(f"TLS certificates given but scheduler {where} is not a tls:// address")
    security = tls.security() if tls is not None else None
    try:
        return Client(address, security=security, timeout=timeout, set_as_default=True)
    except OSError as exc:  # timeouts, refused connections, TLS handshake failures
        # One line and no chained traceback: the CLI prints str(exc) as its error message.
        raise _connection_error(where, timeout, exc) from None


def _connection_error(where: str, timeout: float, exc: OSError) -> ConnectionError:
    """Turn distributed's connection failure into a one-line, actionable ConnectionError."""
    text = str(exc)
    # Refused or unroutable addresses are retried until the timeout: the common case.
    if isinstance(exc, TimeoutError) or text.startswith("Timed out"):
        return ConnectionError(f"cannot reach Dask scheduler at {where} within {timeout:g} s")
    # Otherwise the scheduler answered and the connection was rejected straight away.
    # Drop distributed's "in <TLS (closed) local=... remote=...>: " prefix.
    reason = text.rsplit(">: ", 1)[-1].splitlines()[0] if text else type(exc).__name__
    if where.startswith("tls://"):
        # A rejected client certificate shows up as an alert *or* as a bare EOF/reset,
        # depending on timing (TLS 1.3 checks it after the client's side of the handshake).
        hint = (
            "; check --tls-ca-file/--tls-cert/--tls-key: the scheduler, workers and client "
            "need certificates signed by the same CA"
        )
    elif where.startswith("tcp://"):
        hint = "; does the scheduler expect TLS (tls:// address and --tls-* options)?"
    else:
        hint = ""
    return ConnectionError(f"cannot connect to Dask scheduler at {where}: {reason}{hint}")


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
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise RuntimeError(
            f"gpus={gpus!r} needs dask-cuda: pip install dask-cuda "
            "(or pip install 'dimplicit[cuda-cluster]')"
        ) from None
    available = _count_visible_gpus()
    if available == 0:
        raise RuntimeError(
            f"gpus={gpus!r}: no GPU visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        )
    if gpus != "all" and int(gpus) > available:
        raise RuntimeError(f"gpus={gpus!r} but only {available} GPU(s) visible")
    return LocalCUDACluster


def _start_local_cluster(
    stack: contextlib.ExitStack,
    workers: int | None,
    threads_per_worker: int,
    processes: bool,
    memory_limit: Any,
    tls: TLSConfig | None,
    gpus: int | str | None,
    dashboard: bool,
    quiet: bool,
    blas_threads: int,
) -> Any:
    """Start a LocalCluster / LocalCUDACluster bound to 127.0.0.1; closed by ``stack``."""
    kwargs: dict[str, Any] = dict(
        threads_per_worker=threads_per_worker,
        scheduler_port=0,  # a free port: several clusters may run side by side
        # The scheduler's HTTP server (health, metrics, and the dashboard if bokeh is
        # installed) runs even without a dashboard; pin it to 127.0.0.1 and a free port.
        dashboard_address=f"{LOCALHOST}:0",
        scheduler_kwargs={"dashboard": bool(dashboard)},
        memory_limit=memory_limit,
        silence_logs=logging.ERROR if quiet else logging.WARNING,
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

    if processes:
        with _blas_environment(blas_threads):
            cluster = cluster_cls(**kwargs)
    else:
        # Worker threads share this process's BLAS: limit it here, restore it on exit.
        from threadpoolctl import threadpool_limits

        stack.enter_context(threadpool_limits(limits=blas_threads))
        cluster = cluster_cls(**kwargs)
    stack.callback(cluster.close)
    return cluster


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
        Seconds to wait for the scheduler to answer.
    dashboard : bool, default True
        Serve the dashboard of a local cluster on 127.0.0.1 (random port; needs ``bokeh``).
    quiet : bool, default False
        If False, print a one-line summary of the cluster (with the dashboard link) on stderr;
        if True print nothing, and a local cluster's workers log errors only.
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
    ValueError
        Mutually exclusive or invalid options (the message names them).
    FileNotFoundError
        ``scheduler_file`` or a TLS file does not exist.
    ConnectionError
        The scheduler did not answer within ``timeout`` seconds (one-line message).
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
    _check_options(
        workers, threads_per_worker, scheduler, scheduler_file, processes, memory_limit,
        tls, gpus, timeout, blas_threads,
    )  # fmt: skip
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if scheduler is not None or scheduler_file is not None:
            client = _join(scheduler, scheduler_file, tls, timeout)
            stack.callback(client.close)
            set_worker_blas_threads(client, blas_threads)
        else:
            cluster = _start_local_cluster(
                stack, workers, threads_per_worker, processes, memory_limit, tls, gpus,
                dashboard, quiet, blas_threads or threads_per_worker,
            )  # fmt: skip
            security = tls.security() if tls is not None else None
            client = Client(cluster, security=security, timeout=timeout, set_as_default=True)
            stack.callback(client.close)  # LIFO: the client closes before its cluster
        if not quiet:
            info = describe(client)
            if not dashboard and scheduler is None and scheduler_file is None:
                info["dashboard"] = None  # the HTTP port is up, but no dashboard behind it
            print(format_description(info), file=sys.stderr)
        yield client


def dashboard_link(client: Client) -> str | None:
    """URL of the scheduler's dashboard, or None when the scheduler serves no HTTP at all.

    The scheduler's HTTP server also runs when its dashboard is disabled or ``bokeh`` is not
    installed; the URL then serves only ``/health`` and ``/metrics`` (and a page saying that
    the dashboard needs bokeh).
    """
    try:
        link = client.dashboard_link
    except Exception:  # no HTTP service registered, or the scheduler is gone
        return None
    return link or None


def describe(client: Client) -> dict[str, Any]:
    """Summary of the cluster behind ``client``, for logs and the CLI.

    Returns
    -------
    dict
        ``scheduler`` (address), ``n_workers``, ``threads_per_worker`` (int, or None when
        workers differ or there are none), ``total_threads`` and ``dashboard`` (URL or None).
    """
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers, not just the first few
    except TypeError:  # distributed < 2025
        info = client.scheduler_info()
    nthreads = [int(w["nthreads"]) for w in info.get("workers", {}).values()]
    return {
        "scheduler": info.get("address", client.scheduler.address),
        "n_workers": len(nthreads),
        "threads_per_worker": nthreads[0] if nthreads and len(set(nthreads)) == 1 else None,
        "total_threads": sum(nthreads),
        "dashboard": dashboard_link(client),
    }


def format_description(info: dict[str, Any]) -> str:
    """One line for stderr from :func:`describe`'s dict."""
    per = info["threads_per_worker"]
    threads = f"{per} thread(s) each" if per is not None else f"{info['total_threads']} threads"
    dash = info["dashboard"] or "off"
    if info["dashboard"] and importlib.util.find_spec("bokeh") is None:
        dash += " (needs bokeh: pip install bokeh)"
    return (
        f"dask: {info['n_workers']} worker(s), {threads}, scheduler {info['scheduler']}, "
        f"dashboard {dash}"
    )


# --------------------------------------------------------------------------------------------
# Command-line flags
# --------------------------------------------------------------------------------------------


def _gpus_arg(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the shared "Dask cluster" flags to a sub-command's parser.

    Returns the argument group so a command can add its own cluster-related flags to it.
    Read them back with :func:`connect_from_args`.
    """
    group = parser.add_argument_group(
        "Dask cluster",
        # Explicit line breaks: some commands use RawDescriptionHelpFormatter, which keeps them
        # (the default formatter re-wraps the text anyway).
        "By default a private cluster of worker processes is started on this machine\n"
        "(listening on 127.0.0.1 only) and stopped at exit. --scheduler/--scheduler-file\n"
        "join a running one instead (see cluster/README.md).",
    )
    group.add_argument(
        "--workers", metavar="W", type=_positive_int, default=None,
        help="number of local worker processes (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--threads-per-worker", metavar="T", type=_positive_int, default=1,
        help="task threads per local worker; BLAS in each worker is limited to T threads too "
        "(default: 1). Keep W x T <= the number of cores",
    )  # fmt: skip
    group.add_argument(
        "--blas-threads", metavar="B", type=_positive_int, default=None,
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
        "tls://node1:8786 (its workers are started separately; never shut down from here)",
    )  # fmt: skip
    group.add_argument(
        "--scheduler-file", metavar="PATH", default=None,
        help="join the scheduler described by PATH, the JSON file written by "
        "'dask scheduler --scheduler-file PATH' (batch jobs: see cluster/slurm)",
    )  # fmt: skip
    group.add_argument(
        "--gpus", metavar="N", type=_gpus_arg, default=None,
        help="start a local GPU cluster with N GPUs (or 'all'), one worker per GPU; needs "
        "dask-cuda (pip install dask-cuda)",
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
        "--connect-timeout", metavar="SECONDS", type=_positive_float, default=20.0,
        help="give up if the scheduler does not answer within SECONDS (default: 20)",
    )  # fmt: skip
    return group


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """TLSConfig from ``--tls-ca-file/--tls-cert/--tls-key``: all three or none."""
    names = {"tls_ca_file": "--tls-ca-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}
    values = {k: getattr(args, k, None) for k in names}
    given = [names[k] for k, v in values.items() if v]
    if not given:
        return None
    if len(given) < len(names):
        missing = [flag for k, flag in names.items() if not values[k]]
        raise ValueError(
            f"TLS needs --tls-ca-file, --tls-cert and --tls-key; missing {', '.join(missing)}"
        )
    return TLSConfig(values["tls_ca_file"], values["tls_cert"], values["tls_key"])


def connect_from_args(
    args: argparse.Namespace, **overrides: Any
) -> contextlib.AbstractContextManager[Client]:
    """:func:`connect` configured from the flags of :func:`add_cluster_arguments`.

    ``overrides`` are passed to :func:`connect` as they are (e.g. ``quiet=True``) and win over
    the flags. Flags the parser lacks take :func:`connect`'s defaults.
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
    )
    options.update(overrides)
    return connect(**options)


# --------------------------------------------------------------------------------------------
# Local scheduler + worker processes (the Python twin of cluster/local/start.sh)
# --------------------------------------------------------------------------------------------


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

    The Python twin of ``cluster/local/start.sh`` / ``stop.sh``, used by tests to exercise
    "join an external scheduler" for real. Ports are chosen by the OS (port 0). Everything is
    torn down on exit, also when starting fails half-way or the body raises.

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
    from distributed import Client

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    # A file left by an earlier run points at a dead scheduler: never wait on it.
    scheduler_file.unlink(missing_ok=True)
    env = {**os.environ, **{k: str(threads_per_worker) for k in BLAS_ENV_VARS}}
    tls_args = ["--protocol", "tls", *tls.cli_args()] if tls is not None else []
    dask_cmd = [sys.executable, "-m", "dask"]
    deadline = time.monotonic() + timeout
    procs: list[subprocess.Popen] = []
    try:
        scheduler_log = directory / "scheduler.log"
        scheduler_proc = _spawn(
            [
                *dask_cmd, "scheduler",
                "--host", LOCALHOST, "--port", "0",
                "--scheduler-file", str(scheduler_file),
                # The HTTP server (health, metrics) listens even with --no-dashboard, on all
                # interfaces unless told otherwise: always pin it to 127.0.0.1.
                "--dashboard-address", f"{LOCALHOST}:0",
                *([] if dashboard else ["--no-dashboard"]),
                *tls_args,
            ],
            scheduler_log,
            env,
        )  # fmt: skip
        procs.append(scheduler_proc)
        address = _wait_for_scheduler_file(scheduler_file, scheduler_proc, scheduler_log, deadline)

        worker_procs = []
        for i in range(n_workers):
            proc = _spawn(
                [
                    *dask_cmd, "worker",
                    "--scheduler-file", str(scheduler_file),
                    "--host", LOCALHOST,
                    "--nthreads", str(threads_per_worker),
                    "--nworkers", "1",
                    "--name", f"worker-{i}",
                    "--dashboard-address", f"{LOCALHOST}:0",  # see the scheduler's comment
                    "--no-dashboard",
                    "--nanny" if nanny else "--no-nanny",
                    "--local-directory", str(directory / f"worker-{i}"),
                    # Exit by themselves if the scheduler is gone, even if teardown never runs.
                    "--death-timeout", "30",
                    *tls_args,
                ],
                directory / f"worker-{i}.log",
                env,
            )  # fmt: skip
            procs.append(proc)
            worker_procs.append(proc)

        security = tls.security() if tls is not None else None
        remaining = max(1.0, deadline - time.monotonic())
        with Client(address, security=security, timeout=remaining) as client:
            while len(client.nthreads()) < n_workers:
                for i, proc in enumerate(worker_procs):
                    if proc.poll() is not None:
                        log = directory / f"worker-{i}.log"
                        raise RuntimeError(
                            f"dask worker {i} exited with status {proc.returncode}; "
                            f"last lines of {log}:\n{_log_tail(log)}"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"only {len(client.nthreads())} of {n_workers} Dask workers registered "
                        f"within {timeout:g} s; logs in {directory}"
                    )
                time.sleep(0.1)

        yield ProcessCluster(
            directory=directory,
            scheduler_file=scheduler_file,
            address=address,
            scheduler_proc=scheduler_proc,
            worker_procs=worker_procs,
            tls=tls,
        )
    finally:
        # Workers first: a worker whose scheduler vanished keeps retrying until death-timeout.
        _stop_processes(procs[1:])
        _stop_processes(procs[:1])


def _wait_for_scheduler_file(path: Path, proc: subprocess.Popen, log: Path, deadline: float) -> str:
    """Poll until the scheduler has written its address to ``path``; return the address."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dask scheduler exited with status {proc.returncode}; last lines of {log}:\n"
                f"{_log_tail(log)}"
            )
        try:
            return _read_scheduler_file(path)
        except (FileNotFoundError, ValueError):  # not written yet, or written half-way
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dask scheduler did not write {path} in time; see {log}")
        time.sleep(0.05)
