"""Nothing lost: guarded, atomic publication of every output (dimplicit.atomic, data.store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest
import zarr

from dimplicit import atomic
from dimplicit.anomaly.score import score_store
from dimplicit.cli import main
from dimplicit.data.store import (
    SCORES_FORMAT,
    OutputExistsError,
    check_output,
    open_store,
    output_kind,
    publish_output,
)
from dimplicit.data.synth import synth_traffic
from dimplicit.model import build_model

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small traffic store and an (untrained) autoencoder saved as a model file."""
    d = tmp_path_factory.mktemp("scored")
    path = d / "t.zarr"
    synth_traffic(1200, path, seed=1, chunk_rows=400)
    store = open_store(path)
    model = build_model("ae-dense", store.n_features, store.n_features, hidden=8, seed=0)
    model.meta["training"] = {"task": "autoencode", "feature_names": store.feature_names}
    ck = d / "ck"
    ck.mkdir()
    model.save(ck / "model.npz")
    (ck / "ckpt-00000004.npz").write_bytes(b"a checkpoint")
    return path, model, ck


def tree(path):
    """Every file under ``path`` with its bytes: to show that nothing changed."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def score(model, data, out, **kw):
    with dask.config.set(scheduler="sync"):
        return score_store(model, data, out, **kw)


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_an_arbitrary_directory(scored, tmp_path):
    data, model, _ = scored
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        score(model, data, d, overwrite=True)
    assert (d / "keep.txt").read_text() == "x"


def test_overwrite_refuses_the_input_store(scored):
    data, model, _ = scored
    before = tree(data)
    with pytest.raises(FileExistsError):
        score(model, data, data, overwrite=True)
    assert tree(data) == before and open_store(data).n_rows == 1200


def test_cli_overwrite_refuses_the_checkpoint_directory(scored, capsys):
    data, _, ck = scored
    before = tree(ck)
    code, out, err = cli(
        capsys, "score", "--model", ck / "model.npz", "--data", data, "--out", ck, "--overwrite"
    )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "overlaps the input" in err
    assert tree(ck) == before


def test_overwrite_replaces_an_earlier_score_output(scored, tmp_path):
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    score(model, data, out)
    assert output_kind(out) == SCORES_FORMAT
    with pytest.raises(OutputExistsError):
        score(model, data, out)
    report = score(model, data, out, overwrite=True)
    assert report["rows"] == 1200 and zarr.open_group(out, mode="r")["score"].shape == (1200,)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporaries left


def test_a_score_output_may_not_replace_a_store_and_vice_versa(scored, tmp_path):
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    score(model, data, out)
    with pytest.raises(FileExistsError, match="refusing"):
        check_output(out, "store", overwrite=True)
    with pytest.raises(FileExistsError, match="refusing"):
        check_output(data, SCORES_FORMAT, overwrite=True)


def test_ingest_overwrite_refuses_an_arbitrary_directory(tmp_path, capsys):
    csv = tmp_path / "x.csv"
    csv.write_text("a,b,label\n1,2,x\n3,4,y\n")
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    code, _, err = cli(
        capsys, "ingest", csv, "--out", d, "--format", "generic", "--header", "--label",
        "label", "--overwrite",
    )  # fmt: skip
    assert code == 2 and "refusing" in err
    assert (d / "keep.txt").read_text() == "x"


# ----------------------------------------------------------------------------- races


def test_an_output_that_appears_while_scoring_is_never_deleted(scored, tmp_path, monkeypatch):
    """Without --overwrite, something that appears at --out during the run survives it."""
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    real = publish_output

    def other_run_first(tmp, path, *args, **kw):
        path.mkdir()
        (path / "theirs.txt").write_text("theirs")
        return real(tmp, path, *args, **kw)

    monkeypatch.setattr("dimplicit.anomaly.score.publish_output", other_run_first)
    with pytest.raises(OutputExistsError):
        score(model, data, out)
    assert (out / "theirs.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_the_rename_refuses_a_path_that_appeared_after_the_check(tmp_path):
    tmp, out = tmp_path / ".new", tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    (out / "theirs.txt").write_text("theirs")
    with pytest.raises(FileExistsError):
        atomic.move_new(tmp, out)
    assert (out / "theirs.txt").read_text() == "theirs" and tmp.is_dir()


def test_overwrite_swap_puts_back_a_stranger_that_appeared_meanwhile(scored, tmp_path):
    """check_old sees what was swapped out: not a score output, so it goes back."""
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    tmp = tmp_path / ".s.zarr.tmp-1-00000000"
    score(model, data, tmp_path / "first.zarr")
    os.rename(tmp_path / "first.zarr", tmp)
    out.mkdir()
    (out / "theirs.txt").write_text("theirs")

    def must_be_scores(old):
        check_output(old, SCORES_FORMAT, overwrite=True)

    with pytest.raises(FileExistsError):
        atomic.replace_dir(tmp, out, check_old=must_be_scores)
    assert (out / "theirs.txt").read_text() == "theirs"
    assert output_kind(tmp) == SCORES_FORMAT  # ours is back at its temporary name


# ----------------------------------------------------------------------------- kills


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_a_failed_swap_keeps_the_old_output(scored, tmp_path, monkeypatch, exchange):
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    score(model, data, out)
    before = tree(out)
    if exchange:

        def fail(a, b):
            raise OSError("simulated failure of the exchange")

        monkeypatch.setattr(atomic, "exchange", fail)
    else:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
        real_rename = os.rename

        def rename(src, dst):  # the second rename of the fallback fails
            if ".tmp-" in str(src):
                raise OSError("simulated failure of the second rename")
            return real_rename(src, dst)

        monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        score(model, data, out, overwrite=True)
    assert tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_a_kill_between_the_fallback_renames_is_recovered_by_the_next_run(scored, tmp_path):
    """SIGKILL (os._exit) after the old output moved aside: the next run moves it back."""
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    score(model, data, out)
    before = tree(out)
    new = tmp_path / "new.zarr"
    score(model, data, new)
    script = textwrap.dedent(
        f"""
        import os
        from dimplicit import atomic
        atomic.exchange = lambda a, b: False
        real = os.rename
        def rename(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                os._exit(9)  # killed between the two renames
        atomic.os.rename = rename
        tmp = atomic.temp_sibling({str(out)!r})
        real({str(new)!r}, tmp)
        atomic.replace_dir(tmp, {str(out)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert not out.exists()  # the moment of the kill: the old output is aside
    actions = atomic.recover(out)
    assert any("restored" in a for a in actions), actions
    assert tree(out) == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # the dead run's temporary is removed too


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_run(scored, tmp_path):
    data, model, _ = scored
    out = tmp_path / "s.zarr"
    pid = dead_pid()
    stale = tmp_path / f".s.zarr.tmp-{pid}-deadbeef"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    alive = tmp_path / f".s.zarr.tmp-{os.getpid()}-0123abcd"
    alive.mkdir()  # a live process's work in progress: not touched
    score(model, data, out)
    assert not stale.exists() and alive.exists()


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".model.npz.tmp-{pid}-deadbeef"
    stale.write_bytes(b"half a model")
    atomic.write_file(tmp_path / "model.npz", lambda fh: fh.write(b"whole"))
    assert not stale.exists() and (tmp_path / "model.npz").read_bytes() == b"whole"
    (tmp_path / f".ckpt-00000009.npz.tmp-{pid}-0badf00d").write_bytes(b"half")
    assert len(atomic.clean_directory(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_write_file_without_replace_refuses_an_existing_file(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("theirs")
    with pytest.raises(FileExistsError):
        atomic.write_file(path, lambda fh: fh.write(b"ours"), replace=False)
    assert path.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["f.csv"]


def test_a_store_writer_too_large_for_memory_fails_before_writing(tmp_path, capsys):
    code, _, err = cli(
        capsys, "synth", "traffic", "--rows", "10", "--out", tmp_path / "t.zarr",
        "--chunk-rows", "1000000000",
    )  # fmt: skip
    assert code == 2 and "chunk" in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_scores_attrs_record_the_output_kind(scored, tmp_path):
    data, model, _ = scored
    score(model, data, tmp_path / "s.zarr")
    doc = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert doc["attributes"]["format"] == SCORES_FORMAT
    assert np.isfinite(zarr.open_group(tmp_path / "s.zarr", mode="r")["raw_score"][:]).all()


def test_only_this_process_temporaries_are_ever_deleted(tmp_path):
    """The one deletion helper refuses anything but a temporary of this process."""
    mine = atomic.make_temporary_dir(tmp_path, "out")
    (mine / "x").write_text("x")
    user = tmp_path / "data"
    user.mkdir()
    other = tmp_path / f".out.tmp-{dead_pid()}-deadbeef"
    other.mkdir()
    for path in (user, other, tmp_path / ".out.old-1-deadbeef"):
        with pytest.raises(ValueError, match="refusing to delete"):
            atomic.remove_temporary(path)
    atomic.remove_temporary(mine)
    assert not mine.exists() and user.is_dir() and other.is_dir()
    atomic.remove_temporary(mine)  # already gone: fine


def test_demo_never_deletes_under_its_workdir(tmp_path, capsys):
    """Re-running the demo writes a new model directory; an old one (or a user's file in
    it) is left alone."""
    keep = tmp_path / "model" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("x")
    args = ["demo", "--workdir", str(tmp_path), "--rows", "3000", "--epochs", "1", "--quiet",
            "--no-processes"]  # fmt: skip
    assert cli(capsys, *args)[0] == 0
    assert keep.read_text() == "x"
    assert len([p for p in keep.parent.iterdir() if p.is_dir()]) == 1
