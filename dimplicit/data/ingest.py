"""CSV -> dimplicit Zarr store, streaming (NSL-KDD, HTRU2, generic CSV).

The file is read with :mod:`csv` (``newline=''``, so bare-CR files such as HTRU2 parse) in
batches of rows; each batch is parsed, one-hot encoded, folded into the normalisation
statistics and handed to :class:`~dimplicit.data.store.StoreWriter`, which keeps at most one
Zarr chunk in memory.  The whole file is never held in memory.

Decisions worth knowing:

* **Row numbers** are 1-based record numbers in the file, the header included; they equal
  line numbers unless a quoted field spans lines.
* **Splits** depend only on ``(split_seed, i)`` where ``i`` is the 0-based index of the data
  record (header excluded, bad and blank records included), so skipping a bad row or changing
  ``chunk_rows`` never moves another row to another split.
* **Generic vocabularies**: one streaming pass cannot know a categorical column's vocabulary
  before it sees the last row, and the one-hot layout must be fixed before the first row is
  written.  For ``fmt="generic"`` with categorical columns, ingest therefore makes a cheap
  first pass that only collects those columns' values (sorted); with ``reference`` it reuses
  the reference store's vocabularies instead and reads the file once.
* **Labels** get codes in order of first appearance, after the format's seed classes
  (``normal`` for NSL-KDD, ``0``/``1`` for HTRU2) or the reference's classes, so codes do not
  depend on batch size and agree with the reference for every class it knows.
* **Blank records** (empty lines) carry no data; they are not stored, but counted in the
  report (``blank_lines``) rather than dropped silently.
"""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from dimplicit.data import schema
from dimplicit.data.store import (
    DEFAULT_CHUNK_ROWS,
    MAX_BAD_ROWS_LISTED,
    SPLIT_NAMES,
    RunningStats,
    StoreWriter,
    assign_splits,
    check_split_fractions,
    check_writable,
    open_store,
)

INGEST_FORMATS = ("nsl-kdd", "htru2", "generic")
BAD_ROW_POLICIES = ("error", "skip")
STATS_ROWS = ("all", "train")
# Rows parsed at a time: bounds the Python objects alive at once (a 43-field row costs about
# 3 KB as strings) independently of the Zarr chunk size.
_BATCH_ROWS = 16384
_BAD_EXAMPLES = 10


# --------------------------------------------------------------------------------------
# Feature layout (shared with the synthetic generator)
# --------------------------------------------------------------------------------------


class FeatureLayout:
    """How raw columns become feature columns: numeric as is, categorical one-hot in place.

    Parameters
    ----------
    columns : list of str
        Raw column names.
    feature_columns : list of int
        Indices of the raw columns that become features, in order.
    categories : dict
        ``{column name: vocabulary}`` for the categorical feature columns.  ``"<unknown>"`` is
        appended to a vocabulary that does not already end with it.
    """

    def __init__(self, columns, feature_columns, categories):
        self.columns = list(columns)
        self.feature_columns = list(feature_columns)
        self.categories = {}
        for c, vocab in categories.items():
            vocab = [v for v in vocab if v != schema.UNKNOWN] + [schema.UNKNOWN]
            self.categories[c] = vocab
        names: list[str] = []
        self.numeric_columns: list[int] = []  # raw indices
        self.numeric_pos: list[int] = []  # their feature positions
        self.categorical_columns: list[int] = []
        self.offsets: list[int] = []  # first feature position of each categorical column
        self.luts: list[dict[str, int]] = []
        for i in self.feature_columns:
            c = self.columns[i]
            if c in self.categories:
                vocab = self.categories[c]
                self.categorical_columns.append(i)
                self.offsets.append(len(names))
                self.luts.append({v: k for k, v in enumerate(vocab)})
                names.extend(f"{c}={v}" for v in vocab)
            else:
                self.numeric_columns.append(i)
                self.numeric_pos.append(len(names))
                names.append(c)
        self.feature_names = names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def codes(self, k: int, values) -> np.ndarray:
        """Vocabulary codes of the ``k``-th categorical column; unseen values -> ``<unknown>``."""
        lut = self.luts[k]
        unknown = len(lut) - 1
        return np.fromiter(map(lut.get, values, itertools.repeat(unknown)), np.intp)

    def encode(self, numeric: np.ndarray, codes: list[np.ndarray]) -> np.ndarray:
        """Build the float32 feature block.

        Parameters
        ----------
        numeric : array (n, n_numeric)
            Numeric columns in ``numeric_columns`` order.
        codes : list of int arrays (n,)
            One per categorical column, in ``categorical_columns`` order.
        """
        n = numeric.shape[0]
        x = np.zeros((n, self.n_features), dtype=np.float32)
        x[:, self.numeric_pos] = numeric
        rows = np.arange(n)
        for off, c in zip(self.offsets, codes, strict=True):
            x[rows, off + c] = 1.0
        return x


