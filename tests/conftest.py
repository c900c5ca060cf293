"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICE_DATA = REPO / "tests" / "data"
"""Small slices of NSL-KDD and HTRU2 shipped with the repository (see tests/data/README.md)."""
FULL_DATA_ENV = "DIMPLICIT_SHARED_DATA"
DEFAULT_FULL_DATA = REPO.parent / "shared" / "data"
"""Where the full data sets live when ``DIMPLICIT_SHARED_DATA`` is unset: ``../shared/data``."""
FULL_DATA_FILES = ("nsl-kdd/KDDTrain+.txt", "htru2/HTRU_2.csv")
"""The full files the tests read; ``full_data`` skips unless all of them are present."""


def find_full_data() -> Path:
    """The folder holding the full data sets, or ``pytest.skip`` with a message naming both
    places it looks: ``$DIMPLICIT_SHARED_DATA``, else ``../shared/data`` beside the repository.

    CI provides the full files, so the tests that need them run there; a fresh clone without
    them skips those tests (and only those) instead of failing.
    """
    env = os.environ.get(FULL_DATA_ENV)
    root = Path(env) if env else DEFAULT_FULL_DATA
    missing = [f for f in FULL_DATA_FILES if not (root / f).is_file()]
    if missing:
        where = f"${FULL_DATA_ENV}={env}" if env else f"../shared/data ({root})"
        pytest.skip(
            f"full data sets not found (looked in {where}; missing {', '.join(missing)}): "
            f"set {FULL_DATA_ENV} to a folder holding {' and '.join(FULL_DATA_FILES)}, "
            f"or put them in ../shared/data beside the repository"
        )
    return root


@pytest.fixture(scope="session")
def slice_data() -> Path:
    """The folder of small data slices shipped in the repository (``tests/data``):
    ``nsl-kdd/KDDTrain+_slice.txt`` and ``htru2/HTRU_2_slice.csv``."""
    return SLICE_DATA


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The full data sets folder (NSL-KDD, HTRU2), for tests that need the whole files.

    ``$DIMPLICIT_SHARED_DATA`` if set, else ``../shared/data`` next to the repository; the
    test is skipped, with a message naming both, when the files are not there.
    """
    return find_full_data()


@pytest.fixture(scope="session")
def shared_data(full_data) -> Path:
    """Former name of ``full_data`` (kept so older tests skip rather than error)."""
    return full_data


def write_teacher_store(path, n=6000, p=6, classes=3, chunk=1000, seed=0, val_fraction=0.2):
    """A small classification store labelled by a random implicit teacher (for trainer tests)."""
    import numpy as np

    from dimplicit.data.store import StoreWriter
    from dimplicit.forward import predict
    from dimplicit.model import dense_model

    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, p)).astype(np.float32)
    teacher = dense_model(p, 16, classes, activation="tanh", a_norm=0.8, seed=11, dtype="float64")
    y = predict(teacher, U.astype(np.float64))[0].argmax(1).astype(np.int32)
    split = (rng.random(n) < val_fraction).astype(np.int8)  # 0 train, 1 validation
    names = [f"f{i}" for i in range(p)]
    stats = {"mean": [0.0] * p, "std": [1.0] * p, "count": n, "rows": "all"}
    attrs = {
        "format": "generic",
        "label_classes": [str(c) for c in range(classes)],
        "normal_classes": ["0"],
        "stats": stats,
        "columns": names,
        "categories": {},
    }
    with StoreWriter(path, names, chunk_rows=chunk) as w:
        w.append(U, y, split)
        w.close(attrs)
    return path


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory):
    return write_teacher_store(tmp_path_factory.mktemp("stores") / "teacher.zarr")


@pytest.fixture
def make_store(tmp_path):
    """Factory: ``make_store(name, **kw)`` writes a teacher store under tmp_path."""

    def make(name, **kw):
        return write_teacher_store(tmp_path / name, **kw)

    return make


def make_trainer(store, **kw):
    """The trainer the training tests share: a 6-16-3 dense classifier on a teacher store,
    2 epochs of 1000-row steps in 250-row blocks; ``kw`` overrides any option."""
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.model import dense_model
    from dimplicit.optim import OptimizerConfig
    from dimplicit.partition import StepConfig

    opts = dict(
        config=StepConfig("cross_entropy"),
        optimizer=OptimizerConfig(lr=1e-2),
        epochs=2,
        batch_size=1000,
        block_rows=250,
        seed=0,
    )
    opts.update(kw)
    return Trainer(dense_model(6, 16, 3, seed=0), DataSpec(str(store), "classify"), **opts)


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@contextmanager
def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module for the duration of the block.

    The module is registered in ``sys.modules`` while loaded (dataclasses defined in a script
    look their module up there) and removed afterwards.
    """
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)
