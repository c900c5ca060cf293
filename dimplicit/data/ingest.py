"""CSV/TSV -> dimplicit Zarr store, streaming (NSL-KDD, HTRU2, generic, NetFlow/Zeek logs).

The file is read with :mod:`csv` (``newline=''``, so bare-CR files such as HTRU2 parse) in
batches of rows; each batch is parsed here and handed to the shared
:class:`~dimplicit.data.accumulate.RowAccumulator` (bad rows, splits, labels, statistics),
which appends it to the :class:`~dimplicit.data.store.StoreWriter`, which keeps at most one
Zarr chunk in memory.  The whole file is never held in memory.

Decisions worth knowing:

* **Row numbers** are 1-based record numbers in the file, the header included; they equal
  line numbers unless a quoted field spans lines.
* **Splits** depend only on ``(split_seed, i)`` where ``i`` is the 0-based index of the data
  record (header excluded; bad, blank and comment records included), so skipping a bad row or
  changing ``chunk_rows`` never moves another row to another split.
* **Generic vocabularies**: one streaming pass cannot know a categorical column's vocabulary
  before it sees the last row, and the one-hot layout must be fixed before the first row is
  written.  For ``fmt="generic"`` with categorical columns, ingest therefore makes a cheap
  first pass that only collects those columns' values (sorted); with ``reference`` it reuses
  the reference store's vocabularies instead and reads the file once.
* **Labels** get codes in order of first appearance, after the format's seed classes
  (``normal`` for NSL-KDD, ``0``/``1`` for HTRU2) or the reference's classes, so codes do not
  depend on batch size and agree with the reference for every class it knows.
* **Targets** (``targets=``) are float columns stored in the ``targets`` array, not label
  classes; a value that is not a finite number makes the row bad.
* **Text**: UTF-8, a leading byte-order mark dropped (also before a header).  A record with a
  byte that is not UTF-8, or with a field longer than :func:`csv.field_size_limit` (128 Ki
  characters by default; reading resumes at the next line), is a bad row like any other: it
  keeps its row number, stops the ingest under ``on_bad_rows="error"`` and is counted and
  dropped under ``"skip"``.  In the header (or a Zeek ``#fields`` line) it is an error.
* **Numbers** are ASCII decimal notation only (sign, digits, one dot, exponent; white space
  around is allowed): ``1_000`` or ``١٢٣``, which ``float()`` would read, make the row bad.
  ``nan``/``inf`` spellings are read and then refused as non-finite, as every NaN/Inf is.
* **Blank records** (empty lines) carry no data; they are not stored, but counted in the
  report (``blank_lines``) rather than dropped silently.
* **Logs** (NetFlow exports, Zeek): ``sep`` sets the field separator (a tab is read without
  quoting, as TSV has none) and ``comment`` skips lines starting with it (counted as
  ``comment_lines``); a Zeek ``#fields`` line names the columns when the file has no header.
* **Format detection** (``fmt=None``, :func:`detect_csv_format`): NSL-KDD (43 fields,
  protocol names in field 2) and HTRU2 (9 numeric fields, the last 0/1) are recognised by
  their first records, a Zeek log by its ``#separator`` line, a ``.tsv`` file by its name;
  anything else is generic.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import re
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np

from dimplicit.data import schema
from dimplicit.data.accumulate import (
    RowAccumulator,
    finite_rows,
    ingest_options,
    ingest_report,
)
from dimplicit.data.columns import ColumnSpec, make_spec, parse_column_list
from dimplicit.data.store import DEFAULT_CHUNK_ROWS, StoreWriter, check_output, open_store
from dimplicit.progress import row_progress

INGEST_FORMATS = ("nsl-kdd", "htru2", "generic")
# Rows parsed at a time: bounds the Python objects alive at once (a 43-field row costs about
# 3 KB as strings) independently of the Zarr chunk size.
_BATCH_ROWS = 16384
_SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " ", "semicolon": ";",
                    "pipe": "|"}  # fmt: skip
_DETECT_RECORDS = 20
# The CSV format that reads files like those a reference store was made from.
_FORMAT_OF_REFERENCE = {"nsl-kdd": "nsl-kdd", "htru2": "htru2", "generic": "generic",
                        "synthetic-traffic": "nsl-kdd", "parquet": "generic"}  # fmt: skip


# --------------------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------------------


def separator(text) -> str:
    """A field separator: one character, or ``tab`` / ``\\t`` / ``comma`` / ``space`` /
    ``semicolon`` / ``pipe``."""
    sep = _SEPARATOR_NAMES.get(str(text).lower(), str(text))
    if len(sep) != 1 or sep in "\r\n\"":
        raise ValueError(
            f"separator must be one character (or tab, comma, space, semicolon, pipe), "
            f"got {text!r}"
        )
    return sep


# Undecodable bytes are read as lone surrogates (U+DC80-U+DCFF, as "surrogateescape" does)
# and the handler counts them: while a file's count is unchanged, no record can hold one, so
# only the records read after the first undecodable byte are searched for them.
_DECODE_ERRORS = "dimplicit-undecodable"
_decode_error_count = [0]
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _count_undecodable(exc: UnicodeDecodeError):
    _decode_error_count[0] += 1
    return codecs.lookup_error("surrogateescape")(exc)


codecs.register_error(_DECODE_ERRORS, _count_undecodable)


def _open_text(path, errors: str = _DECODE_ERRORS):
    """Open a text file to read as CSV: UTF-8, a leading byte-order mark dropped, any line
    endings (``newline=''``); an undecodable byte makes its record bad (:class:`_Unreadable`)
    rather than failing the whole read."""
    return open(path, newline="", encoding="utf-8-sig", errors=errors)  # noqa: SIM115


class _Unreadable(list):
    """A record that could not be read (a byte that is not UTF-8, a field beyond the csv
    module's size limit): no fields, and why.  Empty, so passes that only look for non-empty
    records step over it; the batch parser counts it as a bad row."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


def _undecodable(fields) -> str | None:
    """Why a record holds text that was not valid UTF-8 (None if it does not)."""
    if "".join(fields).isascii():
        return None
    for i, text in enumerate(fields):
        found = None if text.isascii() else _SURROGATE.search(text)
        if found is not None:
            char = ord(found.group())
            byte = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else "a surrogate"
            return f"not valid UTF-8 text ({byte} in field {i + 1})"
    return None


class _Lines:
    """The lines of a text file, comment lines replaced by empty lines.

    Replacing rather than dropping keeps record numbers equal to line numbers (an empty line
    is an empty record, counted as blank; :attr:`comments` says how many were comments).  A
    ``<comment>fields`` line (Zeek) is kept in :attr:`fields`, split on the separator.
    """

    def __init__(self, f, comment: str | None, sep: str):
        self._f = f
        self.comment = comment
        self.sep = sep
        self.comments = 0
        self.fields: list[str] | None = None

    def __iter__(self):
        if not self.comment:
            yield from self._f
            return
        tag = self.comment + "fields"
        for line in self._f:
            if line.startswith(self.comment):
                self.comments += 1
                if self.fields is None and line.startswith(tag):
                    rest = line[len(tag) :].rstrip("\r\n").lstrip(" " + self.sep)
                    self.fields = [f.strip() for f in rest.split(self.sep)]
                yield "\n"
            else:
                yield line


def _open_records(f, sep: str, comment: str | None):
    """``(lines, records)`` of a file opened with :func:`_open_text`.

    A record that cannot be read is yielded as an :class:`_Unreadable` in its place, so it
    keeps its record number and can be skipped: one with an undecodable byte, or one whose
    field is longer than :func:`csv.field_size_limit` (the csv module then drops the rest of
    that line and reading resumes at the next line; a quoted field spanning lines may make
    the lines after it bad too).
    """
    lines = _Lines(f, comment, sep)
    # TSV has no quoting: a quote character is data (user agents, URLs).
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=sep, quoting=quoting)
    count = _decode_error_count
    clean = count[0]

    def records():
        while True:
            try:
                for row in reader:
                    if count[0] != clean and (reason := _undecodable(row)):
                        row = _Unreadable(reason)
                    yield row
                return
            except csv.Error as exc:
                text = str(exc)
                if text.startswith("field larger than field limit"):
                    text = f"a field longer than {csv.field_size_limit()} characters"
                yield _Unreadable(text)

    return lines, records()


