"""Block-sparse products and the layer-by-layer solves agree with the dense whole-map ones."""

import numpy as np
import pytest

from dimplicit.forward import equilibrium
from dimplicit.gradients import BackwardOptions, adjoint
from dimplicit.model import build_model, dense_model, layered_model
from dimplicit.solvers import NonConvergenceError, SolverOptions

ARCHS = ["ae-v0:5,32,16", "ae-v1:5,32,16", "ae-v1:7,64,16", "ae-v2:5,32,16"]


def _model(arch, seed=0):
    model = build_model(arch, 11, 11, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    # Non-zero biases and a stronger latent block than at initialisation.
    model.params["b_x"] = rng.standard_normal(model.n_hidden) * 0.3
    if "A" in model.masks:
        model.params["A"] = model.params["A"] * (1 + model.masks["A"])
    if model.gated:  # v2: gates away from 1/2, different per neuron
        model.params["beta"] = rng.standard_normal(model.n_hidden) * model.masks["beta"]
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_block_products_equal_dense_products(arch):
    model = _model(arch)
    S, P = model.structure, model.params
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, model.n_hidden))
    u = rng.standard_normal((7, model.n_inputs))
    y = rng.standard_normal((7, model.n_outputs))
    assert not S.A.dense and S.layer_order
    np.testing.assert_allclose(S.A.matmul_t(x, P["A"]), x @ P["A"].T, atol=1e-12)
    np.testing.assert_allclose(S.A.matmul(x, P["A"]), x @ P["A"], atol=1e-12)
    np.testing.assert_allclose(S.B.matmul_t(u, P["B"]), u @ P["B"].T, atol=1e-12)
    np.testing.assert_allclose(S.C.matmul(y, P["C"]), y @ P["C"], atol=1e-12)
    out = np.full((7, model.n_hidden), np.nan)  # stale contents must not leak through
    np.testing.assert_allclose(S.A.matmul_t(x, P["A"], out=out), x @ P["A"].T, atol=1e-12)
    mask = model.masks["A"]
    np.testing.assert_allclose(S.A.outer(x, x) * mask, (x.T @ x) * mask, atol=1e-12)
    assert S.D.empty


def test_dense_models_keep_one_gemm():
    S = dense_model(5, 8, 3, seed=0).structure
    assert S.A.dense and S.B.dense and not S.layer_order


