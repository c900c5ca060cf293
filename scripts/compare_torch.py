#!/usr/bin/env python
"""Samples/s of dimplicit vs a PyTorch implementation of the same model and method.

The PyTorch side is written the way DEQ libraries (torchdeq, the DEQ reference code) do it:
the forward fixed point is solved under ``no_grad``, one more application of the map is taken
with autograd, and a backward hook solves the adjoint fixed point ``g = Jᵀ g + grad`` with
autograd vector-Jacobian products.  Both sides use the same model (dense relu, ‖A‖∞ = 0.5),
the same data, Picard with the same tolerance and check interval, the implicit gradient, Adam,
the same dtype and the same number of threads.  Prints ONE JSON object.

PyTorch is not a dependency of dimplicit; run this where it is installed::

    python scripts/compare_torch.py --hidden 1024 --batch 4096 --threads 2
    python scripts/compare_torch.py --device gpu --hidden 2048 --batch 16384
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def torch_steps(args, model, U, Y):
    """Time ``args.steps`` training steps of the torchdeq-style implementation."""
    import torch

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
        x, k = x0, 0
        while k < args.max_iter:
            xn = step(x)
            k += 1
            if k % 4 == 0 or k == args.max_iter:
                r = (xn - x).norm(dim=1) / (xn.norm(dim=1) + 1e-20)
                x = xn
                if float(r.max()) < args.tol:
                    break
            else:
                x = xn
        return x, k

    iters = {"f": 0, "b": 0}

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
        # No ℓ1 projection here: over a few steps ‖A‖∞ stays well inside κ = 0.95, so
        # dimplicit's projection returns at once too (rows inside the ball are untouched).
        opt.step()

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--outputs", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = p.parse_args(argv)

    import torch

    from dimplicit.benchmarks.core import bench_core
    from dimplicit.model import dense_model

    if args.threads:
        torch.set_num_threads(args.threads)
    ours = bench_core(
        hidden=args.hidden, batch=args.batch, inputs=args.inputs, outputs=args.outputs,
        dtype=args.dtype, steps=args.steps, tol=args.tol, max_iter=args.max_iter,
        threads=args.threads, device=args.device,
    )  # fmt: skip
    rng = np.random.default_rng(0)  # the same model and data as bench_core (seed 0)
    model = dense_model(args.inputs, args.hidden, args.outputs, a_norm=0.5, seed=0)
    U = rng.standard_normal((args.batch, args.inputs))
    Y = rng.standard_normal((args.batch, args.outputs))
    theirs = torch_steps(args, model, U, Y)
    print(
        json.dumps(
            {
                "benchmark": "compare_torch",
                "device": args.device,
                "dtype": args.dtype,
                "threads": args.threads,
                "hidden": args.hidden,
                "batch": args.batch,
                "dimplicit": {
                    k: ours[k]
                    for k in (
                        "samples_per_s",
                        "forward_iters",
                        "backward_iters",
                        "gflops",
                        "gemm_peak_gflops",
                        "fraction_of_peak",
                    )
                },  # fmt: skip
                "torch": theirs,
                "speedup": ours["samples_per_s"] / theirs["samples_per_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
