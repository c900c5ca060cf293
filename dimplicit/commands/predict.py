"""``dimplicit predict``: the outputs of a trained model for every row, chunk by chunk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Run a trained model over every row on the Dask cluster, one Zarr chunk per task, and
write its outputs to a new Zarr store whose chunks align with the input's:

  classify    predicted: int32 class code (names: the label_classes attribute)
              proba: float32 class probabilities, one column per class
  regress     prediction: float32, one column per target, in the targets' units
  autoencode  raw_score, score and is_anomaly, as 'dimplicit score' writes them

The task is the one the model was trained for. A row whose fixed-point solve did not
converge gets no prediction (class -1, NaN) and is counted in the report. A CSV/TSV or
Parquet input is ingested on the fly with the training store's encoders. Memory stays
bounded whatever the input size; the output appears only when complete.
'dimplicit evaluate --predictions OUT' compares it with the true labels or targets.
"""


def add_parser(sub):
    p = sub.add_parser(
        "predict",
        help="predictions of a trained model for every row of a store or file (out-of-core)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dimplicit.commands._cluster import add_cluster_arguments
    from dimplicit.commands._input import add_model_io_arguments

    add_model_io_arguments(p, "prediction output")
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.commands._cluster import connect_from_args
    from dimplicit.commands._input import input_store
    from dimplicit.data.store import PREDICTIONS_FORMAT, check_output
    from dimplicit.model import ImplicitModel
    from dimplicit.predict import model_task, predict_store

    model = ImplicitModel.load(args.model)
    model_task(model)  # a model without a task fails before any work
    out = Path(args.out)
    # The model and its checkpoint directory are inputs too: --out may not replace them.
    protect = (args.data, Path(args.model), args.reference)
    check_output(out, PREDICTIONS_FORMAT, args.overwrite, protect)
    report = {}
    with input_store(args.data, model, out, reference=args.reference, fmt=args.format) as (
        data,
        ingested,
    ):
        if ingested is not None:
            report["ingest"] = ingested
        with connect_from_args(args, quiet=True):
            report.update(
                predict_store(
                    model, data, out, overwrite=args.overwrite, protect=protect, quiet=args.quiet
                )
            )
    print(json.dumps(report))
    return 0
