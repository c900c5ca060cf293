"""The dimplicit Zarr store: layout, writer, reader. The single source of truth for it.

Layout (a Zarr v3 group)::

    features  float32 (N, p)  chunks (chunk_rows, p), zstd
    labels    int32   (N,)    chunks (chunk_rows,)    codes into attrs["label_classes"]
                                                      (-1: the row has no label)
    split     int8    (N,)    chunks (chunk_rows,)    0 = train, 1 = validation, 2 = test

The three arrays share their row chunking, so ``dask.array.from_zarr`` gives partitions
that line up row for row.  Group attributes (all plain JSON):

``schema_version``
    1.
``format``
    ``"nsl-kdd"``, ``"htru2"``, ``"generic"`` or ``"synthetic-traffic"``.
``source``
    The CSV path (or a description of the generator).
``columns``
    Raw column names of the source, label and ignored columns included.
``label_column``
    Name of the label column (``None`` when the source has none).
``feature_names``
    One per feature column, after one-hot expansion (``service=http``, ``service=<unknown>``).
``categories``
    ``{column: vocabulary}``; every vocabulary ends with the ``"<unknown>"`` slot.
``label_classes``, ``normal_classes``
    Class names; ``normal_classes`` is the subset that counts as normal.
``stats``
    ``{"mean": [p], "std": [p], "count": int, "rows": str}``: population statistics of the
    stored float32 features over the rows that ``rows`` describes.
``bad_rows``
    ``{"count": int, "rows": [first 1000 1-based record numbers], "policy": str, ...}``.
``split_fractions``, ``split_seed``
    How ``split`` was drawn (see :func:`assign_splits`).

Writers may add more (ingest: ``ignored_columns``, ``blank_lines``, ``reference``; the
synthetic generator: ``attack_fraction``, ``family_shares``); readers must ignore unknown keys.

Everything that creates a store goes through :class:`StoreWriter`, everything that reads one
through :func:`open_store`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from dimplicit.data.schema import UNKNOWN

SCHEMA_VERSION = 1
FORMATS = ("nsl-kdd", "htru2", "generic", "synthetic-traffic")
DEFAULT_CHUNK_ROWS = 65536
SPLIT_NAMES = ("train", "validation", "test")
MAX_BAD_ROWS_LISTED = 1000

# zstd level 3 is zstd's own default: on these tables it compresses about as well as higher
# levels (rates with two decimals, small integers, sparse one-hot columns) at a fraction
# of the CPU cost, so ingest stays bound by CSV parsing rather than compression.
_COMPRESSOR = ZstdCodec(level=3)

# Rows per counter block of the split RNG; see assign_splits.
_SPLIT_BLOCK = 4096


# --------------------------------------------------------------------------------------
# Split assignment and statistics (shared by ingest and the synthetic generator)
# --------------------------------------------------------------------------------------


def check_split_fractions(fractions) -> tuple[float, float, float]:
    """Validate ``(train, validation, test)`` fractions.

    Parameters
    ----------
    fractions : sequence of 3 floats
        Non-negative, summing to 1.

    Returns
    -------
    tuple of float
        The fractions as floats.
    """
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"split fractions must be 3 numbers, got {fractions!r}") from None
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr):
        raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(fr):g})")
    return fr


def assign_splits(seed: int, start: int, n: int, fractions) -> np.ndarray:
    """Split codes (0 train, 1 validation, 2 test) of rows ``start .. start+n-1``.

    Each row's split is a function of ``(seed, row index)`` only, so it does not depend on
    how the rows are chunked or batched.  The uniform draw of row ``i`` comes from NumPy's
    counter-based Philox generator keyed on ``seed``, at counter block ``i // 4096``; any
    range of rows is drawn by regenerating only the blocks it touches.

    Parameters
    ----------
    seed : int
        Non-negative key of the generator.
    start, n : int
        First row index (0-based) and number of rows.
    fractions : sequence of 3 floats
        Train, validation and test fractions (see :func:`check_split_fractions`).

    Returns
    -------
    numpy.ndarray
        int8 array of length ``n``.
    """
    f_train, f_val, _ = check_split_fractions(fractions)
    if n <= 0:
        return np.zeros(0, dtype=np.int8)
    if seed < 0:
        raise ValueError(f"split seed must be non-negative, got {seed}")
    first, last = start // _SPLIT_BLOCK, (start + n - 1) // _SPLIT_BLOCK
    # The block index sits in the second 64-bit word of Philox's 256-bit counter; drawing
    # 4096 doubles advances only the first word (by 1024), so blocks never overlap.
    u = np.concatenate(
        [
            np.random.Generator(np.random.Philox(key=seed, counter=b << 64)).random(_SPLIT_BLOCK)
            for b in range(first, last + 1)
        ]
    )
    off = start - first * _SPLIT_BLOCK
    u = u[off : off + n]
    return (u >= f_train).astype(np.int8) + (u >= f_train + f_val).astype(np.int8)


@dataclass
class RunningStats:
    """Streaming per-column mean and variance, numerically stable, in float64.

    Each block contributes its own count, mean and sum of squared deviations (M2); blocks are
    merged with the pairwise formula of Chan, Golub and LeVeque (1979), which avoids the
    cancellation of the naive ``sum(x**2) - n*mean**2`` on large or offset data.

    Parameters
    ----------
    n_features : int
        Number of columns.
    """

    n_features: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self):
        self.mean = np.zeros(self.n_features, dtype=np.float64)
        self.m2 = np.zeros(self.n_features, dtype=np.float64)

    def update(self, block: np.ndarray) -> None:
        """Add the rows of a 2-D ``block`` (any float dtype; accumulated in float64)."""
        nb = block.shape[0]
        if nb == 0:
            return
        # One float64 temporary (the deviations), squared in place: a float32 block costs
        # twice its size here, not six times.
        mean_b = block.mean(axis=0, dtype=np.float64)
        dev = np.subtract(block, mean_b, dtype=np.float64)
        np.square(dev, out=dev)
        self.merge(nb, mean_b, dev.sum(axis=0))

    def merge(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Merge another partial result (count, mean, M2) into this one (Chan et al.)."""
        na = self.count
        n = na + nb
        if nb == 0:
            return
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta**2 * (na * nb / n)
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``, like ``numpy.std``)."""
        if self.count == 0:
            return np.ones(self.n_features)
        return np.sqrt(self.m2 / self.count)

    def to_attr(self, rows: str) -> dict:
        """The ``stats`` attribute. With no rows, mean 0 and std 1 (an identity transform)."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "count": int(self.count),
            "rows": rows,
        }


