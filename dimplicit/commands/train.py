"""``dimplicit train``: distributed training on a Zarr store; prints ONE JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dimplicit.commands._options import (
    add_model_arguments,
    add_solver_arguments,
    backward_options,
    solver_options,
)

LOSS_OF_TASK = {"classify": "cross_entropy", "regress": "mse", "autoencode": "mse"}

EPILOG = """\
examples:
  dimplicit train --data traffic.zarr --task autoencode --arch ae-v1:5,32,16 --normal-only \\
      --epochs 20 --batch-size 4096 --workers 2 --checkpoint-dir runs/ae
  dimplicit train --data traffic.zarr --task classify --hidden 128 --epochs 5 \\
      --scheduler-file /shared/scheduler.json --checkpoint-dir runs/clf --resume

The summary on stdout is one JSON object: steps, final_loss, val_loss, samples_per_s,
weights_sha256 (SHA-256 over the bytes of A, B, C, D, b_x, b_y in that order, C-contiguous),
checkpoint and model paths.  Progress goes to stderr.
"""


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a model on a Zarr store with Dask (synchronous data parallel)",
        description="Train an implicit network on a dimplicit Zarr store: each step's row-blocks "
        "are solved on the Dask workers, their gradient sums reduced in a fixed tree, and one "
        "synchronous update applied. Weights are bitwise independent of the worker count.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="STORE",
        help="Zarr store written by 'dimplicit ingest' or 'dimplicit synth'",
    )
    p.add_argument(
        "--task",
        choices=list(LOSS_OF_TASK),
        default="classify",
        help="classify (cross-entropy on labels), regress (mse on numeric labels), "
        "autoencode (mse reconstruction of the features)",
    )
    p.add_argument(
        "--normal-only",
        action="store_true",
        help="train only on rows whose label is a normal class (anomaly detection)",
    )
    p.add_argument("--epochs", type=int, default=1, help="passes over the training rows")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8192,
        help="rows per synchronous step, the global batch (default 8192)",
    )
    p.add_argument(
        "--block-rows",
        type=int,
        default=None,
        help="rows per task (default: min(batch size, store chunk))",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps in total (resume later with --resume)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping: epochs without a better validation loss",
    )
    p.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="do not apply the store's mean/std to the features",
    )
    p.add_argument(
        "--persist",
        choices=["auto", "always", "never"],
        default="auto",
        help="keep chunks in worker memory (auto: if they fit) or stream from Zarr",
    )
    o = p.add_argument_group("optimizer")
    o.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="Adam or SGD (with --momentum / --nesterov); default adam",
    )
    o.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    o.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    o.add_argument("--weight-decay", type=float, default=0.0, help="L2 on weight matrices")
    o.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning-rate schedule over the whole run",
    )
    o.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    add_model_arguments(p)
    add_solver_arguments(p)
    c = p.add_argument_group("checkpoints and logs")
    c.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="write checkpoints (ckpt-STEP.npz) and the final model.npz here",
    )
    c.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="steps between checkpoints (default: only at the end)",
    )
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --checkpoint-dir",
    )
    c.add_argument(
        "--metrics-log",
        default=None,
        metavar="PATH",
        help="JSON-lines metrics (default: DIR/metrics.jsonl with --checkpoint-dir)",
    )
    c.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    from dimplicit.distributed.cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.data.store import open_store
    from dimplicit.distributed.cluster import connect_from_args
    from dimplicit.distributed.tasks import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.model import build_model
    from dimplicit.optim import OptimizerConfig
    from dimplicit.partition import StepConfig

    # Everything that can be checked without a cluster is checked first: a typo must not
    # cost a cluster start, and must never touch existing checkpoints.
    store = open_store(args.data)
    n_out = {
        "classify": len(store.label_classes),
        "regress": 1,
        "autoencode": store.n_features,
    }[args.task]
    model = build_model(
        args.arch, store.n_features, n_out, hidden=args.hidden, activation=args.activation,
        kappa=args.kappa,
        seed=args.seed, dtype=args.dtype,
    )  # fmt: skip
    config = StepConfig(LOSS_OF_TASK[args.task], solver_options(args), backward_options(args))
    spec = DataSpec(
        str(args.data), args.task, args.normal_only, args.standardize, args.device, args.dtype
    )
    metrics = args.metrics_log
    if metrics is None and args.checkpoint_dir:
        metrics = str(Path(args.checkpoint_dir) / "metrics.jsonl")
    trainer = Trainer(
        model, spec, config=config, epochs=args.epochs, batch_size=args.batch_size,
        block_rows=args.block_rows, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, resume=args.resume, persist=args.persist,
        patience=args.patience, max_steps=args.max_steps, metrics_log=metrics,
        progress=args.progress and sys.stderr.isatty(),
    )  # fmt: skip
    # The cosine schedule needs the run's length, known once the plan is (cheaply) built.
    opt = dict(
        name=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
    )
    if args.schedule == "cosine":
        opt["total_steps"] = trainer.planned_steps(store)
    trainer.optimizer = OptimizerConfig(**opt)
    trainer.check(store)
    with connect_from_args(args) as client:
        trainer.fit(client)
        summary = trainer.summary_
        if args.task == "autoencode":
            from dimplicit.anomaly.score import calibrate_model

            summary["calibration"] = calibrate_model(trainer.model_, store, summary.get("model"))
    print(json.dumps(summary))
    return 0
