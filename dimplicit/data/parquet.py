"""Parquet -> dimplicit Zarr store, streaming row group by row group.

The input is one Parquet file, a directory of them (read recursively, in sorted path order,
skipping names that start with ``_`` or ``.`` such as ``_SUCCESS``), or a glob pattern.
Each file is read with :meth:`pyarrow.parquet.ParquetFile.iter_batches`, only the columns
the store needs, so memory stays at one batch plus the writer's one chunk whatever the size
of the data set.  The rows then take the same path as CSV rows
(:class:`~dimplicit.data.accumulate.RowAccumulator`): same splits, statistics, labels,
targets, reference and bad-row rules.

Column roles come from the Parquet schema: numeric types (integers, floats, decimals,
booleans) are numeric features; strings and dictionaries are categorical (one-hot, with a
vocabulary from a first pass over those columns only), unless they are the label, a target
or ignored.  A text column with more than :data:`MAX_AUTO_CATEGORIES` distinct values stops
the ingest (an identifier or address would blow up the feature count): ``ignore`` it, or
list it in ``categorical`` to encode it anyway.  Other types (timestamps, binary, nested)
must be ignored.  A null or non-finite value in a numeric feature or target makes the row
bad; a null category is the empty string (as an empty CSV field); a null label leaves the
row unlabelled (code -1).  Row numbers are 1-based positions in the whole data set, files
taken in order; with several files the reason also names the file and its own row.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import numpy as np

from dimplicit.data.accumulate import (
    RowAccumulator,
    finite_rows,
    ingest_options,
    ingest_report,
)
from dimplicit.data.columns import make_spec, parse_column_list
from dimplicit.data.store import DEFAULT_CHUNK_ROWS, StoreWriter, check_output, open_store
from dimplicit.progress import row_progress

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
MAX_AUTO_CATEGORIES = 1000
_BATCH_ROWS = 65536


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a dependency of dimplicit
        raise ImportError("reading Parquet needs pyarrow (pip install pyarrow)") from None
    return pa, pc, pq


def is_parquet_file(path) -> bool:
    """True for a file named ``*.parquet`` (``.parq``, ``.pq``) or starting with ``PAR1``."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def parquet_files(path) -> list[Path]:
    """The Parquet files of ``path``: itself, a directory's (recursively), or a glob's.

    Raises FileNotFoundError when there are none.
    """
    text = str(path)
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no files match {text}")
        return files
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in PARQUET_SUFFIXES
            and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
        )
        if not files:
            raise FileNotFoundError(f"no Parquet files (*.parquet) in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return [path]


def _kind(t) -> str:
    """``numeric``, ``text`` or ``other``: what ingest can do with an Arrow type."""
    pa, _, _ = _pa()
    if pa.types.is_dictionary(t):
        t = t.value_type
    if (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
    ):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "text"
    return "other"


def _schema(files) -> tuple[list[str], list]:
    """Column names and types, the same in every file (else ValueError naming the file)."""
    _, _, pq = _pa()
    names = types = None
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError types
            raise ValueError(f"{f}: not readable as Parquet: {exc}") from None
        if names is None:
            names, types = list(schema.names), list(schema.types)
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise ValueError(f"{f}: column {dup!r} appears twice")
        elif list(schema.names) != names or [_kind(t) for t in schema.types] != [
            _kind(t) for t in types
        ]:
            raise ValueError(
                f"{f}: columns {list(schema.names)} differ from {files[0]}'s {names} "
                "(every file must have the same columns, of the same kinds)"
            )
    return names, types


def _text(col):
    """A column as an Arrow string array, nulls as ``""`` (the value of an empty CSV field)."""
    pa, pc, _ = _pa()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    return pc.fill_null(col, "")


def _batches(files, columns, batch_rows=_BATCH_ROWS):
    """``(file, first row in the file, record batch)`` of ``columns``, files in order."""
    _, _, pq = _pa()
    for f in files:
        offset = 0
        with pq.ParquetFile(f) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield f, offset, batch
                offset += batch.num_rows


def _row_count(files) -> int:
    """Rows of the data set, from the files' footers (no data read)."""
    _, _, pq = _pa()
    return sum(pq.read_metadata(f).num_rows for f in files)


def _vocabularies(files, names, idx, explicit, source) -> list[list[str]]:
    """First pass: the sorted values of the categorical columns ``idx`` (those columns only)."""
    _, pc, _ = _pa()
    cols = [names[i] for i in idx]
    seen = [set() for _ in idx]
    for _, _, batch in _batches(files, cols):
        for s, c in zip(seen, cols, strict=True):
            s.update(pc.unique(_text(batch.column(c))).to_pylist())
            if len(s) > MAX_AUTO_CATEGORIES and c not in explicit:
                raise ValueError(
                    f"{source}: text column {c!r} has more than {MAX_AUTO_CATEGORIES} distinct "
                    f"values, too many to one-hot encode by default; pass ignore={c} to leave it "
                    f"out, or categorical={c} to encode it anyway"
                )
    return [sorted(s) for s in seen]


def _numbers(batch, names, kinds, read):
    """Float64 values (n, len(read)) of the numeric columns, and the bad rows among them.

    Nulls, and text that is not a number (a target stored as strings), make a row bad.
    """
    pa, pc, _ = _pa()
    n = batch.num_rows
    values = np.empty((n, len(read)), dtype=np.float64)
    reason = [None] * n
    for j, i in enumerate(read):
        col = batch.column(names[i])
        if kinds[i] == "numeric":
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            values[:, j] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
            nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            for k in nulls:
                reason[k] = reason[k] or f"null value in column {names[i]}"
        else:
            for k, v in enumerate(col.to_pylist()):
                try:
                    values[k, j] = float(v)
                except (TypeError, ValueError):
                    values[k, j] = np.nan
                    what = "null value" if v is None else f"unparsable number {v!r}"
                    reason[k] = reason[k] or f"{what} in column {names[i]}"
    bad = [(k, r) for k, r in enumerate(reason) if r is not None]
    return values, bad


def _label_values(col) -> list:
    """Label values as class names (integers without a decimal point; null/NaN: None)."""
    pa, _, _ = _pa()
    t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return [None if v is None else str(int(v)) for v in col.to_pylist()]
    if pa.types.is_floating(t):
        return [None if v is None or v != v else str(v) for v in col.to_pylist()]
    return [None if v is None else str(v) for v in col.to_pylist()]


def ingest_parquet(
    path,
    out,
    label=None,
    categorical=(),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_bad_rows: str = "error",
    splits=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    stats_rows: str = "train",
    stats_normal_only: bool = False,
    reference=None,
    overwrite: bool = False,
    normal=None,
    *,
    targets=None,
    ignore=None,
    batch_rows: int = _BATCH_ROWS,
    progress: bool = False,
) -> dict:
    """Convert Parquet data to a dimplicit Zarr store, streamed batch by batch.

    Parameters
    ----------
    path : str or Path
        A Parquet file, a directory of Parquet files, or a glob pattern (``"logs/*.parquet"``).
    out : str or Path
        The store to create.
    label, categorical, normal, targets, ignore
        As for :func:`~dimplicit.data.ingest.ingest_csv` (generic); text columns are
        categorical without being listed (see the module docstring).
    chunk_rows, on_bad_rows, splits, split_seed, stats_rows, stats_normal_only, reference, \
overwrite
        As for :func:`~dimplicit.data.ingest.ingest_csv`.
    batch_rows : int
        Rows read at a time (at most one row group's worth is decoded at once).
    progress : bool
        Show rows done, rows/s and ETA on stderr (:func:`~dimplicit.progress.row_progress`;
        the total comes from the files' metadata).  Off by default: the library prints
        nothing else.

    Returns
    -------
    dict
        The report, as :func:`~dimplicit.data.ingest.ingest_csv`'s, plus ``files``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    options = ingest_options(splits, split_seed, stats_rows, stats_normal_only, on_bad_rows)
    files = parquet_files(path)
    names, types = _schema(files)
    kinds = [_kind(t) for t in types]
    ref = open_store(reference) if reference is not None else None
    categorical = parse_column_list(categorical)
    inputs = (*files, reference)
    check_output(out, "store", overwrite, protect=inputs)  # fail before reading anything
    source = str(path)

    spec = make_spec(
        "parquet", source, names, None, label=label, categorical=categorical,
        normal=parse_column_list(normal), targets=parse_column_list(targets),
        ignore=parse_column_list(ignore), ref=ref,
        vocabularies=lambda idx, _: _vocabularies(files, names, idx, categorical, source),
        auto_categorical=[c for c, k in zip(names, kinds, strict=True) if k == "text"],
    )  # fmt: skip
    options.check_normal_classes(spec.normal_classes, ref)
    layout = spec.layout
    for i in layout.numeric_columns + spec.target_indices:
        if kinds[i] == "other" or (kinds[i] == "text" and i not in spec.target_indices):
            raise ValueError(
                f"{source}: column {names[i]!r} has type {types[i]}, which cannot be a numeric "
                f"feature; pass ignore={names[i]} to leave it out"
            )
    read = layout.numeric_columns + spec.target_indices
    used = sorted({*read, *layout.categorical_columns,
                   *([spec.label_index] if spec.label_index is not None else [])})  # fmt: skip
    columns = [names[i] for i in used]

    with StoreWriter(out, layout.feature_names, chunk_rows, overwrite, protect=inputs,
                     target_names=spec.target_names) as writer:  # fmt: skip
        acc = RowAccumulator(writer, options, source, spec.label_classes, spec.normal_classes,
                             reference=ref, layout=layout, t0=t0)  # fmt: skip
        total = _row_count(files) if progress else None
        with row_progress(total, "ingest", enabled=progress) as bar:
            for f, offset, batch in _batches(files, columns, batch_rows):
                values, bad = _numbers(batch, names, kinds, read)
                ok = np.ones(batch.num_rows, dtype=bool)
                ok[[k for k, _ in bad]] = False
                good = np.flatnonzero(ok)
                numeric, finite, nonfinite = finite_rows(values[good], [names[i] for i in read])
                bad += [(int(good[j]), reason) for j, reason in nonfinite]
                good = good[finite]
                if len(files) > 1 and bad:
                    bad = [(k, f"{r} ({f.name} row {offset + k + 1})") for k, r in bad]
                if len(good) < batch.num_rows:
                    batch = batch.take(good)
                codes = []
                for k, i in enumerate(layout.categorical_columns):
                    enc = _pa()[1].dictionary_encode(_text(batch.column(names[i])))
                    lut = layout.codes(k, enc.dictionary.to_pylist())
                    codes.append(lut[enc.indices.to_numpy(zero_copy_only=False)])
                labels = None
                if spec.label_index is not None:
                    labels = _label_values(batch.column(names[spec.label_index]))
                acc.add_columns(len(ok), numeric, codes, labels, good=good, bad=bad)
                bar.update(len(ok))
        acc.close(
            {
                "format": "parquet",
                "source": str(Path(path).resolve()) if not glob.has_magic(source) else source,
                "source_files": len(files),
                "columns": names,
                "label_column": spec.label_column,
                "ignored_columns": spec.ignored,
            }
        )
    return ingest_report(acc, out, source, "parquet", files=len(files))