def standardize(block, mean, std):
    """Return ``(block - mean) / std``, treating ``std == 0`` as 1; in place when possible.

    Constant columns (``num_outbound_cmds`` in NSL-KDD, unseen one-hot slots) have zero
    standard deviation; dividing by 1 leaves them at 0 after centring instead of NaN.

    Parameters
    ----------
    block : array (n, p)
        NumPy or CuPy. Modified in place when it is a writeable floating array.
    mean, std : array (p,)
        Statistics, e.g. ``Store.mean`` and ``Store.std``; moved to ``block``'s device.

    Returns
    -------
    array
        The standardized block (``block`` itself when done in place).
    """
    from dimplicit.backend import array_module

    xp = array_module(block)
    dtype = block.dtype if block.dtype.kind == "f" else np.dtype(np.float32)
    mean = xp.asarray(mean, dtype=dtype)
    std = xp.asarray(std, dtype=dtype)
    std = xp.where(std == 0, xp.asarray(1, dtype=dtype), std)
    writeable = getattr(getattr(block, "flags", None), "writeable", True)
    if block.dtype.kind == "f" and writeable:
        block -= mean
        block /= std
        return block
    return (xp.asarray(block, dtype=dtype) - mean) / std


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


def _is_store(path: Path) -> bool:
    """True when ``path`` holds a dimplicit store (a Zarr group with our schema_version)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and "schema_version" in doc.get("attributes", {})


def check_writable(path, overwrite: bool) -> None:
    """Raise unless a store may be created at ``path``.

    Refuses an existing path without ``overwrite``, and anything except an existing dimplicit
    store or an empty directory even with it.

    Raises
    ------
    FileExistsError
        Naming the path.
    """
    path = Path(path)
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    # Never rmtree a directory we did not create: --out pointing at a home directory by
    # mistake must not delete it.
    if not (_is_store(path) or (path.is_dir() and not any(path.iterdir()))):
        raise FileExistsError(
            f"{path} exists and is not a dimplicit store; refusing to overwrite it"
        )


class StoreWriter:
    """Write a store block by block, atomically, with memory bounded by one chunk.

    Rows go to a temporary sibling directory (``.NAME.tmp-XXXX``); :meth:`close` writes the
    attributes and renames it into place.  Any exception (or :meth:`abort`) removes the
    temporary and leaves an existing store at ``path`` untouched.  Use it as a context
    manager so that an exception aborts it::

        with StoreWriter(path, feature_names) as w:
            for x, y, s in blocks:
                w.append(x, y, s)
            w.close(attrs)

    Parameters
    ----------
    path : str or Path
        Where the store will live.
    feature_names : list of str
        One name per feature column; fixes ``p``.
    chunk_rows : int
        Rows per Zarr chunk (all three arrays); also the size of the one buffer held.
    overwrite : bool
        Replace an existing store at ``path`` (only a dimplicit store or an empty directory;
        anything else is refused).
    """

    def __init__(
        self,
        path,
        feature_names,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.feature_names = [str(f) for f in feature_names]
        self.chunk_rows = int(chunk_rows)
        self.overwrite = bool(overwrite)
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        if not self.feature_names:
            raise ValueError("a store needs at least one feature column")
        check_writable(self.path, self.overwrite)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"parent directory of {self.path} does not exist")
        p = len(self.feature_names)
        self.n_rows = 0  # rows appended so far (written or buffered)
        self._closed = False
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self._group = zarr.open_group(self._tmp, mode="w-", zarr_format=3)
            self._features = self._group.create_array(
                "features",
                shape=(0, p),
                chunks=(self.chunk_rows, p),
                dtype="float32",
                compressors=_COMPRESSOR,
            )
            self._labels = self._group.create_array(
                "labels",
                shape=(0,),
                chunks=(self.chunk_rows,),
                dtype="int32",
                compressors=_COMPRESSOR,
            )
            self._split = self._group.create_array(
                "split",
                shape=(0,),
                chunks=(self.chunk_rows,),
                dtype="int8",
                compressors=_COMPRESSOR,
            )
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        # One chunk of buffer: appends are copied in and every Zarr write is a whole,
        # chunk-aligned chunk (no read-modify-write of partial chunks).
        self._buf_x = np.empty((self.chunk_rows, p), dtype=np.float32)
        self._buf_y = np.empty(self.chunk_rows, dtype=np.int32)
        self._buf_s = np.empty(self.chunk_rows, dtype=np.int8)
        self._fill = 0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def append(self, features, labels, split) -> None:
        """Append rows.

        Parameters
        ----------
        features : array (n, p)
            Cast to float32.
        labels : array (n,)
            Integer codes into the label classes (-1 for unlabelled rows).
        split : array (n,)
            0 train, 1 validation, 2 test.
        """
        if self._closed:
            raise RuntimeError("StoreWriter is closed")
        x = np.asarray(features)
        y = np.asarray(labels)
        s = np.asarray(split)
        n = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"features must have shape (n, {self.n_features}), got {x.shape}")
        if y.shape != (n,) or s.shape != (n,):
            raise ValueError(
                f"labels and split must have shape ({n},), got {y.shape} and {s.shape}"
            )
        pos = 0
        while pos < n:
            take = min(n - pos, self.chunk_rows - self._fill)
            sl = slice(self._fill, self._fill + take)
            self._buf_x[sl] = x[pos : pos + take]
            self._buf_y[sl] = y[pos : pos + take]
            self._buf_s[sl] = s[pos : pos + take]
            self._fill += take
            self.n_rows += take
            pos += take
            if self._fill == self.chunk_rows:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        k = self._fill
        self._features.append(self._buf_x[:k])
        self._labels.append(self._buf_y[:k])
        self._split.append(self._buf_s[:k])
        self._fill = 0

    def close(self, attrs: dict) -> Path:
        """Flush, write ``attrs`` (plus ``schema_version``) and move the store into place.

        Parameters
        ----------
        attrs : dict
            Group attributes (JSON-serialisable); see the module docstring.

        Returns
        -------
        Path
            The final store path.
        """
        if self._closed:
            raise RuntimeError("StoreWriter is closed")
        try:
            self._flush()
            full = dict(attrs)
            full["schema_version"] = SCHEMA_VERSION
            full.setdefault("feature_names", self.feature_names)
            if list(full["feature_names"]) != self.feature_names:
                raise ValueError("attrs['feature_names'] differ from the writer's feature_names")
            # Fail here, inside the temporary, rather than leave an unreadable store.
            json.dumps(full, allow_nan=False)
            self._group.attrs.update(full)
            self._replace()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._buf_x = self._buf_y = self._buf_s = None
        return self.path

    def _replace(self) -> None:
        check_writable(self.path, self.overwrite)  # it may have appeared meanwhile
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        try:
            os.replace(self._tmp, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written so far; an existing store at ``path`` is untouched."""
        self._closed = True
        self._buf_x = self._buf_y = self._buf_s = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._closed:
            self.abort()
        return False


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """A read-only view of a dimplicit store; build it with :func:`open_store`.

    Attributes
    ----------
    path : Path
    features, labels, split : zarr.Array
        The arrays (opened read-only); slice them to read rows.
    attrs : dict
        All group attributes.
    """

    path: Path
    features: Any
    labels: Any
    split: Any
    attrs: dict

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def chunk_rows(self) -> int:
        return int(self.features.chunks[0])

    @property
    def feature_names(self) -> list[str]:
        return list(self.attrs["feature_names"])

    @property
    def label_classes(self) -> list[str]:
        return list(self.attrs.get("label_classes", []))

    @property
    def normal_classes(self) -> list[str]:
        return list(self.attrs.get("normal_classes", []))

    @property
    def categories(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.attrs.get("categories", {}).items()}

    @property
    def mean(self) -> np.ndarray:
        """Per-feature mean (float32) from the ``stats`` attribute."""
        return np.asarray(self.attrs["stats"]["mean"], dtype=np.float32)

    @property
    def std(self) -> np.ndarray:
        """Per-feature standard deviation (float32); may contain zeros (see standardize)."""
        return np.asarray(self.attrs["stats"]["std"], dtype=np.float32)

    def normal_codes(self) -> np.ndarray:
        """Label codes of the normal classes."""
        classes = self.label_classes
        return np.asarray(
            [classes.index(c) for c in self.normal_classes if c in classes], dtype=np.int32
        )

    def is_normal(self, label_codes) -> np.ndarray:
        """Boolean mask: which label codes belong to a normal class (-1, unlabelled: False)."""
        return np.isin(np.asarray(label_codes), self.normal_codes())

    def unknown_columns(self) -> dict[str, int]:
        """Feature index of each categorical column's ``<unknown>`` slot."""
        names = self.feature_names
        return {c: names.index(f"{c}={UNKNOWN}") for c in self.categories}


