"""Distributed trainer: determinism across workers, resume, killed worker, bad input."""

import json
import os
import signal

import numpy as np
import pytest
from conftest import make_trainer
from distributed import Client, LocalCluster

from dimplicit.cli import main
from dimplicit.distributed.checkpoint import list_checkpoints, load_checkpoint
from dimplicit.distributed.spec import DataSpec
from dimplicit.distributed.trainer import Trainer
from dimplicit.fit import fit
from dimplicit.model import dense_model
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig

pytestmark = pytest.mark.timeout(180)


def run_on(n_workers, trainer, processes=False):
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        return trainer.fit(client)


def test_weights_are_bitwise_identical_with_1_2_3_workers(teacher_store):
    hashes = {
        w: run_on(w, make_trainer(teacher_store)).summary_["weights_sha256"] for w in (1, 2, 3)
    }
    assert len(set(hashes.values())) == 1, hashes


def test_weights_do_not_depend_on_how_often_weights_are_synced(teacher_store):
    """Gathering and re-broadcasting the weights (every sync) must not change them."""
    often = run_on(2, make_trainer(teacher_store, epochs=3, sync_every=2)).summary_
    never = run_on(2, make_trainer(teacher_store, epochs=3, sync_every=10**6)).summary_
    assert often["weights_sha256"] == never["weights_sha256"]


