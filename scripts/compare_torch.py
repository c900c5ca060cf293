#!/usr/bin/env python
"""Samples/s of dimplicit vs a PyTorch implementation of the same model and method.

The PyTorch side is written the way DEQ libraries (torchdeq, the DEQ reference code) do it:
the forward fixed point is solved under ``no_grad``, one more application of the map is taken
with autograd, and a backward hook solves the adjoint fixed point ``g = Jᵀ g + grad`` with
autograd vector-Jacobian products (Picard iteration, torchdeq's default solver).  Both sides use
the same model (dense relu, ‖A‖∞ = 0.5), the same data, the same stopping rule — every sample's
relative residual ``‖x_{k+1} − x_k‖ / ‖x_{k+1}‖`` below ``--tol`` — tested on the same schedule
(dimplicit's :class:`~dimplicit.solvers.CheckSchedule`, ``--check``), the implicit gradient,
Adam followed by the projection of ``A``'s rows onto the ℓ1 ball of radius κ (dimplicit's
well-posedness step; ``--no-torch-projection`` leaves it out on the PyTorch side), the same
dtype and the same number of threads.  dimplicit uses the solvers named by
``--solver`` / ``--backward-solver`` (the package defaults unless given).

The two sides run in interleaved pairs (``--pairs``, ours then theirs), so that a load change on
a shared machine hits both; ``speedup`` is the median of the per-pair ratios, and the JSON
reports every pair and the medians of each side.  Prints ONE JSON object.

PyTorch is not a dependency of dimplicit.  On a CPU-only machine, a separate environment with
the two light dependencies that the benchmark imports is enough::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch numpy threadpoolctl
    PYTHONPATH=. /tmp/torchenv/bin/python scripts/compare_torch.py --hidden 1024 --batch 4096 \\
        --threads 2
    python scripts/compare_torch.py --device gpu --hidden 2048 --batch 16384
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def torch_steps(args, model, U, Y):
    """Time ``args.steps`` training steps of the torchdeq-style implementation."""
    import torch

    from dimplicit.solvers import CheckSchedule

    dev = "cuda" if args.device == "gpu" else "cpu"
    dt = getattr(torch, args.dtype)
    P = {
        k: torch.tensor(v, dtype=dt, device=dev, requires_grad=True)
        for k, v in model.params.items()
    }
    U = torch.tensor(U, dtype=dt, device=dev)
    Y = torch.tensor(Y, dtype=dt, device=dev)
    opt = torch.optim.Adam(P.values(), lr=1e-3)

    def f(x, uproj):
        return torch.relu(x @ P["A"].T + uproj)

    def picard(step, x0):
        # The same stopping rule and test schedule as dimplicit's Picard.
        schedule = CheckSchedule(args.check, 4, args.tol, args.max_iter)
        x, k = x0, 0
        while k < args.max_iter:
            xn = step(x)
            k += 1
            if schedule.due(k):
                r = (xn - x).norm(dim=1) / (xn.norm(dim=1) + 1e-20)
                r[~torch.isfinite(r)] = float("inf")
                rmax = float(r.max())
                x = xn
                if rmax < args.tol:
                    break
                schedule.observe(k, rmax)
            else:
                x = xn
        return x, k

    iters = {"f": 0, "b": 0}
    kappa = model.kappa if args.torch_projection else None

    def one_step():
        opt.zero_grad(set_to_none=True)
        uproj = U @ P["B"].T + P["b_x"]
        with torch.no_grad():
            x0 = torch.zeros(U.shape[0], P["A"].shape[0], dtype=dt, device=dev)
            x_star, kf = picard(lambda x: f(x, uproj.detach()), x0)
        iters["f"] += kf
        z = f(x_star, uproj)  # re-attach to the graph: one more application
        z0 = z.detach().requires_grad_()
        f0 = f(z0, uproj.detach())

        def hook(grad):
            def vjp(g):
                return torch.autograd.grad(f0, z0, g, retain_graph=True)[0] + grad

            g, kb = picard(vjp, grad)
            iters["b"] += kb
            return g

        z.register_hook(hook)
        yhat = z @ P["C"].T + U @ P["D"].T + P["b_y"]
        loss = ((yhat - Y) ** 2).sum() / Y.shape[1] / Y.shape[0]
        loss.backward()
        opt.step()
        if kappa is not None:
            # dimplicit projects the rows of A onto the ℓ1 ball of radius κ after every step
            # (well-posedness, dimplicit.projection).  Without it the two sides train different
            # models: at hidden 1024 Adam moves every row's ℓ1 norm by up to lr·n ≈ 1 per step,
            # so ‖A‖∞ reaches 3.6 after 4 steps here against 0.95, and the solves see another map.
            with torch.no_grad():
                _project_rows_l1_(P["A"], kappa)

    one_step()  # warm-up
    iters = {"f": 0, "b": 0}
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter() - t0
    return {
        "samples_per_s": args.batch * args.steps / t,
        "forward_iters": iters["f"] / args.steps,
        "backward_iters": iters["b"] / args.steps,
        "version": torch.__version__,
    }


def _project_rows_l1_(A, kappa):
    """In place: every row of the torch tensor ``A`` onto the ℓ1 ball of radius ``kappa``.

    The algorithm of :func:`dimplicit.projection.project_rows_l1` (sort, threshold from the
    cumulative sums, soft-shrink; rows inside the ball untouched), in torch operations.
    """
    import torch

    absA = A.abs()
    slack = 8 * torch.finfo(A.dtype).eps
    outside = absA.sum(dim=1) > kappa * (1 + slack)
    if not bool(outside.any()):
        return
    rows = absA[outside]
    u = torch.sort(rows, dim=1, descending=True).values
    css = torch.cumsum(u, dim=1) - kappa
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    cond = (u * j > css).flip(1).to(torch.int8)
    rho = u.shape[1] - 1 - torch.argmax(cond, dim=1)  # the first maximum: the largest such j
    theta = css[torch.arange(u.shape[0], device=u.device), rho] / (rho + 1).to(u.dtype)
    A[outside] = torch.clamp_min(rows - theta[:, None], 0) * torch.sign(A[outside])


OURS = ("samples_per_s", "forward_iters", "backward_iters", "gemm_seconds_per_step",
        "other_seconds_per_step", "gflops", "gemm_peak_gflops", "fraction_of_peak")  # fmt: skip


GRID = [(h, b) for h in (256, 1024, 2048) for b in (1024, 4096)]


def markdown_table(records) -> str:
    """The grid as a Markdown table (one row per grid point)."""
    head = (
        "| hidden | batch | dimplicit samples/s | iters f/b | PyTorch samples/s | iters f/b "
        "| speedup (median of pairs) | per pair | fraction_of_peak | GEMM / other s per step "
        "| load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in records:
        o, t = r["dimplicit"], r["torch"]
        rows.append(
            f"| {r['hidden']} | {r['batch']} | {o['samples_per_s']:,.0f} "
            f"| {o['forward_iters']:.1f}/{o['backward_iters']:.1f} | {t['samples_per_s']:,.0f} "
            f"| {t['forward_iters']:.1f}/{t['backward_iters']:.1f} "
            f"| **{statistics.median(r['speedup_per_pair']):.2f}×** "
            f"| {', '.join(f'{x:.2f}' for x in r['speedup_per_pair'])} "
            f"| {o['fraction_of_peak']:.2f} "
            f"| {o['gemm_seconds_per_step']:.3f} / {o['other_seconds_per_step']:.3f} "
            f"| {r['load_before']} → {r['load_after']} |"
        )
    return head + "\n".join(rows) + "\n"


def _load() -> str:
    """The 1/5/15-minute load averages (Linux), reported next to every figure."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    from dimplicit.solvers import SOLVERS, SolverOptions

    default = SolverOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--outputs", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--pairs", type=int, default=3, help="interleaved (ours, theirs) runs")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--solver", choices=list(SOLVERS), default=default.solver)
    p.add_argument("--backward-solver", choices=list(SOLVERS), default=None)
    p.add_argument("--check", choices=["adaptive", "fixed"], default=default.check)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument(
        "--no-torch-projection",
        dest="torch_projection",
        action="store_false",
        help="leave out the PyTorch side's ℓ1-ball projection of A after each step (dimplicit "
        "always projects: without it the two sides train different models)",
    )
    p.add_argument(
        "--grid",
        action="store_true",
        help="run every (hidden, batch) of hidden {256,1024,2048} × batch {1024,4096}; one JSON "
        "line each, then a Markdown table",
    )
    p.add_argument("--jsonl", default=None, help="with --grid: append each JSON line here too")
    args = p.parse_args(argv)
    if args.grid:
        records = []
        for hidden, batch in GRID:
            rec = compare(argparse.Namespace(**{**vars(args), "hidden": hidden, "batch": batch}))
            records.append(rec)
            line = json.dumps(rec)
            print(line, flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    fh.write(line + "\n")
        print(markdown_table(records))
        return
    print(json.dumps(compare(args)))


def compare(args) -> dict:
    """One grid point: ``args.pairs`` interleaved runs of both sides; the JSON record."""

    import torch

    from dimplicit.backend import blas_threads
    from dimplicit.benchmarks.core import bench_core
    from dimplicit.model import dense_model

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)  # the same model and data as bench_core (seed 0)
    model = dense_model(args.inputs, args.hidden, args.outputs, a_norm=0.5, seed=0)
    U = rng.standard_normal((args.batch, args.inputs))
    Y = rng.standard_normal((args.batch, args.outputs))
    pairs = []
    load_before = _load()
    for _ in range(args.pairs):
        ours = bench_core(
            hidden=args.hidden, batch=args.batch, inputs=args.inputs, outputs=args.outputs,
            solver=args.solver, backward_solver=args.backward_solver, check=args.check,
            dtype=args.dtype, steps=args.steps, tol=args.tol, max_iter=args.max_iter,
            threads=args.threads, device=args.device,
        )  # fmt: skip
        with blas_threads(args.threads):
            theirs = torch_steps(args, model, U, Y)
        pairs.append(
            {
                "dimplicit": {k: ours[k] for k in OURS},
                "torch": theirs,
                "speedup": ours["samples_per_s"] / theirs["samples_per_s"],
            }
        )

    def med(side, key):
        return statistics.median(p[side][key] for p in pairs)

    ours_med = {k: med("dimplicit", k) for k in OURS}
    theirs_med = {k: med("torch", k) for k in ("samples_per_s", "forward_iters", "backward_iters")}
    return {
        "benchmark": "compare_torch",
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "hidden": args.hidden,
        "batch": args.batch,
        "inputs": args.inputs,
        "outputs": args.outputs,
        "tol": args.tol,
        "steps": args.steps,
        "solver": args.solver,
        "backward_solver": args.backward_solver or args.solver,
        "check": args.check,
        "torch_projection": args.torch_projection,
        "torch_version": torch.__version__,
        "dimplicit": ours_med,
        "torch": theirs_med,
        # The median of the per-pair ratios: each pair ran back to back, under about the
        # same load, so its ratio is the comparison; the ratio of medians mixes pairs.
        "speedup": statistics.median(p["speedup"] for p in pairs),
        "speedup_of_medians": ours_med["samples_per_s"] / theirs_med["samples_per_s"],
        "speedup_per_pair": [p["speedup"] for p in pairs],
        "load_before": load_before,
        "load_after": _load(),
        "pairs": pairs,
    }


if __name__ == "__main__":
    main()
