"""argparse types of every command: one copy of each.

Each turns the text of a flag into a value or raises ``argparse.ArgumentTypeError`` with a
message in the command line's words.
"""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int, expected: str) -> int:
    """``text`` as an integer of at least ``low``, else the error "expected {expected}"."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (counts where 0 means "none")."""
    return _int_at_least(text, 0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (penalties where 0 means "none")."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def seed(text: str) -> int:
    """argparse type of ``--seed``: a non-negative integer."""
    return non_negative_int(text)


def kappa(text: str) -> float | None:
    """``--kappa``: a positive radius, or ``none`` for no constraint."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'none', got {text!r}")
    return value


def gpus(text: str) -> int | str:
    """argparse type of ``--gpus``: a positive integer or ``all``."""
    if text == "all":
        return "all"
    return _int_at_least(text, 1, "a positive integer or 'all'")


def seconds(text: str) -> float:
    """argparse type of ``--connect-timeout``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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
