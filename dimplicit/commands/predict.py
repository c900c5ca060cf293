"""``dimplicit predict``: the outputs of a trained model for every row, chunk by chunk."""

from __future__ import annotations

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
    from dimplicit.commands._input import add_model_command

    add_model_command(
        sub,
        "predict",
        help="predictions of a trained model for every row of a store or file (out-of-core)",
        description=DESCRIPTION,
        output="prediction output",
        run=run,
    )


def run(args) -> int:
    from dimplicit.commands._input import run_model_command
    from dimplicit.data.store import PREDICTIONS_FORMAT
    from dimplicit.predict import model_task, predict_store

    # A model without a task fails before any work.
    return run_model_command(args, PREDICTIONS_FORMAT, model_task, predict_store)
