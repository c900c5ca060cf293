"""Check sizes against the machine's memory before allocating, not after a MemoryError."""

from __future__ import annotations


def available_bytes() -> int:
    """Memory this process can still get (``psutil``'s *available*: free plus reclaimable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(nbytes: float, what: str, fraction: float = 0.5) -> None:
    """Raise ``MemoryError`` with one line if ``nbytes`` exceeds ``fraction`` of free memory.

    Parameters
    ----------
    nbytes : float
        Estimated bytes the operation will hold at once.
    what : str
        Names the operation and the parameter that sets its size, e.g.
        ``"a model with hidden=100000"``.
    fraction : float
        Share of the available memory the operation may take; the rest is left for the data,
        temporaries and the other processes.
    """
    avail = available_bytes()
    if nbytes > fraction * avail:
        raise MemoryError(
            f"{what} needs about {format_bytes(nbytes)}, more than {fraction:.0%} of the "
            f"{format_bytes(avail)} of memory available; choose a smaller size"
        )
