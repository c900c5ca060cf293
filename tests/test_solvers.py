"""Fixed-point solvers: Picard vs Anderson (forward and adjoint), convergence-test schedules,
non-convergence reporting, bounded memory."""

import tracemalloc

import numpy as np
import pytest

from dimplicit.backend import get_backend, gpu_available, to_host
from dimplicit.forward import equilibrium
from dimplicit.gradients import BackwardOptions, adjoint
from dimplicit.model import dense_model
from dimplicit.solvers import CheckSchedule, NonConvergenceError, SolverOptions, picard


def slow_model(n=40, p=5, a_norm=0.98, seed=0):
    """Non-negative A: its spectral radius equals ‖A‖∞ = 0.98, so Picard contracts slowly."""
    model = dense_model(
        p, n, 2, activation="tanh", a_norm=a_norm, kappa=None, seed=seed, dtype="float64"
    )
    model.params["A"] = np.abs(model.params["A"])
    model.params["B"] *= 0.1  # stay in tanh's near-linear range, where contraction is slowest
    return model


@pytest.fixture
def inputs():
    return np.random.default_rng(0).standard_normal((32, 5))


def test_anderson_reaches_picards_fixed_point_in_fewer_iterations(inputs):
    model = slow_model()
    opts = dict(tol=1e-10, max_iter=5000, check_every=1)
    xp, sp = equilibrium(model, inputs, SolverOptions("picard", **opts))
    xa, sa = equilibrium(model, inputs, SolverOptions("anderson", **opts))
    assert sp.converged and sa.converged
    assert sa.iterations * 2 < sp.iterations, (sa.iterations, sp.iterations)
    np.testing.assert_allclose(xa, xp, rtol=1e-8, atol=1e-9)
    # It is a fixed point: one more application of the map changes nothing.
    P = model.params
    again = np.tanh(xa @ P["A"].T + inputs @ P["B"].T + P["b_x"])
    np.testing.assert_allclose(again, xa, rtol=1e-8, atol=1e-9)


def test_warm_start_from_the_solution_converges_at_once(inputs):
    model = slow_model()
    opts = SolverOptions(tol=1e-9, max_iter=5000, check_every=1)
    x, _ = equilibrium(model, inputs, opts)
    _, stats = equilibrium(model, inputs, opts, X0=x)
    assert stats.iterations <= 2


def diverging_model():
    """relu with A = 2I and a positive drive: x = max(2x + c, 0) has no fixed point."""
    model = dense_model(3, 4, 1, activation="relu", kappa=None, seed=0, dtype="float64")
    model.params["A"] = 2.0 * np.eye(4)
    model.params["B"] = np.abs(model.params["B"]) + 0.1
    return model


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_diverging_model_reports_non_convergence(solver):
    model = diverging_model()
    U = np.abs(np.random.default_rng(1).standard_normal((6, 3)))
    x, stats = equilibrium(model, U, SolverOptions(solver, tol=1e-6, max_iter=60))
    assert not stats.converged
    assert stats.n_unconverged == 6 and stats.residual_max >= 1e-6
    with pytest.raises(NonConvergenceError, match="did not converge"):
        equilibrium(model, U, SolverOptions(solver, tol=1e-6, max_iter=60, on_failure="raise"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_solve_never_looks_converged():
    model = diverging_model()
    U = np.abs(np.random.default_rng(1).standard_normal((6, 3)))
    _, stats = equilibrium(model, U, SolverOptions("picard", tol=1e-3, max_iter=3000))
    assert not stats.converged
    assert stats.residual_max == np.inf


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_memory_does_not_grow_with_iterations(solver):
    """Peak traced memory with 300 iterations equals that with 10 (nothing kept per iteration)."""
    model = dense_model(16, 256, 4, activation="tanh", a_norm=0.9, seed=0, dtype="float64")
    U = np.random.default_rng(0).standard_normal((512, 16))

    def peak(max_iter):
        tracemalloc.start()
        _, stats = equilibrium(model, U, SolverOptions(solver, tol=1e-300, max_iter=max_iter))
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert stats.iterations == max_iter
        return pk

    p10, p300 = peak(10), peak(300)
    state = 512 * 256 * 8  # one b×n float64 array
    assert p300 < p10 + state // 4, (p10, p300)


def test_solver_options_validate():
    with pytest.raises(ValueError, match="solver"):
        SolverOptions("newton")
    with pytest.raises(ValueError, match="tol"):
        SolverOptions(tol=0)


# --------------------------------------------------------------- accelerated solves, schedules

needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
DEVICES = ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, needs_gpu])]
SOLVES = [("picard", "adaptive"), ("anderson", "adaptive"), ("anderson", "fixed")]