def nslkdd_layout(categories: dict | None = None) -> FeatureLayout:
    """The NSL-KDD feature layout (label and difficulty excluded); 125 features by default."""
    cols = schema.NSLKDD_COLUMNS
    skip = {schema.NSLKDD_LABEL, *schema.NSLKDD_IGNORE}
    return FeatureLayout(
        cols,
        [i for i, c in enumerate(cols) if c not in skip],
        schema.NSLKDD_CATEGORIES if categories is None else categories,
    )


# --------------------------------------------------------------------------------------
# Column specification
# --------------------------------------------------------------------------------------


@dataclass
class _Spec:
    columns: list[str]
    label_index: int | None
    layout: FeatureLayout
    label_classes: list[str]
    normal_classes: list[str]
    ignored: list[str] = field(default_factory=list)


def _parse_column_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _resolve_column(name: str, columns: list[str], what: str) -> int:
    if name in columns:
        return columns.index(name)
    if name.lstrip("-").isdigit():
        i = int(name)
        if 0 <= i < len(columns):
            return i
        raise ValueError(f"{what} column index {i} is out of range (0..{len(columns) - 1})")
    raise ValueError(f"{what} column {name!r} not found; columns are {columns}")


def _records(f, path):
    """csv records of an open file; CSV-level failures become a ValueError naming the file."""
    reader = csv.reader(f)
    try:
        yield from reader
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: not readable as UTF-8 CSV text (line {reader.line_num + 1}): {exc}"
        ) from None


def _collect_vocabularies(path: Path, header: bool, ncols: int, cat_idx: list[int]):
    """First pass for generic CSV: the sorted values of each categorical column."""
    seen = [set() for _ in cat_idx]
    with open(path, newline="", encoding="utf-8") as f:
        reader = _records(f, path)
        if header:
            next(reader, None)
        for row in reader:
            if len(row) == ncols:  # bad rows are reported by the main pass
                for s, i in zip(seen, cat_idx, strict=True):
                    s.add(row[i])
    return [sorted(s) for s in seen]


