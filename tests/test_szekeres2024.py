"""The Szekeres & Izsák (2024) protocol as library code: data, threshold rule, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dimplicit.anomaly.metrics import PAPER_GRID, calibrate, grid_calibrate
from dimplicit.experiments import szekeres2024 as S
from dimplicit.experiments.stats import mean_ci, summarize

# ------------------------------------------------------------------ the full data sets


def test_full_htru2_split_matches_the_protocol(full_data):
    for protocol in S.PROTOCOLS:
        d = S.prepare("htru2", full_data, protocol)
        assert d.info == {
            "train_all": 14318, "n_features": 8, "train_normal": 13014, "validation": 1790,
            "validation_anomalous": 163, "test": 1790, "test_anomalous": 172,
        }  # fmt: skip
        z = d.scaled("train")
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


def test_full_nslkdd_split_and_columns_match_the_protocol(full_data):
    d = S.prepare("nsl-kdd", full_data, "paper")
    assert d.info == {
        "train_all": 94479, "n_features": 117, "train_normal": 50528, "validation": 31494,
        "validation_anomalous": 14679, "test": 22544, "test_anomalous": 12833,
    }  # fmt: skip
    assert len(d.y_val) - d.y_val.sum() == 16815 and len(d.y_test) - d.y_test.sum() == 9711
    names = d.feature_names
    assert names[38] == "level" and names[39:42] == ["icmp", "tcp", "udp"]
    assert not set(S.TRAIN_ONLY_DUMMIES) & set(names)
    # Zero-variance columns (e.g. num_outbound_cmds) keep scale 1, as StandardScaler does.
    assert d.scale[names.index("num_outbound_cmds")] == 1.0
    # The whole point of the clean protocol: level is a strong, label-derived feature.
    lv = d.X_val[:, 38]
    assert abs(lv[d.y_val].mean() - lv[~d.y_val].mean()) > 1.0


# ------------------------------------------------------------------ small fixtures


def test_htru2_slice_follows_the_split_calls(slice_data):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    path = slice_data / "htru2" / "HTRU_2_slice.csv"
    d = S.prepare_htru2(path, "paper")
    n = 4475
    assert d.info["test"] == math.ceil(0.1 * n) and d.info["validation"] == 448
    # Independent re-derivation of the rows from the raw file and the two split calls.
    raw = np.loadtxt(path, delimiter=",")
    rest, test = train_test_split(raw, test_size=0.1, random_state=2024)
    train, val = train_test_split(rest, test_size=0.1 / 0.9, random_state=2024)
    np.testing.assert_array_equal(d.X_test, test[:, :8])
    np.testing.assert_array_equal(d.y_test, test[:, 8] == 1)
    np.testing.assert_array_equal(d.X_val, val[:, :8])
    np.testing.assert_array_equal(d.X_train, train[train[:, 8] == 0, :8])
    sc = StandardScaler().fit(d.X_train)
    np.testing.assert_allclose(d.scaled("test"), sc.transform(d.X_test), rtol=1e-5, atol=1e-5)


def _nsl_test_file(slice_data, tmp_path, drop_services=S.TRAIN_ONLY_DUMMIES, extra=None):
    rows = (slice_data / "nsl-kdd" / "KDDTrain+_slice.txt").read_text().splitlines()
    keep = [r for r in rows if r.split(",")[2] not in drop_services]
    if extra:
        keep.append(extra)
    path = tmp_path / "test.txt"
    path.write_text("\n".join(keep) + "\n")
    return path, keep


@pytest.mark.parametrize("protocol, n_columns", [("paper", 117), ("clean", 116)])
def test_nslkdd_encoding_on_the_slice(slice_data, tmp_path, protocol, n_columns):
    train = slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"
    test, rows = _nsl_test_file(slice_data, tmp_path)
    d = S.prepare_nslkdd(train, test, protocol)
    names = d.feature_names
    assert len(names) == n_columns == d.X_test.shape[1] == d.X_train.shape[1]
    assert ("level" in names) == (protocol == "paper")
    n_num = 39 if protocol == "paper" else 38
    # Dummies: protocol_type, service, flag blocks, each sorted (pandas get_dummies order).
    proto, flags = names[n_num : n_num + 3], names[-11:]
    assert proto == ["icmp", "tcp", "udp"] and flags == sorted(flags) and "SF" in flags
    services = names[n_num + 3 : -11]
    assert services == sorted(services) and len(services) == 70 - 6
    # The test file is encoded on its own, then aligned by name.
    for j, r in enumerate(rows[:50]):
        f = r.split(",")
        assert d.X_test[j, names.index(f[2])] == 1 and d.X_test[j, names.index(f[3])] == 1
        assert d.X_test[j, n_num:].sum() == 3
        assert d.y_test[j] == (f[41] != "normal")
        if protocol == "paper":
            assert d.X_test[j, names.index("level")] == float(f[42])
    # 75 / 25 split of the training file, normal rows kept for training.
    assert d.info["train_all"] + d.info["validation"] == 4014
    assert d.info["validation"] == math.ceil(0.25 * 4014)


def test_nslkdd_refuses_a_test_file_with_other_columns(slice_data, tmp_path):
    train = slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"
    line = (slice_data / "nsl-kdd" / "KDDTrain+_slice.txt").read_text().splitlines()[0]
    f = line.split(",")
    f[2] = "new_service"
    test, _ = _nsl_test_file(slice_data, tmp_path, extra=",".join(f))
    with pytest.raises(ValueError, match="new_service"):
        S.prepare_nslkdd(train, test, "paper")


def test_store_holds_the_protocol_rows_and_scaler(slice_data):
    from dimplicit.data.preprocess import standardize

    d = S.prepare_htru2(slice_data / "htru2" / "HTRU_2_slice.csv", "clean")
    store = S.to_store(d)
    split = np.asarray(store.split[:])
    X = standardize(np.asarray(store.features[:], dtype=np.float32), store.mean, store.std)
    labels = np.asarray(store.labels[:])
    for code, part, y in ((0, "train", None), (1, "val", d.y_val), (2, "test", d.y_test)):
        np.testing.assert_allclose(X[split == code], d.scaled(part), rtol=1e-4, atol=1e-4)
        normal = store.is_normal(labels[split == code])
        assert normal.all() if y is None else np.array_equal(~normal, y)


# ------------------------------------------------------------------ the threshold rule


def test_grid_calibrate_matches_a_brute_force_sweep():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    raw = rng.gamma(2.0, 1.0, 400) + 1.5 * y
    cal = grid_calibrate(raw, y)
    normal = raw[~y]
    mean, std = normal.mean(), normal.std(ddof=1)  # the (n - 1) standard deviation
    z = (raw - mean) / std
    grid = -4 + 8 * np.arange(8001) / 8000
    best, best_t, pts = -1.0, None, []
    for t in grid:
        flag = z > t  # strictly above
        tp, fp = (flag & y).sum(), (flag & ~y).sum()
        fn = (~flag & y).sum()
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best:  # first (lowest) θ on ties
            best, best_t = f1, t
        pts.append((fp / (~y).sum(), tp / y.sum()))
    fpr, tpr = np.array(pts[::-1]).T
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert cal.mean == pytest.approx(mean) and cal.std == pytest.approx(std)
    assert cal.threshold == pytest.approx(best_t) and cal.val_f1 == pytest.approx(best)
    assert cal.val_auc == pytest.approx(auc)
    np.testing.assert_allclose(PAPER_GRID, grid)


def test_the_grid_caps_the_threshold_where_the_free_rule_does_not():
    # A few normal rows score z ≈ 6 and every anomaly z ≈ 12: only a threshold between them
    # separates the classes, and the grid stops at 4.
    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.standard_normal(2000), np.full(20, 6.0), 12 + rng.random(50)])
    y = np.arange(len(raw)) >= 2020
    capped, free = grid_calibrate(raw, y), calibrate(raw, y)
    assert free.val_f1 == 1.0 and free.threshold > 4.0
    assert capped.threshold <= 4.0 and capped.val_f1 == pytest.approx(100 / 120)


# ------------------------------------------------------------------ models and training


@pytest.mark.parametrize("family, counts", [("v0", (2168, 9253)), ("v1", (2408, 9493))])
def test_uniform_fan_in_initialisation(family, counts):
    spec = S.MODELS[f"{family}-5-32-16"]
    for p, count in zip((8, 117), counts, strict=True):
        m = S.build(spec, "htru2", p, 2025, S.RECIPES["htru2"])
        masks = m.masks
        weights = [np.count_nonzero(masks.get(k, np.ones_like(m.params[k]))) for k in "ABCD"]
        n = int(sum(weights)) + m.params["b_x"].size + m.params["b_y"].size
        assert n == count  # the protocol's parameter counts
        fan = (masks["A"] != 0).sum(1) + (masks["B"] != 0).sum(1)
        bound = 1 / np.sqrt(fan)
        A, B, bx = m.params["A"], m.params["B"], m.params["b_x"]
        assert (np.abs(A) <= bound[:, None] + 1e-7).all() and (np.abs(bx) <= bound + 1e-7).all()
        assert (A[masks["A"] == 0] == 0).all() and (B[masks["B"] == 0] == 0).all()
        # Uniform, not shrunk: the largest weights come close to the bound.
        first = masks["B"].any(1)  # the neurons B feeds
        assert (np.abs(B[first]).max(1) / bound[first] > 0.5).all()


def test_trainer_selects_by_the_grid_rule_every_11_steps_and_at_epoch_end(slice_data):
    from dimplicit.forward import predict
    from dimplicit.losses import row_rmse

    d = S.prepare_htru2(slice_data / "htru2" / "HTRU_2_slice.csv", "paper")
    d.X_train = d.X_train[:400]  # 25 steps of 16 rows per epoch
    store = S.to_store(d)
    recipe = S.Recipe(epochs=2, batch_size=16)
    spec = S.MODELS["v1-5-32-8"]
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer

    model = S.build(spec, "htru2", 8, 2025, recipe)
    t = Trainer(
        model, DataSpec(store, "autoencode", normal_only=True), config=recipe.step_config(),
        optimizer=recipe.optimizer(50), epochs=2, batch_size=16, seed=2025, eval_every=11,
        eval_at_epoch_end=True, select_best="val_f1_grid", executor="local",
    ).fit()  # fmt: skip
    assert [e["step"] for e in t.evaluations_] == [11, 22, 25, 36, 47, 50]
    values = [e["val_f1_grid"] for e in t.evaluations_]
    best = int(np.argmax(values))  # the first of the best
    assert t.best_["step"] == t.evaluations_[best]["step"]
    # The kept weights and calibration are those of that checkpoint, recomputed here.
    Xv = np.asarray(store.features[:], np.float32)[np.asarray(store.split[:]) == 1]
    Xv = (Xv - store.mean) / np.where(store.std == 0, 1, store.std)
    Yv, _, _ = predict(t.model_, Xv, recipe.solver())
    again = grid_calibrate(row_rmse(Yv, Xv), d.y_val)
    cal = t.best_["calibration"]
    assert cal["val_f1"] == pytest.approx(values[best]) == pytest.approx(again.val_f1)
    assert cal["threshold"] == pytest.approx(again.threshold)
    assert cal["mean"] == pytest.approx(again.mean, rel=1e-5)


def test_train_one_reports_both_rules(slice_data):
    d = S.prepare_htru2(slice_data / "htru2" / "HTRU_2_slice.csv", "clean")
    r = S.train_one(d, S.to_store(d), S.MODELS["v0-5-32-8"], 2025, max_steps=30)
    assert r["steps"] == 30 and r["evaluations"] == 3  # steps 11, 22 and the last
    for m in (r, r["other_rule"]):
        assert 0 < m["f1"] <= m["oracle_f1"] + 1e-12 and m["roc_auc"] > 0.8
    assert r["score_unconverged_rows"] == 0 and r["train_s"] > 0


def test_published_table_and_model_names():
    pub = S.published()
    assert len(pub) == 36 and len(S.MODELS) == 18
    assert pub[("nsl-kdd", "(5;32;16)-v2")]["f1"] == (0.924, 0.003)
    assert pub[("htru2", "(7;64;16)-v2")]["train_s"] == (134.8, 2.4)
    assert S.MODELS["v2-7-64-16"].arch == "ae-v2:7,64,16"
    assert S.MODELS["v2-5-32-8"].activation("htru2") == "leaky_relu:0.1"
    assert S.MODELS["v2-5-32-8"].activation("nsl-kdd") == "arctan"


def test_summary_statistics_known_values():
    m, h = mean_ci([1.0, 3.0])
    assert m == 2 and h == pytest.approx(12.706, rel=1e-4)
    assert mean_ci([5.0]) == (5.0, None)
    s = summarize([{"f1": 0.5, "x": None}, {"f1": 0.7, "x": None}], ("f1", "x"))
    assert s["mean"] == {"f1": pytest.approx(0.6)} and s["max"]["f1"] == 0.7
