"""CLI flags shared by several commands (model, solver, gradient method), and their readers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dimplicit.commands._types import kappa, positive_int, seed, split_fractions
from dimplicit.gradients import BackwardOptions
from dimplicit.model import ARCHS
from dimplicit.solvers import AUTO_ANDERSON_MIN_WIDTH, SOLVERS, SolverOptions

# The help of flags that mean the same thing in several commands: one text each.
METHOD_HELP = "gradient method: implicit, neumann, jfb, phantom-K"
QUIET_HELP = "no progress bar on stderr (it is shown only when stderr is a terminal)"
BATCH_SIZE_HELP = "rows per training step (the global batch)"
DTYPE_HELP = "floating type of weights and computations"


def add_quiet_argument(parser):
    """``--quiet``: no progress bar (:mod:`dimplicit.progress`)."""
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_seed_argument(parser, help: str):
    """``--seed S`` (default 0); ``help`` says what it seeds."""
    parser.add_argument("--seed", type=seed, default=0, metavar="S", help=help)


def add_split_fractions_argument(parser):
    """``--split-fractions T,V,T`` of the stores a command writes, and its old spelling
    ``--split``, hidden (``--split`` names a split in ``evaluate``)."""
    parser.add_argument(
        "--split-fractions",
        type=split_fractions,
        default=(0.8, 0.1, 0.1),
        metavar="T,V,T",
        help="train,validation,test fractions",
    )
    parser.add_argument(
        "--split",
        dest="split_fractions",
        type=split_fractions,
        default=argparse.SUPPRESS,
        metavar="T,V,T",
        help=argparse.SUPPRESS,
    )


def add_batch_size_argument(parser, default: int):
    """``--batch-size N``: rows per training step."""
    parser.add_argument(
        "--batch-size", type=positive_int, default=default, metavar="N", help=BATCH_SIZE_HELP
    )


def add_solver_argument(parser):
    """``--solver {picard,anderson,auto}`` (default ``auto``, as ``SolverOptions``)."""
    parser.add_argument(
        "--solver",
        choices=list(SOLVERS),
        default="auto",
        help="forward (and implicit-backward) solver; auto: Anderson on states at least "
        f"{AUTO_ANDERSON_MIN_WIDTH} wide, Picard below",
    )


def add_tol_argument(parser):
    """``--tol``: the solver's stopping residual."""
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative residual per sample at which a solve stops",
    )


def add_max_iter_argument(parser, default: int):
    """``--max-iter N``: the solver's iteration limit."""
    parser.add_argument(
        "--max-iter",
        type=positive_int,
        default=default,
        metavar="N",
        help="iteration limit per solve",
    )


def add_method_argument(parser):
    """``--method``: the gradient method."""
    parser.add_argument("--method", default="implicit", help=METHOD_HELP)


def add_dtype_argument(parser, help: str = DTYPE_HELP):
    """``--dtype {float32,float64}``."""
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help=help)


def add_device_argument(parser):
    """``--device {cpu,gpu}``."""
    parser.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="run partition computations with NumPy (cpu) or CuPy (gpu)",
    )


def add_solver_arguments(parser):
    g = parser.add_argument_group("fixed-point solver")
    add_solver_argument(g)
    add_tol_argument(g)
    add_max_iter_argument(g, default=300)
    g.add_argument(
        "--on-nonconvergence",
        choices=["flag", "raise"],
        default="flag",
        help="report unconverged samples in the metrics (flag) or stop (raise)",
    )
    return g


def solver_options(args) -> SolverOptions:
    return SolverOptions(
        args.solver, tol=args.tol, max_iter=args.max_iter, on_failure=args.on_nonconvergence
    )


def add_model_arguments(parser):
    g = parser.add_argument_group("model")
    g.add_argument("--arch", default="dense", help=f"architecture: {ARCHS}")
    g.add_argument(
        "--hidden",
        type=positive_int,
        default=64,
        metavar="N",
        help="hidden neurons of the dense architectures",
    )
    g.add_argument(
        "--activation",
        default=None,
        help="relu, leaky_relu[:α], tanh, arctan, sigmoid, identity (default: relu "
        "for dense, leaky_relu:0.1 for layered/autoencoders)",
    )
    g.add_argument(
        "--kappa",
        type=kappa,
        default=0.95,
        help="keep ‖A‖∞ ≤ κ by row-wise ℓ1 projection: every row for dense archs, the "
        "implicit latent block for ae-v1 (default: 0.95; 'none' leaves A unconstrained)",
    )
    add_method_argument(g)
    add_dtype_argument(g, help=f"{DTYPE_HELP} (float64 for checks)")
    add_device_argument(g)
    return g


def backward_options(args) -> BackwardOptions:
    return BackwardOptions(args.method, solver=solver_options(args))


def new_run_dir(parent: Path) -> Path:
    """``parent/DATE-TIME`` (with a suffix if two runs start in the same second): a new
    directory name for a run's checkpoints and model, so nothing earlier is ever replaced."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = Path(parent) / (stamp if k == 0 else f"{stamp}-{k}")
        if not path.exists():
            return path
    raise FileExistsError(f"{parent}/{stamp}-*: too many runs started this second")
