"""The dimplicit Zarr store: layout, writer, reader. The single source of truth for it.

Layout (a Zarr v3 group)::

    features  float32 (N, p)  chunks (chunk_rows, p), zstd
    labels    int32   (N,)    chunks (chunk_rows,)    codes into attrs["label_classes"]
                                                      (-1: the row has no label)
    split     int8    (N,)    chunks (chunk_rows,)    SPLIT_CODES: 0 = train,
                                                      1 = validation, 2 = test
    targets   float32 (N, t)  chunks (chunk_rows, t)  optional: float regression targets,
                                                      one column per attrs["target_names"]

The arrays share their row chunking, so ``dask.array.from_zarr`` gives partitions that line
up row for row.  Group attributes (all plain JSON):

``schema_version``
    1.
``format``
    What the rows came from: ``"nsl-kdd"``, ``"htru2"``, ``"generic"`` (CSV/TSV),
    ``"parquet"``, ``"zarr"`` (an adopted array) or ``"synthetic-traffic"``.
``source``
    The input path (or a description of the generator).
``columns``
    Raw column names of the source, label, target and ignored columns included.
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
``target_names``
    Present exactly when ``targets`` is: one name per target column (the source columns
    ingested with ``targets=`` / ``--target``).  Targets are not label classes: ``labels``
    stays independent of them.
``target_stats``
    With ``targets``: ``{"mean": [t], "std": [t], "count": int, "rows": "train split rows"}``,
    population statistics of the targets over the train split, written by
    :class:`StoreWriter`; training standardises targets with them and prediction undoes it.
``bad_rows``
    ``{"count": int, "rows": [first 1000 1-based record numbers], "policy": str, ...}``.
``split_fractions``, ``split_seed``
    How ``split`` was drawn (see :func:`dimplicit.data.preprocess.assign_splits`).

Writers may add more (ingest: ``ignored_columns``, ``blank_lines``, ``reference``; the
synthetic generator: ``attack_fraction``, ``family_shares``); readers must ignore unknown keys.

Everything that creates a store goes through :class:`StoreWriter`, everything that reads one
through :func:`open_store`, which checks every array and attribute above that the library
relies on.  Split assignment, statistics and standardisation live in
:mod:`dimplicit.data.preprocess`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from dimplicit.data.preprocess import RunningStats
from dimplicit.data.schema import UNKNOWN

SCHEMA_VERSION = 1
FORMATS = ("nsl-kdd", "htru2", "generic", "parquet", "zarr", "synthetic-traffic")
DEFAULT_CHUNK_ROWS = 65536
SPLIT_NAMES = ("train", "validation", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
"""The one split map: ``{"train": 0, "validation": 1, "test": 2}``, the codes of ``split``."""
MAX_BAD_ROWS_LISTED = 1000

# zstd level 3 is zstd's own default: on these tables it compresses about as well as higher
# levels (rates with two decimals, small integers, sparse one-hot columns) at a fraction
# of the CPU cost, so ingest stays bound by CSV parsing rather than compression.
_COMPRESSOR = ZstdCodec(level=3)


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


SCORES_FORMAT = "dimplicit-scores"
PREDICTIONS_FORMAT = "dimplicit-predictions"
# The kinds of output directory dimplicit writes; --overwrite replaces only the same kind.
OUTPUT_KINDS = ("store", SCORES_FORMAT, PREDICTIONS_FORMAT)


class OutputExistsError(FileExistsError):
    """The output path exists and replacing it was not asked for (``overwrite=False``)."""

    def __init__(self, path):
        super().__init__(f"{path} already exists")
        self.path = Path(path)


def _group_attrs(path: Path) -> dict | None:
    """The attributes of the Zarr v3 group at ``path``, or None if it is not one."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def output_kind(path) -> str | None:
    """Which dimplicit output lives at ``path``: one of :data:`OUTPUT_KINDS`, or None."""
    attrs = _group_attrs(Path(path))
    if attrs is None:
        return None
    if attrs.get("format") in (SCORES_FORMAT, PREDICTIONS_FORMAT):
        return attrs["format"]
    return "store" if "schema_version" in attrs else None


