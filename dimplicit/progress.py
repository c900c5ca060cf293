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
  (``score``, ``predict``).  The bar advances as blocks are written: counted by the target on
  the local scheduler, through futures (``distributed.as_completed``) when a ``distributed``
  client computes.
"""

from __future__ import annotations

import math
import os
import sys
import threading

__all__ = ["progress_enabled", "row_progress", "store_with_progress"]

# On a distributed client the bar advances by groups of whole chunks; at most this many.
_MAX_GROUPS = 100


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
    sized = _terminal_columns() > 0  # a terminal that reports no size gets 80 × 24
    return tqdm(
        total=total,
        desc=desc,
        unit="rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not on,
        dynamic_ncols=sized,
        ncols=None if sized else 80,
        nrows=None if sized else 24,
        mininterval=0.5,
        smoothing=0.1,
    )


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        return 0


def _client():
    """The ``distributed`` client that ``dask.compute`` would use now, or None."""
    from dask.base import get_scheduler

    owner = getattr(get_scheduler(), "__self__", None)
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    return owner if isinstance(owner, Client) else None


class _CountingTarget:
    """A store target that reports the rows of every block written into it."""

    def __init__(self, target, wrote):
        self._target, self._wrote = target, wrote

    def __getattr__(self, name):
        return getattr(self._target, name)

    def __setitem__(self, index, value):
        self._target[index] = value
        self._wrote(len(value))


def store_with_progress(sources, targets, desc: str, *, quiet: bool = False, enabled=None):
    """``da.store(sources, targets)`` with a row progress bar.

    On the local scheduler the bar counts the rows written into the first target as each
    block lands.  On a ``distributed`` client (whose workers write elsewhere), the rows are
    cut into at most 100 groups of whole chunks, each a lazy ``da.store`` of its rows; all
    groups are submitted at once (one graph, no barrier between groups) and the bar advances
    as each group's futures complete (``as_completed``).  With progress off it is a single
    ``da.store``.

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
    with row_progress(sum(sources[0].chunks[0]), desc, enabled=True) as bar:
        client = _client()
        if client is not None:
            _store_on_client(client, sources, targets, bar)
            return
        lock = threading.Lock()

        def wrote(rows: int) -> None:
            with lock:  # blocks land from several threads
                bar.update(rows)

        da.store(sources, [_CountingTarget(targets[0], wrote), *targets[1:]], lock=False)


def _store_on_client(client, sources, targets, bar) -> None:
    import dask.array as da
    from dask.core import flatten
    from distributed import as_completed, futures_of

    rows = sources[0].chunks[0]
    per_group = math.ceil(len(rows) / _MAX_GROUPS) or 1
    lazy, group_rows, group_of = [], [], {}
    start = 0
    for k in range(0, len(rows), per_group):
        stop = start + sum(rows[k : k + per_group])
        regions = [(slice(start, stop),) + (slice(None),) * (s.ndim - 1) for s in sources]
        part = da.store([s[start:stop] for s in sources], targets, regions=regions, lock=False,
                        compute=False)  # fmt: skip
        # A Delayed, or (newer Dask) one lazy array per source: its keys are the group's tasks.
        for c in part if isinstance(part, tuple) else (part,):
            lazy.append(c)
            group_of.update((key, len(group_rows)) for key in flatten(c.__dask_keys__()))
        group_rows.append(stop - start)
        start = stop
    pending = [0] * len(group_rows)
    for g in group_of.values():
        pending[g] += 1
    futures = futures_of(client.persist(lazy))
    try:
        for future in as_completed(futures):
            future.result()  # raises the task's error here
            g = group_of[future.key]
            pending[g] -= 1
            if pending[g] == 0:
                bar.update(group_rows[g])
    finally:
        client.cancel(futures)  # nothing left behind after an error or Ctrl-C
