"""``dimplicit ingest``: convert a CSV file to a dimplicit Zarr store."""

from __future__ import annotations

import argparse
import json
import sys

from dimplicit.data.ingest import BAD_ROW_POLICIES, INGEST_FORMATS, STATS_ROWS, ingest_csv
from dimplicit.data.store import DEFAULT_CHUNK_ROWS


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions like 0.8,0.1,0.1, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ingest`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        "ingest",
        help="convert a CSV file (NSL-KDD, HTRU2, generic) to a Zarr store",
        description=(
            "Stream a CSV file into a dimplicit Zarr store: float32 features (categorical "
            "columns one-hot encoded, with an explicit <unknown> slot), integer labels, a "
            "deterministic train/validation/test split and normalisation statistics, all in "
            "one pass with bounded memory. Prints one JSON report on stdout; bad rows are "
            "summarised on stderr."
        ),
    )
    p.add_argument("csv", metavar="CSV", help="input CSV file (any line endings)")
    p.add_argument("--out", required=True, metavar="STORE", help="Zarr store to create")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=INGEST_FORMATS,
        default="nsl-kdd",
        help="column layout: nsl-kdd (43 columns, label + difficulty), htru2 (8 features + "
        "class) or generic (all numeric except --label and --categorical); default nsl-kdd",
    )
    p.add_argument(
        "--label",
        metavar="COL",
        help="generic only: label column, by name (with --header) or 0-based index; "
        "without it the store is unlabelled",
    )
    p.add_argument(
        "--categorical",
        metavar="COLS",
        default="",
        help="generic only: comma-separated categorical columns (names or 0-based indices); "
        "their vocabularies come from a quick first pass, or from --reference",
    )
    p.add_argument(
        "--normal",
        metavar="LABELS",
        default="",
        help="generic only: comma-separated label values that count as normal",
    )
    p.add_argument(
        "--header",
        action="store_true",
        help="the first row is a header (generic: it names the columns; otherwise skipped)",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=DEFAULT_CHUNK_ROWS,
        metavar="N",
        help=f"rows per Zarr chunk (default {DEFAULT_CHUNK_ROWS})",
    )
    p.add_argument(
        "--on-bad-rows",
        choices=BAD_ROW_POLICIES,
        default="error",
        help="rows with a wrong field count, an unparsable number or NaN/Inf: 'error' stops "
        "and writes nothing, 'skip' drops them and records their row numbers (default error)",
    )
    p.add_argument(
        "--split",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        metavar="T,V,T",
        help="train,validation,test fractions (default 0.8,0.1,0.1)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="seed of the split; a row's split depends only on the seed and its index (default 0)",
    )
    p.add_argument(
        "--stats-rows",
        choices=STATS_ROWS,
        default="train",
        help="rows over which mean/std are computed (default train)",
    )
    p.add_argument(
        "--stats-normal-only",
        action="store_true",
        help="compute mean/std over normal-labelled rows only",
    )
    p.add_argument(
        "--reference",
        metavar="STORE",
        help="reuse this store's vocabularies, label classes and statistics (to ingest a "
        "file for scoring with the training encoders); unseen categories go to <unknown>",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``dimplicit ingest``; prints the JSON report, returns the exit status."""
    report = ingest_csv(
        args.csv,
        args.out,
        fmt=args.fmt,
        label=args.label,
        categorical=args.categorical,
        chunk_rows=args.chunk_rows,
        on_bad_rows=args.on_bad_rows,
        splits=args.split,
        split_seed=args.seed,
        stats_rows=args.stats_rows,
        stats_normal_only=args.stats_normal_only,
        reference=args.reference,
        overwrite=args.overwrite,
        header=args.header,
        normal=args.normal,
    )
    bad = report["bad_rows"]
    if bad["count"]:
        rows = ", ".join(str(r) for r in bad["rows"])
        more = ", ..." if bad["count"] > len(bad["rows"]) else ""
        print(
            f"dimplicit ingest: skipped {bad['count']} bad row(s): rows {rows}{more}",
            file=sys.stderr,
        )
        for ex in bad["examples"]:
            print(f"  row {ex['row']}: {ex['reason']}", file=sys.stderr)
    if report.get("warning"):
        print(f"dimplicit ingest: warning: {report['warning']}", file=sys.stderr)
    print(json.dumps(report))
    return 0
