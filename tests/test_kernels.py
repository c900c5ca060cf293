"""Compiled kernels against the NumPy expressions they replace (bitwise on x86-64)."""

import platform

import numpy as np
import pytest

from dimplicit.kernels.residual import relative_residual_rows
from dimplicit.solvers.result import relative_residual, relative_residuals
from dimplicit.solvers.schedule import CheckSchedule

WIDTHS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 112, 117, 122)


def numpy_residual(x_new, x_old):
    """The expression the kernel replaces (dimplicit.solvers.result before the kernel)."""
    d = np.subtract(x_new, x_old)
    num = np.sqrt(np.einsum("ij,ij->i", d, d))
    den = np.sqrt(np.einsum("ij,ij->i", x_new, x_new))
    eps = 1e-30 if x_new.dtype == np.float64 else 1e-20
    with np.errstate(all="ignore"):
        r = num / (den + eps)
    r[~np.isfinite(r)] = np.inf
    return r


def assert_einsum_equal(r, expect):
    """Bitwise where the kernel's summation order is einsum's (NumPy's x86-64 baseline build);
    elsewhere NumPy may add in another order, and the residuals agree to rounding."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        np.testing.assert_array_equal(r, expect)
    else:
        np.testing.assert_allclose(r, expect, rtol=1e-5)


def iterates(rng, rows, width, dtype):
    """Two nearby iterates, rows of very different scales, and every special row."""
    x = rng.standard_normal((rows, width)) * 10.0 ** rng.uniform(-6, 6, size=(rows, 1))
    y = x + rng.standard_normal((rows, width)) * 10.0 ** rng.uniform(-8, 0, size=(rows, 1))
    x, y = x.astype(dtype), y.astype(dtype)
    x[0], y[0] = 0, 0  # 0 / (0 + ε) = 0
    x[1] = y[1]  # converged row: exactly 0
    x[2, -1] = np.nan
    x[3, 0] = np.inf
    y[4, width // 2] = -np.inf
    x[5] = 0  # ‖x_new‖ = 0, ‖d‖ > 0: huge but finite
    return x, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
def test_residual_kernel_is_the_numpy_expression_bitwise(dtype, width):
    rng = np.random.default_rng(width)
    x, y = iterates(rng, 300, width, dtype)
    eps = dtype(1e-30 if dtype == np.float64 else 1e-20)
    with np.errstate(all="ignore"):
        r, r_max = relative_residual_rows(x, y, eps)
    expect = numpy_residual(x, y)
    assert r.dtype == dtype
    assert_einsum_equal(r, expect)  # inf where not finite (no NaN)
    assert r_max == np.inf and np.isinf(expect.max())
    ok = slice(6, None)  # without the special rows: the maximum of finite residuals
    r2, r2_max = relative_residual_rows(x[ok], y[ok], eps)
    assert r2_max == r2.max()
    assert_einsum_equal(r2, numpy_residual(x[ok], y[ok]))


def test_residual_kernel_takes_strided_rows_and_no_rows():
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((40, 50)).astype(np.float32) for _ in range(2))
    xs, ys = x[::2, 3:20], y[1::2, 5:22]  # neither contiguous
    r, _ = relative_residual_rows(xs, ys, np.float32(1e-20))
    assert_einsum_equal(r, numpy_residual(xs, ys))
    r, r_max = relative_residual_rows(x[:0], y[:0], np.float32(1e-20))
    assert r.shape == (0,) and r_max == 0


def test_relative_residuals_dispatch():
    """NumPy float arrays take the kernel (same values, scratch untouched), others the
    expression; both report the maximum as a float."""
    rng = np.random.default_rng(1)
    x, y = iterates(rng, 64, 16, np.float32)
    scratch = np.full_like(x, 7.0)
    with np.errstate(all="ignore"):
        r, r_max = relative_residuals(x, y, np, scratch=scratch)
    assert_einsum_equal(r, numpy_residual(x, y))
    assert isinstance(r_max, float) and r_max == np.inf
    assert (scratch == 7.0).all()
    assert_einsum_equal(relative_residual(x[6:], y[6:], np), numpy_residual(x[6:], y[6:]))
    h = rng.standard_normal((2, 8, 5)).astype(np.float16)
    r16, m16 = relative_residuals(h[0], h[1], np)  # no kernel for float16: the NumPy expression
    assert r16.dtype == np.float16 and m16 == float(r16.max())


def test_check_every_one_tests_every_iteration():
    """With a gap of at most 1 the adaptive schedule has nothing to predict."""
    for check in ("adaptive", "fixed"):
        s = CheckSchedule(check, 1, 1e-5, 50)
        for k, r in zip(range(1, 50), np.geomspace(1.0, 1e-4, 49), strict=True):
            assert s.due(k)
            s.observe(k, float(r))
            assert s.next == k + 1
