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


def add_solver_arguments(parser):
    g = parser.add_argument_group("fixed-point solver")
    g.add_argument(
        "--solver",
        choices=["picard", "anderson"],
        default="picard",
        help="forward (and implicit-backward) solver (default picard)",
    )
    g.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative residual per sample at which a solve stops (default 1e-4)",
    )
    g.add_argument(
        "--max-iter", type=int, default=300, help="iteration limit per solve (default 300)"
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
    g.add_argument("--arch", default="dense", help=f"architecture: {ARCHS} (default dense)")
    g.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="hidden neurons of the dense architectures (default 64)",
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
        "implicit latent block for ae-v1 (default 0.95; 'none' leaves A unconstrained)",
    )
    g.add_argument(
        "--method",
        default="implicit",
        help="gradient: implicit, neumann, jfb, phantom-K (default implicit)",
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
