"""The float32 arctan kernel stays within float32 rounding of the float64 arctan, and it is
bitwise the NumPy evaluation of its polynomial (the promise of :mod:`dimplicit.kernels`)."""

import numpy as np
import pytest

from dimplicit.activations import Activation, arctan_
from dimplicit.kernels.activations import _P


def _ulp_error(y, x):
    ref = np.arctan(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - ref) / ulp


def _inputs():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 0x7F800000, size=200_000, dtype=np.uint32)  # every magnitude
    near_one = np.nextafter(np.float32(1), np.float32(2)) * rng.uniform(0.5, 2, 100_000)
    edges = np.float32([0, 1, 1e-45, 1e-38, 3e38, 1e20, 0.4142135, 2.4142137])
    uniform = rng.uniform(-3, 3, 100_000).astype(np.float32)
    x = np.concatenate([bits.view(np.float32), uniform, near_one.astype(np.float32), edges])
    return np.concatenate([x, -x])


def test_float32_arctan_within_two_ulp():
    x = _inputs()
    y = arctan_(x.copy())
    assert y.dtype == np.float32
    err = _ulp_error(y, x)
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])
    assert err.mean() < 0.5


def test_float32_arctan_special_values():
    x = np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0])
    y = arctan_(x.copy())
    np.testing.assert_array_equal(y[:2], np.float32([np.pi / 2, -np.pi / 2]))
    assert np.isnan(y[2])
    assert y[3] == 0 and not np.signbit(y[3]) and np.signbit(y[4])


def _numpy_atan(x):
    """The kernel's operations, in its order, as NumPy float32 array expressions."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        a = np.abs(x)
        t = np.minimum(a, np.float32(1) / a)
        s = t * t
        u = s * _P[8]
        for c in _P[7::-1]:
            u = (u + c) * s
        u = u * t + t
        u = np.where(a > 1, np.float32(np.pi / 2) - u, u)
        return np.copysign(u, x)


def test_kernel_is_bitwise_the_numpy_polynomial():
    x = _inputs()
    x = np.concatenate([x, np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0])])
    y, ref = arctan_(x.copy()), _numpy_atan(x)
    assert y.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("shape", [(70_001,), (5_000, 16), (3, 40_000), (32, 16)])
def test_float32_arctan_shapes_and_strided_views(shape):
    # Long and short arrays, and a column slice written through in place.
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    ref = z.copy()
    if z.ndim == 2:
        view = z[:, 1:-1]
        assert arctan_(view) is view
        np.testing.assert_array_equal(z[:, [0, -1]], ref[:, [0, -1]])  # untouched
        assert _ulp_error(z[:, 1:-1], ref[:, 1:-1]).max() <= 2.0
    else:
        assert _ulp_error(arctan_(z), ref).max() <= 2.0


def test_other_dtypes_call_numpy_arctan():
    z = np.random.default_rng(2).standard_normal((100, 3))
    np.testing.assert_array_equal(arctan_(z.copy()), np.arctan(z))


def test_per_neuron_arctan_runs_use_it():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 6)).astype(np.float32) * 3
    act = Activation(["relu"] * 2 + ["arctan"] * 3 + ["relu"], 6)
    y = act.apply_(z.copy())
    np.testing.assert_array_equal(y[:, :2], np.maximum(z[:, :2], 0))
    assert _ulp_error(y[:, 2:5], z[:, 2:5]).max() <= 2.0
