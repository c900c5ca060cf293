"""``dimplicit bench {core,distributed}``: throughput benchmarks printing ONE JSON object."""

from __future__ import annotations

import json


def _add_model_arguments(parser, hidden: int):
    """Flags shared by the training benchmarks: the model's shape, method and precision."""
    parser.add_argument(
        "--hidden", type=int, default=hidden, help=f"hidden neurons n (default {hidden})"
    )
    parser.add_argument("--inputs", type=int, default=64, help="input features p (default 64)")
    parser.add_argument("--outputs", type=int, default=10, help="outputs q (default 10)")
    parser.add_argument(
        "--method",
        default="implicit",
        help="gradient method: implicit, neumann, jfb, phantom-K (default implicit)",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="precision"
    )


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    c = bsub.add_parser(
        "core",
        help="train a dense model for a few steps in-process; GFLOP/s vs measured GEMM peak",
        description="Train a dense relu implicit model on random data for a few steps and print "
        "samples/s, iterations, achieved GFLOP/s (DESIGN §6 flop count), the GEMM peak measured "
        "in the same run, fraction_of_peak and peak RSS.",
    )
    _add_model_arguments(c, hidden=1024)
    c.add_argument("--batch", type=int, default=4096, help="rows per step b (default 4096)")
    c.add_argument(
        "--solver", choices=["picard", "anderson"], default="picard", help="forward solver"
    )
    c.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up (default 5)")
    c.add_argument("--tol", type=float, default=1e-4, help="relative residual per sample")
    c.add_argument("--max-iter", type=int, default=100, help="iteration limit per solve")
    c.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    c.add_argument(
        "--device", choices=["cpu", "gpu"], default="cpu", help="NumPy (cpu) or CuPy (gpu)"
    )
    c.add_argument("--tf32", action="store_true", help="GPU float32: allow TF32 GEMMs")
    c.set_defaults(func=run_core)

    d = bsub.add_parser(
        "distributed",
        help="samples/s with 1 and 2 Dask workers, speedup and scheduler overhead",
        description="Train the same model on the same Zarr data with 1 and with 2 single-threaded "
        "workers and print samples/s, speedup and the per-step overhead fraction.",
    )
    _add_model_arguments(d, hidden=512)
    d.add_argument("--block-rows", type=int, default=8192, help="rows per partition (default 8192)")
    d.add_argument(
        "--blocks-per-step",
        type=int,
        default=4,
        help="partitions in one step's global batch (default 4)",
    )
    d.add_argument("--steps", type=int, default=6, help="timed steps per run (default 6)")
    d.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    d.set_defaults(func=run_distributed)

    s = bsub.add_parser(
        "score",
        help="out-of-core scoring: rows/s and peak memory of client and workers",
        description="Score N synthetic rows (generated into a temporary store) with an implicit "
        "autoencoder on local worker processes; report rows/s and peak RSS. Compare --rows "
        "1000000 with --rows 10000000: memory must not grow.",
    )
    s.add_argument(
        "--rows", type=int, default=1_000_000, help="synthetic rows to score (default 1000000)"
    )
    s.add_argument(
        "--arch",
        default="ae-v1:5,32,16",
        help="autoencoder architecture, randomly initialised (default ae-v1:5,32,16)",
    )
    s.add_argument(
        "--workers", type=int, default=2, help="local worker processes, 1 thread each (default 2)"
    )
    s.add_argument("--data", default=None, help="score this store instead of synthetic rows")
    s.set_defaults(func=run_score)


def run_core(args) -> int:
    from dimplicit.bench import bench_core

    out = bench_core(
        hidden=args.hidden,
        batch=args.batch,
        inputs=args.inputs,
        outputs=args.outputs,
        method=args.method,
        solver=args.solver,
        dtype=args.dtype,
        steps=args.steps,
        tol=args.tol,
        max_iter=args.max_iter,
        threads=args.threads,
        device=args.device,
        tf32=args.tf32,
    )
    print(json.dumps(out))
    return 0


def run_distributed(args) -> int:
    from dimplicit.distributed.bench import bench_distributed

    out = bench_distributed(
        hidden=args.hidden,
        block_rows=args.block_rows,
        blocks_per_step=args.blocks_per_step,
        inputs=args.inputs,
        outputs=args.outputs,
        steps=args.steps,
        method=args.method,
        dtype=args.dtype,
        workers=[int(w) for w in args.workers.split(",")],
    )
    print(json.dumps(out))
    return 0


def run_score(args) -> int:
    from dimplicit.anomaly.bench import bench_score

    print(json.dumps(bench_score(args.rows, args.arch, args.workers, args.data)))
    return 0
