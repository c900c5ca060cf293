"""``dimplicit evaluate``: metrics of stored scores against the labels, as JSON; plots."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser(
        "evaluate",
        help="F1, precision, recall, accuracy, MCC, ROC AUC of a scores store (JSON)",
        description="Compare the is_anomaly flags and scores written by 'dimplicit score' with "
        "the labels of the scored store (a label outside the normal classes is an anomaly).",
    )
    p.add_argument("--scores", required=True, help="scores store written by 'dimplicit score'")
    p.add_argument("--data", default=None, help="labelled store (default: the scored one)")
    p.add_argument(
        "--split",
        choices=["train", "validation", "test"],
        default=None,
        help="evaluate only these rows (default: all labelled rows)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="DIR",
        help="also write score_histogram.png and roc_curve.png to DIR",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.anomaly.evaluate import evaluate, plot

    out = evaluate(args.scores, args.data, args.split)
    if args.plot:
        out["plots"] = plot(args.scores, args.plot, args.data, args.split)
    print(json.dumps(out))
    return 0
