"""``dimplicit score``: per-row anomaly scores of a Zarr store (or CSV), chunk by chunk."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "score",
        help="score every row of a store or CSV with a trained model (out-of-core)",
        description="Compute per-row anomaly scores with a trained model on the Dask cluster, one "
        "Zarr chunk per task, and write raw_score, score (z-score) and is_anomaly to a new Zarr "
        "store whose chunks align with the input's. Memory stays bounded whatever the input size. "
        "A CSV input is ingested on the fly with the training store's vocabularies and scaler "
        "(unseen categories go to the <unknown> slot).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model.npz written by 'dimplicit train'")
    p.add_argument("--data", required=True, help="Zarr store, or a CSV file (see --format)")
    p.add_argument("--out", required=True, help="output Zarr store of scores")
    p.add_argument(
        "--format",
        choices=["nsl-kdd", "htru2", "generic"],
        default=None,
        help="CSV format (default: that of the training store)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="training store for ingesting a CSV (default: recorded in the model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    from dimplicit.distributed.cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.anomaly.score import score_store
    from dimplicit.data.store import open_store
    from dimplicit.distributed.cluster import connect_from_args
    from dimplicit.model import ImplicitModel

    model = ImplicitModel.load(args.model)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"no input at {data}")
    tmpdir = None
    report = {}
    try:
        if data.is_file():  # a CSV: ingest it with the training encoders first
            from dimplicit.data.ingest import ingest_csv

            ref = args.reference or model.meta.get("training", {}).get("store")
            if not ref:
                raise ValueError("scoring a CSV needs --reference TRAINING_STORE")
            fmt = args.format or open_store(ref).attrs.get("format", "generic")
            fmt = "nsl-kdd" if fmt == "synthetic-traffic" else fmt
            tmpdir = Path(tempfile.mkdtemp(prefix=".ingest-", dir=out.parent))
            report["ingest"] = ingest_csv(data, tmpdir / "data.zarr", fmt=fmt, reference=ref)
            data = tmpdir / "data.zarr"
        with connect_from_args(args, quiet=True):
            report.update(score_store(model, data, out, overwrite=args.overwrite))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    print(json.dumps(report))
    return 0
