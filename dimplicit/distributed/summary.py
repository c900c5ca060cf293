"""What a Dask cluster looks like from a client: workers, threads, scheduler, dashboard."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from distributed import Client

__all__ = ["dashboard_link", "describe", "format_description"]


def dashboard_link(client: Client) -> str | None:
    """URL of the scheduler's dashboard, or None when the scheduler serves no HTTP at all.

    The scheduler's HTTP server also runs when its dashboard is disabled or ``bokeh`` is not
    installed; the URL then serves only ``/health`` and ``/metrics`` (and a page saying that
    the dashboard needs bokeh).

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    str or None
    """
    try:
        link = client.dashboard_link
    except Exception:  # no HTTP service registered, or the scheduler is gone
        return None
    return link or None


def describe(client: Client) -> dict[str, Any]:
    """Summary of the cluster behind ``client``, for logs and the CLI.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict
        ``scheduler`` (address), ``n_workers``, ``threads_per_worker`` (int, or None when
        workers differ or there are none), ``total_threads`` and ``dashboard`` (URL or None).
    """
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers, not just the first few
    except TypeError:  # distributed < 2025
        info = client.scheduler_info()
    nthreads = [int(w["nthreads"]) for w in info.get("workers", {}).values()]
    return {
        "scheduler": info.get("address", client.scheduler.address),
        "n_workers": len(nthreads),
        "threads_per_worker": nthreads[0] if nthreads and len(set(nthreads)) == 1 else None,
        "total_threads": sum(nthreads),
        "dashboard": dashboard_link(client),
    }


def format_description(info: dict[str, Any]) -> str:
    """One line for stderr from :func:`describe`'s dict.

    Parameters
    ----------
    info : dict
        As returned by :func:`describe`.

    Returns
    -------
    str
    """
    per = info["threads_per_worker"]
    threads = f"{per} thread(s) each" if per is not None else f"{info['total_threads']} threads"
    dash = info["dashboard"] or "off"
    if info["dashboard"] and importlib.util.find_spec("bokeh") is None:
        dash += " (needs bokeh: pip install bokeh)"
    return (
        f"dask: {info['n_workers']} worker(s), {threads}, scheduler {info['scheduler']}, "
        f"dashboard {dash}"
    )
