"""A store missing (or with a malformed) attribute or array: one-line error, exit status 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data.store import StoreWriter, open_store

P = 3


def _write(path, targets=True):
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(P)]
    with StoreWriter(path, names, chunk_rows=50, target_names=["t"] if targets else ()) as w:
        n = 120
        w.append(rng.normal(size=(n, P)), np.arange(n) % 2, (np.arange(n) % 5 == 0).astype(int),
                 rng.normal(size=(n, 1)) if targets else None)  # fmt: skip
        w.close({
            "format": "generic",
            "label_classes": ["a", "b"],
            "normal_classes": ["a"],
            "categories": {},
            "stats": {"mean": [0.0] * P, "std": [1.0] * P, "count": n, "rows": "all"},
        })  # fmt: skip
    return path


def _edit_attrs(path, change):
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"])
    meta.write_text(json.dumps(doc))


def _drop(key):
    return lambda a: a.pop(key)


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


def _set_in(key, sub, value):
    return lambda a: a[key].__setitem__(sub, value)


# (what breaks the store, words the one-line error must contain)
BROKEN = {
    "no stats": (_drop("stats"), "attribute stats is missing"),
    "stats not a dict": (_set("stats", [1, 2]), "attribute stats is missing"),
    "stats.mean short": (_set_in("stats", "mean", [0.0]), "stats.mean must be a list of 3"),
    "stats.std missing": (lambda a: a["stats"].pop("std"), "stats.std must be a list of 3"),
    "stats.std text": (_set_in("stats", "std", ["1", "1", "1"]), "stats.std must be a list"),
    "no feature_names": (_drop("feature_names"), "feature_names does not match"),
    "feature_names short": (_set("feature_names", ["f0"]), "feature_names does not match"),
    "label_classes not a list": (_set("label_classes", "a,b"), "label_classes must be a list"),
    "label_classes numbers": (_set("label_classes", [0, 1]), "label_classes must be a list"),
    "normal_classes malformed": (_set("normal_classes", {"a": 1}), "normal_classes must be"),
    "categories malformed": (_set("categories", {"c": "x"}), "categories must map"),
    "no target_names": (_drop("target_names"), "target_names does not match"),
    "no target_stats": (_drop("target_stats"), "target_stats must hold mean and std"),
    "no schema_version": (_drop("schema_version"), "is not a dimplicit store"),
    "newer schema_version": (_set("schema_version", 99), "schema_version 99"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_attribute_is_one_line_exit_2(case, tmp_path, capsys):
    store = _write(tmp_path / "s.zarr")
    open_store(store)  # valid before the edit
    change, words = BROKEN[case]
    _edit_attrs(store, change)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        open_store(store)
    args = ["train", "--data", str(store), "--task", "regress", "--epochs", "1",
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dimplicit train: error:") and words in err
    assert "Traceback" not in err and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("array", ["labels", "split", "features"])
def test_missing_array_is_one_line_exit_2(array, tmp_path, capsys):
    store = _write(tmp_path / "s.zarr", targets=False)
    shutil.rmtree(store / array)
    args = ["train", "--data", str(store), "--epochs", "1",
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"missing '{array}'" in err


def test_score_names_the_missing_attribute(tmp_path, capsys):
    """``score`` reads the store the same way: a model trained on a good store, scored on a
    store without statistics, fails in one line before any cluster starts."""
    good = _write(tmp_path / "good.zarr", targets=False)
    ck = tmp_path / "ck"
    assert main(["train", "--data", str(good), "--task", "autoencode", "--epochs", "1",
                 "--hidden", "4", "--checkpoint-dir", str(ck), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    bad = _write(tmp_path / "bad.zarr", targets=False)
    _edit_attrs(bad, _drop("stats"))
    code = main(["score", "--model", str(ck / "model.npz"), "--data", str(bad), "--out",
                 str(tmp_path / "scores.zarr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "attribute stats is missing" in err
