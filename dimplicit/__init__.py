"""dimplicit: implicit neural networks trained on Dask over Zarr, on CPU or GPU.

The scikit-learn estimators are the front door::

    from dimplicit import ImplicitClassifier
    clf = ImplicitClassifier().fit(X_train, y_train)

Lower levels: :class:`Trainer` (any store, in-process or on a Dask cluster),
:func:`dimplicit.fit.fit` (in-memory arrays), :func:`partition_sums` (one block of rows →
gradient sums).

The public names below are imported on first use (PEP 562), so that ``dimplicit --help``
and the worker processes do not pay for scikit-learn, Dask and Zarr until they need them.
"""

from importlib import import_module
from importlib import metadata as _metadata

try:  # one source of truth: pyproject.toml
    __version__ = _metadata.version("dimplicit")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# Public name -> the module that defines it.
_EXPORTS = {
    "ImplicitClassifier": "dimplicit.estimators",
    "ImplicitRegressor": "dimplicit.estimators",
    "ImplicitAutoencoder": "dimplicit.estimators",
    "Trainer": "dimplicit.distributed.trainer",
    "DivergenceError": "dimplicit.distributed.driver",
    "DataSpec": "dimplicit.distributed.spec",
    "ImplicitModel": "dimplicit.model",
    "build_model": "dimplicit.model",
    "StepConfig": "dimplicit.partition",
    "partition_sums": "dimplicit.partition",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dimplicit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
