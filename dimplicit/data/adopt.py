"""Adopt existing arrays (Zarr, NumPy, Dask) as a dimplicit store.

A feature matrix someone already has in Zarr (written with ``zarr`` directly, or a group
holding ``features``/``labels`` arrays) is not a dimplicit store: it lacks the ``split``
array, the statistics and the attributes the library relies on.  :func:`adopt_zarr` copies
it into one, chunk by chunk: the store keeps the source's row chunking by default (each
source chunk is decoded once and written as one store chunk), and the split, the statistics,
the label classes and the bad rows come out of the same single pass, through the same
:class:`~dimplicit.data.accumulate.RowAccumulator` as CSV and Parquet ingest.

Sources are given as ``PATH[:ARRAY]`` text (``data.zarr:X`` is array ``X`` of the group at
``data.zarr``; a group without ``:ARRAY`` gives its ``features``, ``labels`` or ``targets``
array), as opened ``zarr.Array`` / ``zarr.Group`` objects, or as any array with ``shape``,
``dtype`` and row slicing (NumPy, Dask).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zarr

from dimplicit.data.accumulate import RowAccumulator, finite_rows, ingest_options, ingest_report
from dimplicit.data.columns import parse_column_list
from dimplicit.data.store import DEFAULT_CHUNK_ROWS, StoreWriter, check_output, open_store
from dimplicit.progress import row_progress

_DEFAULT_ARRAY = {"features": "features", "labels": "labels", "targets": "targets"}


class _Source:
    """One resolved input array: the array, how to name it, the path to protect."""

    def __init__(self, array, name: str, path: Path | None, group=None, full: str | None = None):
        self.array = array
        self.name = name  # as the user gave it, for messages and the report
        self.full = full or name  # with an absolute path, for the store's attributes
        self.path = path
        self.group = group  # the group it came from, when given as a group
        self.group_spec = None  # how to name another member of that group

    def member(self, name: str):
        """Another array of the group this one came from (as a source spec or object)."""
        return f"{self.group_spec}:{name}" if self.group_spec else self.group

    @property
    def attrs(self) -> dict:
        return dict(getattr(self.array, "attrs", {}) or {})


def _split_spec(text: str) -> tuple[Path, str | None]:
    """``PATH[:ARRAY]`` -> (path, array); a path that exists as given has no ``:ARRAY``."""
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    path, _, name = text.rpartition(":")
    return Path(path), (name or None)


def _resolve(obj, role: str) -> _Source:
    """The array for ``role`` (features, labels, targets) from text, a Zarr node or an array."""
    if isinstance(obj, str | Path):
        path, name = _split_spec(str(obj))
        if not path.exists():
            raise FileNotFoundError(f"no Zarr array or group at {path}")
        try:
            node = zarr.open(path, mode="r")
        except Exception as exc:  # zarr raises several types for "not a node"
            raise ValueError(f"{path} is not a Zarr array or group: {exc}") from None
        where = f"{path}:{name}" if name else str(path)
        if isinstance(node, zarr.Group):
            member = name or _DEFAULT_ARRAY[role]
            if member not in node:
                arrays = sorted(k for k, _ in node.arrays())
                raise ValueError(
                    f"Zarr group {path} has no array {member!r} for the {role} (its arrays: "
                    f"{arrays}); name one as PATH:ARRAY"
                )
            src = _Source(node[member], f"{path}:{member}", path, None if name else node,
                          f"{path.resolve()}:{member}")  # fmt: skip
            src.group_spec = str(path)
            return src
        if name:
            raise ValueError(f"{path} is a Zarr array, not a group: drop ':{name}'")
        return _Source(node, where, path, full=str(path.resolve()))
    if isinstance(obj, zarr.Group):
        member = _DEFAULT_ARRAY[role]
        if member not in obj:
            raise ValueError(f"the Zarr group has no array {member!r} for the {role}")
        return _Source(obj[member], f"<zarr group>:{member}", _store_path(obj), obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        kind = "zarr array" if isinstance(obj, zarr.Array) else type(obj).__name__
        return _Source(obj, f"<{kind}>", _store_path(obj))
    raise TypeError(f"{role} must be a PATH[:ARRAY] string, a Zarr array or group, or an array")


def _store_path(node) -> Path | None:
    root = getattr(getattr(node, "store", None), "root", None)
    return Path(root) if root is not None else None


def _row_chunk(array) -> int | None:
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return None
    first = chunks[0]
    if isinstance(first, tuple):  # dask: the chunk sizes along the axis
        return int(first[0]) if first else None
    return int(first)


def _block(array, start: int, stop: int) -> np.ndarray:
    return np.asarray(array[start:stop])


def adopt_zarr(
    features,
    out,
    labels=None,
    targets=None,
    *,
    feature_names=None,
    target_names=None,
    normal=None,
    chunk_rows: int | None = None,
    on_bad_rows: str = "error",
    splits=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    stats_rows: str = "train",
    stats_normal_only: bool = False,
    reference=None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write a dimplicit store from an existing feature array (and labels, targets).

    Parameters
    ----------
    features : str, Path, zarr.Array, zarr.Group or array
        ``(N, p)`` numbers (``(N,)`` is one feature).  Text is ``PATH[:ARRAY]``; a group
        (given as text without ``:ARRAY``, or as an object) gives its ``features`` array, and
        also its ``labels`` and ``targets`` arrays when those are present and not given.
    out : str or Path
        The store to create.
    labels : same kinds as ``features``, optional
        ``(N,)`` class labels (numbers or text); each distinct value becomes a class,
        integers named without a decimal point; NaN leaves a row unlabelled.
    targets : same kinds as ``features``, optional
        ``(N,)`` or ``(N, t)`` float regression targets.
    feature_names, target_names : list of str, optional
        Default: the array's ``feature_names`` / ``target_names`` attribute if it has one
        of the right length, else ``f0, f1, ...`` and the targets array's name.
    normal : sequence of str, optional
        Label values that count as normal.
    chunk_rows : int, optional
        Rows per store chunk; default the source's row chunking (else 65536).
    on_bad_rows, splits, split_seed, stats_rows, stats_normal_only, reference, overwrite
        As for :func:`~dimplicit.data.ingest.ingest_csv`; a bad row is one with a NaN or
        infinite feature or target.
    progress : bool
        Show rows done, rows/s and ETA on stderr (:func:`~dimplicit.progress.row_progress`).
        Off by default: the library prints nothing else.

    Returns
    -------
    dict
        The report, as ingest's, plus ``arrays`` (what was read for each role).
    """
    t0 = time.perf_counter()
    out = Path(out)
    options = ingest_options(splits, split_seed, stats_rows, stats_normal_only, on_bad_rows)
    feat = _resolve(features, "features")
    if feat.group is not None:
        if labels is None and "labels" in feat.group:
            labels = feat.member("labels")
        if targets is None and "targets" in feat.group:
            targets = feat.member("targets")
    lab = _resolve(labels, "labels") if labels is not None else None
    tgt = _resolve(targets, "targets") if targets is not None else None

    X = feat.array
    n, p, t = _check_shapes(feat, lab, tgt)
    names = _names(feature_names, feat, "feature_names", p, [f"f{i}" for i in range(p)])
    tnames = []
    if tgt is not None:
        default = [tgt.name.rpartition(":")[2] if ":" in tgt.name else "target"]
        tnames = _names(target_names, tgt, "target_names", t,
                        default if t == 1 else [f"target{j}" for j in range(t)])  # fmt: skip

    ref = open_store(reference) if reference is not None else None
    classes, normal_classes = _classes(ref, names, tnames, parse_column_list(normal))
    options.check_normal_classes(normal_classes, ref)

    src_chunk = _row_chunk(X)
    if chunk_rows is None:
        chunk_rows = src_chunk or DEFAULT_CHUNK_ROWS
    # Read whole source chunks, about one store chunk at a time: each source chunk is
    # decoded once, and a store chunk is filled from as few reads as possible.
    step = chunk_rows
    if src_chunk:
        step = src_chunk * max(1, round(chunk_rows / src_chunk))
    inputs = [s.path for s in (feat, lab, tgt) if s is not None and s.path is not None]
    if reference is not None:
        inputs.append(reference)
    check_output(out, "store", overwrite, protect=inputs)

    with StoreWriter(out, names, chunk_rows, overwrite, protect=inputs,
                     target_names=tnames) as writer:  # fmt: skip
        acc = RowAccumulator(writer, options, feat.name, classes, normal_classes,
                             reference=ref, t0=t0)  # fmt: skip
        with row_progress(n, "ingest", enabled=progress) as bar:
            for start in range(0, n, step):
                stop = min(n, start + step)
                x = _block(X, start, stop).reshape(stop - start, p).astype(np.float64)
                if tgt is not None:
                    x = np.hstack([x, _block(tgt.array, start, stop).reshape(stop - start, t)])
                values, ok, bad = finite_rows(x, names + tnames)
                y = None
                if lab is not None:
                    y = _block(lab.array, start, stop)[ok]
                acc.add(
                    stop - start,
                    values[:, :p],
                    y,
                    values[:, p:] if tgt is not None else None,
                    good=np.flatnonzero(ok),
                    bad=bad,
                )
                bar.update(stop - start)
        acc.close(
            {
                "format": "zarr",
                "source": feat.full,
                "columns": names + tnames + ([lab.name] if lab is not None else []),
                "label_column": lab.name if lab is not None else None,
                "arrays": {k: v.full for k, v in (("features", feat), ("labels", lab),
                                                  ("targets", tgt)) if v is not None},
                "ignored_columns": [],
                "categories": {},
            }
        )
    arrays = {"features": feat.name}
    if lab is not None:
        arrays["labels"] = lab.name
    if tgt is not None:
        arrays["targets"] = tgt.name
    return ingest_report(acc, out, feat.name, "zarr", arrays=arrays)