def _make_spec(fmt, path, header_names, ncols, label, categorical, normal, ref) -> _Spec:
    """Decide the columns, label, vocabularies and classes for this file."""
    if fmt == "nsl-kdd":
        columns = list(schema.NSLKDD_COLUMNS)
        label_name, ignored = schema.NSLKDD_LABEL, list(schema.NSLKDD_IGNORE)
        cat_names = list(schema.NSLKDD_CATEGORIES)
        classes, normal_classes = [schema.NSLKDD_NORMAL], [schema.NSLKDD_NORMAL]
    elif fmt == "htru2":
        columns = list(schema.HTRU2_COLUMNS)
        label_name, ignored, cat_names = schema.HTRU2_LABEL, [], []
        classes, normal_classes = ["0", "1"], ["0"]
    else:
        if ref is not None and header_names is None:
            columns = list(ref.attrs["columns"])  # a headerless file takes the reference's names
        else:
            columns = header_names or [f"col{i}" for i in range(ncols)]
        label_name = None
        if label is not None:
            label_name = columns[_resolve_column(str(label), columns, "label")]
        elif ref is not None:
            label_name = ref.attrs.get("label_column")
        cat_names = [columns[_resolve_column(c, columns, "categorical")] for c in categorical]
        if label_name in cat_names:
            raise ValueError(f"column {label_name!r} cannot be both the label and categorical")
        # Normal classes take the first codes, so they are known before any row is read.
        ignored, classes = [], list(normal or [])
        normal_classes = list(normal or [])
    if fmt != "generic" and (label is not None or categorical or normal):
        raise ValueError(
            "label, categorical and normal options apply only to format 'generic'; "
            f"format {fmt!r} has a fixed layout"
        )
    if fmt == "generic" and ncols != len(columns):  # only a headerless file with a reference
        raise ValueError(
            f"{path}: rows have {ncols} fields but reference {ref.path} has {len(columns)} columns"
        )
    if header_names is not None and fmt != "generic" and len(header_names) != len(columns):
        raise ValueError(
            f"{path}: header has {len(header_names)} fields, format {fmt!r} has "
            f"{len(columns)} columns"
        )
    label_index = columns.index(label_name) if label_name is not None else None
    skip = set(ignored) | ({label_name} if label_name else set())
    feature_columns = [i for i, c in enumerate(columns) if c not in skip]
    if not feature_columns:
        raise ValueError(f"{path}: no feature columns left after removing the label")

    if ref is not None:
        ref_cols = list(ref.attrs.get("columns", []))
        if ref_cols != columns:
            raise ValueError(
                f"{path}: columns {columns} do not match reference {ref.path} columns {ref_cols}"
            )
        if ref.attrs.get("label_column") != label_name:
            raise ValueError(
                f"label column {label_name!r} differs from reference {ref.path} "
                f"label column {ref.attrs.get('label_column')!r}"
            )
        categories = ref.categories
        if sorted(categories) != sorted(cat_names) and fmt == "generic" and categorical:
            raise ValueError(
                f"categorical columns {cat_names} differ from reference {ref.path} "
                f"categorical columns {sorted(categories)}"
            )
        classes = ref.label_classes
        normal_classes = ref.normal_classes
        if normal and list(normal) != normal_classes:
            raise ValueError(
                f"normal classes {list(normal)} differ from reference {ref.path} "
                f"normal classes {normal_classes}"
            )
        layout = FeatureLayout(columns, feature_columns, categories)
        if layout.feature_names != ref.feature_names:
            raise ValueError(
                f"{path}: feature layout does not match reference {ref.path} "
                f"({layout.n_features} vs {ref.n_features} features)"
            )
    else:
        if fmt == "nsl-kdd":
            categories = dict(schema.NSLKDD_CATEGORIES)
        elif cat_names:
            cat_idx = [columns.index(c) for c in cat_names]
            vocabs = _collect_vocabularies(path, header_names is not None, len(columns), cat_idx)
            categories = dict(zip(cat_names, vocabs, strict=True))
        else:
            categories = {}
        layout = FeatureLayout(columns, feature_columns, categories)
    return _Spec(columns, label_index, layout, list(classes), list(normal_classes), ignored)


# --------------------------------------------------------------------------------------
# Batch parsing
# --------------------------------------------------------------------------------------


def _getter(indices):
    """Row -> tuple of the given fields (itemgetter returns a bare value for one index)."""
    if len(indices) == 1:
        i = indices[0]
        return lambda r: (r[i],)
    if not indices:
        return lambda r: ()
    return itemgetter(*indices)


def _first_bad_field(row, numeric, columns):
    for i in numeric:
        try:
            float(row[i])
        except ValueError:
            return f"unparsable number {row[i]!r} in column {columns[i]}"
    return None