def open_store(path) -> Store:
    """Open a dimplicit store read-only.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Store

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is not a dimplicit store, or a newer schema version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}")
    if not _is_store(path):
        raise ValueError(f"{path} is not a dimplicit store (no Zarr group with schema_version)")
    group = zarr.open_group(path, mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has store schema_version {version}; this dimplicit reads {SCHEMA_VERSION}"
        )
    try:
        features, labels, split = group["features"], group["labels"], group["split"]
    except KeyError as exc:
        raise ValueError(f"{path} is not a complete dimplicit store: missing {exc}") from None
    if not (features.shape[0] == labels.shape[0] == split.shape[0]):
        raise ValueError(f"{path}: features, labels and split have different row counts")
    if len(attrs.get("feature_names", [])) != features.shape[1]:
        raise ValueError(f"{path}: attribute feature_names does not match features' columns")
    return Store(path=path, features=features, labels=labels, split=split, attrs=attrs)


class DaskArrays(NamedTuple):
    """Dask views of a store, chunked like its Zarr chunks."""

    features: Any
    labels: Any
    split: Any


def as_dask(store) -> DaskArrays:
    """Dask arrays of ``features``, ``labels`` and ``split``, chunks aligned to the Zarr chunks.

    Parameters
    ----------
    store : Store or str or Path

    Returns
    -------
    DaskArrays
        A named tuple ``(features, labels, split)``; the row chunks of all three coincide.
    """
    import dask.array as da

    if not isinstance(store, Store):
        store = open_store(store)
    return DaskArrays(
        features=da.from_zarr(store.features),
        labels=da.from_zarr(store.labels),
        split=da.from_zarr(store.split),
    )
