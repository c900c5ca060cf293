#!/usr/bin/env python
"""Regenerate the test-data slices in this folder from the full data sets.

Usage (from the repository root)::

    python tests/data/make_slices.py [FULL_DATA_DIR]

``FULL_DATA_DIR`` holds ``nsl-kdd/KDDTrain+.txt`` and ``htru2/HTRU_2.csv`` (the unmodified
public files); it defaults to ``$DIMPLICIT_SHARED_DATA`` or else ``../shared/data`` beside the
repository.  The slices are chosen deterministically (no randomness), copied byte for byte
(line endings included), and their sha256 are printed; they must equal the ones listed in
``tests/data/README.md``.  Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

KDD_HEAD_ROWS = 4000
"""The NSL-KDD slice starts with this many leading rows of ``KDDTrain+.txt``."""
KDD_COVER_COLUMNS = (1, 2, 3, 41)
"""0-based columns whose every value must occur: protocol_type, service, flag, label."""
HTRU2_STEP = 4
"""The HTRU2 slice is every this-many-th row of ``HTRU_2.csv`` (rows 1, 5, 9, ...): the file
is not in random order (its first 4000 rows hold 13.5 % pulsars against 9.2 % overall), so a
systematic sample over the whole file keeps the class proportions."""

SLICES = {
    "nsl-kdd/KDDTrain+_slice.txt": "nsl-kdd/KDDTrain+.txt",
    "htru2/HTRU_2_slice.csv": "htru2/HTRU_2.csv",
}
"""Slice file (relative to this folder) -> source file (relative to the full data folder)."""


def default_full_data() -> Path:
    env = os.environ.get("DIMPLICIT_SHARED_DATA")
    return Path(env) if env else HERE.parents[1].parent / "shared" / "data"


def kdd_slice(src: bytes) -> bytes:
    """The first ``KDD_HEAD_ROWS`` lines, then, in file order, the first line of the file for
    each protocol_type / service / flag / label value those lines lack.

    ``KDDTrain+.txt`` is LF-terminated ASCII with no quoted fields, so a line split and a
    comma split are an exact parse.
    """
    lines = src.splitlines(keepends=True)
    head = lines[:KDD_HEAD_ROWS]
    seen = {c: set() for c in KDD_COVER_COLUMNS}
    for line in head:
        fields = line.rstrip(b"\r\n").split(b",")
        for c in KDD_COVER_COLUMNS:
            seen[c].add(fields[c])
    extra = []
    for line in lines[KDD_HEAD_ROWS:]:
        fields = line.rstrip(b"\r\n").split(b",")
        new = [c for c in KDD_COVER_COLUMNS if fields[c] not in seen[c]]
        if new:
            extra.append(line)
            for c in KDD_COVER_COLUMNS:
                seen[c].add(fields[c])
    return b"".join(head + extra)


def htru2_slice(src: bytes) -> bytes:
    """Records 0, ``HTRU2_STEP``, 2 * ``HTRU2_STEP``, ... (0-based), in the original format:
    records separated by a bare CR, no terminator after the last one."""
    records = src.split(b"\r")
    return b"\r".join(records[::HTRU2_STEP])


MAKERS = {"nsl-kdd/KDDTrain+_slice.txt": kdd_slice, "htru2/HTRU_2_slice.csv": htru2_slice}


def build(full_data: Path) -> dict[str, bytes]:
    """The slices' bytes, keyed by their path relative to this folder."""
    return {name: MAKERS[name]((full_data / src).read_bytes()) for name, src in SLICES.items()}


def main(argv: list[str]) -> int:
    full = Path(argv[0]) if argv else default_full_data()
    for name, data in build(full).items():
        out = HERE / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        rows = data.count(b"\n") if name.endswith(".txt") else data.count(b"\r") + 1
        print(f"{name}  rows={rows}  bytes={len(data)}  sha256={hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