def _parse_batch(batch, spec: _Spec, get_numeric):
    """Parse one batch of csv records.

    Returns
    -------
    good : list of int
        Positions (in the batch) of the good rows.
    rows : list of list of str
        The good rows themselves.
    numeric : float32 array (len(good), n_numeric)
        Their numeric columns, all finite.
    bad : list of (position, reason)
        Sorted by position.
    blank : int
        Number of empty records.
    """
    ncols = len(spec.columns)
    num_idx = spec.layout.numeric_columns
    bad: list[tuple[int, str]] = []
    good: list[int] = []
    blank = 0
    for k, row in enumerate(batch):
        if len(row) == ncols:
            good.append(k)
        elif not row:
            blank += 1
        else:
            bad.append((k, f"expected {ncols} fields, got {len(row)}"))
    rows = batch if len(good) == len(batch) else [batch[k] for k in good]
    nnum = len(num_idx)
    try:
        values = np.fromiter(
            map(float, itertools.chain.from_iterable(map(get_numeric, rows))),
            np.float64,
            count=len(rows) * nnum,
        ).reshape(len(rows), nnum)
    except ValueError:
        # Slow path, only for batches that hold an unparsable field: find the culprits.
        keep, keep_rows = [], []
        for k, row in zip(good, rows, strict=True):
            reason = _first_bad_field(row, num_idx, spec.columns)
            if reason is None:
                keep.append(k)
                keep_rows.append(row)
            else:
                bad.append((k, reason))
        good, rows = keep, keep_rows
        values = np.array(
            [[float(v) for v in get_numeric(r)] for r in rows], dtype=np.float64
        ).reshape(len(rows), nnum)
    # Non-finite after the cast to float32: NaN/Inf in the file, or a number beyond float32.
    with np.errstate(over="ignore"):
        numeric = values.astype(np.float32)
    finite = np.isfinite(numeric).all(axis=1)
    if not finite.all():
        for j in np.flatnonzero(~finite):
            col = int(np.flatnonzero(~np.isfinite(numeric[j]))[0])
            raw = values[j, col]
            what = "non-finite value" if not np.isfinite(raw) else "value beyond float32 range"
            bad.append((good[j], f"{what} {rows[j][num_idx[col]]!r} in column "
                                 f"{spec.columns[num_idx[col]]}"))  # fmt: skip
        good = [g for g, ok in zip(good, finite, strict=True) if ok]
        rows = [r for r, ok in zip(rows, finite, strict=True) if ok]
        numeric = numeric[finite]
    bad.sort()
    return good, rows, numeric, bad, blank


# --------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _bad_rows_message(path, bad, last_row: int, fmt: str) -> str:
    shown = "; ".join(f"row {r}: {reason}" for r, reason in bad[:_BAD_EXAMPLES])
    hint = ""
    if fmt == "generic" and any(reason.startswith("unparsable") for _, reason in bad):
        hint = " A text column must be declared categorical (--categorical)."
    return (
        f"{path}: {len(bad)} bad row(s) in rows 1-{last_row} (reading stopped there): {shown}. "
        "Fix the file, or pass on_bad_rows='skip' (--on-bad-rows skip) to drop and report them."
        + hint
    )


