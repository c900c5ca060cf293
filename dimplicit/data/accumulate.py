"""From parsed rows to a store: what every ingest path does with a block, done once.

CSV/TSV, Parquet and adopted Zarr arrays differ in how they read and parse; after that they
do the same things, and do them here:

* **Bad rows** are counted, their 1-based row numbers listed (the first
  :data:`~dimplicit.data.store.MAX_BAD_ROWS_LISTED`) with a few examples; under
  ``on_bad_rows="error"`` the first block that has one stops the ingest with a message
  naming them (:func:`bad_rows_message`), and nothing is written.
* **Splits** come from ``(split_seed, record index)``
  (:func:`~dimplicit.data.preprocess.assign_splits`), where the index counts every record of
  the source, bad ones included, so dropping a bad row never moves another row.
* **Labels** get codes in order of first appearance after the classes known in advance.
* **Statistics** of the stored features accumulate in one pass over the selected rows (train
  split by default, optionally normal rows only), or are copied from a reference store.
* **Rows** go to the :class:`~dimplicit.data.store.StoreWriter`, which keeps one chunk.

:class:`RowAccumulator` holds that state; :meth:`RowAccumulator.close` writes the shared
attributes and :func:`ingest_report` builds the report every ingest returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dimplicit.data.preprocess import RunningStats, assign_splits, check_split_fractions
from dimplicit.data.store import MAX_BAD_ROWS_LISTED, SPLIT_NAMES

BAD_ROW_POLICIES = ("error", "skip")
STATS_ROWS = ("all", "train")
BAD_EXAMPLES = 10


@dataclass(frozen=True)
class IngestOptions:
    """The options every ingest path shares, validated (see :func:`ingest_options`)."""

    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    stats_rows: str = "train"
    stats_normal_only: bool = False
    on_bad_rows: str = "error"

    def check_normal_classes(self, normal_classes, reference=None) -> None:
        """``stats_normal_only`` needs normal classes (a reference brings its statistics)."""
        if self.stats_normal_only and reference is None and not normal_classes:
            raise ValueError("stats_normal_only needs normal classes (pass normal=LABELS)")


def ingest_options(
    splits=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    stats_rows: str = "train",
    stats_normal_only: bool = False,
    on_bad_rows: str = "error",
) -> IngestOptions:
    """Check the shared ingest options; raise ValueError naming the parameter at fault."""
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, got {on_bad_rows!r}")
    if stats_rows not in STATS_ROWS:
        raise ValueError(f"stats_rows must be one of {STATS_ROWS}, got {stats_rows!r}")
    fractions = check_split_fractions(splits)
    if int(split_seed) < 0:
        raise ValueError(f"split seed must be non-negative, got {split_seed}")
    return IngestOptions(fractions, int(split_seed), stats_rows, bool(stats_normal_only),
                         on_bad_rows)  # fmt: skip


def bad_rows_message(source, bad, last_row: int, hint: str = "") -> str:
    """The error of ``on_bad_rows="error"``: the first bad rows, and what to do."""
    shown = "; ".join(f"row {r}: {reason}" for r, reason in bad[:BAD_EXAMPLES])
    return (
        f"{source}: {len(bad)} bad row(s) in rows 1-{last_row} (reading stopped there): {shown}. "
        "Fix the file, or pass on_bad_rows=skip to drop and report them." + hint
    )


def finite_rows(values: np.ndarray, names, raw=None):
    """Cast float64 ``values`` (n, k) to float32; find the rows that are not all finite.

    Parameters
    ----------
    values : float64 array (n, k)
    names : list of str
        Column names, for the reasons.
    raw : callable, optional
        ``raw(row, column) -> the source text`` of a value, quoted in the reason (CSV);
        without it the value itself is shown.

    Returns
    -------
    block : float32 array (n_ok, k)
    ok : bool array (n,)
    bad : list of (row position, reason)
    """
    # Non-finite after the cast to float32: NaN/Inf in the source, or beyond float32's range.
    with np.errstate(over="ignore"):
        block = values.astype(np.float32)
    ok = np.isfinite(block).all(axis=1)
    if ok.all():
        return block, ok, []
    bad = []
    for j in np.flatnonzero(~ok):
        col = int(np.flatnonzero(~np.isfinite(block[j]))[0])
        v = values[j, col]
        what = "non-finite value" if not np.isfinite(v) else "value beyond float32 range"
        shown = raw(j, col) if raw is not None else float(v)
        bad.append((int(j), f"{what} {shown!r} in column {names[col]}"))
    return block[ok], ok, bad


def _class_name(value) -> str:
    """A label value as a class name: integers without a decimal point."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    return str(value)


