"""Row-wise ℓ1 projection: feasible, exact, idempotent, rows inside untouched, masks kept."""

import numpy as np
import pytest

from dimplicit.model import build_model, dense_model
from dimplicit.projection import inf_norm, pf_eigenvalue, project_rows_l1, project_well_posed


def bisection_reference(row, kappa):
    """Projection onto the ℓ1 ball by bisection on the soft-threshold θ (independent method)."""
    a = np.abs(row)
    if a.sum() <= kappa:
        return row.copy()
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(a - mid, 0).sum() > kappa:
            lo = mid
        else:
            hi = mid
    return np.sign(row) * np.maximum(a - hi, 0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kappa", [0.3, 0.95, 2.0])
def test_projection_matches_bisection_and_is_feasible(seed, kappa):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((30, 30)) * rng.uniform(0.001, 0.2, size=(30, 1))
    P = project_rows_l1(A, kappa)
    assert np.abs(P).sum(axis=1).max() <= kappa * (1 + 1e-12)
    for i in range(A.shape[0]):
        np.testing.assert_allclose(P[i], bisection_reference(A[i], kappa), atol=1e-10)


def test_rows_inside_are_untouched_and_projection_is_idempotent():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((20, 20)) * 0.1
    A[:5] *= 0.01  # these rows are inside the ball
    P = project_rows_l1(A, 0.9)
    assert np.array_equal(P[:5], A[:5])
    np.testing.assert_array_equal(project_rows_l1(P, 0.9), P)


def test_projection_is_not_rescaling():
    row = np.array([[3.0, 1.0, 0.1]])
    P = project_rows_l1(row, 1.0)
    np.testing.assert_allclose(P, [[1.0, 0.0, 0.0]])  # small entries shrink to zero


def test_mask_is_respected():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((10, 10))
    M = (rng.random((10, 10)) > 0.5).astype(float)
    P = project_rows_l1(A, 0.5, M)
    assert np.all(P[M == 0] == 0)
    np.testing.assert_allclose(P, project_rows_l1(A * M, 0.5), atol=1e-15)


def test_float32_projection():
    A = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    P = project_rows_l1(A, 0.95)
    assert P.dtype == np.float32 and inf_norm(P) <= 0.95 * (1 + 1e-6)


def test_diagnostics():
    A = np.array([[0.2, -0.3], [0.5, 0.1]])
    assert inf_norm(A) == pytest.approx(0.6)
    lam = pf_eigenvalue(A)
    assert lam <= inf_norm(A) + 1e-12
    assert lam == pytest.approx(max(abs(np.linalg.eigvals(np.abs(A)))))
    assert pf_eigenvalue(np.triu(np.ones((4, 4)), 1)) == pytest.approx(0.0)


def test_layered_models_project_only_their_implicit_blocks():
    m = build_model("ae-v1:5,32,16", 10, 10, seed=0, dtype="float64")
    S, mask = m.structure, m.masks["A"]
    A = m.params["A"] * 40  # every block far outside the ball
    P = project_well_posed(A, 0.95, mask, S)
    (l0, l1) = [g for g in S.groups if S.has_self_block(g[0])][0]
    block = np.zeros_like(mask, dtype=bool)
    block[l0:l1, l0:l1] = True
    # The latent block is exactly the row-ℓ1 projection; the feedforward blocks are untouched.
    np.testing.assert_array_equal(P[l0:l1, l0:l1], project_rows_l1(A[l0:l1, l0:l1], 0.95))
    np.testing.assert_array_equal(P[~block], A[~block])
    assert inf_norm(A) > 10 and pf_eigenvalue(A) > 1  # unprojected: no fixed-point guarantee
    # Block lower-triangular: λ_pf(|A|) is the largest of the diagonal blocks', hence ≤ κ.
    assert pf_eigenvalue(P) <= 0.95 * (1 + 1e-12)


def test_models_without_layer_order_project_every_row():
    m = dense_model(4, 12, 2, seed=1, dtype="float64")
    A = m.params["A"] * 10
    np.testing.assert_array_equal(
        project_well_posed(A, 0.9, None, m.structure), project_rows_l1(A, 0.9)
    )
    v0 = build_model("ae-v0:5,32,16", 10, 10, seed=0)
    assert v0.kappa is None  # feedforward: nothing to constrain


def vectorised_reference(A, kappa, mask=None):
    """The vectorised NumPy projection (the CuPy path): the kernels must match it bitwise."""
    out = A * mask if mask is not None else A.copy()
    absA = np.abs(out)
    slack = 8 * float(np.finfo(out.dtype).eps)
    outside = absA.sum(axis=1) > kappa * (1 + slack)
    if not outside.any():
        return out
    rows = absA[outside]
    u = -np.sort(-rows, axis=1)
    css = np.cumsum(u, axis=1) - kappa
    j = np.arange(1, u.shape[1] + 1, dtype=u.dtype)
    rho = u.shape[1] - 1 - np.argmax((u * j > css)[:, ::-1], axis=1)
    theta = css[np.arange(u.shape[0]), rho] / (rho + 1).astype(u.dtype)
    out[outside] = np.maximum(rows - theta[:, None], 0) * np.sign(out[outside])
    return out


def assert_bitwise(P, R):
    assert P.dtype == R.dtype and P.shape == R.shape
    assert np.array_equal(P, R, equal_nan=True)
    assert np.array_equal(np.signbit(P), np.signbit(R))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 100, 129, 300, 1030])
def test_kernel_is_bitwise_the_vectorised_projection(n, dtype):
    rng = np.random.default_rng(n)
    A = (rng.standard_normal((40, n)) * rng.uniform(0.0, 3.0 / max(n, 1), (40, 1))).astype(dtype)
    A[1] = 0.0
    A[2] = -0.0
    A[3, : n // 2] = 1.0 / max(n, 1)  # ties
    A[4] *= 50  # far outside: a small support
    A[5] = -A[5]
    for kappa in (0.1, 0.95, 1.0, 3.0):
        assert_bitwise(project_rows_l1(A, kappa), vectorised_reference(A, kappa))


def test_kernel_matches_the_vectorised_projection_on_non_finite_rows():
    A = np.random.default_rng(5).standard_normal((6, 50)).astype(np.float32)
    A[0, 3] = np.nan  # a NaN row sum: never outside, returned as it is
    A[1, 7] = np.inf
    A[2, 1] = -np.inf
    with np.errstate(invalid="ignore"):
        assert_bitwise(project_rows_l1(A, 0.9), vectorised_reference(A, 0.9))


def test_kernel_on_views_masks_and_boundary_rows():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((60, 90)).astype(np.float32) * 0.05
    view = A[::2, 1::3]  # not contiguous
    assert_bitwise(project_rows_l1(view, 0.5), vectorised_reference(view, 0.5))
    M = (rng.random(view.shape) > 0.4).astype(np.float32)
    assert_bitwise(project_rows_l1(view, 0.5, M), vectorised_reference(view, 0.5, M))
    P = project_rows_l1(A, 0.7)  # rows on the boundary, up to rounding
    assert_bitwise(project_rows_l1(P, 0.7), vectorised_reference(P, 0.7))
    assert np.array_equal(project_rows_l1(P, 0.7), P)  # idempotent
    assert np.shares_memory(A, view) and not np.shares_memory(project_rows_l1(view, 0.5), A)
