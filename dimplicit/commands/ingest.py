"""``dimplicit ingest``: convert CSV/TSV, Parquet or an existing Zarr array to a store."""

from __future__ import annotations

import argparse
import json
import sys

from dimplicit.commands._options import (
    add_quiet_argument,
    add_seed_argument,
    add_split_fractions_argument,
)
from dimplicit.commands._types import positive_int, separator
from dimplicit.data.accumulate import BAD_ROW_POLICIES, STATS_ROWS
from dimplicit.data.sources import SOURCE_FORMATS
from dimplicit.data.store import DEFAULT_CHUNK_ROWS

# Options that only mean something for one kind of input, by argparse dest.
_FILE_ONLY = ("fmt", "label", "categorical", "target", "ignore", "header", "sep", "comment")
_ZARR_ONLY = ("zarr_labels", "zarr_targets")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ingest`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        "ingest",
        help="convert CSV/TSV (NSL-KDD, HTRU2, generic, Zeek), Parquet or a Zarr array to a "
        "store",
        description=(
            "Stream a CSV/TSV file, Parquet data (a file, a directory or a glob) or an existing "
            "Zarr array into a dimplicit Zarr store: float32 features (categorical columns "
            "one-hot encoded, with an explicit <unknown> slot), integer labels, optional float "
            "regression targets, a deterministic train/validation/test split and normalisation "
            "statistics, all in one pass with bounded memory. Prints one JSON report on "
            "stdout; bad rows are summarised on stderr."
        ),
    )
    p.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="CSV/TSV file (any line endings), Parquet file, directory of Parquet files, or a "
        "quoted glob like 'logs/*.parquet' (or use --zarr-features)",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="Zarr store to create")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=SOURCE_FORMATS,
        default=None,
        help="input layout: nsl-kdd (43 columns, label + difficulty), htru2 (8 features + "
        "class), generic (all numeric except --label, --target, --categorical, --ignore) or "
        "parquet (column kinds from the schema); default: detected from the file name and "
        "first rows, and said in the report",
    )
    cols = p.add_argument_group("columns (generic CSV/TSV and Parquet)")
    cols.add_argument(
        "--label",
        metavar="COL",
        help="label column (classes), by name or 0-based index; without it the store is "
        "unlabelled",
    )
    cols.add_argument(
        "--target",
        metavar="COLS",
        default="",
        help="comma-separated float regression target columns (names or 0-based indices), "
        "stored as targets for 'train --task regress'; a non-numeric value is a bad row",
    )
    cols.add_argument(
        "--categorical",
        metavar="COLS",
        default="",
        help="comma-separated categorical columns (names or 0-based indices); their "
        "vocabularies come from a quick first pass, or from --reference (Parquet: text "
        "columns are categorical without being listed)",
    )
    cols.add_argument(
        "--ignore",
        metavar="COLS",
        default="",
        help="comma-separated columns to leave out (identifiers, timestamps, addresses)",
    )
    cols.add_argument(
        "--normal",
        metavar="LABELS",
        default="",
        help="comma-separated label values that count as normal",
    )
    text = p.add_argument_group("text files")
    text.add_argument(
        "--header",
        action="store_true",
        help="the first row is a header (generic: it names the columns; otherwise skipped)",
    )
    text.add_argument(
        "--sep",
        type=separator,
        default=None,
        metavar="SEP",
        help="field separator: one character, or tab (also '\\t'), comma, space, semicolon, "
        "pipe (default: tab for .tsv files and Zeek logs, else comma)",
    )
    text.add_argument(
        "--comment",
        metavar="PREFIX",
        default=None,
        help="skip lines starting with PREFIX, e.g. '#' for Zeek logs, whose '#fields' line "
        "then names the columns (default: none; '#' for files starting with '#separator')",
    )
    zarr = p.add_argument_group("existing Zarr arrays (instead of INPUT)")
    zarr.add_argument(
        "--zarr-features",
        metavar="PATH[:ARRAY]",
        help="adopt this (N, p) array as the features; a group without :ARRAY gives its "
        "'features' array, and its 'labels'/'targets' arrays when present",
    )
    zarr.add_argument("--zarr-labels", metavar="PATH[:ARRAY]", help="(N,) label array")
    zarr.add_argument(
        "--zarr-targets", metavar="PATH[:ARRAY]", help="(N,) or (N, t) float target array"
    )
    p.add_argument(
        "--chunk-rows",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"rows per Zarr chunk (default: {DEFAULT_CHUNK_ROWS}; for --zarr-features the "
        "source's row chunking)",
    )
    p.add_argument(
        "--on-bad-rows",
        choices=BAD_ROW_POLICIES,
        default="error",
        help="rows with a wrong field count, an unparsable number, a null or NaN/Inf: 'error' "
        "stops and writes nothing, 'skip' drops them and records their row numbers",
    )
    add_split_fractions_argument(p)
    add_seed_argument(
        p, help="seed of the split; a row's split depends only on the seed and its index"
    )
    p.add_argument(
        "--stats-rows",
        choices=STATS_ROWS,
        default="train",
        help="rows over which mean/std are computed",
    )
    p.add_argument(
        "--stats-normal-only",
        action="store_true",
        help="compute mean/std over normal-labelled rows only",
    )
    p.add_argument(
        "--reference",
        metavar="STORE",
        help="reuse this store's vocabularies, label classes, targets and statistics (to "
        "ingest a file for scoring with the training encoders); unseen categories go to "
        "<unknown>",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    add_quiet_argument(p)
    p.set_defaults(func=run)
    return p


def _given(args, dests) -> list[str]:
    return [d for d in dests if getattr(args, d) not in (None, "", False)]


def run(args) -> int:
    """Run ``dimplicit ingest``; prints the JSON report, returns the exit status."""
    from dimplicit import progress
    from dimplicit.cli import CLIError

    shared = dict(
        on_bad_rows=args.on_bad_rows,
        splits=args.split_fractions,
        split_seed=args.seed,
        stats_rows=args.stats_rows,
        stats_normal_only=args.stats_normal_only,
        reference=args.reference,
        overwrite=args.overwrite,
        normal=args.normal,
        progress=progress.progress_enabled(args.quiet),  # rows, rows/s (ETA when known)
    )
    if args.zarr_features:
        from dimplicit.data.adopt import adopt_zarr

        if args.input:
            raise CLIError("give either INPUT or --zarr-features, not both")
        wrong = _given(args, _FILE_ONLY)
        if wrong:
            flags = ", ".join("--" + ("format" if d == "fmt" else d.replace("_", "-"))
                              for d in wrong)  # fmt: skip
            verb = "applies" if len(wrong) == 1 else "apply"
            raise CLIError(f"{flags} {verb} to INPUT files, not to --zarr-features")
        report = adopt_zarr(
            args.zarr_features,
            args.out,
            labels=args.zarr_labels,
            targets=args.zarr_targets,
            chunk_rows=args.chunk_rows,
            **shared,
        )
    else:
        from dimplicit.data.sources import ingest

        if not args.input:
            raise CLIError("give an INPUT file (or --zarr-features PATH[:ARRAY])")
        wrong = _given(args, _ZARR_ONLY)
        if wrong:
            raise CLIError("--zarr-labels and --zarr-targets go with --zarr-features")
        text = {k: getattr(args, k) for k in ("header", "sep", "comment") if getattr(args, k)}
        report = ingest(
            args.input,
            args.out,
            fmt=args.fmt,
            label=args.label,
            categorical=args.categorical,
            targets=args.target,
            ignore=args.ignore,
            chunk_rows=args.chunk_rows or DEFAULT_CHUNK_ROWS,
            **text,
            **shared,
        )
    _summarise(report)
    print(json.dumps(report))
    return 0


def _summarise(report: dict) -> None:
    """What the user should see besides the JSON: detected format, bad rows, warnings."""
    if report.get("format_detected"):
        detected = report["format_detected"]
        print(f"dimplicit ingest: format {report['format']}, detected: {detected}", file=sys.stderr)
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
