"""Preprocessing shared by every store writer: split draw, running statistics, scaling."""

from __future__ import annotations

import numpy as np
import pytest

from dimplicit.data.preprocess import (
    RunningStats,
    assign_splits,
    check_split_fractions,
    standardize,
)
from dimplicit.data.store import SPLIT_CODES, SPLIT_NAMES


def test_split_map_is_the_one_of_the_store():
    assert SPLIT_CODES == {"train": 0, "validation": 1, "test": 2}
    assert [SPLIT_CODES[n] for n in SPLIT_NAMES] == [0, 1, 2]
    codes = assign_splits(3, 0, 20000, (0.5, 0.3, 0.2))
    assert set(np.unique(codes)) == set(SPLIT_CODES.values())
    np.testing.assert_allclose(np.bincount(codes) / codes.size, [0.5, 0.3, 0.2], atol=0.02)


def test_splits_depend_only_on_seed_and_index():
    fr = (0.8, 0.1, 0.1)
    whole = assign_splits(5, 0, 10000, fr)
    bounds = [(0, 1), (1, 4095), (4095, 4097), (4097, 9999), (9999, 10000)]
    pieces = np.concatenate([assign_splits(5, a, b - a, fr) for a, b in bounds])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.dtype == np.int8
    assert assign_splits(5, 123, 0, fr).shape == (0,)
    assert not np.array_equal(whole, assign_splits(6, 0, 10000, fr))
    assert (assign_splits(0, 0, 1000, (1, 0, 0)) == 0).all()
    assert (assign_splits(0, 0, 1000, (0, 0, 1)) == 2).all()


@pytest.mark.parametrize(
    "bad", [(0.5, 0.5), (0.5, 0.6, -0.1), (0.5, 0.2, 0.2), ("a", 0, 1), (np.nan, 0.5, 0.5)]
)
def test_split_fractions_checked(bad):
    with pytest.raises(ValueError, match="split fractions"):
        check_split_fractions(bad)
    with pytest.raises(ValueError, match="split fractions"):
        assign_splits(0, 0, 10, bad)


def test_split_seed_must_be_non_negative():
    with pytest.raises(ValueError, match="non-negative"):
        assign_splits(-1, 0, 10, (0.8, 0.1, 0.1))


def test_running_stats_match_numpy_on_offset_blocks():
    rng = np.random.default_rng(0)
    x = (1e6 + rng.normal(size=(5000, 4)) * [1, 1e-3, 10, 0]).astype(np.float32)
    stats = RunningStats(4)
    for a, b in [(0, 1), (1, 1000), (1000, 1000), (1000, 4321), (4321, 5000)]:
        stats.update(x[a:b])
    x64 = x.astype(np.float64)
    assert stats.count == 5000
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x64.std(0), rtol=1e-7, atol=1e-9)
    attr = stats.to_attr("all rows")
    assert attr["count"] == 5000 and attr["rows"] == "all rows" and len(attr["std"]) == 4
    empty = RunningStats(3).to_attr("none")
    assert empty["mean"] == [0.0] * 3 and empty["std"] == [1.0] * 3 and empty["count"] == 0


def test_standardize_in_place_and_zero_std():
    block = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    z = standardize(block, [2.0, 5.0], [1.0, 0.0])
    assert z is block
    np.testing.assert_array_equal(z, [[-1, 0], [1, 0]])
    ints = np.array([[2, 4]], dtype=np.int64)
    out = standardize(ints, [1.0, 1.0], [2.0, 3.0])
    assert out.dtype == np.float32 and out is not ints
    np.testing.assert_allclose(out, [[0.5, 1.0]])
    frozen = np.ones((2, 2), dtype=np.float64)
    frozen.flags.writeable = False
    res = standardize(frozen, [1, 1], [1, 1])
    assert res is not frozen and (res == 0).all() and (frozen == 1).all()


def test_standardize_copy_leaves_the_block_and_matches_in_place_bitwise():
    rng = np.random.default_rng(0)
    block = rng.standard_normal((64, 7)).astype(np.float32) * 3 + 1
    mean = rng.standard_normal(7)
    std = np.abs(rng.standard_normal(7))
    std[2] = 0.0  # a constant column
    before = block.copy()
    out = standardize(block, mean, std, copy=True)
    assert out is not block and out.dtype == np.float32
    np.testing.assert_array_equal(block, before)  # untouched
    np.testing.assert_array_equal(out, standardize(before.copy(), mean, std))
