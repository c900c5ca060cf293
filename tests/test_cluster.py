"""Starting, joining and securing Dask clusters (:mod:`dimplicit.distributed.connect`).

Everything binds to 127.0.0.1 and stays small (at most 2 workers with 1 thread each): the CI
machine has 2 shared cores. Tests that start scheduler/worker processes are marked ``slow``
(they still run by default).

Functions shipped to workers are defined *inside* the tests: cloudpickle then sends them by
value, whereas module-level functions of this test file would be pickled by reference and the
worker processes cannot import the test module.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import operator
import os
import pickle
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import threadpoolctl

from dimplicit.cli import main
from dimplicit.commands._cluster import add_cluster_arguments, connect_from_args, tls_from_args
from dimplicit.distributed import local
from dimplicit.distributed.blas import set_worker_blas_threads
from dimplicit.distributed.connect import connect
from dimplicit.distributed.errors import OptionError
from dimplicit.distributed.local import _count_visible_gpus
from dimplicit.distributed.summary import dashboard_link, describe
from dimplicit.distributed.tls import TLSConfig
from dimplicit.testing import make_test_certificates, start_local_processes

ROOT = Path(__file__).resolve().parents[1]


def blas_threads_on_workers(client) -> set[int]:
    """Distinct BLAS pool sizes the workers report through threadpoolctl."""
    infos = client.run(threadpoolctl.threadpool_info)
    return {
        lib["num_threads"] for libs in infos.values() for lib in libs if lib["user_api"] == "blas"
    }


def process_tree(pids) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def listening_sockets(procs) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every listening inet socket of ``procs``."""
    sockets = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        sockets |= {(proc.pid, *c.laddr) for c in conns if c.status == psutil.CONN_LISTEN}
    return sockets


def listening_addresses(procs) -> set[str]:
    return {ip for _, ip, _ in listening_sockets(procs)}


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def parse_cluster_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Embedded local cluster
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_default_connect_starts_local_worker_processes_on_localhost():
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("dimplicit")
    logger.addHandler(handler)
    level, _ = logger.level, logger.setLevel(logging.INFO)
    # Only sockets opened by this cluster count (other tests may have left some behind).
    before = listening_sockets(process_tree([os.getpid()]))
    with connect(workers=2) as client:
        info = describe(client)
        assert info["n_workers"] == 2
        assert info["threads_per_worker"] == 1
        assert info["scheduler"].startswith("tcp://127.0.0.1:")
        assert dashboard_link(client) == info["dashboard"]
        assert client.submit(operator.add, 1, 2).result() == 3
        # Worker processes, not threads, each with BLAS limited to its one task thread.
        worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2 and os.getpid() not in worker_pids
        assert blas_threads_on_workers(client) == {1}
        # Scheduler (in this process), nannies and workers listen on 127.0.0.1 only.
        tree = process_tree([os.getpid()])
        new_sockets = listening_sockets(tree) - before
        assert len(new_sockets) >= 5  # scheduler + its HTTP port, 2 nannies, 2 workers
        assert {ip for _, ip, _ in new_sockets} == {"127.0.0.1"}
    logger.removeHandler(handler)
    logger.setLevel(level)
    # One summary record (the CLI prints it on stderr), with the dashboard link.
    summary = [r.getMessage() for r in seen if r.getMessage().startswith("dask:")]
    assert len(summary) == 1, summary
    assert "dask: 2 worker(s), 1 thread(s) each" in summary[0]
    assert "dashboard http://127.0.0.1:" in summary[0]
    # Leaving the block shuts the cluster down.
    deadline = time.monotonic() + 10
    workers = [p for p in tree if p.pid in worker_pids]
    while not all(gone(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p) for p in workers)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_worker_blas_threads_follow_threads_per_worker():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("OpenBLAS caps its pool at the number of cores")
    # An earlier cluster of this process left OMP_NUM_THREADS=1 etc. in os.environ; the
    # requested value must still win.
    with connect(workers=1, threads_per_worker=2, quiet=True) as client:
        assert describe(client)["threads_per_worker"] == 2
        assert blas_threads_on_workers(client) == {2}
        (address,) = client.nthreads()
        assert set_worker_blas_threads(client, 1) == {address: 1}
        assert blas_threads_on_workers(client) == {1}
        assert set_worker_blas_threads(client) == {address: 2}  # default: nthreads


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_local_workers_run_without_profiler_unless_the_user_configured_it(monkeypatch):
    """Dask's profiler and monitors cost ~7 % of a 2-core machine (local.QUIET_BACKGROUND):
    turned down in a private cluster's worker processes (the profiler stays for a dashboard),
    but a value the user set wins."""
    import dask.config

    def background(dask_worker):
        return (
            "profile-cycle" in dask_worker.periodic_callbacks,
            dask_worker._tick_interval,
        )

    with connect(workers=1, quiet=True, dashboard=False) as client:
        assert list(client.run(background).values()) == [(False, 1.0)]
    assert dask.config.get("distributed.worker.profile.enabled") is True  # restored here
    with (
        dask.config.set({"distributed.admin.tick.interval": "50ms"}),
        connect(workers=1, quiet=True, dashboard=False) as client,
    ):
        assert list(client.run(background).values()) == [(False, 0.05)]
    with connect(workers=1, quiet=True) as client:  # a dashboard (bokeh is a dependency)
        assert list(client.run(background).values()) == [(True, 1.0)]


