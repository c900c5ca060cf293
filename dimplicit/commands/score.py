"""``dimplicit score``: per-row anomaly scores of a store (or a file), chunk by chunk."""

from __future__ import annotations

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
    from dimplicit.commands._input import add_model_command

    add_model_command(
        sub,
        "score",
        help="anomaly scores of every row of a store or file with a trained model (out-of-core)",
        description=DESCRIPTION,
        output="score output",
        run=run,
    )


def run(args) -> int:
    from dimplicit.anomaly.score import anomaly_task, score_store
    from dimplicit.commands._input import run_model_command
    from dimplicit.data.store import SCORES_FORMAT

    # A model without anomaly scores fails before any work.
    return run_model_command(args, SCORES_FORMAT, anomaly_task, score_store)