def _names(given, source, attr, count, default) -> list[str]:
    if given is not None:
        names = parse_column_list(given)
        if len(names) != count:
            raise ValueError(f"{attr} has {len(names)} names for {count} columns")
        return names
    for attrs in (source.attrs, dict(getattr(source.group, "attrs", {}) or {})):
        names = attrs.get(attr)
        if isinstance(names, list) and len(names) == count:
            return [str(v) for v in names]
    return default


def _check_shapes(feat, lab, tgt) -> tuple[int, int, int]:
    """``(rows, features, targets)`` of the arrays; ValueError unless they fit together."""
    X = feat.array
    if X.dtype.kind not in "biuf" or len(X.shape) not in (1, 2):
        raise ValueError(f"features {feat.name} must be a 1-D or 2-D array of numbers, got "
                         f"shape {X.shape} and dtype {X.dtype}")  # fmt: skip
    n = int(X.shape[0])
    p = 1 if len(X.shape) == 1 else int(X.shape[1])
    if lab is not None and (len(lab.array.shape) != 1 or lab.array.shape[0] != n):
        raise ValueError(f"labels {lab.name} must have shape ({n},), got {lab.array.shape}")
    t = 0
    if tgt is not None:
        T = tgt.array
        if T.dtype.kind not in "biuf" or len(T.shape) not in (1, 2) or T.shape[0] != n:
            raise ValueError(f"targets {tgt.name} must be numbers of shape ({n},) or ({n}, t), "
                             f"got shape {T.shape} and dtype {T.dtype}")  # fmt: skip
        t = 1 if len(T.shape) == 1 else int(T.shape[1])
    return n, p, t


def _classes(ref, names, tnames, normal) -> tuple[list[str], list[str]]:
    """Label classes and normal classes known in advance: the reference's, or ``normal``."""
    if ref is None:
        return list(normal), list(normal)
    if ref.feature_names != names:
        raise ValueError(f"feature names {names[:5]}... differ from reference {ref.path}'s "
                         f"{ref.feature_names[:5]}...")  # fmt: skip
    if ref.target_names != tnames:
        raise ValueError(f"target names {tnames} differ from reference {ref.path}'s "
                         f"{ref.target_names}")  # fmt: skip
    if normal and list(normal) != ref.normal_classes:
        raise ValueError(f"normal classes {list(normal)} differ from reference {ref.path} "
                         f"normal classes {ref.normal_classes}")  # fmt: skip
    return ref.label_classes, ref.normal_classes
