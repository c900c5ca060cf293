"""The scikit-learn estimators: conventions, NumPy/Dask/store inputs, persistence, defaults."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from dimplicit import ImplicitAutoencoder, ImplicitClassifier, ImplicitRegressor

pytestmark = pytest.mark.timeout(300)

SMALL = dict(epochs=20, hidden=16, batch_size=16, random_state=0)

# Rows are solved in batches that iterate until their slowest row converges, and float32
# GEMMs round by row position: outputs agree across batchings and row orders to the solver
# tolerance, not to the 1e-7 these two checks demand.
BATCHED_SOLVES = (
    "a batch iterates until its slowest row converges, and float32 GEMMs round by row "
    "position: per-row outputs agree across batchings to the solver tolerance, not to 1e-7"
)


def expected_failures(estimator):
    return {
        "check_methods_sample_order_invariance": BATCHED_SOLVES,
        "check_methods_subset_invariance": BATCHED_SOLVES,
    }


@parametrize_with_checks(
    [
        ImplicitClassifier(**SMALL),
        ImplicitRegressor(**SMALL),
        ImplicitAutoencoder(arch="ae-dense", epochs=5, hidden=8, random_state=0),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_conventions(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(400, 6, n_informative=4, n_classes=3, random_state=0)
    return X, y


def test_numpy_in_numpy_out_and_fitted_attributes(blobs):
    X, y = blobs
    est = ImplicitClassifier(**SMALL).fit(X, y)
    assert list(est.classes_) == [0, 1, 2] and est.n_features_in_ == 6
    proba = est.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (400, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert (est.predict(X) == est.classes_[proba.argmax(1)]).all()
    assert est.transform(X).shape == (400, 16)
    assert est.score(X, y) > 0.8
    assert est.history_ and est.evaluations_ and est.best_["metric"] == "val_accuracy"


def test_dask_in_lazy_dask_out(blobs):
    X, y = blobs
    Xd, yd = da.from_array(X, chunks=(100, 6)), da.from_array(y, chunks=100)
    est = ImplicitClassifier(**SMALL).fit(Xd, yd)
    assert est.summary_["executor"] == "dask"
    out = est.predict(Xd)
    assert isinstance(out, da.Array) and out.chunks[0] == (100,) * 4
    # Other batches, so equal to the solver's tolerance (see BATCHED_SOLVES), not bitwise.
    np.testing.assert_allclose(est.predict_proba(Xd).compute(), est.predict_proba(X), atol=1e-3)
    assert (out.compute() == est.predict(X)).mean() > 0.99


def test_the_dask_executor_gives_the_same_weights_as_the_local_one(blobs):
    X, y = blobs
    local = ImplicitClassifier(executor="local", **SMALL).fit(X, y)
    dask_ = ImplicitClassifier(executor="dask", **SMALL).fit(X, y)
    assert local.summary_["weights_sha256"] == dask_.summary_["weights_sha256"]


def test_regression_targets_are_standardised_and_restored():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = 1000.0 + 250.0 * (X @ [1.0, -2.0, 0.5, 0.0])
    est = ImplicitRegressor(**{**SMALL, "epochs": 40}).fit(X, y)
    scaler = est.model_.meta["training"]["target_scaler"]
    assert scaler["mean"][0] == pytest.approx(y.mean(), rel=0.05)
    pred = est.predict(X)
    assert pred.shape == (300,) and est.score(X, y) > 0.9
    two = ImplicitRegressor(**SMALL).fit(X, np.c_[y, -y])
    assert two.predict(X).shape == (300, 2)


def test_autoencoder_follows_the_outlier_convention():
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((600, 5)) @ rng.standard_normal((5, 5)) * 0.3
    odd = rng.standard_normal((30, 5)) * 4
    est = ImplicitAutoencoder(arch="ae-dense", hidden=16, epochs=30, random_state=0)
    est.fit(normal[:500])
    X = np.r_[normal[500:], odd]
    y = np.r_[np.zeros(100, bool), np.ones(30, bool)]
    assert set(est.predict(X)) <= {-1, 1}
    assert (est.decision_function(X) < 0).sum() > 0
    np.testing.assert_allclose(est.decision_function(X), est.score_samples(X) - est.offset_)
    est.calibrate(X, y)
    assert est.calibration_["val_auc"] > 0.9
    assert ((est.predict(X) == -1) == y).mean() > 0.9


def test_save_and_load_round_trip_exactly(blobs, tmp_path):
    X, y = blobs
    for est, Xy in (
        (ImplicitClassifier(**SMALL), (X, y)),
        (ImplicitRegressor(**SMALL), (X, X[:, 0] * 3)),
        (ImplicitAutoencoder(arch="ae-dense", hidden=8, epochs=3, random_state=0), (X,)),
    ):
        est.fit(*Xy)
        path = est.save(tmp_path / f"{type(est).__name__}.npz")
        back = type(est).load(path)
        assert back.get_params() == est.get_params()
        for method in ("predict", "transform"):
            np.testing.assert_array_equal(getattr(back, method)(X), getattr(est, method)(X))
        with pytest.raises(ValueError, match="not a"):
            (ImplicitRegressor if type(est) is ImplicitClassifier else ImplicitClassifier).load(
                path
            )


def test_unconverged_rows_warn_with_their_count(blobs):
    X, y = blobs
    est = ImplicitClassifier(**SMALL).fit(X, y)
    est.set_params(max_iter=1)
    est.model_.meta["training"]["forward"]["max_iter"] = 1
    with pytest.warns(ConvergenceWarning, match=r"\d+ of 400 rows"):
        est.predict(X)


def test_pipeline_clone_and_grid_search(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), ImplicitClassifier(**{**SMALL, "epochs": 5}))
    search = GridSearchCV(pipe, {"implicitclassifier__hidden": [8, 16]}, cv=2).fit(X, y)
    assert search.best_params_["implicitclassifier__hidden"] in (8, 16)
    assert clone(pipe).get_params()["implicitclassifier__hidden"] == 16


def test_a_store_path_is_an_input(teacher_store):
    est = ImplicitClassifier(**SMALL).fit(str(teacher_store))
    assert est.n_features_in_ == 6 and list(est.classes_) == ["0", "1", "2"]


@pytest.mark.parametrize(
    "loader, ours, theirs",
    [(load_breast_cancer, ImplicitClassifier, MLPClassifier), (load_diabetes, ImplicitRegressor,
                                                                MLPRegressor)],
    ids=["breast_cancer", "diabetes"],
)  # fmt: skip
def test_defaults_at_least_match_scikit_learns_mlp(loader, ours, theirs):
    """Held-in parity: seeded 70/15/15 split, default estimators, test accuracy / R²."""
    X, y = loader(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, random_state=0)
    _, X_test, _, y_test = train_test_split(X_rest, y_rest, test_size=0.5, random_state=0)
    scaler = StandardScaler().fit(X_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = theirs(random_state=0).fit(scaler.transform(X_train), y_train)
    est = ours(random_state=0).fit(X_train, y_train)
    assert est.score(X_test, y_test) >= mlp.score(scaler.transform(X_test), y_test)


def test_a_zarr_array_is_read_as_the_dask_array_over_its_chunks(blobs):
    import zarr

    X, y = blobs
    Xz = zarr.array(X.astype(np.float32), chunks=(100, 6))
    yz = zarr.array(y, chunks=(100,))
    est = ImplicitClassifier(**SMALL).fit(Xz, yz)
    assert est.summary_["executor"] == "dask"
    out = est.predict(Xz)
    assert isinstance(out, da.Array) and out.chunks[0] == (100,) * 4
    assert (out.compute() == est.predict(X.astype(np.float32))).mean() > 0.99
