"""Forward solvers: Picard vs Anderson, non-convergence reporting, bounded memory."""

import tracemalloc

import numpy as np
import pytest

from dimplicit.forward import equilibrium
from dimplicit.model import dense_model
from dimplicit.solvers import NonConvergenceError, SolverOptions


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