def _collect_vocabularies(path: Path, header: bool, ncols: int, cat_idx: list[int], sep,
                          comment) -> list[list[str]]:  # fmt: skip
    """First pass for generic CSV: the sorted values of each categorical column."""
    seen = [set() for _ in cat_idx]
    with _open_text(path) as f:
        _, reader = _open_records(f, sep, comment)
        if header:
            next((r for r in reader if r), None)
        for row in reader:
            if len(row) == ncols:  # bad rows are reported by the main pass
                for s, i in zip(seen, cat_idx, strict=True):
                    s.add(row[i])
    return [sorted(s) for s in seen]


# --------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvFormat:
    """What :func:`detect_csv_format` found: format, separator, comment prefix, and why."""

    fmt: str
    sep: str
    comment: str | None
    reason: str


# What a numeric field may hold: ASCII decimal notation (sign, digits, one dot, exponent) or
# a NaN/Inf spelling (read, then refused as non-finite), with ASCII white space around.
# float() alone also takes "1_000" and non-ASCII digits ("١٢٣"); for ASCII text without
# "_", float() succeeds exactly when this matches, which lets batches be checked at once.
_NUMBER = re.compile(
    r"\s*[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|nan|inf(?:inity)?)\s*",
    re.ASCII | re.IGNORECASE,
)


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def detect_csv_format(path, header: bool = False, sep=None, comment=None) -> CsvFormat:
    """Guess a text file's format from its name and first records.

    A Zeek log (first line ``#separator``) is generic, tab-separated, ``#`` comments; a
    ``.tsv`` file is tab-separated; then NSL-KDD if the first records have 43 fields with a
    protocol name (tcp/udp/icmp) in field 2 (nine in ten suffice), HTRU2 if they have 9
    numeric fields with the last 0 or 1, generic otherwise.  ``sep`` and ``comment``, when
    given, are kept.
    """
    path = Path(path)
    why = []
    with _open_text(path, errors="replace") as f:
        first = f.readline()
    if first.startswith("#separator"):
        code = first[len("#separator") :].strip() or "\\x09"
        try:
            zeek_sep = codecs.decode(code, "unicode_escape")
        except UnicodeDecodeError:
            zeek_sep = "\t"
        sep = sep or zeek_sep
        comment = comment or "#"
        return CsvFormat("generic", separator(sep), comment, "Zeek log (#separator line)")
    if sep is None and path.suffix.lower() == ".tsv":
        sep = "\t"
        why.append(".tsv file: tab-separated")
    if sep is None:
        sep = "\t" if "\t" in first and "," not in first else ","
        if sep == "\t":
            why.append("tabs and no commas in the first line: tab-separated")
    sep = separator(sep)
    rows = []
    with _open_text(path, errors="replace") as f:
        _, reader = _open_records(f, sep, comment)
        for row in reader:  # an unreadable record is empty: the ingest reports it
            if row:
                rows.append(row)
            if len(rows) >= _DETECT_RECORDS + int(header):
                break
    rows = rows[int(header) :]
    protocols = set(schema.NSLKDD_CATEGORIES["protocol_type"])
    if (
        rows
        and all(len(r) == len(schema.NSLKDD_COLUMNS) for r in rows)
        and sum(r[1] in protocols for r in rows) >= 0.9 * len(rows)
    ):
        fmt = "nsl-kdd"
        why.append(f"{len(schema.NSLKDD_COLUMNS)} fields with protocol names in field 2: NSL-KDD")
    elif rows and all(
        len(r) == len(schema.HTRU2_COLUMNS) and all(map(_is_number, r[:-1])) and r[-1] in "01"
        for r in rows
    ):
        fmt = "htru2"
        why.append(f"{len(schema.HTRU2_COLUMNS)} numeric fields, the last 0/1: HTRU2")
    else:
        fmt = "generic"
        why.append("neither NSL-KDD nor HTRU2: generic")
    return CsvFormat(fmt, sep, comment, "; ".join(why))


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
        if _NUMBER.fullmatch(row[i]) is None:
            return f"unparsable number {row[i]!r} in column {columns[i]}"
    return None


