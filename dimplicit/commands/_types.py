"""argparse types shared by the data commands (``ingest``, ``synth``): one copy of each.

Each turns the text of a flag into a value or raises ``argparse.ArgumentTypeError`` with a
message in the command line's words.  (``positive_int`` and ``seed`` live in
:mod:`dimplicit.commands._options` with the other shared flags; they are re-exported here.)
"""

from __future__ import annotations

import argparse

from dimplicit.commands._options import positive_int, seed

__all__ = ["positive_int", "seed", "separator", "split_fractions"]


def split_fractions(text: str) -> tuple[float, ...]:
    """``--split``: three comma-separated fractions (train, validation, test)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions like 0.8,0.1,0.1, got {text!r}"
        ) from None


def separator(text: str) -> str:
    """``--sep``: one character, or ``tab`` (also ``\\t`` as typed), comma, space, ..."""
    from dimplicit.data.ingest import separator as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
