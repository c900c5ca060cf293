"""Training never loses or corrupts work: divergence guards, the directory lock, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_trainer as trainer

from dimplicit.distributed.checkpoint import (
    DirectoryInUseError,
    list_checkpoints,
    load_checkpoint,
    lock_directory,
)
from dimplicit.distributed.trainer import DivergenceError
from dimplicit.optim import OptimizerConfig

pytestmark = pytest.mark.timeout(240)


def records(path, kind=None):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [r for r in lines if kind is None or r["kind"] == kind]


# ----------------------------------------------------------------------------- divergence

HUGE = OptimizerConfig("sgd", lr=1e4, momentum=0.9)


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(teacher_store, tmp_path):
    ck = tmp_path / "ck"
    t = trainer(teacher_store, epochs=20, optimizer=HUGE, checkpoint_dir=ck, checkpoint_every=1)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+.*smaller learning rate"):
        t.fit()
    assert not (ck / "model.npz").exists()
    saved = list_checkpoints(ck)
    assert saved, "the steps before the divergence were checkpointed"
    for path in saved:  # none of them holds a NaN
        ck_ = load_checkpoint(path)
        assert all(np.isfinite(v).all() for v in ck_["params"].values()), path.name
    steps = records(ck / "metrics.jsonl", "step")
    bad = [r["step"] for r in steps if not r["finite"]]
    assert bad and load_checkpoint(saved[-1])["header"]["step"] <= bad[0]


def test_skip_step_goes_on_and_stops_after_too_many_in_a_row(teacher_store):
    t = trainer(teacher_store, epochs=20, optimizer=HUGE, on_divergence="skip-step")
    with pytest.raises(DivergenceError, match="in a row were skipped"):
        t.fit()


def test_skip_step_skips_a_lone_bad_step(teacher_store, monkeypatch):
    """One non-finite step (injected) is skipped; the run finishes with finite weights."""
    from dimplicit.distributed import tasks

    real = tasks.update

    def update(params, state, total, step, *a, **kw):
        if step == 3:
            total = {**total, "loss": float("nan")}
        return real(params, state, total, step, *a, **kw)

    monkeypatch.setattr(tasks, "update", update)
    t = trainer(teacher_store, on_divergence="skip-step").fit()
    assert t.summary_["skipped_steps"] == 1
    assert all(np.isfinite(v).all() for v in t.model_.params.values())
    with pytest.raises(DivergenceError, match="step 3"):
        trainer(teacher_store).fit()


# ----------------------------------------------------------------------------- the lock


def hold_lock_in_another_process(directory):
    code = (
        "import sys, time\n"
        "from dimplicit.distributed.checkpoint import lock_directory\n"
        f"with lock_directory({str(directory)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_locked_directory_fails_and_touches_nothing(teacher_store, tmp_path):
    ck = tmp_path / "ck"
    proc = hold_lock_in_another_process(ck)
    try:
        with pytest.raises(DirectoryInUseError, match=f"pid {proc.pid}"):
            trainer(teacher_store, checkpoint_dir=ck).fit()
        assert sorted(p.name for p in ck.iterdir()) == [".lock"]
    finally:
        proc.kill()
        proc.wait()
    # The holder died without unlocking: its lock is not stale, it is gone (flock).
    t = trainer(teacher_store, epochs=1, checkpoint_dir=ck).fit()
    assert (ck / "model.npz").is_file() and t.summary_["checkpoint"]


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with lock_directory(tmp_path / "d"), lock_directory(tmp_path / "d"):
        pass
    with lock_directory(tmp_path / "d"):  # and released after
        pass


def test_two_concurrent_cli_trains_on_one_directory(teacher_store, tmp_path):
    ck = tmp_path / "ck"
    args = [
        sys.executable, "-m", "dimplicit", "train", "--data", str(teacher_store), "--hidden",
        "16", "--batch-size", "250", "--no-progress", "--checkpoint-dir", str(ck),
    ]  # fmt: skip
    first = subprocess.Popen([*args, "--epochs", "400"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (ck / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run([*args, "--epochs", "1"], capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert "in use by another training run" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


# ----------------------------------------------------------------------------- signals


def cli_train(store, ck, *extra):
    return [
        sys.executable, "-m", "dimplicit", "train", "--data", str(store), "--hidden", "16",
        "--batch-size", "250", "--block-rows", "250", "--lr", "0.01", "--no-progress",
        "--checkpoint-dir", str(ck), "--executor", "local", *extra,
    ]  # fmt: skip


def wait_for_steps(log, n, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if log.exists() and log.read_text().count('"kind": "step"') >= n:
            return
        time.sleep(0.05)
    raise AssertionError("training did not start in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_a_checkpoint_and_resume_finishes_the_same_run(
    teacher_store, tmp_path, sig
):
    epochs = 60
    reference = trainer(
        teacher_store, epochs=epochs, batch_size=250, optimizer=OptimizerConfig(lr=1e-2)
    ).fit()
    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        cli_train(teacher_store, ck, "--epochs", str(epochs)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_steps(ck / "metrics.jsonl", 5, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "checkpoint written to" in lines[0] and "--resume" in lines[0], err
    assert "Traceback" not in err and out == ""
    saved = list_checkpoints(ck)
    assert len(saved) == 1
    stopped_at = load_checkpoint(saved[0])["header"]["step"]
    assert 0 < stopped_at < reference.summary_["steps"]

    done = subprocess.run(
        cli_train(teacher_store, ck, "--epochs", str(epochs), "--resume"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from"] == stopped_at
    assert summary["weights_sha256"] == reference.summary_["weights_sha256"]
    steps = [r["step"] for r in records(ck / "metrics.jsonl", "step")]
    assert steps == list(range(reference.summary_["steps"]))  # each step once, in order


def test_a_signal_without_a_checkpoint_directory_says_nothing_was_saved(teacher_store, tmp_path):
    from dimplicit.interrupt import TrainingInterrupted

    def interrupt(rec):
        if rec["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    t = trainer(teacher_store, epochs=50, callback=interrupt)
    with pytest.raises(TrainingInterrupted, match="nothing was saved") as info:
        t.fit()
    assert info.value.checkpoint is None and info.value.step >= 3


def test_resume_without_a_checkpoint_warns_and_starts_at_zero(teacher_store, tmp_path):
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("dimplicit")
    logger.addHandler(handler)
    try:
        ck = tmp_path / "ck"
        ck.mkdir()
        t = trainer(teacher_store, epochs=1, checkpoint_dir=ck, resume=True).fit()
    finally:
        logger.removeHandler(handler)
    assert any("no checkpoint" in m for m in seen) and t.summary_["resumed_from"] == 0


@pytest.mark.slow
def test_ctrl_c_with_worker_processes_is_one_line_and_a_checkpoint(teacher_store, tmp_path):
    """Ctrl-C reaches the whole foreground process group, workers included."""
    ck = tmp_path / "ck"
    args = cli_train(teacher_store, ck, "--epochs", "400", "--executor", "dask", "--workers", "2")
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for_steps(ck / "metrics.jsonl", 5, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2, err  # the cluster's one-line summary, then the interruption
    assert "checkpoint written to" in lines[-1]
    assert list_checkpoints(ck)
