"""Summary statistics of repeated runs, and what a timing ran on."""

from __future__ import annotations

import math
import os
import platform

import numpy as np


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (SciPy)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_ci(values) -> tuple[float, float | None]:
    """Mean and half-width of the 95 % Student-t interval (None for a single value)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    half = t975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else None
    return float(v.mean()), (None if half is None else float(half))


def summarize(runs: list[dict], keys) -> dict:
    """``{"n", "mean": {k}, "ci95": {k}, "max": {k}}`` over ``runs`` for every key present."""
    out = {"n": len(runs), "mean": {}, "ci95": {}, "max": {}}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out["mean"][k], out["ci95"][k] = mean_ci(vals)
            out["max"][k] = float(max(vals))
    return out


def machine_info() -> dict:
    """CPU model, logical CPUs, Python, NumPy and BLAS of this process."""
    from threadpoolctl import threadpool_info

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    blas = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
