"""Progress on stderr for work over rows: rows done, rows/s and ETA (tqdm).

Shown only when stderr is a terminal and the user did not ask for quiet (``--quiet``), so
pipes, logs and tests stay clean.  Two entry points:

- :func:`row_progress`, for a loop that handles rows block by block on this process
  (``ingest``, ``synth``)::

      with row_progress(total_rows, "ingest", quiet=args.quiet) as bar:
          for block in blocks:
              ...
              bar.update(len(block))

  ``total_rows=None`` (a CSV of unknown length) shows rows and rows/s without an ETA.

- :func:`store_with_progress`, ``dask.array.store`` of row-chunked arrays into Zarr arrays
  (``score``, ``predict``).  With progress on, the rows are stored in a few dozen batches of
  whole chunks, one ``da.store`` each, and the bar advances by the rows of each batch; this
  works the same on the local scheduler and on a ``distributed`` client.  With progress off
  it is a single ``da.store``.
"""

from __future__ import annotations

import math
import os
import sys

__all__ = ["progress_enabled", "row_progress", "store_with_progress"]

# At most this many batches per store: each is a scheduler round trip (and, on a distributed
# cluster, one graph submission), so their count stays small however many chunks there are.
_MAX_BATCHES = 50


def progress_enabled(quiet: bool = False) -> bool:
    """Whether to show progress: stderr is a terminal and ``quiet`` is false."""
    if quiet:
        return False
    stream = sys.stderr  # looked up now: tests and callers may replace it
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def row_progress(total: int | None, desc: str, *, quiet: bool = False, enabled=None):
    """A tqdm bar counting rows on stderr (a no-op object when progress is off).

    Parameters
    ----------
    total : int or None
        Rows expected; None when unknown (no ETA then).
    desc : str
        Shown before the bar, e.g. the command name.
    quiet : bool
        The user's ``--quiet``.
    enabled : bool, optional
        Force the bar on or off (default: :func:`progress_enabled` of ``quiet``).

    Returns
    -------
    tqdm.tqdm
        Use it as a context manager and call ``update(rows)``.
    """
    from tqdm import tqdm

    on = progress_enabled(quiet) if enabled is None else bool(enabled)
    return tqdm(
        total=total,
        desc=desc,
        unit="rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not on,
        dynamic_ncols=True,
        mininterval=0.5,
        smoothing=0.1,
    )


def _parallelism() -> int:
    """Task threads of the current Dask client, else this machine's cores."""
    try:
        from distributed import default_client

        return max(1, sum(default_client().nthreads().values()))
    except (ImportError, ValueError):  # no distributed, or no client
        return os.cpu_count() or 1


def store_with_progress(sources, targets, desc: str, *, quiet: bool = False, enabled=None):
    """``da.store(sources, targets)`` with a row progress bar.

    Parameters
    ----------
    sources : list of dask.array.Array
        Arrays sharing their row (first-axis) chunking.
    targets : list of zarr.Array
        One per source, same shapes; their row chunks should match the sources' chunks
        (every task then writes whole Zarr chunks).
    desc, quiet, enabled
        As for :func:`row_progress`.
    """
    import dask.array as da

    on = progress_enabled(quiet) if enabled is None else bool(enabled)
    if not on or not sources:
        da.store(sources, targets, lock=False)
        return
    rows = sources[0].chunks[0]
    per_batch = max(4 * _parallelism(), math.ceil(len(rows) / _MAX_BATCHES))
    bounds = [0]
    for k in range(0, len(rows), per_batch):
        bounds.append(bounds[-1] + sum(rows[k : k + per_batch]))
    with row_progress(bounds[-1], desc, enabled=True) as bar:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            regions = [(slice(a, b),) + (slice(None),) * (s.ndim - 1) for s in sources]
            da.store([s[a:b] for s in sources], targets, regions=regions, lock=False)
            bar.update(b - a)
