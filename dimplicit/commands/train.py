"""``dimplicit train``: distributed training on a Zarr store; prints ONE JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dimplicit.commands._options import (
    QUIET_HELP,
    add_batch_size_argument,
    add_model_arguments,
    add_seed_argument,
    add_solver_arguments,
    backward_options,
    new_run_dir,
    solver_options,
)
from dimplicit.commands._types import non_negative_float, non_negative_int, positive_int

LOSS_OF_TASK = {"classify": "cross_entropy", "regress": "mse", "autoencode": "mse"}

EPILOG = """\
examples:
  dimplicit train --data traffic.zarr --task autoencode --arch ae-v1:5,32,16 --normal-only \\
      --epochs 20 --batch-size 4096 --workers 2 --checkpoint-dir runs/ae
  dimplicit train --data traffic.zarr --task classify --hidden 128 --epochs 5 \\
      --scheduler-file /shared/scheduler.json --checkpoint-dir runs/clf --resume

The summary on stdout is one JSON object: steps, final_loss, val_loss, samples_per_s,
weights_sha256 (SHA-256 over the bytes of A, B, C, D, b_x, b_y in that order, C-contiguous),
checkpoint and model paths; with --group-lasso also "features": the input features kept
(non-zero column of [B; D]) and every column norm.  Progress goes to stderr.
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
        metavar="PATH",
        help="Zarr store written by 'dimplicit ingest' or 'dimplicit synth'",
    )
    p.add_argument(
        "--task",
        choices=list(LOSS_OF_TASK),
        default="classify",
        help="classify (cross-entropy on labels), regress (mse on the float targets), "
        "autoencode (mse reconstruction of the features)",
    )
    p.add_argument(
        "--normal-only",
        action="store_true",
        help="train only on rows whose label is a normal class (anomaly detection)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=1, metavar="N", help="passes over the training rows"
    )
    add_batch_size_argument(p, default=8192)
    p.add_argument(
        "--block-rows",
        type=positive_int,
        default=None,
        metavar="N",
        help="rows per task (default: min(batch size, store chunk))",
    )
    add_seed_argument(p, help="seed of weights and data order")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after this many steps in total (resume later with --resume) (default: no limit)",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        metavar="N",
        help="early stopping: evaluations without a better --select-best metric (val_loss "
        "by default); the best weights are the ones saved (default: none, no early stopping)",
    )
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="steps between evaluations of the validation split (default: once per epoch)",
    )
    p.add_argument(
        "--select-best",
        choices=["val_loss", "val_accuracy", "val_r2", "val_f1", "val_auc"],
        default=None,
        help="keep the weights of the best evaluation and restore them at the end "
        "(val_accuracy: classify, val_r2: regress, val_f1/val_auc: autoencode, from the "
        "anomaly rule on the validation split's labels) "
        "(default: the last weights; val_loss with --patience)",
    )
    p.add_argument(
        "--on-divergence",
        choices=["stop", "skip-step"],
        default="stop",
        help="a step whose loss or gradients are not finite is never applied: stop with an "
        "error, or skip it and go on",
    )
    p.add_argument(
        "--executor",
        choices=["auto", "local", "dask"],
        default="auto",
        help="local: in this process, no Dask; dask: on a Dask cluster; auto: local unless "
        "--scheduler/--scheduler-file or more than one --workers is given, or the data do not "
        "fit comfortably in memory",
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
        help="Adam or SGD (with --momentum / --nesterov)",
    )
    o.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    o.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    o.add_argument("--weight-decay", type=float, default=0.0, help="L2 on weight matrices")
    o.add_argument(
        "--group-lasso",
        type=non_negative_float,
        default=0.0,
        metavar="LAMBDA",
        help="feature selection: penalty LAMBDA·Σ_j ‖[B; D][:, j]‖₂ on the input columns, "
        "applied as a proximal step after every update; the summary then lists the features "
        "kept (default: 0, none)",
    )
    o.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning-rate schedule over the whole run",
    )
    o.add_argument(
        "--warmup-steps", type=non_negative_int, default=0, metavar="N",
        help="linear warm-up steps",
    )  # fmt: skip
    add_model_arguments(p)
    add_solver_arguments(p)
    c = p.add_argument_group("checkpoints and logs")
    c.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="write checkpoints (ckpt-STEP.npz), metrics.jsonl and the final model.npz here "
        "(default: a new runs/DATE-TIME directory)",
    )
    c.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="steps between checkpoints (default: 0, at the end and on Ctrl-C/SIGTERM only)",
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
        help="JSON-lines metrics (default: metrics.jsonl in the checkpoint directory)",
    )
    c.add_argument("--quiet", dest="progress", action="store_false", help=QUIET_HELP)
    c.add_argument("--no-progress", dest="progress", action="store_false", help=argparse.SUPPRESS)
    from dimplicit.commands._cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit.commands._cluster import connect_from_args
    from dimplicit.data.store import open_store
    from dimplicit.distributed.checkpoint import lock_directory
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.model import build_model
    from dimplicit.optim import OptimizerConfig
    from dimplicit.partition import StepConfig

    # Everything that can be checked without a cluster is checked first: a typo must not
    # cost a cluster start, and must never touch existing checkpoints.
    store = open_store(args.data)
    n_out = {
        "classify": len(store.label_classes),
        "regress": len(store.target_names) or 1,
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
    # A trained model is never thrown away: without --checkpoint-dir it goes to a new run
    # directory.
    checkpoint_dir = args.checkpoint_dir or str(new_run_dir(Path("runs")))
    metrics = args.metrics_log or str(Path(checkpoint_dir) / "metrics.jsonl")
    executor = args.executor
    if executor == "auto":
        # More than one worker, or a scheduler, is a request for a cluster.
        asked = args.scheduler or args.scheduler_file or (args.workers or 1) > 1
        executor = "dask" if asked else _fits_locally(store, args)
    trainer = Trainer(
        model, spec, config=config, epochs=args.epochs, batch_size=args.batch_size,
        block_rows=args.block_rows, seed=args.seed, checkpoint_dir=checkpoint_dir,
        checkpoint_every=args.checkpoint_every, resume=args.resume, persist=args.persist,
        patience=args.patience, max_steps=args.max_steps, metrics_log=metrics,
        progress=args.progress and sys.stderr.isatty(), eval_every=args.eval_every,
        select_best=args.select_best, on_divergence=args.on_divergence, executor=executor,
    )  # fmt: skip
    # The cosine schedule needs the run's length, known once the plan is (cheaply) built.
    opt = dict(
        name=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        group_lasso=args.group_lasso,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
    )
    trainer.check(store)
    if args.schedule == "cosine":
        opt["total_steps"] = trainer.planned_steps(store)
    trainer.optimizer = OptimizerConfig(**opt)
    # Locked before a cluster starts: a second run on the same directory fails at once.
    with lock_directory(checkpoint_dir):
        trainer.check(store)
        if executor == "local":
            trainer.fit(None)
        else:
            with connect_from_args(args) as client:
                trainer.fit(client)
        summary = trainer.summary_
        if args.group_lasso:
            from dimplicit.sparsity import feature_report

            summary["features"] = feature_report(trainer.model_, store.feature_names)
        if args.task == "autoencode":
            from dimplicit.anomaly.score import calibrate_model

            summary["calibration"] = calibrate_model(trainer.model_, store, summary.get("model"))
    print(json.dumps(summary))
    return 0


def _fits_locally(store, args) -> str:
    """``local`` when the store's features take under a quarter of the free memory."""
    from dimplicit.memory import available_bytes

    itemsize = 8 if args.dtype == "float64" else 4
    need = store.n_rows * store.n_features * itemsize
    return "local" if need < 0.25 * available_bytes() and args.device == "cpu" else "dask"
