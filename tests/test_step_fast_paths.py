"""The fast paths of a training step compute bitwise what the plain expressions compute."""

import numpy as np
import pytest

from dimplicit.activations import apply_
from dimplicit.forward import equilibrium
from dimplicit.model import dense_model
from dimplicit.optim import OptimizerConfig, _adam
from dimplicit.solvers import SolverOptions, blas


def test_adam_matches_textbook_expression_bitwise():
    rng = np.random.default_rng(3)
    cfg = OptimizerConfig("adam", lr=1e-3)
    p, g, m, v = (rng.standard_normal((37, 29)).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    copies = [a.copy() for a in (p, g, m, v)]
    for step in (0, 7):
        b1, b2 = cfg.betas
        t = step + 1
        m_ref = b1 * m + (1 - b1) * g
        v_ref = b2 * v + (1 - b2) * (g * g)
        p_ref = p - lr_scale(cfg, t) * m_ref / ((v_ref / (1 - b2**t)) ** 0.5 + cfg.eps)
        m_new, v_new, p_new = _adam(np, p, g, m, v, cfg, cfg.lr, step)
        for new, ref in ((m_new, m_ref), (v_new, v_ref), (p_new, p_ref)):
            assert new.dtype == ref.dtype
            assert np.array_equal(new, ref)
    for a, c in zip((p, g, m, v), copies, strict=True):
        assert np.array_equal(a, c)  # inputs untouched


def lr_scale(cfg, t):
    return cfg.lr / (1 - cfg.betas[0] ** t)


def test_relu_zero_row_matches_scalar_maximum():
    z = np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32)
    ref = np.maximum(z, 0)
    assert np.array_equal(apply_(z.copy(), "relu"), ref)
    w = z.copy()
    apply_(w[:, 2:5], "relu")  # a strided column view: only its columns change
    assert np.array_equal(w[:, 2:5], ref[:, 2:5])
    assert np.array_equal(w[:, 5:], z[:, 5:]) and np.array_equal(w[:, :2], z[:, :2])
    assert np.array_equal(apply_(z[0].copy(), "relu"), ref[0])  # one row


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_first_iterate_without_gemm_is_the_same_solve(solver):
    # From zeros the forward solve skips the GEMM of its first map evaluation; a warm start
    # from an explicit zero array runs it.  Same iterate sequence, same stopping iteration.
    rng = np.random.default_rng(1)
    model = dense_model(5, 24, 3, a_norm=0.7, seed=2, dtype="float32")
    U = rng.standard_normal((16, 5)).astype(np.float32)
    opts = SolverOptions(solver=solver, tol=1e-5)
    X, st = equilibrium(model, U, opts)
    X_ref, st_ref = equilibrium(model, U, opts, X0=np.zeros((16, 24), np.float32))
    assert st.iterations == st_ref.iterations > 2
    assert np.array_equal(X, X_ref)


def test_blas_warm_up_runs_once(monkeypatch):
    monkeypatch.setattr(blas, "_done", False)
    calls = []

    class Spy:
        __name__ = "numpy"
        float32 = np.float32

        def ones(self, shape, dtype):
            calls.append(shape)
            return np.ones(shape, dtype)

    spy = Spy()
    blas.warm_blas(spy)
    blas.warm_blas(spy)
    assert len(calls) == 2  # one GEMM's two operands, once
    monkeypatch.setattr(blas, "_done", False)
    blas.warm_blas(type("cupy", (), {"__name__": "cupy"}))  # other backends: nothing
    assert blas._done is False