def _parse_batch(batch, spec: ColumnSpec, read: list[int], get_numeric):
    """Parse one batch of csv records.

    Parameters
    ----------
    read : list of int
        Raw indices of the columns read as numbers (numeric features, then targets).

    Returns
    -------
    good : list of int
        Positions (in the batch) of the good rows.
    rows : list of list of str
        The good rows themselves.
    numeric : float32 array (len(good), len(read))
        Their numeric columns, all finite.
    bad : list of (position, reason)
    blank : int
        Number of empty records.
    """
    ncols = len(spec.columns)
    bad: list[tuple[int, str]] = []
    good: list[int] = []
    blank = 0
    for k, row in enumerate(batch):
        if len(row) == ncols:
            good.append(k)
        elif isinstance(row, _Unreadable):
            bad.append((k, row.reason))
        elif not row:
            blank += 1
        else:
            bad.append((k, f"expected {ncols} fields, got {len(row)}"))
    rows = batch if len(good) == len(batch) else [batch[k] for k in good]
    nnum = len(read)
    fields = list(itertools.chain.from_iterable(map(get_numeric, rows)))
    # float() takes more than ASCII decimal notation ("1_000", "١٢٣"): fields that are all
    # ASCII without "_" hold nothing else (see _NUMBER), checked at once on their text.
    text = "".join(fields)
    try:
        if not text.isascii() or "_" in text:
            raise ValueError("not ASCII decimal notation")
        values = np.fromiter(map(float, fields), np.float64, count=len(rows) * nnum)
        values = values.reshape(len(rows), nnum)
    except ValueError:
        # Slow path, only for batches that hold an unparsable field: find the culprits.
        keep, keep_rows = [], []
        for k, row in zip(good, rows, strict=True):
            reason = _first_bad_field(row, read, spec.columns)
            if reason is None:
                keep.append(k)
                keep_rows.append(row)
            else:
                bad.append((k, reason))
        good, rows = keep, keep_rows
        values = np.array(
            [[float(v) for v in get_numeric(r)] for r in rows], dtype=np.float64
        ).reshape(len(rows), nnum)
    names = [spec.columns[i] for i in read]
    numeric, finite, nonfinite = finite_rows(values, names, lambda j, c: rows[j][read[c]])
    if nonfinite:
        bad.extend((good[j], reason) for j, reason in nonfinite)
        good = [g for g, ok in zip(good, finite, strict=True) if ok]
        rows = [r for r, ok in zip(rows, finite, strict=True) if ok]
    return good, rows, numeric, bad, blank