def _is_store(path: Path) -> bool:
    """True when ``path`` holds a dimplicit store (a Zarr group with our schema_version)."""
    return output_kind(path) == "store"


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(path, kind: str = "store", overwrite: bool = False, protect=()) -> None:
    """Raise unless an output of ``kind`` may be written at ``path``.

    A new path is always fine.  An existing one needs ``overwrite`` and must hold an output
    of the same kind (or be an empty directory): ``overwrite`` never replaces an arbitrary
    directory, a store with a score output, or a checkpoint directory.  Paths in ``protect``
    (the command's inputs) may be neither the output nor inside it nor contain it.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    FileExistsError
        ``path`` holds something ``overwrite`` may not replace, or overlaps an input.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    path = Path(path)
    for p in protect:
        if p is not None and _overlaps(path, Path(p)):
            raise FileExistsError(f"output {path} overlaps the input {p}; choose another path")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputExistsError(path)
    found = output_kind(path)
    if found == kind or (path.is_dir() and not path.is_symlink() and not any(path.iterdir())):
        return
    label = dict(zip(OUTPUT_KINDS, ("store", "score output", "prediction output"), strict=True))
    if found is None:
        raise FileExistsError(
            f"{path} exists and is not a dimplicit {label[kind]}; refusing to replace it"
        )
    raise FileExistsError(
        f"{path} is a dimplicit {label[found]}, not a {label[kind]}; refusing to replace it"
    )


def check_writable(path, overwrite: bool) -> None:
    """Raise unless a store may be created at ``path`` (see :func:`check_output`)."""
    check_output(path, "store", overwrite)


def new_output_dir(path, kind: str = "store", overwrite: bool = False, protect=()) -> Path:
    """Check ``path`` (:func:`check_output`), repair leftovers of killed runs beside it, and
    return a fresh temporary sibling to build the output in (not yet created)."""
    from dimplicit.atomic import recover, temp_sibling

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"parent directory of {path} does not exist")
    recover(path)
    check_output(path, kind, overwrite, protect)
    return temp_sibling(path)


def publish_output(tmp, path, kind: str = "store", overwrite: bool = False, protect=()) -> None:
    """Move the finished output ``tmp`` into ``path`` atomically, re-checking ``path`` first.

    Without ``overwrite`` the rename itself refuses a path that appeared meanwhile (a second
    run writing the same output fails instead of silently replacing the first).  With it, the
    old output is swapped out in one step and deleted only if it is of the same kind.
    """
    from dimplicit.atomic import move_new, replace_dir

    path = Path(path)
    check_output(path, kind, overwrite, protect)
    if not overwrite:
        try:
            move_new(tmp, path)
        except FileExistsError:
            raise OutputExistsError(path) from None
        return

    def same_kind(old):
        check_output(old, kind, overwrite=True)

    replace_dir(tmp, path, check_old=same_kind)


def _check_buffer_fits(chunk_rows: int, n_features: int) -> None:
    from dimplicit.memory import check_fits

    # One float32 chunk buffered, about as much again while Zarr encodes it, plus the
    # caller's parsed block of the same size.
    check_fits(
        3 * chunk_rows * (4 * n_features + 5),
        f"a chunk of {chunk_rows} rows × {n_features} features (chunk_rows)",
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
    path : str or Path or None
        Where the store will live; ``None`` builds it in memory (a Zarr ``MemoryStore``:
        how in-memory arrays become a store for the in-process executor) and :meth:`close`
        returns the opened :class:`Store`.
    feature_names : list of str
        One name per feature column; fixes ``p``.
    chunk_rows : int
        Rows per Zarr chunk (all three arrays); also the size of the one buffer held.
    overwrite : bool
        Replace an existing store at ``path`` (only a dimplicit store or an empty directory;
        anything else is refused).
    protect : sequence of paths
        Inputs of the command, which the output may not replace or overlap.
    target_names : list of str, optional
        Names of float regression targets; the store then has a ``targets`` array (N, t)
        and :meth:`append` takes them.
    """

    def __init__(
        self,
        path,
        feature_names,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
        protect=(),
        target_names=(),
    ):
        self.path = None if path is None else Path(path)
        self.feature_names = [str(f) for f in feature_names]
        self.target_names = [str(t) for t in target_names]
        self.chunk_rows = int(chunk_rows)
        self.overwrite = bool(overwrite)
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        if not self.feature_names:
            raise ValueError("a store needs at least one feature column")
        self.protect = tuple(protect)
        p = len(self.feature_names)
        _check_buffer_fits(self.chunk_rows, p)
        if self.path is None:
            self._tmp = zarr.storage.MemoryStore()
        else:
            self._tmp = new_output_dir(self.path, "store", self.overwrite, self.protect)
        self.n_rows = 0  # rows appended so far (written or buffered)
        self._closed = False
        # In memory, compression would only cost CPU.
        compressors = None if self.path is None else _COMPRESSOR
        try:
            self._group = zarr.open_group(self._tmp, mode="w-", zarr_format=3)
            self._features = self._group.create_array(
                "features",
                shape=(0, p),
                chunks=(self.chunk_rows, p),
                dtype="float32",
                compressors=compressors,
            )
            self._labels = self._group.create_array(
                "labels",
                shape=(0,),
                chunks=(self.chunk_rows,),
                dtype="int32",
                compressors=compressors,
            )
            self._split = self._group.create_array(
                "split",
                shape=(0,),
                chunks=(self.chunk_rows,),
                dtype="int8",
                compressors=compressors,
            )
            self._targets = None
            if self.target_names:
                t = len(self.target_names)
                self._targets = self._group.create_array(
                    "targets",
                    shape=(0, t),
                    chunks=(self.chunk_rows, t),
                    dtype="float32",
                    compressors=compressors,
                )
        except BaseException:
            self._discard()
            raise
        # One chunk of buffer: appends are copied in and every Zarr write is a whole,
        # chunk-aligned chunk (no read-modify-write of partial chunks).
        self._buf_x = np.empty((self.chunk_rows, p), dtype=np.float32)
        self._buf_y = np.empty(self.chunk_rows, dtype=np.int32)
        self._buf_s = np.empty(self.chunk_rows, dtype=np.int8)
        self._buf_t = np.empty((self.chunk_rows, len(self.target_names)), dtype=np.float32)
        self._target_stats = RunningStats(max(len(self.target_names), 1))
        self._fill = 0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def append(self, features, labels, split, targets=None) -> None:
        """Append rows.

        Parameters
        ----------
        features : array (n, p)
            Cast to float32.
        labels : array (n,)
            Integer codes into the label classes (-1 for unlabelled rows).
        split : array (n,)
            0 train, 1 validation, 2 test.
        targets : array (n, t), optional
            Float regression targets; required exactly when the writer has target names.
            Their statistics over the train split are recorded as ``target_stats``.
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
        if (targets is None) != (not self.target_names):
            raise ValueError("targets must be given exactly when the store has target_names")
        t = None
        if targets is not None:
            t = np.asarray(targets, dtype=np.float32).reshape(n, -1)
            if t.shape[1] != len(self.target_names) or not np.isfinite(t).all():
                raise ValueError(
                    f"targets must be finite with shape (n, {len(self.target_names)})"
                )
            self._target_stats.update(t[s == 0])
        pos = 0
        while pos < n:
            take = min(n - pos, self.chunk_rows - self._fill)
            sl = slice(self._fill, self._fill + take)
            self._buf_x[sl] = x[pos : pos + take]
            self._buf_y[sl] = y[pos : pos + take]
            self._buf_s[sl] = s[pos : pos + take]
            if t is not None:
                self._buf_t[sl] = t[pos : pos + take]
            self._fill += take
            self.n_rows += take
            pos += take
            if self._fill == self.chunk_rows:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        k = self._fill
        # An uncompressed in-memory chunk may alias the buffer it was written from: copy.
        own = (lambda a: a.copy()) if self.path is None else (lambda a: a)
        self._features.append(own(self._buf_x[:k]))
        self._labels.append(own(self._buf_y[:k]))
        self._split.append(own(self._buf_s[:k]))
        if self._targets is not None:
            self._targets.append(own(self._buf_t[:k]))
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
            if self.target_names:
                full["target_names"] = self.target_names
                full["target_stats"] = self._target_stats.to_attr("train split rows")
            # Fail here, inside the temporary, rather than leave an unreadable store.
            json.dumps(full, allow_nan=False)
            self._group.attrs.update(full)
            if self.path is None:
                self._closed = True
                return _open_group(self._group, "<memory>")
            publish_output(self._tmp, self.path, "store", self.overwrite, self.protect)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._buf_x = self._buf_y = self._buf_s = self._buf_t = None
        return self.path

    def abort(self) -> None:
        """Discard everything written so far; an existing store at ``path`` is untouched."""
        self._closed = True
        self._buf_x = self._buf_y = self._buf_s = self._buf_t = None
        self._discard()

    def _discard(self) -> None:
        if self.path is not None:
            from dimplicit.atomic import remove_temporary

            remove_temporary(self._tmp)

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
    targets: Any = None

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
    def target_names(self) -> list[str]:
        return list(self.attrs.get("target_names", []))

    @property
    def target_mean(self) -> np.ndarray:
        return np.asarray(self.attrs["target_stats"]["mean"], dtype=np.float32)

    @property
    def target_std(self) -> np.ndarray:
        return np.asarray(self.attrs["target_stats"]["std"], dtype=np.float32)

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
    """Open a dimplicit store read-only, checking every attribute the library relies on.

    Parameters
    ----------
    path : str or Path or Store or zarr.Group
        A store directory; an opened :class:`Store` is returned as it is, and a Zarr group
        (e.g. in memory) is checked and wrapped.

    Returns
    -------
    Store

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is not a dimplicit store, a newer schema version, or an attribute or array
        is missing or malformed (the message names it).
    """
    if isinstance(path, Store):
        return path
    if isinstance(path, zarr.Group):
        return _open_group(path, str(getattr(path.store, "root", "<memory>")))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}")
    if not _is_store(path):
        raise ValueError(f"{path} is not a dimplicit store (no Zarr group with schema_version)")
    return _open_group(zarr.open_group(path, mode="r", zarr_format=3), path)


def _open_group(group, path) -> Store:
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
    targets = group["targets"] if "targets" in group else None
    _check_store(path, attrs, features, labels, split, targets)
    return Store(path, features, labels, split, attrs, targets)


def _check_store(path, attrs, features, labels, split, targets) -> None:
    """One ``ValueError`` naming the first array or attribute that is not as documented."""

    def bad(what):
        raise ValueError(f"{path}: {what}")

    n = features.shape[0]
    if features.ndim != 2 or labels.ndim != 1 or split.ndim != 1:
        bad("features must be 2-D, labels and split 1-D")
    if not (n == labels.shape[0] == split.shape[0]):
        bad("features, labels and split have different row counts")
    if features.dtype.kind != "f" or labels.dtype.kind not in "iu" or split.dtype.kind not in "iu":
        bad("features must be float, labels and split integer arrays")
    if not (features.chunks[0] == labels.chunks[0] == split.chunks[0]):
        bad("features, labels and split must share their row chunking")
    p = features.shape[1]
    names = attrs.get("feature_names")
    if not isinstance(names, list) or len(names) != p:
        bad("attribute feature_names does not match features' columns")
    stats = attrs.get("stats")
    if not isinstance(stats, dict):
        bad("attribute stats is missing (mean and std of the features; re-ingest the data)")
    for key in ("mean", "std"):
        v = stats.get(key)
        if not isinstance(v, list) or len(v) != p or not all(
            isinstance(x, int | float) for x in v
        ):
            bad(f"attribute stats.{key} must be a list of {p} numbers")
    for key in ("label_classes", "normal_classes"):
        v = attrs.get(key, [])
        if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
            bad(f"attribute {key} must be a list of strings")
    cats = attrs.get("categories", {})
    if not isinstance(cats, dict) or not all(isinstance(v, list) for v in cats.values()):
        bad("attribute categories must map column names to lists")
    if targets is not None:
        tnames = attrs.get("target_names")
        if targets.ndim != 2 or targets.shape[0] != n or targets.chunks[0] != features.chunks[0]:
            bad("targets must be 2-D, with the rows and row chunking of features")
        if not isinstance(tnames, list) or len(tnames) != targets.shape[1]:
            bad("attribute target_names does not match targets' columns")
        tstats = attrs.get("target_stats")
        if not isinstance(tstats, dict) or not all(
            isinstance(tstats.get(k), list) and len(tstats[k]) == targets.shape[1]
            for k in ("mean", "std")
        ):
            bad("attribute target_stats must hold mean and std lists, one per target")


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