class RowAccumulator:
    """Turn parsed blocks of source rows into store rows, in source order.

    Parameters
    ----------
    writer : StoreWriter
        Where the rows go (its feature names fix the layout).
    options : IngestOptions
    source : str
        The input, as error messages name it.
    label_classes, normal_classes : list of str
        Classes known before any row (their codes come first).
    reference : Store, optional
        A reference store, whose ``stats`` are copied instead of computing statistics.
    layout : FeatureLayout, optional
        For :meth:`features`: one-hot encoding and ``<unknown>`` counts.
    first_row : int
        1-based row number of the first record (2 after a header line).
    hint : str
        Appended to the bad-rows error (e.g. how to declare a text column).
    t0 : float, optional
        ``time.perf_counter()`` when the ingest started (default: now), for the report.
    """

    def __init__(self, writer, options: IngestOptions, source, label_classes=(),
                 normal_classes=(), reference=None, layout=None, first_row: int = 1,
                 hint: str = "", t0: float | None = None):  # fmt: skip
        self.t0 = time.perf_counter() if t0 is None else t0
        self.writer = writer
        self.options = options
        self.source = str(source)
        self.classes = list(label_classes)
        self.normal_classes = list(normal_classes)
        self._class_lut = {c: k for k, c in enumerate(self.classes)}
        self._normal_codes = np.asarray(
            [self._class_lut[c] for c in self.normal_classes if c in self._class_lut]
        )
        self.reference = reference
        self.layout = layout
        self.hint = hint
        self.stats = RunningStats(len(writer.feature_names))
        self.n_bad = 0
        self.bad_listed: list[int] = []
        self.bad_examples: list[tuple[int, str]] = []
        self.blank = 0
        self.unknown: dict[str, int] = {}
        if layout is not None:
            self.unknown = dict.fromkeys((layout.columns[i] for i in layout.categorical_columns), 0)
        self.label_counts = np.zeros(len(self.classes), dtype=np.int64)
        self.split_counts = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
        self.row_no = int(first_row)  # 1-based row number of the next record
        self.data_index = 0  # 0-based index of the next record: the split key

    # ---- per block ------------------------------------------------------------------

    def features(self, numeric: np.ndarray, categorical_codes) -> np.ndarray:
        """Float32 feature block from numeric columns and vocabulary codes (see
        :meth:`FeatureLayout.encode`), counting the values that fell in ``<unknown>``."""
        layout = self.layout
        for k, codes in enumerate(categorical_codes):
            column = layout.columns[layout.categorical_columns[k]]
            self.unknown[column] += int(np.count_nonzero(codes == len(layout.luts[k]) - 1))
        return layout.encode(numeric, list(categorical_codes))

    def label_codes(self, values) -> np.ndarray:
        """Codes of label values, new classes appended in order of first appearance.

        ``values``: a list of strings (``None``: no label, code -1), or a NumPy array (numbers
        become class names as written, ``"3"`` not ``"3.0"`` for integers; NaN: no label).
        """
        if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
            n = len(values)
            y = np.full(n, -1, dtype=np.int32)
            has = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(n, dtype=bool)
            uniq, first, inv = np.unique(values[has], return_index=True, return_inverse=True)
            for u in uniq[np.argsort(first, kind="stable")]:  # in order of appearance
                self._class_code(_class_name(u))
            lut = np.asarray([self._class_lut[_class_name(u)] for u in uniq], dtype=np.int32)
            if uniq.size:
                y[has] = lut[inv.reshape(-1)]
            return y
        values = values.tolist() if isinstance(values, np.ndarray) else values
        for v in dict.fromkeys(values):  # new classes, in order of appearance
            if v is not None and v not in self._class_lut:
                self._class_code(v)
        lut = self._class_lut
        return np.fromiter((-1 if v is None else lut[v] for v in values), np.int32, len(values))

    def _class_code(self, name: str) -> int:
        code = self._class_lut.get(name)
        if code is None:
            code = self._class_lut[name] = len(self.classes)
            self.classes.append(name)
        return code

    def add(self, n_records: int, x, labels=None, targets=None, good=None, bad=(),
            blank: int = 0) -> None:  # fmt: skip
        """Take one block of ``n_records`` consecutive source records.

        Parameters
        ----------
        n_records : int
            Records the block spans (good, bad and blank): they advance row numbers and the
            split key.
        x : float32 array (n_good, p)
            Features of the good records.
        labels : list or array (n_good,), optional
            Label values (see :meth:`label_codes`); None: unlabelled rows.
        targets : float array (n_good, t), optional
        good : int array (n_good,), optional
            Positions of the good records in the block (default: all of them).
        bad : list of (position, reason)
            The bad records, by position in the block.
        blank : int
            Empty records (neither good nor bad).

        Raises
        ------
        ValueError
            A bad record under ``on_bad_rows="error"``.
        """
        opt = self.options
        self.blank += int(blank)
        if bad:
            bad = sorted(bad)
            self.n_bad += len(bad)
            listed = [(self.row_no + k, reason) for k, reason in bad]
            room = MAX_BAD_ROWS_LISTED - len(self.bad_listed)
            self.bad_listed.extend(r for r, _ in listed[:room])
            self.bad_examples.extend(listed[: BAD_EXAMPLES - len(self.bad_examples)])
            if opt.on_bad_rows == "error":
                last = self.row_no + n_records - 1
                raise ValueError(bad_rows_message(self.source, listed, last, self.hint))
        split = assign_splits(opt.split_seed, self.data_index, n_records, opt.splits)
        if good is not None:
            split = split[good]
        n = len(split)
        y = np.full(n, -1, dtype=np.int32) if labels is None else self.label_codes(labels)
        if self.reference is None:
            sel = np.ones(n, dtype=bool)
            if opt.stats_rows == "train":
                sel &= split == 0
            if opt.stats_normal_only:
                sel &= np.isin(y, self._normal_codes)
            self.stats.update(x[sel])
        self.writer.append(x, y, split, targets)
        grown = len(self.classes) - len(self.label_counts)
        self.label_counts = np.pad(self.label_counts, (0, grown))
        self.label_counts += np.bincount(y[y >= 0], minlength=len(self.classes))
        self.split_counts += np.bincount(split, minlength=len(SPLIT_NAMES))
        self.row_no += n_records
        self.data_index += n_records

    def add_columns(self, n_records: int, values, codes, labels=None, good=None, bad=(),
                    blank: int = 0) -> None:  # fmt: skip
        """Take one block parsed column by column (CSV, Parquet), as :meth:`add` does.

        ``values`` (n_good, k) float32 holds the layout's numeric columns, then the target
        columns when the store has targets; ``codes`` the vocabulary codes of its
        categorical columns (see :meth:`features`).
        """
        n_num = len(self.layout.numeric_columns)
        targets = values[:, n_num:] if self.writer.target_names else None
        x = self.features(values[:, :n_num], codes)
        self.add(n_records, x, labels, targets, good=good, bad=bad, blank=blank)

    # ---- at the end -----------------------------------------------------------------

    def stats_attr(self) -> dict:
        """The ``stats`` attribute: computed, or copied from the reference."""
        ref = self.reference
        if ref is not None:
            attr = dict(ref.attrs["stats"])
            attr["rows"] = f"copied from reference {ref.path}: {attr.get('rows')}"
            return attr
        opt = self.options
        what = "train split" if opt.stats_rows == "train" else "all"
        only = ", normal only" if opt.stats_normal_only else ""
        return self.stats.to_attr(f"{what} rows{only}")

    def bad_rows_attr(self) -> dict:
        return {
            "count": self.n_bad,
            "rows": list(self.bad_listed),
            "policy": self.options.on_bad_rows,
            "examples": [{"row": r, "reason": reason} for r, reason in self.bad_examples],
        }

    def close(self, attrs: dict):
        """Write the attributes (``attrs`` plus the ones every ingest shares) and publish.

        Raises ValueError when no row was valid; returns the writer's result.
        """
        if self.writer.n_rows == 0:
            raise ValueError(f"{self.source}: no valid data rows (bad rows: {self.n_bad})")
        self.n_rows = self.writer.n_rows
        full = {
            "feature_names": list(self.writer.feature_names),
            "label_classes": self.classes,
            "normal_classes": self.normal_classes,
            "stats": self.stats_attr(),
            "bad_rows": self.bad_rows_attr(),
            "blank_lines": self.blank,
            "split_fractions": list(self.options.splits),
            "split_seed": self.options.split_seed,
            "reference": None if self.reference is None else str(self.reference.path),
        }
        if self.layout is not None:
            full["categories"] = self.layout.categories
        full.update(attrs)
        return self.writer.close(full)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def ingest_report(acc: RowAccumulator, out, source, fmt: str, **extra) -> dict:
    """The report of a finished ingest (after :meth:`RowAccumulator.close`).

    Rows written, bad rows (count, first row numbers, examples), blank lines, split and label
    counts, unknown category counts, n_features, seconds, rows/s, bytes; ``extra`` keys are
    added after ``format``.
    """
    seconds = time.perf_counter() - acc.t0
    n_rows = int(acc.n_rows)
    bad = acc.bad_rows_attr()
    stats = acc.stats_attr()
    report = {"store": str(out), "source": str(source), "format": fmt, **extra}
    report.update({
        "rows": n_rows,
        "n_features": len(acc.writer.feature_names),
        "bad_rows": {
            "count": bad["count"],
            "rows": bad["rows"][:20],
            "policy": bad["policy"],
            "examples": bad["examples"],
        },
        "blank_lines": acc.blank,
        "splits": dict(zip(SPLIT_NAMES, (int(v) for v in acc.split_counts), strict=True)),
        "labels": {c: int(v) for c, v in zip(acc.classes, acc.label_counts, strict=False)},
        "unknown_categories": acc.unknown,
        "stats_rows": int(stats["count"]),
        "seconds": round(seconds, 3),
        "rows_per_s": round(n_rows / seconds, 1) if seconds > 0 else None,
        "bytes": _dir_bytes(out),
    })  # fmt: skip
    if acc.writer.target_names:
        report["targets"] = list(acc.writer.target_names)
    if acc.reference is None and acc.stats.count == 0:
        report["warning"] = "no rows matched the statistics selection; stored mean 0, std 1"
    return report