# --------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------


def ingest_csv(
    path,
    out,
    fmt: str | None = None,
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
    *,
    targets=None,
    ignore=None,
    sep=None,
    comment=None,
    progress: bool = False,
) -> dict:
    """Convert a CSV (or TSV, or log) file to a dimplicit Zarr store in one streaming pass.

    Parameters
    ----------
    path : str or Path
        The text file: UTF-8 (a byte-order mark is dropped), any line endings (read with
        ``newline=''``).
    out : str or Path
        The store to create (see :mod:`dimplicit.data.store`).
    fmt : {"nsl-kdd", "htru2", "generic"}, optional
        ``nsl-kdd``: 43 columns, ``protocol_type``/``service``/``flag`` one-hot with the
        vocabularies of :mod:`~dimplicit.data.schema` plus ``<unknown>``; label ``label``,
        ``difficulty`` dropped.  ``htru2``: 8 numeric features, label ``class``.
        ``generic``: every column numeric except ``label``, ``targets``, ``categorical``
        and ``ignore``.  None (default): the reference's format, else detected
        (:func:`detect_csv_format`); the report's ``format_detected`` says why.
    label : str or int, optional
        Generic only: the label column, by name or 0-based index.  Without it the store is
        unlabelled (every label code is -1).
    categorical : str or sequence of str, optional
        Generic only: categorical columns (names or indices; a comma-separated string works).
        Their vocabularies come from a cheap first pass over the file, or from ``reference``.
    chunk_rows : int
        Rows per Zarr chunk.
    on_bad_rows : {"error", "skip"}
        Rows with a wrong field count, a number not in ASCII decimal notation, NaN/Inf in a
        numeric field, a byte that is not UTF-8 or a field beyond the csv size limit:
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
        A store whose vocabularies, label classes, normal classes, targets and statistics
        are reused (ingest a scoring file with the training encoders).  Unseen category values
        go to the ``<unknown>`` slot; unseen labels are appended as new classes.  The
        statistics are copied, so ``stats_rows`` and ``stats_normal_only`` do not apply.
    overwrite : bool
        Replace an existing store at ``out``.
    header : bool
        The first record is a header (generic: it names the columns; other formats: skipped).
    normal : sequence of str, optional
        Generic only: label values that count as normal (default: none).
    targets : str or sequence of str, optional
        Generic only: float regression target columns (names or indices), stored in the
        ``targets`` array with their own statistics; a value that is not a finite number
        makes the row bad.
    ignore : str or sequence of str, optional
        Generic only: columns to leave out (identifiers, timestamps, addresses).
    sep : str, optional
        Field separator: one character, or ``tab``/``\\t`` (see :func:`separator`).
        Default: detected (tab for ``.tsv`` files and Zeek logs, else comma).
    comment : str, optional
        Skip lines starting with this prefix (``#`` for Zeek logs, whose ``#fields`` line then
        names the columns when ``header`` is false).
    progress : bool
        Show records read and records/s on stderr (:func:`~dimplicit.progress.row_progress`;
        no ETA, the length of a text file is not known in advance).  Off by default: the
        library prints nothing else.

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
    if fmt is not None and fmt not in INGEST_FORMATS:
        raise ValueError(f"format must be one of {INGEST_FORMATS}, got {fmt!r}")
    options = ingest_options(splits, split_seed, stats_rows, stats_normal_only, on_bad_rows)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    ref = open_store(reference) if reference is not None else None
    detected = None
    if fmt is None:
        detected = _format_of(path, ref, header, sep, comment)
        fmt, sep, comment = detected.fmt, detected.sep, detected.comment
    sep = separator("," if sep is None else sep)
    categorical = parse_column_list(categorical)

    inputs = (path, reference)
    check_output(out, "store", overwrite, protect=inputs)  # fail before reading anything
    with _open_text(path) as f:
        lines, reader = _open_records(f, sep, comment)
        header_names, ncols, consumed, comments_before, reader = _read_head(
            reader, lines, path, header, fmt
        )
        spec = make_spec(
            fmt, path, header_names, ncols, label=label, categorical=categorical,
            normal=parse_column_list(normal), targets=parse_column_list(targets),
            ignore=parse_column_list(ignore), ref=ref,
            vocabularies=lambda idx, n: _collect_vocabularies(path, header, n, idx, sep, comment),
        )  # fmt: skip
        options.check_normal_classes(spec.normal_classes, ref)
        layout = spec.layout
        hint = ""
        if fmt == "generic":
            hint = " A text column must be declared categorical=COLUMNS (or ignore=COLUMNS)."

        with StoreWriter(out, layout.feature_names, chunk_rows, overwrite, protect=inputs,
                         target_names=spec.target_names) as writer:  # fmt: skip
            acc = RowAccumulator(
                writer, options, path, spec.label_classes, spec.normal_classes,
                reference=ref, layout=layout, first_row=consumed + 1, hint=hint, t0=t0,
            )  # fmt: skip
            with row_progress(None, "ingest", enabled=progress) as bar:
                _add_records(reader, spec, acc, bar)
            comment_lines = lines.comments - comments_before
            acc.blank -= comment_lines
            attrs = {
                "format": fmt,
                "source": str(path.resolve()),
                "columns": spec.columns,
                "label_column": spec.label_column,
                "ignored_columns": spec.ignored,
            }
            if sep != "," or comment:
                attrs.update(separator=sep, comment=comment, comment_lines=comment_lines)
            acc.close(attrs)

    extra = {}
    if detected is not None:
        extra["format_detected"] = detected.reason
    if comment:
        extra["comment_lines"] = comment_lines
    return ingest_report(acc, out, path, fmt, **extra)


def _format_of(path, ref, header, sep, comment) -> CsvFormat:
    """The format of a file ingested without ``fmt``: its reference's, else detected."""
    ref_fmt = None if ref is None else _FORMAT_OF_REFERENCE.get(ref.attrs.get("format"))
    if ref_fmt is None:
        return detect_csv_format(path, header, sep, comment)
    return CsvFormat(
        ref_fmt,
        ref.attrs.get("separator", ",") if sep is None else sep,
        ref.attrs.get("comment") if comment is None else comment,
        f"the format of reference {ref.path}",
    )