def test_masked_entries_are_structural_zeros():
    model = layered_model([3, 4, 4, 3], seed=0, dtype="float64")
    A = model.params["A"].copy()
    A[:] = 1.0
    model.params["A"] = A
    again = type(model)(model.params, model.activation, model.masks, model.kappa, model.meta)
    np.testing.assert_array_equal(again.params["A"], model.masks["A"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_layer_sweep_equals_whole_map_solve(arch, solver):
    model = _model(arch, seed=2)
    U = np.random.default_rng(3).standard_normal((9, model.n_inputs))
    tight = SolverOptions(solver, tol=1e-12, max_iter=2000, check_every=1)
    X_sweep, st = equilibrium(model, U, tight)
    X_whole, _ = equilibrium(
        model, U, SolverOptions(solver, tol=1e-12, max_iter=2000, layerwise=False)
    )
    np.testing.assert_allclose(X_sweep, X_whole, atol=1e-10)
    assert st.converged
    if arch.startswith("ae-v0"):
        assert st.iterations == 1  # a feedforward network is one exact pass

    G = np.random.default_rng(4).standard_normal(X_sweep.shape)
    back = BackwardOptions("implicit", solver=tight)
    V_sweep, bst = adjoint(model, X_sweep, G, back)
    whole = BackwardOptions(
        "implicit", solver=SolverOptions(solver, tol=1e-12, max_iter=2000, layerwise=False)
    )
    V_whole, _ = adjoint(model, X_sweep, G, whole)
    np.testing.assert_allclose(V_sweep, V_whole, atol=1e-10)
    assert bst.converged


def test_unconverged_layer_is_flagged_or_raised():
    model = _model("ae-v1:5,32,16")
    s0, s1 = model.structure.groups[2]  # the latent, implicit layer
    model.params["A"][s0:s1, s0:s1] *= 50.0  # far outside the contraction regime
    U = np.random.default_rng(0).standard_normal((16, model.n_inputs))
    X, st = equilibrium(model, U, SolverOptions(max_iter=5))
    assert not st.converged and st.n_unconverged > 0
    with pytest.raises(NonConvergenceError, match=f"hidden layer {s0}:{s1}"):
        equilibrium(model, U, SolverOptions(max_iter=5, on_failure="raise"))


@pytest.mark.parametrize(
    "tiles",
    [
        ((0, 3, 0, 3), (0, 3, 3, 6), (3, 6, 6, 9)),  # adjacent tiles: one GEMM per row range
        ((0, 3, 0, 3), (0, 3, 6, 9), (6, 8, 3, 6)),  # a gap: two GEMMs summed; rows 3:6 unfed
    ],
)
def test_merged_tile_products_equal_masked_dense_products(tiles):
    from dimplicit.structure import Blocks

    rng = np.random.default_rng(5)
    blocks = Blocks((8, 9), tiles, False)
    mask = np.zeros((8, 9))
    for r0, r1, c0, c1 in tiles:
        mask[r0:r1, c0:c1] = 1
    W = rng.standard_normal((8, 9)) * mask
    x, v = rng.standard_normal((5, 9)), rng.standard_normal((5, 8))
    for out in (None, np.full((5, 8), np.nan)):  # stale contents must not leak through
        np.testing.assert_allclose(blocks.matmul_t(x, W, out=out), x @ W.T, atol=1e-12)
    wide = np.full((5, 12), np.nan)  # a strided ``out``: columns of a larger array
    blocks.matmul_t(x, W, out=wide[:, 2:10])
    np.testing.assert_allclose(wide[:, 2:10], x @ W.T, atol=1e-12)
    assert np.isnan(wide[:, :2]).all() and np.isnan(wide[:, 10:]).all()
    for out in (None, np.full((5, 9), np.nan)):
        np.testing.assert_allclose(blocks.matmul(v, W, out=out), v @ W, atol=1e-12)
    if tiles[1][2] == 3:
        assert blocks._row_spans == (((0, 3), ((0, 6),)), ((3, 6), ((6, 9),)))


def test_layer_reads_are_merged_spans():
    S = build_model("ae-v1:5,32,16", 11, 11, seed=0).structure
    # The latent layer reads the layer before it (one span) and itself (not a read).
    assert S.read_spans(48) == ((32, 48),)
    assert S.read_spans(0) == ()
    # Only the first layer is fed by the inputs: elsewhere the input projection is b_x.
    assert [S.fed_by_inputs(g0) for g0, _ in S.groups] == [True] + [False] * 4


@pytest.mark.parametrize("arch", ARCHS)
def test_feedforward_layers_swept_in_row_blocks(arch, monkeypatch):
    import dimplicit.forward as forward

    model = _model(arch, seed=6)
    U = np.random.default_rng(7).standard_normal((11, model.n_inputs))
    opts = SolverOptions("picard", tol=1e-12, max_iter=2000)
    X_one, st_one = equilibrium(model, U, opts)
    monkeypatch.setattr(forward, "_SWEEP_ROWS", 4)  # blocks of 4, 4 and 3 rows
    X_blocks, st_blocks = equilibrium(model, U, opts)
    np.testing.assert_allclose(X_blocks, X_one, rtol=1e-14, atol=1e-14)
    assert st_blocks.iterations == st_one.iterations
    X_whole, _ = equilibrium(model, U, SolverOptions("picard", tol=1e-12, max_iter=2000,
                                                     layerwise=False))  # fmt: skip
    np.testing.assert_allclose(X_blocks, X_whole, atol=1e-10)
