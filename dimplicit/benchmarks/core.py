"""Benchmarks that print JSON: throughput next to the machine's measured GEMM peak.

Flop count of one training step (docs/design.md §6, conservative — it leaves out the few
GEMMs that are not in the iterations, such as ``Vᵀ X``)::

    2·b·n²·(k_f + k_b) + 4·b·n·(p + q)
"""

from __future__ import annotations

import platform
import time

import numpy as np

from dimplicit.backend import blas_threads, get_backend
from dimplicit.benchmarks.measure import gemm_peak_gflops, peak_rss_mb, step_flops
from dimplicit.gradients import BackwardOptions
from dimplicit.model import dense_model
from dimplicit.optim import OptimizerConfig, apply_update, init_state
from dimplicit.partition import StepConfig, mean_gradients, partition_sums
from dimplicit.solvers import SolverOptions


def bench_core(
    hidden=1024,
    batch=4096,
    inputs=64,
    outputs=10,
    method="implicit",
    solver="picard",
    dtype="float32",
    steps=5,
    tol=1e-4,
    max_iter=100,
    threads=None,
    device="cpu",
    tf32=False,
    a_norm=0.5,
    seed=0,
) -> dict:
    """Train a dense relu model for a few steps on random data; return throughput figures.

    The first step is a warm-up and is not timed.  ``gemm_peak_gflops`` is measured in the same
    process, same dtype and thread count, on the dominant GEMM shape (b × n × n).
    """
    be = get_backend(device, dtype, tf32)
    with blas_threads(threads):
        rng = np.random.default_rng(seed)
        model = dense_model(inputs, hidden, outputs, a_norm=a_norm, seed=seed, dtype=dtype)
        dev = model.astype(be)
        U = be.asarray(rng.standard_normal((batch, inputs)))
        Y = be.asarray(rng.standard_normal((batch, outputs)))
        fwd = SolverOptions(solver=solver, tol=tol, max_iter=max_iter)
        cfg = StepConfig("mse", fwd, BackwardOptions(method, solver=fwd))
        opt = OptimizerConfig("adam", lr=1e-3)
        state = init_state(opt, dev.params)
        times, kf, kb = [], [], []
        for step in range(steps + 1):
            be.synchronize()
            t0 = time.perf_counter()
            res = partition_sums(dev, U, Y, cfg)
            dev.params, state = apply_update(
                opt,
                dev.params,
                mean_gradients(res),
                state,
                step,
                dev.masks,
                dev.kappa,
                dev.structure,
            )
            be.synchronize()
            if step > 0:
                times.append(time.perf_counter() - t0)
                kf.append(res["stats"]["forward_iters_sum"])
                kb.append(res["stats"]["backward_iters_sum"])
        peak = gemm_peak_gflops(batch, hidden, be)
    total_t = sum(times)
    flops = sum(
        step_flops(batch, hidden, inputs, outputs, f, b) for f, b in zip(kf, kb, strict=True)
    )
    gflops = flops / total_t / 1e9
    return {
        "benchmark": "core",
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "hidden": hidden,
        "batch": batch,
        "inputs": inputs,
        "outputs": outputs,
        "method": method,
        "solver": solver,
        "tol": tol,
        "steps": steps,
        "seconds_per_step": total_t / steps,
        "samples_per_s": batch * steps / total_t,
        "forward_iters": float(np.mean(kf)),
        "backward_iters": float(np.mean(kb)),
        "gflops": gflops,
        "gemm_peak_gflops": peak,
        "fraction_of_peak": gflops / peak,
        "peak_rss_mb": peak_rss_mb(),
        "machine": platform.processor() or platform.machine(),
    }
