"""``dimplicit bench {core,distributed}``: throughput benchmarks printing ONE JSON object."""

from __future__ import annotations

import argparse
import json

from dimplicit.commands._cluster import add_workers_argument
from dimplicit.commands._options import (
    add_batch_size_argument,
    add_device_argument,
    add_dtype_argument,
    add_max_iter_argument,
    add_method_argument,
    add_solver_argument,
    add_tol_argument,
)
from dimplicit.commands._types import positive_int
from dimplicit.solvers import SOLVERS


def _add_model_arguments(parser, hidden: int):
    """Flags shared by the training benchmarks: the model's shape, method and precision."""
    parser.add_argument(
        "--hidden", type=positive_int, default=hidden, metavar="N", help="hidden neurons n"
    )
    parser.add_argument(
        "--inputs", type=positive_int, default=64, metavar="N", help="input features p"
    )
    parser.add_argument("--outputs", type=positive_int, default=10, metavar="N", help="outputs q")
    add_method_argument(parser)
    add_dtype_argument(parser)


def _counts(text: str) -> list[int]:
    """argparse type of ``--worker-counts``: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 1,2,4, got {text!r}"
        )
    return values


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    c = bsub.add_parser(
        "core",
        help="train a dense model for a few steps in-process; GFLOP/s vs measured GEMM peak",
        description="Train a dense relu implicit model on random data for a few steps and print "
        "samples/s, iterations, achieved GFLOP/s (flop count of docs/design.md §6), the GEMM "
        "peak measured in the same run, fraction_of_peak and peak RSS.",
    )
    _add_model_arguments(c, hidden=1024)
    add_batch_size_argument(c, default=4096)
    c.add_argument("--batch", type=positive_int, dest="batch_size", help=argparse.SUPPRESS)
    add_solver_argument(c)
    c.add_argument(
        "--backward-solver",
        choices=list(SOLVERS),
        default=None,
        help="solver of the implicit adjoint system (default: the same as --solver)",
    )
    c.add_argument(
        "--check",
        choices=["adaptive", "fixed"],
        default="adaptive",
        help="when the solvers test convergence: at the predicted iteration, at most 4 apart "
        "(adaptive), or every 4 iterations (fixed)",
    )
    c.add_argument(
        "--memory", type=positive_int, default=3, metavar="M", help="Anderson's memory m"
    )
    c.add_argument(
        "--steps", type=positive_int, default=5, metavar="N", help="timed steps after one warm-up"
    )
    add_tol_argument(c)
    add_max_iter_argument(c, default=100)
    c.add_argument(
        "--blas-threads",
        type=positive_int,
        default=None,
        metavar="B",
        help="BLAS/OpenMP threads of this process (default: all cores)",
    )
    c.add_argument("--threads", type=positive_int, dest="blas_threads", help=argparse.SUPPRESS)
    add_device_argument(c)
    c.add_argument("--tf32", action="store_true", help="GPU float32: allow TF32 GEMMs")
    c.set_defaults(func=run_core)

    d = bsub.add_parser(
        "distributed",
        help="samples/s with 1 and 2 Dask workers, speedup, overhead and bytes per step",
        description="Train the same model on the same Zarr data on local clusters of each of "
        "--worker-counts single-threaded workers (1 and 2 by default), --repeats times each, "
        "interleaved, and print the medians of samples/s, speedup, the per-step overhead "
        "fraction, tasks, coordinator CPU and bytes every worker sent and received.",
    )
    _add_model_arguments(d, hidden=512)
    d.add_argument(
        "--block-rows", type=positive_int, default=8192, metavar="N", help="rows per partition"
    )
    d.add_argument(
        "--blocks-per-step",
        type=positive_int,
        default=4,
        metavar="N",
        help="partitions in one step's global batch",
    )
    d.add_argument("--steps", type=positive_int, default=6, metavar="N", help="timed steps per run")
    d.add_argument(
        "--worker-counts",
        type=_counts,
        default=[1, 2],
        metavar="COUNTS",
        help="comma-separated worker counts, one run with a local cluster of each (default: 1,2)",
    )
    d.add_argument("--workers", type=_counts, dest="worker_counts", help=argparse.SUPPRESS)
    d.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        metavar="N",
        help="timed runs per worker count, interleaved; medians are reported (default: 3)",
    )
    d.set_defaults(func=run_distributed)

    s = bsub.add_parser(
        "score",
        help="out-of-core scoring: rows/s and peak memory of client and workers",
        description="Score N synthetic rows (generated into a temporary store) with an implicit "
        "autoencoder on local worker processes, one thread each; report rows/s and peak RSS. "
        "Compare --rows 1000000 with --rows 10000000: memory must not grow.",
    )
    s.add_argument(
        "--rows", type=positive_int, default=1_000_000, metavar="N", help="synthetic rows to score"
    )
    s.add_argument(
        "--arch",
        default="ae-v1:5,32,16",
        help="autoencoder architecture, randomly initialised",
    )
    add_workers_argument(s)
    s.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="score this store instead of synthetic rows (default: none)",
    )
    s.set_defaults(func=run_score)


def run_core(args) -> int:
    from dimplicit.benchmarks.core import bench_core

    out = bench_core(
        hidden=args.hidden,
        batch=args.batch_size,
        inputs=args.inputs,
        outputs=args.outputs,
        method=args.method,
        solver=args.solver,
        backward_solver=args.backward_solver,
        check=args.check,
        memory=args.memory,
        dtype=args.dtype,
        steps=args.steps,
        tol=args.tol,
        max_iter=args.max_iter,
        threads=args.blas_threads,
        device=args.device,
        tf32=args.tf32,
    )
    print(json.dumps(out))
    return 0


def run_distributed(args) -> int:
    from dimplicit.benchmarks.distributed import bench_distributed

    out = bench_distributed(
        hidden=args.hidden,
        block_rows=args.block_rows,
        blocks_per_step=args.blocks_per_step,
        inputs=args.inputs,
        outputs=args.outputs,
        steps=args.steps,
        method=args.method,
        dtype=args.dtype,
        workers=args.worker_counts,
        repeats=args.repeats,
    )
    print(json.dumps(out))
    return 0


def run_score(args) -> int:
    from dimplicit.benchmarks.scoring import bench_score

    print(json.dumps(bench_score(args.rows, args.arch, args.workers or 1, args.data)))
    return 0
