"""``dimplicit score``: per-row anomaly scores of a store (or a file), chunk by chunk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Compute per-row anomaly scores with a trained model on the Dask cluster, one Zarr chunk
per task, and write raw_score, score (z-score) and is_anomaly to a new Zarr store whose
chunks align with the input's. Memory stays bounded whatever the input size. A CSV/TSV
or Parquet input is ingested on the fly with the training store's vocabularies and
scaler (unseen categories go to the <unknown> slot).

Autoencoders score a row by its reconstruction RMSE; classifiers trained with normal
classes by the probability of the other classes (flagged above 0.5 unless calibrated).
Other models have no anomaly score: 'dimplicit predict' writes their predictions.
"""


def add_parser(sub):
    p = sub.add_parser(
        "score",
        help="anomaly scores of every row of a store or file with a trained model (out-of-core)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dimplicit.commands._cluster import add_cluster_arguments
    from dimplicit.commands._input import add_model_io_arguments

    add_model_io_arguments(p, "score output")
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.anomaly.score import anomaly_task, score_store
    from dimplicit.commands._cluster import connect_from_args
    from dimplicit.commands._input import input_store
    from dimplicit.data.store import SCORES_FORMAT, check_output
    from dimplicit.model import ImplicitModel

    model = ImplicitModel.load(args.model)
    anomaly_task(model)  # a model without anomaly scores fails before any work
    out = Path(args.out)
    # The model and its checkpoint directory are inputs too: --out may not replace them.
    protect = (args.data, Path(args.model), args.reference)
    check_output(out, SCORES_FORMAT, args.overwrite, protect)
    report = {}
    with input_store(args.data, model, out, reference=args.reference, fmt=args.format) as (
        data,
        ingested,
    ):
        if ingested is not None:
            report["ingest"] = ingested
        with connect_from_args(args, quiet=True):
            report.update(
                score_store(
                    model, data, out, overwrite=args.overwrite, protect=protect, quiet=args.quiet
                )
            )
    print(json.dumps(report))
    return 0