@pytest.mark.timeout(30)
def test_threads_mode_limits_blas_in_process_and_restores_it():
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    args = parse_cluster_args(["--no-processes", "--workers", "2"])
    with connect_from_args(args, quiet=True) as client:
        info = describe(client)
        assert (info["n_workers"], info["threads_per_worker"]) == (2, 1)
        assert set(client.run(os.getpid).values()) == {os.getpid()}
        assert blas_threads_on_workers(client) == {1}
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before


# --------------------------------------------------------------------------------------------
# Joining an external scheduler
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """Scheduler + 2 nanny-managed workers as separate processes, shared by the join tests."""
    with start_local_processes(2, tmp_path_factory.mktemp("external")) as pc:
        yield pc


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_join_external_scheduler_by_file_and_by_address(external):
    assert external.address.startswith("tcp://127.0.0.1:")
    for options in ({"scheduler_file": external.scheduler_file}, {"scheduler": external.address}):
        with connect(**options, quiet=True) as client:
            info = describe(client)
            assert info["scheduler"] == external.address
            assert (info["n_workers"], info["threads_per_worker"]) == (2, 1)
            assert client.submit(operator.mul, 6, 7).result() == 42
            assert blas_threads_on_workers(client) == {1}
    # Leaving the block closes only the client: the scheduler and workers keep running.
    assert external.scheduler_proc.poll() is None
    assert all(proc.poll() is None for proc in external.worker_procs)
    pids = [external.scheduler_proc.pid] + [p.pid for p in external.worker_procs]
    assert listening_addresses(process_tree(pids)) == {"127.0.0.1"}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_computation_survives_killing_a_worker_process(tmp_path):
    import dask.array as da

    def slow_identity(block):
        time.sleep(0.3)
        return block

    with start_local_processes(2, tmp_path) as pc:
        tree = process_tree([pc.scheduler_proc.pid] + [p.pid for p in pc.worker_procs])
        with connect(scheduler_file=pc.scheduler_file, quiet=True) as client:
            x = da.arange(8000, chunks=1000).map_blocks(slow_identity, dtype=np.int64)
            future = client.compute(x.sum())
            # Kill worker 0 (nanny and worker process) once both workers are busy.
            deadline = time.monotonic() + 10
            while len([k for k, v in client.processing().items() if v]) < 2:
                assert time.monotonic() < deadline, "workers never got tasks"
                time.sleep(0.05)
            time.sleep(0.2)
            pc.kill_worker(0)
            assert future.result(timeout=30) == np.arange(8000).sum()
            assert len(client.nthreads()) == 1
    # Teardown leaves no scheduler, nanny or worker process behind.
    assert all(gone(p) for p in tree)


@pytest.mark.timeout(20)
def test_unreachable_scheduler_fails_fast_with_one_line():
    start = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        with connect(scheduler="tcp://127.0.0.1:1", timeout=5):
            pass
    assert time.monotonic() - start < 8
    assert str(err.value) == "cannot reach Dask scheduler at tcp://127.0.0.1:1 within 5 s"
    assert err.value.__suppress_context__  # raised "from None": no chained traceback


@pytest.mark.timeout(10)
def test_missing_scheduler_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "scheduler.json"
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=str(path)):
        with connect(scheduler_file=path):
            pass
    assert time.monotonic() - start < 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a Dask scheduler file"):
        with connect(scheduler_file=bad):
            pass


# --------------------------------------------------------------------------------------------
# An address that is not a Dask scheduler
# --------------------------------------------------------------------------------------------


class _Banner(socketserver.BaseRequestHandler):
    """Greets like an SSH server: text that Dask would read as a frame length of 2.8 EiB."""

    def handle(self):
        self.request.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
        self.server.stop.wait(30)


