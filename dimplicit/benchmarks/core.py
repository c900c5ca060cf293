"""Benchmarks that print JSON: throughput next to the machine's measured GEMM peak.

Flop count of one training step (docs/design.md §6, conservative — it leaves out the few
GEMMs that are not in the iterations, such as ``Vᵀ X``)::

    2·b·n²·(k_f − 1 + k_b) + 4·b·n·(p + q)

The step's wall time is split into ``gemm_seconds_per_step`` — the (b × n × n) GEMMs it ran
(``k_f − 1 + k_b`` in the solves — the forward solve's first iterate from zeros takes no GEMM —
plus ``Vᵀ X``), each costed at the best time of that GEMM measured
alone in the same process — and ``other_seconds_per_step``, the rest: activations, residual
checks, Anderson's mixing, the thin GEMMs with ``p`` and ``q``, the optimizer, Python.  The
split is an estimate (a GEMM inside the step may run slower than alone), but it is measured the
same way for every solver, which is what comparing them needs.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from dimplicit.backend import blas_threads, get_backend
from dimplicit.benchmarks.measure import gemm_seconds, peak_rss_mb, step_flops
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
    backward_solver=None,
    check="adaptive",
    memory=3,
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

    ``solver`` solves the forward fixed point and, unless ``backward_solver`` names another,
    the implicit adjoint system; ``check`` and ``memory`` are the
    :class:`~dimplicit.solvers.SolverOptions` of both.
    """
    be = get_backend(device, dtype, tf32)
    with blas_threads(threads):
        rng = np.random.default_rng(seed)
        model = dense_model(inputs, hidden, outputs, a_norm=a_norm, seed=seed, dtype=dtype)
        dev = model.astype(be)
        U = be.asarray(rng.standard_normal((batch, inputs)))
        Y = be.asarray(rng.standard_normal((batch, outputs)))
        common = dict(tol=tol, max_iter=max_iter, check=check, memory=memory)
        fwd = SolverOptions(solver=solver, **common)
        bwd = SolverOptions(solver=backward_solver or solver, **common)
        cfg = StepConfig("mse", fwd, BackwardOptions(method, solver=bwd))
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
        t_gemm = gemm_seconds(batch, hidden, be)
    peak = 2.0 * batch * hidden * hidden / t_gemm / 1e9
    total_t = sum(times)
    # The forward solve starts from zeros, whose first map evaluation needs no GEMM
    # (dimplicit.forward.equilibrium): k_f − 1 GEMMs there, k_b in the adjoint solve (it
    # starts from S ⊙ G_X, the adjoint map at zero), and one for ∂L/∂A = Vᵀ X, each costed as
    # fast as alone; the flops count only the GEMMs run.
    gemm_t = t_gemm * (np.mean(kf) - 1 + np.mean(kb) + 1)
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
        "backward_solver": backward_solver or solver,
        "check": check,
        "memory": memory,
        "tol": tol,
        "steps": steps,
        "seconds_per_step": total_t / steps,
        "gemm_seconds_per_step": gemm_t,
        "other_seconds_per_step": total_t / steps - gemm_t,
        "samples_per_s": batch * steps / total_t,
        "forward_iters": float(np.mean(kf)),
        "backward_iters": float(np.mean(kb)),
        "gflops": gflops,
        "gemm_peak_gflops": peak,
        "fraction_of_peak": gflops / peak,
        "peak_rss_mb": peak_rss_mb(),
        "machine": platform.processor() or platform.machine(),
    }
