"""The flags, the input and the run of the commands that run a trained model over data
(``score``, ``predict``): ``--data`` is a store, or a file ingested on the fly with the
training encoders.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dimplicit.atomic import make_temporary_dir, remove_temporary
from dimplicit.commands._options import add_quiet_argument
from dimplicit.data.sources import SOURCE_FORMATS

__all__ = ["add_model_command", "add_model_io_arguments", "input_store", "run_model_command"]


def add_model_command(sub, name: str, *, help: str, description: str, output: str, run):
    """Register ``name``, a command that runs a trained model over data: its model and
    input/output flags (``output`` names what ``--out`` holds), the cluster flags, ``run``."""
    from dimplicit.commands._cluster import add_cluster_arguments

    p = sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_io_arguments(p, output)
    add_cluster_arguments(p)
    p.set_defaults(func=run)
    return p


def run_model_command(args, output_format: str, check_model: Callable, run_store: Callable) -> int:
    """Run such a command: load ``--model`` and check it (``check_model(model)`` raises before
    any work), check ``--out`` (an ``output_format`` output, or nothing), ingest a file
    ``--data``, then ``run_store(model, data, out, overwrite=, protect=, quiet=)`` on the
    cluster; print the JSON report (with ``ingest`` for a file) and return 0."""
    from dimplicit.commands._cluster import connect_from_args
    from dimplicit.data.store import check_output
    from dimplicit.model import ImplicitModel

    model = ImplicitModel.load(args.model)
    check_model(model)
    out = Path(args.out)
    # The model and its checkpoint directory are inputs too: --out may not replace them.
    protect = (args.data, Path(args.model), args.reference)
    check_output(out, output_format, args.overwrite, protect)
    report = {}
    with input_store(args.data, model, out, reference=args.reference, fmt=args.format) as (
        data,
        ingested,
    ):
        if ingested is not None:
            report["ingest"] = ingested
        with connect_from_args(args, quiet=True):
            report.update(
                run_store(
                    model, data, out, overwrite=args.overwrite, protect=protect, quiet=args.quiet
                )
            )
    print(json.dumps(report))
    return 0


def add_model_io_arguments(parser, output: str) -> None:
    """``--model``, ``--data``, ``--out``, ``--format``, ``--reference``, ``--overwrite``,
    ``--quiet``; ``output`` names what ``--out`` holds ("score output")."""
    parser.add_argument(
        "--model", required=True, metavar="PATH", help="model.npz written by 'dimplicit train'"
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="a dimplicit store, or a CSV/TSV file, a Parquet file, a directory of Parquet files "
        "or a quoted glob of them, ingested on the fly with the training store's encoders "
        "(see --reference)",
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help=f"the {output} to create (a Zarr directory)"
    )
    parser.add_argument(
        "--format",
        choices=SOURCE_FORMATS,
        default=None,
        help="layout of a --data file (default: that of the training store for CSV/TSV, "
        "detected for Parquet)",
    )
    parser.add_argument(
        "--reference",
        metavar="STORE",
        default=None,
        help="training store whose encoders and statistics ingest a --data file (default: "
        "the one recorded in the model)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing --out, only if it is an earlier {output}",
    )
    add_quiet_argument(parser)


def _not_a_store(path: Path) -> str | None:
    """Why ``path`` is a dimplicit output or a Zarr node that is not a store, else None."""
    from dimplicit.data.store import PREDICTIONS_FORMAT, SCORES_FORMAT, output_kind

    kind = output_kind(path)
    if kind in (SCORES_FORMAT, PREDICTIONS_FORMAT):
        what = "score" if kind == SCORES_FORMAT else "prediction"
        return f"{path} is a {what} output, not a data store"
    if path.is_dir() and any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray")):
        return (
            f"{path} is a Zarr group or array but not a dimplicit store; make one of it first "
            f"with 'dimplicit ingest --zarr-features {path}'"
        )
    return None


def _in_ingest_words(message: str) -> str:
    """An ingest error, with its parameters said as ``dimplicit ingest`` flags."""
    from dimplicit.cli import _flags_of, build_parser, cli_wording

    worded = cli_wording(message, _flags_of(build_parser(), "ingest"))
    if "--" in worded:
        worded += " (flags of 'dimplicit ingest': ingest the data with them and --reference first)"
    return worded


@contextlib.contextmanager
def input_store(data, model, out, *, reference=None, fmt=None) -> Iterator[tuple[Path, dict]]:
    """The store to run ``model`` over: ``data`` itself, or ``data`` ingested on the fly.

    Parameters
    ----------
    data : str or Path
        A dimplicit store, or what ``dimplicit ingest`` reads (CSV/TSV, Parquet file,
        directory or glob).
    model : ImplicitModel
        Its ``meta["training"]["store"]`` is the default ``reference``.
    out : str or Path
        The command's output; the temporary store is built beside it, named like its
        temporaries, so that a killed run's leftover is removed by the next run on ``out``.
    reference : path, optional
        The training store whose vocabularies, classes and statistics encode a file.
    fmt : str, optional
        The file's format (default: the reference's for text, detected for Parquet).

    Yields
    ------
    (Path, dict or None)
        The store, and the ingest report (None when ``data`` is a store).  The temporary
        store is removed on exit.
    """
    from dimplicit.data.store import output_kind

    path = Path(data)
    if output_kind(path) == "store":
        yield path, None
        return
    why = _not_a_store(path)
    if why:
        raise ValueError(why)
    if not path.exists() and not glob.has_magic(str(data)):
        raise FileNotFoundError(f"no input at {path}")
    ref = reference or model.meta.get("training", {}).get("store")
    if not ref:
        raise ValueError(f"{path} is not a store: ingesting it needs --reference TRAINING_STORE")
    # Named like every temporary of `out`, so a killed run's leftover is removed by the
    # next run on the same path.
    tmpdir = make_temporary_dir(out.parent, out.name)
    try:
        report = _ingest(data, tmpdir / "data.zarr", fmt, ref)
        yield tmpdir / "data.zarr", report
    finally:
        remove_temporary(tmpdir)


def _ingest(data, store, fmt, reference) -> dict:
    from dimplicit.data.ingest import ingest_csv
    from dimplicit.data.parquet import is_parquet_file
    from dimplicit.data.sources import ingest

    path = Path(data)
    try:
        if path.is_file() and not is_parquet_file(path):
            # A text file takes the training store's format (without detection) and has a
            # header when its first line names the training columns.
            header = _has_header(path, reference)
            return ingest_csv(path, store, fmt, reference=reference, header=header)
        return ingest(data, store, fmt=fmt, reference=reference)
    except ValueError as exc:
        raise ValueError(f"ingesting {data}: {_in_ingest_words(str(exc))}") from exc


def _has_header(path: Path, reference) -> bool:
    """Whether the first line of a text file is the reference store's column names."""
    from dimplicit.data.store import open_store

    attrs = open_store(reference).attrs
    columns, sep = attrs.get("columns"), attrs.get("separator", ",")
    if not columns:
        return False
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f:
            comment = attrs.get("comment")
            if not line.strip() or (comment and line.startswith(comment)):
                continue
            return [c.strip() for c in line.rstrip("\r\n").split(sep)] == list(columns)
    return False