def well_posed(activation, seed, n=24, p=5):
    """A random dense model with ‖A‖∞ = 0.9 (a contraction), float64."""
    return dense_model(p, n, 3, activation=activation, a_norm=0.9, seed=seed, dtype="float64")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver,check", SOLVES)
@pytest.mark.parametrize("activation,seed", [("tanh", 0), ("relu", 1), ("tanh", 2)])
def test_accelerated_solves_reach_picards_fixed_point(device, solver, check, activation, seed):
    model = well_posed(activation, seed)
    U = np.random.default_rng(seed).standard_normal((40, 5))
    ref, _ = equilibrium(model, U, SolverOptions("picard", tol=1e-13, max_iter=5000, check="fixed"))
    be = get_backend(device, "float64")
    x, stats = equilibrium(
        model.astype(be), be.asarray(U), SolverOptions(solver, tol=1e-9, max_iter=500, check=check)
    )
    assert stats.converged and stats.residual_max < 1e-9
    # Residual 1e-9 of a 0.9-contraction: at most 1e-9 · 0.9 / 0.1 from the fixed point.
    np.testing.assert_allclose(to_host(x), ref, rtol=0, atol=1e-8 * np.abs(ref).max())


def dense_adjoint(model, X, G_X):
    """V solved per sample by a dense solve: v = s ⊙ (g + v A)  ⇔  (I − A D)ᵀ vᵀ = D gᵀ."""
    A = model.params["A"]
    S = model.activation.derivative(X)
    eye = np.eye(A.shape[0])
    return np.stack(
        [np.linalg.solve((eye - A * s[None, :]).T, s * g) for s, g in zip(S, G_X, strict=True)]
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver,check", SOLVES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_adjoint_solution_matches_a_dense_solve(device, solver, check, activation):
    model = well_posed(activation, seed=3)
    rng = np.random.default_rng(3)
    U, G_X = rng.standard_normal((30, 5)), rng.standard_normal((30, 24))
    X, _ = equilibrium(model, U, SolverOptions(tol=1e-13, max_iter=5000))
    want = dense_adjoint(model, X, G_X)
    be = get_backend(device, "float64")
    so = SolverOptions(solver, tol=1e-10, max_iter=500, check=check)
    V, stats = adjoint(model.astype(be), be.asarray(X), be.asarray(G_X), BackwardOptions(solver=so))
    assert stats.converged
    np.testing.assert_allclose(to_host(V), want, rtol=0, atol=1e-8 * np.abs(want).max())


def test_anderson_needs_fewer_adjoint_iterations_than_picard():
    """On the (linear) adjoint system Anderson is GMRES-like: it must beat Picard clearly."""
    model = slow_model()
    U = np.random.default_rng(0).standard_normal((32, 5))
    X, _ = equilibrium(model, U, SolverOptions(tol=1e-12, max_iter=5000))
    G_X = np.random.default_rng(1).standard_normal(X.shape)
    its = {}
    for solver in ("picard", "anderson"):
        so = SolverOptions(solver, tol=1e-8, max_iter=5000)
        _, st = adjoint(model, X, G_X, BackwardOptions(solver=so))
        assert st.converged
        its[solver] = st.iterations
    assert its["anderson"] * 3 < its["picard"], its


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver,check", SOLVES)
def test_adjoint_non_convergence_is_flagged(device, solver, check):
    model = well_posed("tanh", seed=4)
    rng = np.random.default_rng(4)
    X = np.tanh(rng.standard_normal((10, 24)))
    G_X = rng.standard_normal((10, 24))
    be = get_backend(device, "float64")
    args = model.astype(be), be.asarray(X), be.asarray(G_X)
    so = SolverOptions(solver, tol=1e-14, max_iter=3, check=check)
    _, stats = adjoint(*args, BackwardOptions(solver=so))
    assert not stats.converged and stats.n_unconverged > 0 and stats.iterations == 3
    assert stats.residual_max >= 1e-14
    with pytest.raises(NonConvergenceError, match="adjoint"):
        adjoint(
            *args, BackwardOptions(solver=SolverOptions(**{**so.to_dict(), "on_failure": "raise"}))
        )


def test_adaptive_schedule_tests_at_the_predicted_iteration():
    """Geometric residuals r_k = 0.5^k: after two tests it jumps straight to convergence."""
    tol = 1e-4  # 0.5^14 ≈ 6.1e-5 is the first below tol
    s = CheckSchedule("adaptive", check_every=100, tol=tol, max_iter=1000)
    tested = []
    for k in range(1, 1000):
        if s.due(k):
            tested.append(k)
            if 0.5**k < tol:
                break
            s.observe(k, 0.5**k)
    assert tested == [2, 3, 14]


def test_adaptive_schedule_never_waits_longer_than_check_every():
    s = CheckSchedule("adaptive", check_every=4, tol=1e-12, max_iter=1000)
    s.observe(2, 0.5)
    s.observe(3, 0.49)  # almost no progress: the prediction is far away, capped at 4
    assert not s.due(6) and s.due(7)
    s = CheckSchedule("fixed", check_every=4, tol=1e-12, max_iter=10)
    assert [k for k in range(1, 11) if s.due(k) and (s.observe(k, 1.0) or True)] == [4, 8, 10]


def test_adaptive_checks_stop_at_the_same_iteration_as_checking_every_iteration():
    """On a linear contraction x ← 0.6 x + c the rate estimate is exact: no overshoot."""

    def f_(x, out):
        np.multiply(x, 0.6, out=out)
        out += 1.0
        return out

    x0 = np.zeros((4, 3))
    kw = dict(tol=1e-6, max_iter=200)
    _, every = picard(f_, x0, check_every=1, check="fixed", **kw)
    x, adaptive = picard(f_, x0, check_every=8, check="adaptive", **kw)
    _, fixed = picard(f_, x0, check_every=8, check="fixed", **kw)
    assert adaptive.converged and adaptive.iterations == every.iterations < fixed.iterations
    np.testing.assert_allclose(x, 2.5, rtol=1e-5)


def test_new_solver_options_validate():
    with pytest.raises(ValueError, match="check"):
        SolverOptions(check="sometimes")
    with pytest.raises(ValueError, match="memory"):
        SolverOptions("anderson", memory=0)


def test_mixing_coefficients_solve_the_constrained_least_squares():
    """α from the Gram matrix equals the direct constrained least-squares solution."""
    from dimplicit.solvers.anderson import _mixing_coefficients

    rng = np.random.default_rng(0)
    Gs = rng.standard_normal((7, 4, 30))  # 7 samples, 4 residuals of length 30
    gram = np.einsum("bin,bjn->bij", Gs, Gs)
    alpha, bad = _mixing_coefficients(gram, 2, 0.0, np)
    assert not bad.any()
    for g, a in zip(Gs, alpha, strict=True):
        # min ‖Σ α_j g_j‖ with Σ α = 1, by the bordered KKT system.
        K = np.block([[g @ g.T, np.ones((4, 1))], [np.ones((1, 4)), np.zeros((1, 1))]])
        want = np.linalg.solve(K, np.r_[np.zeros(4), 1.0])[:4]
        np.testing.assert_allclose(a, want, rtol=1e-8, atol=1e-10)


def test_auto_solver_picks_by_width():
    """auto: Picard on narrow states, Anderson (with its fallback counter) on wide ones."""
    from dimplicit.solvers import AUTO_ANDERSON_MIN_WIDTH, solve

    calls = []

    def f_(x, out):
        calls.append(x.shape)
        np.multiply(x, 0.5, out=out)
        out += 1.0
        return out

    for n in (8, AUTO_ANDERSON_MIN_WIDTH):
        x, st = solve(f_, np.zeros((2, n)), SolverOptions("auto", tol=1e-10, check_every=1))
        assert st.converged
        np.testing.assert_allclose(x, 2.0, rtol=1e-9)
    # Anderson solves this linear map exactly in a couple of steps; Picard needs ~35.
    narrow = sum(1 for c in calls if c[1] == 8)
    wide = len(calls) - narrow
    assert narrow > 30 and wide < 6, (narrow, wide)


def test_bench_core_splits_wall_time_into_gemm_and_the_rest():
    from dimplicit.benchmarks.core import bench_core

    out = bench_core(hidden=32, batch=64, inputs=4, outputs=2, steps=1, solver="anderson",
                     backward_solver="picard", threads=1)  # fmt: skip
    assert out["backward_solver"] == "picard" and out["check"] == "adaptive"
    total = out["gemm_seconds_per_step"] + out["other_seconds_per_step"]
    assert out["gemm_seconds_per_step"] > 0 and total == pytest.approx(out["seconds_per_step"])


def _anderson_state(m, h, slot, dtype, rng, b=9, n=37):
    """Ring buffers and Gram matrices as an Anderson solve leaves them before an iteration."""
    F = rng.standard_normal((m, b, n)).astype(dtype)
    G = (0.1 * rng.standard_normal((m, b, n))).astype(dtype)
    x = rng.standard_normal((b, n)).astype(dtype)
    gram = np.einsum("ibn,jbn->bij", G.astype(np.float64), G.astype(np.float64))
    unused = [j for j in range(m) if j >= h]
    gram[:, unused, :] = gram[:, :, unused] = 0.0  # slots not yet used
    return x, F, G, gram


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("damping", [1.0, 0.6])
@pytest.mark.parametrize(("m", "h", "slot"), [(1, 1, 0), (3, 1, 0), (3, 2, 1), (3, 3, 0),
                                              (3, 3, 2), (5, 4, 3), (5, 5, 1)])  # fmt: skip
def test_anderson_kernel_matches_the_numpy_iteration(m, h, slot, damping, dtype):
    """The fused kernel: residual and mixing bitwise those of the NumPy passes it replaced;
    the Gram row (now accumulated in float64) within rounding of a float64 dot product."""
    from dimplicit.kernels.anderson import anderson_step
    from dimplicit.solvers.anderson import _mixing_coefficients

    rng = np.random.default_rng(m * 100 + h * 10 + slot)
    x, F, G, gram = _anderson_state(m, h, slot, dtype, rng)
    x0 = x.copy()
    r = np.full(x.shape[0], np.nan)
    if slot % 2:  # the first iteration's case: read x0, write a fresh array
        x = np.full_like(x0, np.nan)
        bad = anderson_step(x0, x, F, G, gram, slot, h, 1e-4, damping, True, r, 1e-20)
    else:
        bad = anderson_step(x, x, F, G, gram, slot, h, 1e-4, damping, True, r, 1e-20)
    assert np.array_equal(G[slot], F[slot] - x0)
    want = np.einsum("bn,mbn->bm", G[slot].astype(np.float64), G[:h].astype(np.float64))
    np.testing.assert_allclose(gram[:, slot, :h], want, rtol=1e-12)
    assert np.array_equal(gram[:, :h, slot], gram[:, slot, :h])
    fnorm = np.sqrt(np.einsum("bn,bn->b", F[slot].astype(np.float64), F[slot]))
    np.testing.assert_allclose(r, np.sqrt(gram[:, slot, slot]) / (fnorm + 1e-20), rtol=1e-12)
    # The NumPy mixing, from the Gram matrix the kernel left.
    if h == 1:
        assert bad == 0 and np.array_equal(x, F[slot])
        return
    alpha, flagged = _mixing_coefficients(gram[:, :h, :h].copy(), slot, 1e-4, np)
    assert bad == int(flagged.sum()) == 0
    a = alpha.astype(dtype)
    ref = np.einsum("bm,mbn->bn", a, F[:h])
    if damping != 1.0:
        ref -= (1 - damping) * np.einsum("bm,mbn->bn", a, G[:h])
    assert np.array_equal(x, ref)


def test_anderson_kernel_falls_back_to_picard_on_singular_systems():
    """Two equal residuals and no regularisation: a zero pivot, flagged; x = f(x) there."""
    from dimplicit.kernels.anderson import anderson_step

    rng = np.random.default_rng(1)
    x, F, G, gram = _anderson_state(3, 3, 2, np.float64, rng)
    F[2] = F[0]  # g_2 = f(x) − x will equal g_0 for the first sample ...
    G[0, 0] = F[2, 0] - x[0]
    gram[:, 0, :] = np.einsum("bn,mbn->bm", G[0], G)
    gram[:, :, 0] = gram[:, 0, :]
    r = np.empty(x.shape[0])
    f_new = F[2].copy()
    bad = anderson_step(x, x, F, G, gram, 2, 3, 0.0, 1.0, False, r, 1e-30)
    assert bad == 1
    assert np.array_equal(x[0], f_new[0])  # ... whose step is a plain Picard step
    assert not np.array_equal(x[1:], f_new[1:])


def test_anderson_kernel_reports_non_finite_residuals_as_inf():
    from dimplicit.kernels.anderson import anderson_step

    rng = np.random.default_rng(2)
    x, F, G, gram = _anderson_state(3, 2, 1, np.float32, rng)
    F[1, 3, 5] = np.nan
    F[1, 4, 0] = np.inf
    r = np.zeros(x.shape[0])
    anderson_step(x, x, F, G, gram, 1, 2, 1e-4, 1.0, True, r, 1e-20)
    assert np.isinf(r[3]) and np.isinf(r[4]) and np.isfinite(np.delete(r, [3, 4])).all()


class _GenericXp:
    """NumPy seen as another array module (as CuPy would be): the solver's non-kernel path."""

    __name__ = "generic"

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("damping", [1.0, 0.7])
def test_anderson_array_module_path_matches_the_kernel(monkeypatch, damping):
    """The path CuPy takes (run here on NumPy arrays) and the fused kernel solve alike."""
    import importlib

    mod = importlib.import_module("dimplicit.solvers.anderson")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((50, 50)) * 0.9 / 50**0.5
    c = rng.standard_normal((16, 50))

    def f_(x, out):
        np.tanh(x @ W + c, out=out)
        return out

    x0 = np.zeros((16, 50))
    opts = {"tol": 1e-10, "max_iter": 200, "damping": damping, "check": "fixed"}
    x_kernel, s_kernel = mod.anderson(f_, x0, **opts)
    monkeypatch.setattr(mod, "array_module", lambda a: _GenericXp())
    x_generic, s_generic = mod.anderson(f_, x0, **opts)
    assert s_kernel.converged and s_generic.converged
    assert abs(s_kernel.iterations - s_generic.iterations) <= 4
    np.testing.assert_allclose(x_generic, x_kernel, atol=1e-9)
    assert not x0.any()  # the initial iterate is not modified


def test_anderson_kernel_reports_a_nan_residual_with_a_finite_image_as_inf():
    from dimplicit.kernels.anderson import anderson_step

    rng = np.random.default_rng(3)
    x, F, G, gram = _anderson_state(3, 2, 1, np.float64, rng)
    x[2, 4] = np.nan  # f(x) finite, g = f(x) − x not: the Gram diagonal is NaN
    r = np.zeros(x.shape[0])
    anderson_step(x, x, F, G, gram, 1, 2, 1e-4, 1.0, True, r, 1e-30)
    assert np.isinf(r[2]) and np.isfinite(np.delete(r, 2)).all()