class _Silent(socketserver.BaseRequestHandler):
    """Accepts and says nothing, whatever it is sent."""

    def handle(self):
        self.server.stop.wait(30)


class _Http(http.server.BaseHTTPRequestHandler):
    """A minimal web server, like the dashboard port that users give by mistake."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_service(kind: str, tls_context: ssl.SSLContext | None = None):
    """A non-Dask TCP service on 127.0.0.1 in a thread; yields its ``tcp://`` address."""
    handler = {"banner": _Banner, "silent": _Silent, "http": _Http}[kind]
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.stop = threading.Event()
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("kind", "expected", "limit"),
    [
        ("banner", "b'SSH-2.0-', which is not the Dask protocol", 1.5),
        ("http", "it is an HTTP server (the dashboard?)", 1.5),
        ("silent", "no Dask handshake within 2 s", 2.5),
    ],
)
def test_a_service_that_is_not_dask_fails_within_the_timeout_with_one_line(kind, expected, limit):
    with local_service(kind) as address:
        start = time.monotonic()
        with pytest.raises(ConnectionError) as err:
            with connect(scheduler=address, timeout=2, quiet=True):
                pass
        elapsed = time.monotonic() - start
    message = str(err.value)
    assert elapsed < limit, (elapsed, message)
    assert message.startswith(f"cannot connect to Dask scheduler at {address}: "), message
    assert expected in message and "\n" not in message
    assert err.value.__suppress_context__


@pytest.mark.timeout(20)
def test_plain_tcp_to_a_tls_service_suggests_tls(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.server.cert_file), str(certs.server.key_file))
    with local_service("silent", context) as address:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=r"expect TLS \(a tls:// address and credentia"):
            with connect(scheduler=address, timeout=3, quiet=True):
                pass
        assert time.monotonic() - start < 2
        # The command line names its flags instead of the parameter.
        args = parse_cluster_args(["--scheduler", address, "--connect-timeout", "3"])
        with pytest.raises(ConnectionError, match=r"--tls-ca-file/--tls-cert/--tls-key\)\?$"):
            with connect_from_args(args, quiet=True):
                pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["banner", "http", "silent"])
def test_cli_with_a_scheduler_that_is_not_dask_exits_2_with_one_line(
    kind, teacher_store, tmp_path, capsys
):
    with local_service(kind) as address:
        capsys.readouterr()
        start = time.monotonic()
        code = main(
            ["train", "--data", str(teacher_store), "--task", "classify", "--no-progress",
             "--checkpoint-dir", str(tmp_path / "ck"), "--scheduler", address,
             "--connect-timeout", "3"]
        )  # fmt: skip
        elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("dimplicit train: error: "), lines
    assert address in lines[0]
    assert elapsed < 3 + 2, elapsed  # the timeout, plus reading the store and the model


# --------------------------------------------------------------------------------------------
# Option validation and CLI flags
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"scheduler": "tcp://127.0.0.1:1", "scheduler_file": "s.json"}, ["scheduler_file"]),
        ({"scheduler": "tcp://127.0.0.1:1", "workers": 2}, ["scheduler", "workers"]),
        ({"scheduler_file": "s.json", "threads_per_worker": 2}, ["threads_per_worker"]),
        ({"scheduler": "tcp://127.0.0.1:1", "gpus": 1}, ["scheduler", "gpus"]),
        ({"scheduler_file": "s.json", "processes": False}, ["processes=False"]),
        ({"gpus": "all", "workers": 2}, ["gpus", "workers"]),
        ({"gpus": 1, "processes": False}, ["gpus", "processes=False"]),
    ],
)
def test_mutually_exclusive_options_are_rejected(options, names):
    with pytest.raises(ValueError, match="mutually exclusive") as err:
        with connect(**options):
            pass
    for name in names:
        assert name in str(err.value)


