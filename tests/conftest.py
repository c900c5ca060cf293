"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data sets folder (NSL-KDD, HTRU2): ``../shared/data`` next to the repo.

    Override with the environment variable ``DIMPLICIT_SHARED_DATA``.  Tests that use it are
    deliberately not skipped when it is missing: CI provides it.
    """
    env = os.environ.get("DIMPLICIT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