def ingest_csv(
    path,
    out,
    fmt: str = "nsl-kdd",
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
    header: bool = False,
    normal=None,
) -> dict:
    """Convert a CSV file to a dimplicit Zarr store in one streaming pass.

    Parameters
    ----------
    path : str or Path
        The CSV file (any line endings; read with ``newline=''``).
    out : str or Path
        The store to create (see :mod:`dimplicit.data.store`).
    fmt : {"nsl-kdd", "htru2", "generic"}
        ``nsl-kdd``: 43 columns, ``protocol_type``/``service``/``flag`` one-hot with the
        vocabularies of :mod:`~dimplicit.data.schema` plus ``<unknown>``; label ``label``,
        ``difficulty`` dropped.  ``htru2``: 8 numeric features, label ``class``.
        ``generic``: every column numeric except ``label`` and ``categorical``.
    label : str or int, optional
        Generic only: the label column, by name or 0-based index.  Without it the store is
        unlabelled (every label code is -1).
    categorical : str or sequence of str, optional
        Generic only: categorical columns (names or indices; a comma-separated string works).
        Their vocabularies come from a cheap first pass over the file, or from ``reference``.
    chunk_rows : int
        Rows per Zarr chunk.
    on_bad_rows : {"error", "skip"}
        Rows with a wrong field count, an unparsable number or NaN/Inf in a numeric field:
        ``error`` raises ValueError naming the first bad rows and writes nothing; ``skip``
        drops them and records them in the ``bad_rows`` attribute and the report.
    splits : sequence of 3 floats
        Train, validation, test fractions.
    split_seed : int
        Seed of the split draw; each row's split depends only on the seed and its index.
    stats_rows : {"train", "all"}
        Rows over which the normalisation statistics are computed.
    stats_normal_only : bool
        Restrict the statistics to rows whose label is a normal class.
    reference : str or Path, optional
        A store whose vocabularies, label classes, normal classes and statistics are reused
        (ingest a scoring file with the training encoders).  Unseen category values go to the
        ``<unknown>`` slot; unseen labels are appended as new classes.  The statistics are
        copied, so ``stats_rows`` and ``stats_normal_only`` do not apply.
    overwrite : bool
        Replace an existing store at ``out``.
    header : bool
        The first record is a header (generic: it names the columns; other formats: skipped).
    normal : sequence of str, optional
        Generic only: label values that count as normal (default: none).

    Returns
    -------
    dict
        The report: rows written, bad rows (count, first row numbers, examples), blank lines,
        split and label counts, unknown category counts, n_features, seconds, rows/s, bytes.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError
        Missing input, existing output without ``overwrite``, bad rows under ``error``,
        inconsistent options.  In every case an existing store at ``out`` is left untouched.
    """
    t0 = time.perf_counter()
    path, out = Path(path), Path(out)
    if fmt not in INGEST_FORMATS:
        raise ValueError(f"format must be one of {INGEST_FORMATS}, got {fmt!r}")
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, got {on_bad_rows!r}")
    if stats_rows not in STATS_ROWS:
        raise ValueError(f"stats_rows must be one of {STATS_ROWS}, got {stats_rows!r}")
    fractions = check_split_fractions(splits)
    if int(split_seed) < 0:
        raise ValueError(f"split seed must be non-negative, got {split_seed}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    ref = open_store(reference) if reference is not None else None
    categorical = _parse_column_list(categorical)
    normal = _parse_column_list(normal)

    check_writable(out, overwrite)  # fail before reading anything
    with open(path, newline="", encoding="utf-8") as f:
        reader = _records(f, path)
        header_names = None
        if header:
            first = next(reader, None)
            if first is None:
                raise ValueError(f"{path} is empty")
            header_names = [h.strip() for h in first]
        ncols = len(header_names) if header_names is not None else None
        if fmt == "generic" and ncols is None:
            # A headerless generic file: the first non-blank record fixes the column count.
            peek = []
            for row in reader:
                peek.append(row)
                if row:
                    ncols = len(row)
                    break
            reader = itertools.chain(peek, reader)
            if ncols is None:
                raise ValueError(f"{path} has no data rows")
        spec = _make_spec(fmt, path, header_names, ncols, label, categorical, normal, ref)
        if stats_normal_only and ref is None and not spec.normal_classes:
            raise ValueError(
                "stats_normal_only needs normal classes (generic: pass --normal / normal=...)"
            )
        layout = spec.layout
        classes = list(spec.label_classes)
        class_lut = {c: k for k, c in enumerate(classes)}
        normal_codes = np.asarray([class_lut[c] for c in spec.normal_classes if c in class_lut])
        get_numeric = _getter(layout.numeric_columns)
        stats = RunningStats(layout.n_features)
        n_bad, bad_listed, bad_examples, blank = 0, [], [], 0
        unknown = dict.fromkeys((spec.columns[i] for i in layout.categorical_columns), 0)
        label_counts = np.zeros(0, dtype=np.int64)
        split_counts = np.zeros(3, dtype=np.int64)
        row_no = 2 if header else 1  # 1-based record number of the next record
        data_index = 0  # 0-based index of the next data record: the split key

        with StoreWriter(out, layout.feature_names, chunk_rows, overwrite) as writer:
            while batch := list(itertools.islice(reader, _BATCH_ROWS)):
                good, rows, numeric, bad, nblank = _parse_batch(batch, spec, get_numeric)
                blank += nblank
                if bad:
                    n_bad += len(bad)
                    listed = [(row_no + k, reason) for k, reason in bad]
                    bad_listed.extend(r for r, _ in listed[: MAX_BAD_ROWS_LISTED - len(bad_listed)])
                    bad_examples.extend(listed[: _BAD_EXAMPLES - len(bad_examples)])
                    if on_bad_rows == "error":
                        raise ValueError(
                            _bad_rows_message(path, listed, row_no + len(batch) - 1, fmt)
                        )
                split = assign_splits(int(split_seed), data_index, len(batch), fractions)[good]
                codes = []
                for k, i in enumerate(layout.categorical_columns):
                    c = layout.codes(k, [r[i] for r in rows])
                    unknown[spec.columns[i]] += int(np.count_nonzero(c == len(layout.luts[k]) - 1))
                    codes.append(c)
                if spec.label_index is None:
                    y = np.full(len(rows), -1, dtype=np.int32)
                else:
                    values = [r[spec.label_index] for r in rows]
                    for v in dict.fromkeys(values):  # new classes, in order of appearance
                        if v not in class_lut:
                            class_lut[v] = len(classes)
                            classes.append(v)
                    y = np.fromiter(map(class_lut.__getitem__, values), np.int32, len(rows))
                x = layout.encode(numeric, codes)
                if ref is None:
                    sel = np.ones(len(rows), dtype=bool)
                    if stats_rows == "train":
                        sel &= split == 0
                    if stats_normal_only:
                        sel &= np.isin(y, normal_codes)
                    stats.update(x[sel])
                writer.append(x, y, split)
                label_counts = np.pad(label_counts, (0, len(classes) - len(label_counts)))
                label_counts += np.bincount(y[y >= 0], minlength=len(classes))
                split_counts += np.bincount(split, minlength=3)
                row_no += len(batch)
                data_index += len(batch)

            if writer.n_rows == 0:
                raise ValueError(f"{path}: no valid data rows (bad rows: {n_bad})")
            if ref is not None:
                stats_attr = dict(ref.attrs["stats"])
                stats_attr["rows"] = f"copied from reference {ref.path}: {stats_attr.get('rows')}"
            else:
                what = "train split" if stats_rows == "train" else "all"
                stats_attr = stats.to_attr(
                    f"{what} rows" + (", normal only" if stats_normal_only else "")
                )
            bad_attr = {
                "count": n_bad,
                "rows": bad_listed,
                "policy": on_bad_rows,
                "examples": [{"row": r, "reason": reason} for r, reason in bad_examples],
            }
            label_column = None if spec.label_index is None else spec.columns[spec.label_index]
            attrs = {
                "format": fmt,
                "source": str(path.resolve()),
                "columns": spec.columns,
                "label_column": label_column,
                "ignored_columns": spec.ignored,
                "feature_names": layout.feature_names,
                "categories": layout.categories,
                "label_classes": classes,
                "normal_classes": spec.normal_classes,
                "stats": stats_attr,
                "bad_rows": bad_attr,
                "blank_lines": blank,
                "split_fractions": list(fractions),
                "split_seed": int(split_seed),
                "reference": None if ref is None else str(ref.path),
            }
            n_rows = writer.n_rows
            writer.close(attrs)

    seconds = time.perf_counter() - t0
    report = {
        "store": str(out),
        "source": str(path),
        "format": fmt,
        "rows": int(n_rows),
        "n_features": layout.n_features,
        "bad_rows": {
            "count": n_bad,
            "rows": bad_listed[:20],
            "policy": on_bad_rows,
            "examples": bad_attr["examples"],
        },
        "blank_lines": blank,
        "splits": dict(zip(SPLIT_NAMES, (int(v) for v in split_counts), strict=True)),
        "labels": {c: int(v) for c, v in zip(classes, label_counts, strict=False)},
        "unknown_categories": unknown,
        "stats_rows": int(stats_attr["count"]),
        "seconds": round(seconds, 3),
        "rows_per_s": round(n_rows / seconds, 1) if seconds > 0 else None,
        "bytes": _dir_bytes(out),
    }
    if ref is None and stats.count == 0:
        report["warning"] = "no rows matched the statistics selection; stored mean 0, std 1"
    return report
