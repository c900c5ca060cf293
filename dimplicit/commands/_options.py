"""CLI flags shared by several commands (model, solver, gradient method), and their readers."""

from __future__ import annotations

import argparse

from dimplicit.gradients import BackwardOptions
from dimplicit.model import ARCHS
from dimplicit.solvers import SolverOptions


def _kappa(text: str) -> float | None:
    """``--kappa``: a positive radius, or ``none`` for no constraint."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'none', got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed(text: str) -> int:
    """argparse type of ``--seed``: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


# The help of flags that mean the same thing in several commands: one text each.
METHOD_HELP = "gradient method: implicit, neumann, jfb, phantom-K"
QUIET_HELP = "no progress bar on stderr (it is shown only when stderr is a terminal)"
BATCH_SIZE_HELP = "rows per training step (the global batch)"


def add_quiet_argument(parser):
    """``--quiet``: no progress bar (:mod:`dimplicit.progress`)."""
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_solver_arguments(parser):
    g = parser.add_argument_group("fixed-point solver")
    g.add_argument(
        "--solver",
        choices=["picard", "anderson"],
        default="picard",
        help="forward (and implicit-backward) solver",
    )
    g.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative residual per sample at which a solve stops",
    )
    g.add_argument(
        "--max-iter", type=positive_int, default=300, metavar="N", help="iteration limit per solve"
    )
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
        type=_kappa,
        default=0.95,
        help="keep ‖A‖∞ ≤ κ by row-wise ℓ1 projection: every row for dense archs, the "
        "implicit latent block for ae-v1 (default: 0.95; 'none' leaves A unconstrained)",
    )
    g.add_argument(
        "--method",
        default="implicit",
        help=METHOD_HELP,
    )
    g.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="floating type of weights and computations (float64 for checks)",
    )
    g.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="run partition computations with NumPy (cpu) or CuPy (gpu)",
    )
    return g


def backward_options(args) -> BackwardOptions:
    return BackwardOptions(args.method, solver=solver_options(args))
