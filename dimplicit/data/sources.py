"""Which reader an input needs: format detection and the one ``ingest`` entry point.

:func:`detect_format` looks at a path (Parquet by name, magic bytes or directory contents;
a text file by its first records, see :func:`~dimplicit.data.ingest.detect_csv_format`) and
says why; :func:`ingest` dispatches to :func:`~dimplicit.data.ingest.ingest_csv` or
:func:`~dimplicit.data.parquet.ingest_parquet`.  Existing arrays are adopted with
:func:`~dimplicit.data.adopt.adopt_zarr`.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from dimplicit.data.ingest import INGEST_FORMATS, detect_csv_format, ingest_csv

SOURCE_FORMATS = (*INGEST_FORMATS, "parquet")
_TEXT_ONLY = ("header", "sep", "comment")


@dataclass(frozen=True)
class Detected:
    """A detected input format; ``sep`` and ``comment`` apply to text formats only."""

    fmt: str
    reason: str
    sep: str | None = None
    comment: str | None = None


def _is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def detect_format(path, header: bool = False, sep=None, comment=None) -> Detected:
    """The format of ``path``: ``parquet`` or a text format (see :func:`detect_csv_format`).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path`` (or no file matches a glob).
    ValueError
        A Zarr store or array (adopt it instead), or a directory without Parquet files.
    """
    from dimplicit.data.parquet import PARQUET_SUFFIXES, is_parquet_file, parquet_files

    text = str(path)
    if glob.has_magic(text) and not Path(text).exists():
        files = parquet_files(text)
        if all(is_parquet_file(f) for f in files):
            return Detected("parquet", f"{len(files)} Parquet file(s) match the pattern")
        raise ValueError(f"{text}: a pattern must match Parquet files only (one CSV at a time)")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        if _is_zarr(path):
            raise ValueError(
                f"{path} is a Zarr store or array, not a file to ingest; adopt it with "
                "zarr_features=PATH[:ARRAY]"
            )
        files = parquet_files(path)
        return Detected("parquet", f"directory of {len(files)} Parquet file(s)")
    if is_parquet_file(path):
        why = "file name" if path.suffix.lower() in PARQUET_SUFFIXES else "PAR1 magic bytes"
        return Detected("parquet", f"Parquet ({why})")
    found = detect_csv_format(path, header, sep, comment)
    return Detected(found.fmt, found.reason, found.sep, found.comment)


def ingest(path, out, fmt: str | None = None, **options) -> dict:
    """Ingest a CSV/TSV file or Parquet data into a store, detecting the format if not given.

    Parameters
    ----------
    path : str or Path
        A text file, a Parquet file, a directory of Parquet files, or a glob of them.
    out : str or Path
        The store to create.
    fmt : {"nsl-kdd", "htru2", "generic", "parquet"}, optional
        Default: :func:`detect_format`; the report's ``format_detected`` says why.
    **options
        Keyword arguments of :func:`~dimplicit.data.ingest.ingest_csv` (``header``,
        ``sep`` and ``comment`` for text only) or :func:`~dimplicit.data.parquet
        .ingest_parquet`.

    Returns
    -------
    dict
        The ingest report.
    """
    if fmt is not None and fmt not in SOURCE_FORMATS:
        raise ValueError(f"format must be one of {SOURCE_FORMATS}, got {fmt!r}")
    reason = None
    if fmt is None:
        found = detect_format(path, options.get("header", False), options.get("sep"),
                              options.get("comment"))  # fmt: skip
        if found.fmt == "parquet":
            fmt, reason = found.fmt, found.reason
        # else: ingest_csv detects (a reference's format first) and reports why itself
    if fmt == "parquet":
        from dimplicit.data.parquet import ingest_parquet

        given = [k for k in _TEXT_ONLY if options.pop(k, None)]
        if given:
            raise ValueError(f"{', '.join(given)} apply only to CSV/TSV input, not Parquet")
        report = ingest_parquet(path, out, **options)
    else:
        report = ingest_csv(path, out, fmt, **options)
    if reason is not None:
        report = _with_detected(report, reason)
    return report


def _with_detected(report: dict, reason: str) -> dict:
    """``format_detected`` right after ``format`` in the report."""
    out = {}
    for key, value in report.items():
        if key != "format_detected":
            out[key] = value
        if key == "format":
            out["format_detected"] = reason
    return out
