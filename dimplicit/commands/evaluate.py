"""``dimplicit evaluate``: metrics of predictions or scores against the truth, as JSON; plots."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Compare the output of 'dimplicit predict' or 'dimplicit score' with the true labels or
targets of the store it was computed from (or --data), for the task the model was
trained for, and print one JSON object:

  classify    accuracy, balanced_accuracy, f1_macro, confusion_matrix (rows: true class,
              columns: predicted class, in the order of classes)
  regress     r2, mae, rmse (and per_target with several targets)
  autoencode  f1, precision, recall, accuracy, mcc, roc_auc of the is_anomaly flags
              (a label outside the normal classes is an anomaly)

Unlabelled rows are left out; so are rows without a prediction (their solve did not
converge), counted in unconverged_rows. Every metric is scikit-learn's.
"""


def add_parser(sub):
    p = sub.add_parser(
        "evaluate",
        help="test metrics of predictions (classify, regress) or anomaly scores (JSON)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--predictions",
        "--scores",
        dest="predictions",
        required=True,
        metavar="PATH",
        help="output of 'dimplicit predict' or 'dimplicit score'",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="store with the true labels or targets of the same rows (default: the store "
        "the output was computed from)",
    )
    p.add_argument(
        "--split",
        choices=["train", "validation", "test"],
        default=None,
        help="evaluate only these rows (default: all rows)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="DIR",
        help="also write PNG plots to DIR: confusion_matrix.png (classify), "
        "prediction_vs_target.png (regress), score_histogram.png and roc_curve.png "
        "(anomaly scores) (default: none)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.anomaly.evaluate import evaluate, plot

    out = evaluate(args.predictions, args.data, args.split)
    if args.plot:
        out["plots"] = plot(args.predictions, args.plot, args.data, args.split)
    print(json.dumps(out))
    return 0
