"""The Szekeres & Izsák (2024) reproduction command, on a small configuration (seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from dimplicit.experiments import report
from dimplicit.fit import fit
from dimplicit.model import dense_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_szekeres2024.py"


@pytest.fixture(scope="module")
def repro():
    with load_script("reproduce_szekeres2024") as mod:
        yield mod


def test_small_htru2_run_prints_json_and_writes_the_report(repro, slice_data, tmp_path, capsys):
    # The shipped HTRU2 slice laid out as the command expects: DATA/htru2/HTRU_2.csv.
    data = tmp_path / "data"
    (data / "htru2").mkdir(parents=True)
    shutil.copyfile(slice_data / "htru2" / "HTRU_2_slice.csv", data / "htru2" / "HTRU_2.csv")
    out, js = tmp_path / "results.md", tmp_path / "results.json"
    argv = [
        "--data", str(data), "--dataset", "htru2", "--protocol", "both",
        "--models", "v1-5-32-8", "--seeds", "2", "--max-steps", "23",
        "--out", str(out), "--json", str(js),
    ]  # fmt: skip
    result = repro.main(argv)
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # exactly one JSON document on stdout
    assert "[paper htru2 v1-5-32-8 seed 2026] test F1" in captured.err  # progress on stderr
    assert printed["seeds"] == [2025, 2026] == result["seeds"]
    for proto in ("paper", "clean"):
        runs = printed["runs"][proto]["htru2"]
        assert runs.keys() == {"v1-5-32-8"}
        for r in runs["v1-5-32-8"]["per_seed"]:
            assert r["steps"] == 23 and r["evaluations"] == 3  # steps 11, 22, and the last
            assert 0 < r["f1"] <= r["oracle_f1"] + 1e-12 and r["val_auc"] > 0.8
        base = printed["baselines"][proto]["htru2"]
        assert set(base) == {"pca-2", "pca-4", "mahalanobis", "knn-20", "isolation-forest"}
        for b in base.values():
            assert b["paper"]["threshold"] <= 4.0  # the grid's cap
            assert b["paper"]["f1"] <= b["paper"]["oracle_f1"] + 1e-12
    # The JSON file holds the same runs (written after every run, and at the end).
    saved = json.loads(js.read_text())
    assert saved["runs"] == printed["runs"]
    text = out.read_text()
    assert "| (5;32;8)-v1 | 2 |" in text and "| (5;64;16)-v2 | 0 | not run |" in text
    assert "0.758 ± 0.032" in text  # a published HTRU2 figure beside ours
    assert "Quick check" in text and "z ≤ 4 cap (grid rule − uncapped rule)" in text
    # --report-from re-renders the same report from the saved JSON without training.
    again = tmp_path / "again.md"
    repro.main(["--report-from", str(js), "--out", str(again), "--json", "none"])
    assert again.read_text() == text
    # Hand-maintained text below the marker survives a regeneration; the rest is replaced.
    kept = f"{report.KEEP_MARKER}\n\n## Scoring benchmark\n\n| rows | rows/s |\n"
    again.write_text("stale generated text\n" + kept)
    repro.main(["--report-from", str(js), "--out", str(again), "--json", "none"])
    assert again.read_text() == text + "\n" + kept


def test_model_families_and_unknown_models(repro, capsys):
    assert repro.parse_args(["--models", "v2"]).models == [f"v2-{s}" for s in (
        "5-32-8", "5-32-16", "5-64-8", "5-64-16", "7-64-8", "7-64-16")]  # fmt: skip
    assert len(repro.parse_args([]).models) == 18
    with pytest.raises(SystemExit):
        repro.parse_args(["--models", "v0-5-32-16,nope"])
    assert "nope" in capsys.readouterr().err


def test_merge_combines_partial_results():
    a = {"command": "a", "seeds": [2025], "runs": {"paper": {"htru2": {"m1": {"per_seed": [1]}}}}}
    b = {"command": "b", "seeds": [2026], "runs": {"paper": {"htru2": {"m2": {"per_seed": [2]}},
                                                             "nsl-kdd": {}}}}  # fmt: skip
    c = {"seeds": [2026], "runs": {"paper": {"htru2": {"m1": {"per_seed": [{"seed": 2026}]}}}}}
    a["runs"]["paper"]["htru2"]["m1"]["per_seed"] = [{"seed": 2025}]
    b["runs"]["paper"]["htru2"]["m2"]["per_seed"] = [{"seed": 2026}]
    m = report.merge([a, b, c])
    assert m["commands"] == ["a", "b"] and m["seeds"] == [2025, 2026]
    assert set(m["runs"]["paper"]["htru2"]) == {"m1", "m2"}
    # Seeds of one model from two runs add up.
    assert m["runs"]["paper"]["htru2"]["m1"]["per_seed"] == [{"seed": 2025}, {"seed": 2026}]


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
