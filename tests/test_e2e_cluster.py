"""End to end against a real ``dask scheduler`` and ``dask worker`` processes (127.0.0.1 only).

``dimplicit train`` and ``dimplicit score`` run as subprocesses, exactly as a batch job would
run them; one worker (nanny and worker process) is SIGKILLed during training.  The weights
must be bitwise those of the in-process default cluster.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from dimplicit.testing import make_test_certificates, start_local_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(170)]

TRAIN = ["--task", "classify", "--hidden", "16", "--epochs", "8", "--batch-size", "1000",
         "--block-rows", "250", "--seed", "1", "--lr", "1e-2", "--no-progress"]  # fmt: skip


def dimplicit(*args, timeout=120):
    """Run the CLI in a subprocess; return (returncode, stdout, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "dimplicit", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=env)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def train_killing_a_worker(cluster, store, tmp_path, connect_args):
    """Start training, SIGKILL worker 0 after a few steps, return the summary."""
    log = tmp_path / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dimplicit", "train", "--data", str(store), *TRAIN,
         "--metrics-log", str(log), "--checkpoint-dir", str(tmp_path / "ck"), *connect_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        steps = 0
        while steps < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            steps = log.read_text().count('"kind": "step"') if log.exists() else 0
        assert proc.poll() is None, "training ended before the worker could be killed"
        cluster.kill_worker(0)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    total = json.loads(out)["steps"]
    assert steps < total, (steps, total)  # the kill really happened mid-training
    return json.loads(out)


def test_batch_job_flow_with_a_killed_worker_matches_in_process(make_store, tmp_path):
    store = make_store("data.zarr")
    code, out, err = dimplicit("train", "--data", store, *TRAIN, "--workers", "2")
    assert code == 0, err
    in_process = json.loads(out)

    with start_local_processes(2, tmp_path / "cluster") as cluster:
        sched = ["--scheduler-file", cluster.scheduler_file]
        code, out, err = dimplicit("train", "--data", store, *TRAIN, *sched)
        assert code == 0, err
        undisturbed = json.loads(out)
        killed = train_killing_a_worker(cluster, store, tmp_path, sched)
        assert killed["model"]
        # Score with the surviving worker, through the scheduler address this time.
        code, out, err = dimplicit("score", "--model", killed["model"], "--data", store,
                                   "--out", tmp_path / "scores.zarr", "--scheduler",
                                   cluster.address)  # fmt: skip
        assert code == 0, err
    assert undisturbed["weights_sha256"] == in_process["weights_sha256"]
    assert killed["weights_sha256"] == in_process["weights_sha256"]
    assert killed["steps"] == in_process["steps"]
    scores = zarr.open_group(tmp_path / "scores.zarr", mode="r")
    assert json.loads(out)["rows"] == scores["raw_score"].shape[0] == 6000
    assert np.isfinite(scores["raw_score"][:]).all()
    # Everything was torn down: no dask process of this cluster is left.
    assert all(p.poll() is not None for p in [cluster.scheduler_proc, *cluster.worker_procs])


def test_tls_flow_and_refusal_without_certificates(make_store, tmp_path):
    store = make_store("data.zarr", n=2000)
    certs = make_test_certificates(tmp_path / "certs")
    tls = certs.server
    short = [*TRAIN[:5], "2", *TRAIN[6:]]  # 2 epochs
    code, out, err = dimplicit("train", "--data", store, *short, "--workers", "2")
    assert code == 0, err
    in_process = json.loads(out)
    with start_local_processes(2, tmp_path / "cluster", tls=tls) as cluster:
        assert cluster.address.startswith("tls://")
        client_tls = ["--tls-ca-file", certs.ca_file, "--tls-cert", certs.client.cert_file,
                      "--tls-key", certs.client.key_file]  # fmt: skip
        code, out, err = dimplicit("train", "--data", store, *short, "--scheduler",
                                   cluster.address, *client_tls)  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["weights_sha256"] == in_process["weights_sha256"]
        # No client certificate: refused, one clear line, nothing trained.
        code, out, err = dimplicit("train", "--data", store, *short, "--scheduler",
                                   cluster.address, "--connect-timeout", "5")  # fmt: skip
        assert code != 0 and out == ""
        assert any("error:" in line for line in err.splitlines()), err
        # A certificate from another CA: refused as well.
        other = make_test_certificates(tmp_path / "other")
        code, out, err = dimplicit("train", "--data", store, *short, "--scheduler",
                                   cluster.address, "--connect-timeout", "5",
                                   "--tls-ca-file", other.ca_file, "--tls-cert",
                                   other.client.cert_file, "--tls-key",
                                   other.client.key_file)  # fmt: skip
        assert code != 0 and out == ""


def test_truncated_checkpoint_is_a_clear_error(make_store, tmp_path):
    store = make_store("data.zarr", n=2000)
    ck = tmp_path / "ck"
    short = [*TRAIN[:5], "1", *TRAIN[6:]]
    code, out, err = dimplicit("train", "--data", store, *short, "--workers", "1",
                               "--no-processes", "--checkpoint-dir", ck)  # fmt: skip
    assert code == 0, err
    ckpt = sorted(ck.glob("ckpt-*.npz"))[-1]
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    code, out, err = dimplicit("train", "--data", store, *short, "--workers", "1",
                               "--no-processes", "--checkpoint-dir", ck, "--resume")  # fmt: skip
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "truncated" in errors[0] and ckpt.name in errors[0]
    assert ckpt.read_bytes() == data[: len(data) // 3]  # left as it was, for inspection
