"""``dimplicit demo``: the main job end to end on an embedded default.

Generate synthetic NSL-KDD-schema traffic, train an implicit autoencoder on its normal rows
on an in-process Dask cluster, calibrate on validation, score every row out-of-core, evaluate
on the test rows and save plots.  Prints ONE JSON summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dimplicit.commands._cluster import add_cluster_arguments
from dimplicit.commands._options import add_quiet_argument, new_run_dir
from dimplicit.commands._types import positive_int, seed


def add_parser(sub):
    p = sub.add_parser(
        "demo",
        help="generate traffic, train an implicit autoencoder, score, evaluate, plot",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--rows", type=positive_int, default=200_000, metavar="N", help="synthetic rows")
    p.add_argument(
        "--workdir", default="runs/demo", metavar="DIR", help="where stores, model, plots go"
    )
    p.add_argument("--arch", default="ae-v1:5,32,16", help="the autoencoder's architecture")
    p.add_argument("--epochs", type=positive_int, default=3, metavar="N", help="training epochs")
    p.add_argument(
        "--seed", type=seed, default=0, metavar="S", help="seed of data, weights and data order"
    )
    add_quiet_argument(p)
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:

    from dimplicit.anomaly.evaluate import evaluate, plot
    from dimplicit.anomaly.score import calibrate_model, score_store
    from dimplicit.commands._cluster import connect_from_args
    from dimplicit.data.store import open_store
    from dimplicit.data.synth import synth_traffic
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer
    from dimplicit.gradients import BackwardOptions
    from dimplicit.model import build_model
    from dimplicit.optim import OptimizerConfig
    from dimplicit.partition import StepConfig
    from dimplicit.progress import progress_enabled
    from dimplicit.solvers import SolverOptions

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(f"[demo] {msg}", file=sys.stderr)  # noqa: E731
    data = work / "traffic.zarr"
    say(f"generating {args.rows} rows of synthetic traffic -> {data}")
    synth = synth_traffic(args.rows, data, seed=args.seed, overwrite=True)
    store = open_store(data)
    model = build_model(args.arch, store.n_features, store.n_features, seed=args.seed)
    # A new directory each run: the demo never deletes anything under --workdir.
    ckpt = new_run_dir(work / "model")
    fwd = SolverOptions("picard", tol=1e-4, max_iter=100)
    trainer = Trainer(
        model,
        DataSpec(str(data), "autoencode", normal_only=True),
        config=StepConfig("mse", fwd, BackwardOptions("implicit", solver=fwd)),
        optimizer=OptimizerConfig("adam", lr=3e-3),
        epochs=args.epochs,
        batch_size=4096,
        block_rows=2048,
        seed=args.seed,
        checkpoint_dir=ckpt,
        progress=progress_enabled(args.quiet),
    )
    with connect_from_args(args) as client:
        say(f"training {args.arch} on the normal training rows, {len(client.nthreads())} workers")
        trainer.fit(client)
        say("calibrating on the validation rows")
        cal = calibrate_model(trainer.model_, store, trainer.summary_["model"])
        say("scoring every row")
        scored = score_store(
            trainer.model_, data, work / "scores.zarr", overwrite=True, quiet=args.quiet
        )
    metrics = evaluate(work / "scores.zarr", split="test")
    plots = plot(work / "scores.zarr", work / "plots", split="test")
    summary = {
        "data": {"rows": synth["rows"], "store": str(data)},
        "train": {
            k: trainer.summary_[k]
            for k in (
                "steps",
                "final_loss",
                "val_loss",
                "samples_per_s",
                "weights_sha256",
                "seconds",
                "model",
            )
        },
        "calibration": cal,
        "score": scored,
        "test_metrics": metrics,
        "plots": plots,
    }
    print(json.dumps(summary))
    return 0
