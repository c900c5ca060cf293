"""``dimplicit synth``: generate synthetic data sets (``synth traffic``)."""

from __future__ import annotations

import argparse
import json

from dimplicit.commands._options import (
    add_quiet_argument,
    add_seed_argument,
    add_split_fractions_argument,
)
from dimplicit.commands._types import positive_int
from dimplicit.data.store import DEFAULT_CHUNK_ROWS


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``synth`` (with its ``traffic`` sub-command) on the top-level sub-parsers."""
    p = subparsers.add_parser(
        "synth",
        help="generate synthetic data sets (network traffic with planted attacks)",
        description="Generate synthetic data sets of any size, streamed to a Zarr store.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    t = kinds.add_parser(
        "traffic",
        help="NSL-KDD-schema connection records with flooding, scanning and login-abuse attacks",
        description=(
            "Write synthetic NSL-KDD-schema connection records (the feature layout of an "
            "ingested NSL-KDD file) with planted attack families: flooding (neptune-like), "
            "scanning (portsweep/satan-like) and login abuse (guess_passwd-like). "
            "Deterministic by --seed and independent of --chunk-rows; memory stays bounded "
            "for any --rows. Prints one JSON report on stdout."
        ),
    )
    t.add_argument("--rows", type=positive_int, required=True, metavar="N", help="number of rows")
    t.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="Zarr store to create (with --csv: the CSV file to create)",
    )
    add_seed_argument(t, help="seed of the generator and of the train/validation/test split")
    t.add_argument(
        "--attack-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="expected share of attack rows, split 50/30/20 among flooding, scanning and "
        "login abuse",
    )
    add_split_fractions_argument(t)
    t.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=DEFAULT_CHUNK_ROWS,
        metavar="N",
        help="rows per Zarr chunk; does not change the data",
    )
    t.add_argument(
        "--csv",
        action="store_true",
        help="write an NSL-KDD-format CSV file (43 columns, no header) instead of a store; "
        "'dimplicit ingest --format nsl-kdd' reads it back to the same features",
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_quiet_argument(t)
    t.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``dimplicit synth traffic``; prints the JSON report, returns the exit status."""
    from dimplicit import progress
    from dimplicit.data.synth import synth_traffic

    report = synth_traffic(
        args.rows,
        args.out,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        attack_fraction=args.attack_fraction,
        splits=args.split_fractions,
        overwrite=args.overwrite,
        write_csv=args.csv,
        progress=progress.progress_enabled(args.quiet),  # rows, rows/s, ETA
    )
    print(json.dumps(report))
    return 0
