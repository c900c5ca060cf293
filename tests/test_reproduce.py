"""The Szekeres & Izsák (2024) reproduction script, on a small configuration (a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dimplicit.fit import fit
from dimplicit.model import dense_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_szekeres2024.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("reproduce_szekeres2024", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the script is being executed.
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_small_htru2_run_prints_one_json_object(repro, slice_data, tmp_path, capsys):
    # The shipped HTRU2 slice (4475 rows: 4041 negatives, 434 pulsars), laid out as the
    # script expects its data folder: DATA/htru2/HTRU_2.csv.
    data = tmp_path / "data"
    (data / "htru2").mkdir(parents=True)
    shutil.copyfile(slice_data / "htru2" / "HTRU_2_slice.csv", data / "htru2" / "HTRU_2.csv")
    n_rows, n_normal = 4475, 4041
    out = tmp_path / "results.md"
    argv = [
        "--data", str(data), "--dataset", "htru2", "--models", "v0-5-32-16",
        "--seeds", "2", "--max-epochs", "2", "--out", str(out), "--workdir", str(tmp_path),
    ]  # fmt: skip
    result = repro.main(argv)
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON document on stdout
    assert printed["results"].keys() == {"htru2"}
    r = printed["results"]["htru2"]["v0-5-32-16"]
    assert r["recipe"]["epochs"] == 2 and r["recipe"]["select_best_epoch"]
    assert [s["seed"] for s in r["per_seed"]] == [0, 1]
    for key in ("f1", "recall", "precision", "val_auc", "train_s"):
        assert key in r["summary"]["mean"] and r["summary"]["ci95"][key] is not None
        assert all(math.isfinite(s[key]) for s in r["per_seed"])
    for s in r["per_seed"]:
        assert s["roc_auc"] > 0.85  # chance is 0.5
        assert s["val_auc"] > 0.85
        assert 0 < s["f1"] <= 1 and s["epochs_run"] == 2 and 1 <= s["best_epoch"] <= 2
        assert s["score_unconverged_rows"] == 0
    # The protocol's fixed split: 80/10/10 with seed 2024, normal training rows only.
    info = printed["data"]["htru2"]
    assert info["validation_rows"] + info["test_rows"] < 0.25 * n_rows
    assert info["train_rows_normal"] > 0.7 * n_normal
    assert result["results"]["htru2"]["v0-5-32-16"]["summary"] == r["summary"]
    # The ceiling check: every baseline fitted and evaluated by the same protocol.
    base = printed["baselines"]["htru2"]
    assert base.keys() == repro.BASELINES.keys()
    for name, m in base.items():
        assert m["val_auc"] > 0.85 and m["roc_auc"] > 0.85, name
        # An oracle threshold can only do better than the validation one; demanding recall
        # ≥ 0.90 can only cost F1.
        assert m["oracle_f1_r90"] <= m["oracle_f1"] + 1e-12
        assert m["f1"] <= m["oracle_f1"] + 1e-12
    text = out.read_text()
    assert "| htru2 | (5;32;16)-v0 | 0.765 | 0.893 | (0.669) | 0.943 | 35 |" in text
    assert "Quick check" in text and argv[-1] in text
    assert "| `knn-20` (baseline) |" in text and "| `v0-5-32-16` |" in text
    # --report-from re-renders the same report from the printed JSON without training.
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(printed))
    again = tmp_path / "again.md"
    repro.main(["--report-from", str(saved), "--out", str(again)])
    assert again.read_text() == text
    # Hand-maintained figures below the marker survive a regeneration; the rest is replaced.
    kept = f"{repro.KEEP_MARKER}\n\n## Scoring benchmark\n\n| rows | rows/s |\n"
    again.write_text("stale generated text\n" + kept)
    repro.main(["--report-from", str(saved), "--out", str(again)])
    assert again.read_text() == text + "\n" + kept


def test_implied_precision_inverts_f1(repro):
    p, r = 0.8, 0.6
    assert repro.implied_precision(2 * p * r / (p + r), r) == pytest.approx(p)


def test_unknown_model_is_a_usage_error(repro, capsys):
    with pytest.raises(SystemExit):
        repro.parse_args(["--models", "v0-5-32-16,nope"])
    assert "nope" in capsys.readouterr().err


def test_recipes_cover_every_model_with_exact_gradients(repro):
    for ds in repro.DATASETS:
        for name in repro.MODELS:
            r = repro.recipe_for(ds, name)
            assert r.epochs >= 1 and (ds, name) in repro.BUDGET_S
            cfg = r.step_config()
            assert cfg.backward.method == "implicit" and cfg.forward.layerwise


def test_t_quantile_table_matches_known_values(repro):
    assert repro.t975(9) == pytest.approx(2.262, abs=1e-3)
    assert repro._T975[9] == pytest.approx(2.262, abs=1e-3)
    s = repro.summarize([{k: v for k in (*repro.METRICS, "train_s")} | _iters() for v in (1, 3)])
    assert s["mean"]["f1"] == 2 and s["ci95"]["f1"] == pytest.approx(12.706 * 1.0, rel=1e-3)


def _iters():
    return {"forward_iters": 1.0, "backward_iters": 1.0}


def test_fit_epoch_callback_sees_each_epoch_and_can_stop():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((64, 3)).astype(np.float32)
    model = dense_model(3, 4, 3, seed=0)
    seen = []

    def cb(epoch, m):
        seen.append((epoch, m.params["B"].copy(), m))
        return epoch == 1  # stop after the second epoch

    trained, hist = fit(model, U, U, epochs=5, batch_size=16, epoch_callback=cb)
    assert [e for e, _, _ in seen] == [0, 1]
    assert {h["epoch"] for h in hist} == {0, 1}
    # Each epoch's model is a snapshot: later steps do not change it.
    np.testing.assert_array_equal(seen[0][2].params["B"], seen[0][1])
    assert not np.array_equal(seen[0][1], seen[1][1])
    np.testing.assert_array_equal(trained.params["B"], seen[1][1])