def test_training_learns_and_reports(teacher_store, tmp_path):
    t = run_on(2, make_trainer(teacher_store, epochs=4, metrics_log=tmp_path / "m.jsonl"))
    s = t.summary_
    first, last = t.history_[0]["loss"], t.history_[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    # ~800 train rows per 1000-row chunk → 4 blocks of ≤ 250 rows per chunk → 24 blocks,
    # 4 blocks per step → 6 steps per epoch.
    assert s["steps"] == len(t.history_) == 4 * 6
    assert s["val_loss"] is not None and s["samples_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in lines) == 24
    assert sum(r["kind"] == "eval" for r in lines) == 4


def test_same_data_visits_every_training_row_once_per_epoch(teacher_store):
    t = run_on(1, make_trainer(teacher_store, epochs=1))
    assert sum(r["count"] for r in t.history_) == t.summary_["rows_per_epoch"]


def test_matches_in_process_fit_when_one_block_per_step(make_store):
    """One block per step = one mini-batch per step: the same arithmetic as fit()."""
    from dimplicit.data.store import open_store

    path = make_store("one.zarr", chunk=6000)  # a single chunk
    store = open_store(path)
    t = run_on(1, make_trainer(path, epochs=1, batch_size=6000, block_rows=6000))
    assert t.summary_["steps"] == 1
    keep = store.split[:] == 0
    U = store.features[:][keep]
    y = store.labels[:][keep].astype(np.int64)
    # fit() shuffles with its own RNG; with one block holding every row both see the same sum
    # up to row order, so compare after one step to float32 accuracy.
    model, _ = fit(
        dense_model(6, 16, 3, seed=0),
        U,
        y,
        config=StepConfig("cross_entropy"),
        optimizer=OptimizerConfig(lr=1e-2),
        epochs=1,
        batch_size=len(U),
    )
    for k in model.params:
        np.testing.assert_allclose(t.model_.params[k], model.params[k], rtol=1e-4, atol=1e-6)


def test_resume_gives_bitwise_the_same_weights(teacher_store, tmp_path):
    full = run_on(2, make_trainer(teacher_store, epochs=3)).summary_["weights_sha256"]
    ck = tmp_path / "ck"
    first = run_on(
        2, make_trainer(teacher_store, epochs=3, checkpoint_dir=ck, checkpoint_every=4, max_steps=7)
    )
    assert first.summary_["steps"] == 7
    saved = list_checkpoints(ck)
    assert [p.name for p in saved] == ["ckpt-00000004.npz", "ckpt-00000007.npz"]
    head = load_checkpoint(saved[-1])["header"]
    assert head["step"] == 7 and head["epoch"] == 1
    resumed = run_on(1, make_trainer(teacher_store, epochs=3, checkpoint_dir=ck, resume=True))
    assert resumed.summary_["steps"] == 18 and resumed.summary_["steps_this_run"] == 11
    assert resumed.summary_["weights_sha256"] == full


def test_refuses_to_overwrite_checkpoints_without_resume(teacher_store, tmp_path):
    ck = tmp_path / "ck"
    run_on(1, make_trainer(teacher_store, epochs=1, checkpoint_dir=ck))
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    with pytest.raises(ValueError, match="resume=True"):
        run_on(1, make_trainer(teacher_store, epochs=1, checkpoint_dir=ck))
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before


def test_resume_refuses_a_different_run(teacher_store, tmp_path):
    ck = tmp_path / "ck"
    run_on(1, make_trainer(teacher_store, epochs=1, checkpoint_dir=ck))
    with pytest.raises(ValueError, match="cannot be resumed"):
        run_on(1, make_trainer(teacher_store, epochs=2, seed=5, checkpoint_dir=ck, resume=True))


@pytest.mark.slow
def test_killed_worker_does_not_change_the_weights(teacher_store):
    """SIGKILL a worker process mid-training: the run completes with bitwise the same weights."""
    reference = run_on(2, make_trainer(teacher_store, epochs=4), processes=True)
    killed = []

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)

        def kill_one(rec):
            if rec["step"] == 3 and not killed:
                pid = sorted(pids.values())[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        t = make_trainer(teacher_store, epochs=4, callback=kill_one).fit(client)
        assert killed and killed[0] not in client.run(os.getpid).values()  # it really died
    assert t.summary_["steps"] == reference.summary_["steps"]
    assert t.summary_["weights_sha256"] == reference.summary_["weights_sha256"]


# ----------------------------------------------------------------------------- CLI / bad input


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_prints_one_json_summary(teacher_store, tmp_path, capsys):
    code, out, err = cli(
        capsys,
        "train",
        "--data",
        str(teacher_store),
        "--task",
        "classify",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "1000",
        "--workers",
        "2",
        "--no-processes",
        "--checkpoint-dir",
        str(tmp_path / "c"),
        "--seed",
        "3",
    )
    assert code == 0, err
    summary = json.loads(out)
    for key in ("steps", "final_loss", "samples_per_s", "weights_sha256", "checkpoint"):
        assert summary[key] is not None, key
    assert summary["executor"] == "dask"  # auto: more than one worker asks for a cluster
    assert (tmp_path / "c" / "model.npz").is_file()
    assert (tmp_path / "c" / "metrics.jsonl").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/store.zarr"], "no store at /nonexistent/store.zarr"),
        (["--task", "regress", "--arch", "layered:x"], "bad architecture"),
        (["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "2"], "cannot reach"),
    ],
)
def test_cli_bad_input_is_one_clear_line(teacher_store, tmp_path, capsys, args, message):
    base = ["train", "--data", str(teacher_store), "--epochs", "1", "--no-progress"]
    # A later --data overrides the first one (argparse keeps the last).
    code, out, err = cli(capsys, *base, *args, "--checkpoint-dir", str(tmp_path / "c"))
    assert code != 0
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert out == ""
    assert not (tmp_path / "c").exists()  # nothing written


def test_regress_needs_numeric_labels(make_store):
    from dimplicit.data.store import open_store

    path = make_store("r.zarr", n=300, chunk=100)
    t = Trainer(dense_model(6, 8, 1, seed=0), DataSpec(str(path), "regress"))
    t.check(open_store(path))  # labels "0", "1", "2" are numbers: fine
    import zarr

    zarr.open_group(path, mode="r+").attrs["label_classes"] = ["normal", "dos", "probe"]
    with pytest.raises(ValueError, match="numeric labels"):
        t.check(open_store(path))


def test_cli_existing_checkpoint_of_another_run(make_store, tmp_path, capsys):
    other = make_store("p4.zarr", n=500, p=4, chunk=250)
    ck = tmp_path / "c"
    ck.mkdir()
    (ck / "ckpt-00000001.npz").write_bytes(b"existing")
    # An unreadable "checkpoint" in the directory: a clear error, and the file is kept.
    code, _, err = cli(
        capsys,
        "train",
        "--data",
        str(other),
        "--epochs",
        "1",
        "--checkpoint-dir",
        str(ck),
        "--resume",
        "--no-progress",
        "--no-processes",
    )
    assert code != 0 and "ckpt-00000001.npz" in err
    assert (ck / "ckpt-00000001.npz").read_bytes() == b"existing"


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_nan_in_features_is_one_line(make_store, capsys, executor):
    """NaN features fail inside the chunk loader (a worker task with Dask): the user sees one
    line naming the row, not Dask's "Compute Failed" logs or a traceback."""
    path = make_store("nan.zarr", n=500, chunk=250)
    import zarr

    g = zarr.open_group(path, mode="r+")
    block = g["features"][:]
    block[300, 2] = np.nan
    g["features"][:] = block
    code, out, err = cli(
        capsys, "train", "--data", str(path), "--epochs", "1", "--batch-size", "250",
        "--quiet", "--executor", executor, "--workers", "2", "--no-processes",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "Compute Failed" not in err and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "NaN/Inf" in errors[0] and "first at row 300" in errors[0]


def test_early_stopping_stops_when_validation_stops_improving(teacher_store):
    # A learning rate far too large: the validation loss gets worse after the first epoch.
    t = run_on(
        1,
        make_trainer(
            teacher_store,
            epochs=10,
            patience=2,
            optimizer=OptimizerConfig("sgd", lr=10.0, momentum=0.9),
        ),
    )
    assert t.summary_["stopped_early"]
    assert t.summary_["steps"] < 10 * 6
    assert t.summary_["best_val_loss"] < t.summary_["val_loss"]


# ----------------------------------------------------------------------------- executors


def test_local_and_dask_executors_give_bitwise_the_same_weights(teacher_store):
    """One plan, two executors: in-process, 1-worker and 2-worker Dask agree to the bit."""
    opts = dict(epochs=3, eval_every=5, select_best="val_accuracy")
    local = make_trainer(teacher_store, executor="local", **opts).fit()
    assert local.summary_["executor"] == "local"
    hashes = {"local": local.summary_["weights_sha256"]}
    for w in (1, 2):
        t = run_on(w, make_trainer(teacher_store, executor="dask", **opts))
        assert t.summary_["executor"] == "dask"
        hashes[f"dask-{w}"] = t.summary_["weights_sha256"]
    assert len(set(hashes.values())) == 1, hashes
    assert [r["val_accuracy"] for r in local.evaluations_] == [
        r["val_accuracy"] for r in t.evaluations_
    ]


def test_select_best_restores_the_best_evaluation(teacher_store):
    """A learning rate far too large: later evaluations are worse; the best one is kept."""
    from dimplicit.model import weights_sha256

    bad = OptimizerConfig("sgd", lr=10.0, momentum=0.9)
    kept = {}

    def remember(epoch, model):
        kept[epoch] = weights_sha256(model.params)

    t = make_trainer(
        teacher_store, executor="local", epochs=6, optimizer=bad, select_best="val_loss",
        epoch_callback=remember,
    ).fit()  # fmt: skip
    losses = [r["val_loss"] for r in t.evaluations_]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best < len(losses) - 1, losses  # the last evaluation is not the best
    assert t.best_ == {"metric": "val_loss", "value": losses[best], "step": (best + 1) * 6}
    assert t.summary_["weights_sha256"] == kept[best] != kept[len(losses) - 1]


def test_patience_keeps_the_best_not_the_last_weights(teacher_store):
    bad = OptimizerConfig("sgd", lr=10.0, momentum=0.9)
    t = make_trainer(teacher_store, executor="local", epochs=20, patience=2, optimizer=bad).fit()
    assert t.summary_["stopped_early"]
    assert t.best_["metric"] == "val_loss"
    assert t.best_["value"] == min(r["val_loss"] for r in t.evaluations_)
    assert t.best_["value"] < t.evaluations_[-1]["val_loss"]


def test_keep_best_survives_a_resume(teacher_store, tmp_path):
    bad = OptimizerConfig("sgd", lr=10.0, momentum=0.9)
    opts = dict(executor="local", epochs=6, optimizer=bad, select_best="val_loss")
    full = make_trainer(teacher_store, **opts).fit().summary_["weights_sha256"]
    ck = tmp_path / "ck"
    make_trainer(teacher_store, checkpoint_dir=ck, checkpoint_every=6, max_steps=24, **opts).fit()
    resumed = make_trainer(teacher_store, checkpoint_dir=ck, resume=True, **opts).fit()
    assert resumed.summary_["weights_sha256"] == full


def test_a_lost_step_is_replayed_from_the_last_sync_with_the_same_weights(
    teacher_store, tmp_path, monkeypatch
):
    """Dask cancels a step whose inputs it lost ('already forgotten'): the run replays from
    the last synced weights and ends bitwise equal, every step logged once."""
    from distributed.client import FutureCancelledError

    from dimplicit.distributed.executor_dask import DaskExecutor

    opts = dict(epochs=3, sync_every=4, select_best="val_loss", eval_every=5)
    reference = run_on(1, make_trainer(teacher_store, executor="dask", **opts)).summary_
    real, lost = DaskExecutor.results, []

    def results(self, keep=0):
        for step, epoch, summary in real(self, keep):
            if step == 6 and not lost:
                lost.append(step)
                raise FutureCancelledError(f"summary-{step}", reason="already forgotten")
            yield step, epoch, summary

    monkeypatch.setattr(DaskExecutor, "results", results)
    log = tmp_path / "m.jsonl"
    t = run_on(1, make_trainer(teacher_store, executor="dask", metrics_log=log, **opts))
    assert lost and t.summary_["weights_sha256"] == reference["weights_sha256"]
    assert t.summary_["best"] == reference["best"]
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if '"step"' in x
             and json.loads(x)["kind"] == "step"]  # fmt: skip
    assert steps == list(range(reference["steps"]))


def test_cli_train_without_a_checkpoint_dir_keeps_the_model(teacher_store, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    """The trained model is never thrown away: it goes to a new runs/DATE-TIME directory."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(teacher_store), "--hidden", "8", "--epochs", "1",
            "--batch-size", "1000", "--no-progress"]  # fmt: skip
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["executor"] == "local"
    model = tmp_path / summary["model"]
    assert model.is_file() and model.parent.parent.name == "runs"
    code, out2, _ = cli(capsys, *args)  # a second run gets its own directory
    assert code == 0 and json.loads(out2)["model"] != summary["model"]