def _read_head(reader, lines: _Lines, path, header: bool, fmt: str):
    """Read up to the first data record; say how many columns the file has.

    Returns ``(header names or None, number of columns or None, records consumed before the
    data, comment lines among them, the records from the first data record on)``.
    """
    header_names, consumed = None, 0
    if header:
        for first in reader:
            consumed += 1
            if isinstance(first, _Unreadable):
                raise ValueError(f"{path}: header (row {consumed}) is unreadable: {first.reason}")
            if first:
                header_names = [h.strip() for h in first]
                break
        if header_names is None:
            raise ValueError(f"{path} is empty")
    comments_before = lines.comments
    # The first non-blank data record fixes the column count of a headerless file (and
    # reads past a Zeek log's #fields line).
    peek = []
    for row in reader:
        peek.append(row)
        if row:
            break
    if header_names is None and lines.fields is not None:
        header_names = lines.fields
        reason = _undecodable(header_names)
        if reason is not None:
            raise ValueError(f"{path}: the {lines.comment}fields line is unreadable: {reason}")
    ncols = len(header_names) if header_names is not None else None
    if ncols is None and fmt == "generic":
        if not peek or not peek[-1]:
            raise ValueError(f"{path} has no data rows")
        ncols = len(peek[-1])
    return header_names, ncols, consumed, comments_before, itertools.chain(peek, reader)


def _add_records(reader, spec: ColumnSpec, acc: RowAccumulator, bar=None) -> None:
    """Parse the records batch by batch and hand each batch to the accumulator; ``bar``
    (a :func:`~dimplicit.progress.row_progress` bar) counts the records of each batch."""
    layout = spec.layout
    read = layout.numeric_columns + spec.target_indices
    get_numeric = _getter(read)
    while batch := list(itertools.islice(reader, _BATCH_ROWS)):
        good, rows, numeric, bad, nblank = _parse_batch(batch, spec, read, get_numeric)
        codes = [
            layout.codes(k, [r[i] for r in rows]) for k, i in enumerate(layout.categorical_columns)
        ]
        labels = None
        if spec.label_index is not None:
            labels = [r[spec.label_index] for r in rows]
        acc.add_columns(len(batch), numeric, codes, labels, good=good, bad=bad, blank=nblank)
        if bar is not None:
            bar.update(len(batch))
