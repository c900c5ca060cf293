"""Preprocessing shared by every writer of a store: split assignment, statistics, scaling.

* :func:`assign_splits` draws each row's split (codes of
  :data:`~dimplicit.data.store.SPLIT_CODES`) from ``(seed, row index)`` alone, so a row's
  split never depends on chunking, batching or which rows were dropped as bad.
* :class:`RunningStats` accumulates per-column mean and variance in one streaming pass
  (ingest, the synthetic generator, :class:`~dimplicit.data.store.StoreWriter`'s target
  statistics).
* :func:`standardize` applies stored statistics to a block (NumPy or CuPy), where training,
  scoring and prediction read the rows.

Nothing here knows the store's layout; :mod:`dimplicit.data.store` imports this module, not
the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Rows per counter block of the split RNG; see assign_splits.
_SPLIT_BLOCK = 4096


def check_split_fractions(fractions) -> tuple[float, float, float]:
    """Validate ``(train, validation, test)`` fractions.

    Parameters
    ----------
    fractions : sequence of 3 floats
        Non-negative, summing to 1.

    Returns
    -------
    tuple of float
        The fractions as floats.
    """
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"split fractions must be 3 numbers, got {fractions!r}") from None
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr):
        raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(fr):g})")
    return fr


def assign_splits(seed: int, start: int, n: int, fractions) -> np.ndarray:
    """Split codes (0 train, 1 validation, 2 test) of rows ``start .. start+n-1``.

    Each row's split is a function of ``(seed, row index)`` only, so it does not depend on
    how the rows are chunked or batched.  The uniform draw of row ``i`` comes from NumPy's
    counter-based Philox generator keyed on ``seed``, at counter block ``i // 4096``; any
    range of rows is drawn by regenerating only the blocks it touches.

    Parameters
    ----------
    seed : int
        Non-negative key of the generator.
    start, n : int
        First row index (0-based) and number of rows.
    fractions : sequence of 3 floats
        Train, validation and test fractions (see :func:`check_split_fractions`).

    Returns
    -------
    numpy.ndarray
        int8 array of length ``n``.
    """
    f_train, f_val, _ = check_split_fractions(fractions)
    if n <= 0:
        return np.zeros(0, dtype=np.int8)
    if seed < 0:
        raise ValueError(f"split seed must be non-negative, got {seed}")
    first, last = start // _SPLIT_BLOCK, (start + n - 1) // _SPLIT_BLOCK
    # The block index sits in the second 64-bit word of Philox's 256-bit counter; drawing
    # 4096 doubles advances only the first word (by 1024), so blocks never overlap.
    u = np.concatenate(
        [
            np.random.Generator(np.random.Philox(key=seed, counter=b << 64)).random(_SPLIT_BLOCK)
            for b in range(first, last + 1)
        ]
    )
    off = start - first * _SPLIT_BLOCK
    u = u[off : off + n]
    return (u >= f_train).astype(np.int8) + (u >= f_train + f_val).astype(np.int8)


@dataclass
class RunningStats:
    """Streaming per-column mean and variance, numerically stable, in float64.

    Each block contributes its own count, mean and sum of squared deviations (M2); blocks are
    merged with the pairwise formula of Chan, Golub and LeVeque (1979), which avoids the
    cancellation of the naive ``sum(x**2) - n*mean**2`` on large or offset data.

    Parameters
    ----------
    n_features : int
        Number of columns.
    """

    n_features: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self):
        self.mean = np.zeros(self.n_features, dtype=np.float64)
        self.m2 = np.zeros(self.n_features, dtype=np.float64)

    def update(self, block: np.ndarray) -> None:
        """Add the rows of a 2-D ``block`` (any float dtype; accumulated in float64)."""
        nb = block.shape[0]
        if nb == 0:
            return
        # One float64 temporary (the deviations), squared in place: a float32 block costs
        # twice its size here, not six times.
        mean_b = block.mean(axis=0, dtype=np.float64)
        dev = np.subtract(block, mean_b, dtype=np.float64)
        np.square(dev, out=dev)
        self.merge(nb, mean_b, dev.sum(axis=0))

    def merge(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Merge another partial result (count, mean, M2) into this one (Chan et al.)."""
        na = self.count
        n = na + nb
        if nb == 0:
            return
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta**2 * (na * nb / n)
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``, like ``numpy.std``)."""
        if self.count == 0:
            return np.ones(self.n_features)
        return np.sqrt(self.m2 / self.count)

    def to_attr(self, rows: str) -> dict:
        """The ``stats`` attribute. With no rows, mean 0 and std 1 (an identity transform)."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "count": int(self.count),
            "rows": rows,
        }


def standardize(block, mean, std, copy=False):
    """Return ``(block - mean) / std``, treating ``std == 0`` as 1; in place when possible.

    Constant columns (``num_outbound_cmds`` in NSL-KDD, unseen one-hot slots) have zero
    standard deviation; dividing by 1 leaves them at 0 after centring instead of NaN.

    Parameters
    ----------
    block : array (n, p)
        NumPy or CuPy. Modified in place when it is a writeable floating array.
    mean, std : array (p,)
        Statistics, e.g. ``Store.mean`` and ``Store.std``; moved to ``block``'s device.
    copy : bool, default False
        Leave ``block`` untouched and write into a new array (two passes over the data,
        where copying first and then standardising in place takes three).

    Returns
    -------
    array
        The standardized block (``block`` itself when done in place).
    """
    from dimplicit.backend import array_module

    xp = array_module(block)
    dtype = block.dtype if block.dtype.kind == "f" else np.dtype(np.float32)
    mean = xp.asarray(mean, dtype=dtype)
    std = xp.asarray(std, dtype=dtype)
    std = xp.where(std == 0, xp.asarray(1, dtype=dtype), std)
    writeable = getattr(getattr(block, "flags", None), "writeable", True)
    if block.dtype.kind == "f" and copy:
        out = xp.subtract(block, mean, dtype=dtype)
        out /= std
        return out
    if block.dtype.kind == "f" and writeable:
        block -= mean
        block /= std
        return block
    return (xp.asarray(block, dtype=dtype) - mean) / std
