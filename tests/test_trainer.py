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


# ----------------------------------------------------------------------------- fast paths of
# the tasks (issue #15): the same values as the code they replaced, with less work per step.


def test_block_rows_draw_each_epoch_permutation_once():
    from dimplicit.distributed import tasks

    tasks._epoch_permutation.cache_clear()
    perm = np.random.default_rng([7, 2, 1]).permutation(1000)
    blocks = [tasks.block_rows(7, 2, 1, 1000, j, 32) for j in range(32)]
    np.testing.assert_array_equal(np.concatenate(blocks), perm)  # the last block is short
    assert tasks._epoch_permutation.cache_info().misses == 1
    assert not blocks[0].flags.writeable  # shared by the epoch's blocks: read-only
    other = tasks.block_rows(7, 3, 1, 1000, 0, 32)
    np.testing.assert_array_equal(other, np.random.default_rng([7, 3, 1]).permutation(1000)[:32])


def test_with_params_reuses_the_template_structure():
    from dimplicit.backend import get_backend
    from dimplicit.distributed.tasks import with_params
    from dimplicit.model import build_model
    from dimplicit.structure import BlockStructure

    template = build_model("ae-v1:3,8,4", 10, 10, activation="arctan", kappa=None, seed=0,
                           dtype="float32")  # fmt: skip
    params = {k: v + np.float32(1) for k, v in template.params.items()}
    model = with_params(template, params).astype(get_backend("cpu", "float32"))
    assert model.structure is template.structure
    assert model.structure == BlockStructure.of(model)
    for k, m in template.masks.items():  # still masked: structural zeros stay zero
        assert (model.params[k][m == 0] == 0).all()


def _eval_model_and_rows(task):
    from dimplicit.backend import get_backend
    from dimplicit.model import build_model

    rng = np.random.default_rng(3)
    U = rng.standard_normal((500, 10)).astype(np.float32)
    if task == "autoencode":
        model = build_model("ae-v1:3,8,4", 10, 10, activation="arctan", kappa=None, seed=0,
                            dtype="float32")  # fmt: skip
        return model, U, rng.random(500) < 0.7  # labelled: True = normal
    model = dense_model(10, 12, 3, seed=0).astype(get_backend("cpu", "float32"))
    if task == "classify":
        return model, U, rng.integers(0, 3, 500)
    return model, U, rng.standard_normal((500, 3)).astype(np.float32)


TASK_LOSSES = [("autoencode", "mse"), ("autoencode", "bce"), ("classify", "cross_entropy"),
               ("regress", "mse")]  # fmt: skip


@pytest.mark.parametrize(("task", "loss"), TASK_LOSSES)
def test_eval_sums_are_those_of_the_plain_expressions(task, loss):
    """Each value ``eval_sums`` reports, against the expressions it computed before the
    passes were shared (bitwise)."""
    from dimplicit.anomaly.metrics import score_histogram
    from dimplicit.distributed.tasks import eval_sums
    from dimplicit.forward import predict
    from dimplicit.losses import loss_and_grad, row_rmse

    model, U, Y = _eval_model_and_rows(task)
    config = StepConfig(loss)
    got = eval_sums(model.params, model, (U, Y), config, "cpu", "float32")
    Yhat = predict(model, U, config.forward)[0]
    if task == "autoencode":
        raw = row_rmse(Yhat, U)
        np.testing.assert_array_equal(got["scores"], raw.astype(np.float64))
        np.testing.assert_array_equal(got["normal"], Y)
        np.testing.assert_array_equal(got["hist_normal"], score_histogram(raw[Y]))
        np.testing.assert_array_equal(got["hist_anomalous"], score_histogram(raw[~Y]))
        Yhat, Y = Yhat[Y], U[Y]
        assert got["y_sum"] == got["y_sq_sum"] == 0.0  # R² sums: regression targets only
    else:
        assert got["scores"].size == 0
    assert got["count"] == Y.shape[0]
    assert got["loss"] == float(loss_and_grad(loss, Yhat, Y)[0])
    if task == "classify":
        assert got["correct"] == int((Yhat.argmax(axis=1) == Y).sum())
        return
    assert got["sse"] == float(((Yhat - Y) ** 2).sum())
    if task == "regress":
        assert got["y_sum"] == float(Y.sum()) and got["y_sq_sum"] == float((Y * Y).sum())


def test_eval_sums_of_anomalies_only_report_scores_and_no_loss():
    from dimplicit.distributed.tasks import eval_sums

    model, U, _ = _eval_model_and_rows("autoencode")
    got = eval_sums(model.params, model, (U, np.zeros(500, bool)), StepConfig(), "cpu", "float32")
    assert got["count"] == 0 and got["loss"] == 0.0 and got["scores"].shape == (500,)
    assert got["hist_normal"].sum() == 0 and got["hist_anomalous"].sum() == 500


@pytest.mark.parametrize("loss", ["mse", "bce", "cross_entropy"])
def test_loss_sum_is_the_loss_of_loss_and_grad(loss):
    from dimplicit.losses import loss_and_grad, loss_sum

    rng = np.random.default_rng(0)
    Yhat = rng.standard_normal((300, 5)).astype(np.float32)
    Y = rng.integers(0, 5, 300) if loss == "cross_entropy" else rng.random((300, 5)) < 0.5
    Y = Y if loss == "cross_entropy" else Y.astype(np.float32)
    assert loss_sum(loss, Yhat, Y) == loss_and_grad(loss, Yhat, Y)[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_on_backend_is_with_params_then_astype(dtype):
    """One construction when nothing moves, the conversion otherwise: the same bits."""
    from dimplicit.backend import get_backend
    from dimplicit.distributed.tasks import _model_on, with_params

    template = dense_model(10, 12, 3, seed=0).astype(get_backend("cpu", dtype))
    template.masks["A"] = (np.random.default_rng(0).random((12, 12)) < 0.5).astype(dtype)
    params = {k: -np.abs(v) for k, v in template.params.items()}  # masked: -0.0 entries
    be = get_backend("cpu", "float32")
    got, want = _model_on(be, template, params), with_params(template, params).astype(be)
    for k in want.params:
        assert got.params[k].dtype == np.float32
        np.testing.assert_array_equal(got.params[k].view(np.int32), want.params[k].view(np.int32))