@pytest.mark.timeout(10)
def test_invalid_values_and_scheme_mismatch_are_rejected(tmp_path):
    for options in ({"workers": 0}, {"threads_per_worker": -1}, {"gpus": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            with connect(**options):
                pass
    with pytest.raises(ValueError, match="uses TLS"):
        with connect(scheduler="tls://127.0.0.1:1"):
            pass
    tls = TLSConfig(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(ValueError, match="not a tls:// address"):
        with connect(scheduler="tcp://127.0.0.1:1", tls=tls):
            pass
    with pytest.raises(FileNotFoundError, match="ca.pem"):
        with connect(scheduler="tls://127.0.0.1:1", tls=tls):
            pass


@pytest.mark.timeout(10)
def test_cluster_flags_parse_into_connect_options(tmp_path):
    args = parse_cluster_args(
        ["--workers", "2", "--threads-per-worker", "1", "--gpus", "all", "--connect-timeout", "3"]
    )
    assert (args.workers, args.threads_per_worker, args.gpus, args.processes) == (2, 1, "all", True)
    assert args.connect_timeout == 3.0
    with pytest.raises(ValueError, match="gpus.*workers"):
        with connect_from_args(args):
            pass
    with pytest.raises(SystemExit):
        parse_cluster_args(["--gpus", "0"])
    # TLS flags come as a set of three.
    with pytest.raises(ValueError, match="missing --tls-key"):
        connect_from_args(parse_cluster_args(["--tls-ca-file", "a", "--tls-cert", "b"]))
    args = parse_cluster_args(
        ["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "a", "--tls-cert", "b",
         "--tls-key", "c"]
    )  # fmt: skip
    assert tls_from_args(args) == TLSConfig("a", "b", "c")
    # The CLI's error path prints str(exc): one line.
    args = parse_cluster_args(["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "1"])
    with pytest.raises(ConnectionError, match=r"^cannot reach .* within 1 s$"):
        with connect_from_args(args):
            pass


@pytest.mark.timeout(10)
def test_library_errors_name_parameters_and_the_cli_names_flags(capsys, teacher_store, tmp_path):
    with pytest.raises(OptionError) as err:
        with connect(scheduler_file="s.json", processes=False):
            pass
    assert err.value.parameters == ("scheduler_file", "processes=False")
    assert "--" not in str(err.value)
    assert pickle.loads(pickle.dumps(err.value)).message() == str(err.value)
    args = parse_cluster_args(["--scheduler-file", "s.json", "--no-processes"])
    with pytest.raises(ValueError, match="options --scheduler-file and --no-processes are"):
        with connect_from_args(args):
            pass
    # Through the command line: one line, exit status 2.
    code = main(
        ["train", "--data", str(teacher_store), "--task", "classify", "--no-progress",
         "--checkpoint-dir", str(tmp_path / "ck"), "--scheduler", "tcp://127.0.0.1:1",
         "--workers", "2"]
    )  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "options --scheduler and --workers are mutually exclusive" in lines[0]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_cli_refuses_a_worker_count_below_one(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "x.zarr", "--workers", value])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument --workers: expected a positive integer, got '{value}'" in last


@pytest.mark.timeout(30)
def test_more_task_threads_than_cores_is_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(local, "usable_cores", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="dimplicit"):
        with connect(workers=2, processes=False, quiet=True) as client:
            assert len(client.nthreads()) == 2  # a warning, not an error
    (record,) = [r for r in caplog.records if "task threads" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("2 task threads (2 worker(s) x 1 thread(s) each)")
    assert "on 1 core(s)" in record.getMessage()
    caplog.clear()
    monkeypatch.setattr(local, "usable_cores", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="dimplicit"):
        with connect(workers=2, processes=False, quiet=True):
            pass
    assert not [r for r in caplog.records if "task threads" in r.getMessage()]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cli_warns_in_one_line_about_more_workers_than_cores(
    monkeypatch, teacher_store, tmp_path, capsys
):
    monkeypatch.setattr(local, "usable_cores", lambda: 1)
    code = main(
        ["train", "--data", str(teacher_store), "--task", "classify", "--no-progress",
         "--hidden", "4", "--epochs", "1", "--batch-size", "3000", "--block-rows", "1000",
         "--executor", "dask", "--workers", "2", "--no-processes",
         "--checkpoint-dir", str(tmp_path / "ck")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "task threads" in line]
    assert len(warned) == 1 and "on 1 core(s)" in warned[0], err


@pytest.mark.timeout(10)
def test_gpus_without_dask_cuda_or_gpu_is_a_clear_error():
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        expected = "pip install dask-cuda"
    else:
        if _count_visible_gpus() > 0:
            pytest.skip("dask-cuda and a GPU are present: see test_gpu_cluster")
        expected = "no GPU visible"
    with pytest.raises(RuntimeError, match=expected):
        with connect(gpus=1):
            pass


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gpu_cluster():
    pytest.importorskip("dask_cuda")
    if _count_visible_gpus() == 0:
        pytest.skip("no GPU visible")
    with connect(gpus=1, quiet=True) as client:
        assert describe(client)["n_workers"] == 1
        assert client.submit(operator.add, 1, 2).result() == 3


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    pytest.importorskip("cryptography")
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory):
    """Certificates from another, unrelated CA."""
    pytest.importorskip("cryptography")
    return make_test_certificates(tmp_path_factory.mktemp("foreign"))


@pytest.mark.timeout(10)
def test_test_certificates_chain_to_their_ca(certs):
    for pair in (certs.server, certs.client):
        assert (os.stat(pair.key_file).st_mode & 0o777) == 0o600
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca_file))
        ctx.load_cert_chain(str(pair.cert_file), str(pair.key_file))  # key matches cert
    if shutil.which("openssl"):
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs.ca_file),
             str(certs.server.cert_file), str(certs.client.cert_file)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_local_cluster_with_tls(certs):
    # The embedded cluster uses the given credentials for every role, the client included.
    with connect(workers=1, tls=certs.server, quiet=True) as client:
        assert describe(client)["scheduler"].startswith("tls://127.0.0.1:")
        assert client.submit(operator.add, 1, 2).result() == 3


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_tls_cluster_accepts_only_clients_with_certificates_from_its_ca(
    tmp_path, certs, foreign_certs
):
    with start_local_processes(2, tmp_path, tls=certs.server, nanny=False) as pc:
        assert pc.address.startswith("tls://127.0.0.1:")
        # A client with a certificate from the cluster's CA computes (workers exchange data
        # over TLS too: the sum needs chunks from both workers).
        import dask.array as da

        with connect(scheduler_file=pc.scheduler_file, tls=certs.client, quiet=True) as client:
            assert len(client.nthreads()) == 2
            x = da.arange(1000, chunks=100)
            assert client.compute(x.sum()).result() == np.arange(1000).sum()

        # Refusals are immediate, not timeouts, and one line each.
        host, port = pc.address.removeprefix("tls://").rsplit(":", 1)
        refused = [
            # trusts the scheduler, but its own certificate comes from another CA
            TLSConfig(certs.ca_file, foreign_certs.client.cert_file,
                        foreign_certs.client.key_file),
            # everything from another CA
            foreign_certs.client,
        ]  # fmt: skip
        for tls in refused:
            start = time.monotonic()
            with pytest.raises(ConnectionError, match="same CA") as err:
                with connect(scheduler=pc.address, tls=tls, timeout=5, quiet=True):
                    pass
            assert time.monotonic() - start < 6
            assert "\n" not in str(err.value)
        # Plain TCP to the TLS port.
        with pytest.raises(ConnectionError):
            with connect(scheduler=f"tcp://{host}:{port}", timeout=3, quiet=True):
                pass

        # A TLS client with no certificate at all (distributed's own Client refuses to even
        # try, so speak TLS directly): the scheduler aborts the handshake.
        ctx = ssl.create_default_context(cafile=str(certs.ca_file))
        ctx.check_hostname = False
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with ctx.wrap_socket(raw) as tls_sock:
                    tls_sock.sendall(b"\x00" * 16)
                    # An accepted client would wait here for the scheduler's reply
                    # (socket.timeout, not an SSLError): the alert arrives first.
                    if tls_sock.recv(16) == b"":
                        raise ConnectionError("closed by the scheduler")


# --------------------------------------------------------------------------------------------
# Shell recipes
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(15)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_make_certs_script(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "cluster/tls/make_certs.sh"), str(tmp_path)],
        check=True, capture_output=True, timeout=15,
    )  # fmt: skip
    for name in ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"):
        assert (tmp_path / name).is_file()
    assert (os.stat(tmp_path / "client-key.pem").st_mode & 0o077) == 0
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem"))


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_local_start_and_stop_scripts(tmp_path):
    env = {
        **os.environ,
        # The scripts find `dask` and `python` on PATH: use this interpreter's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "START_TIMEOUT": "40",
    }
    run_dir = tmp_path / "run"
    started = subprocess.run(
        ["bash", str(ROOT / "cluster/local/start.sh"), "1", str(run_dir)],
        env=env, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == str(run_dir / "scheduler.json")
        with connect(scheduler_file=started.stdout.strip(), quiet=True) as client:
            assert client.submit(operator.add, 2, 3).result() == 5
        pids = [int((run_dir / f).read_text()) for f in ("scheduler.pid", "worker-0.pid")]
        tree = process_tree(pids)
        assert tree and listening_addresses(tree) == {"127.0.0.1"}
    finally:
        stopped = subprocess.run(
            ["bash", str(ROOT / "cluster/local/stop.sh"), str(run_dir)],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    assert all(gone(p) for p in tree)
    assert not (run_dir / "scheduler.pid").exists()
