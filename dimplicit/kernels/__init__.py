"""Fused CPU kernels (Numba) for the NumPy backend's elementwise and memory-bound passes.

NumPy runs an expression such as a polynomial as one pass over memory per operation, and each
call costs about a microsecond: on the small batches of published training recipes (32 rows)
and on the memory-bound passes between GEMMs that overhead, not arithmetic, sets the speed.  A
kernel here does the same floating-point operations in the same order, one element at a time
in a single compiled loop, so its results are bitwise those of the NumPy expression it replaces
(tests check that), only faster.

Kernels compile on first use and are cached on disk (``cache=True``; a process still pays
about 0.7 s to load Numba and the cached code on its first call); they release the GIL
(``nogil=True``) so Dask's worker threads run them concurrently.  Only NumPy arrays reach them:
the CuPy backend keeps its own device kernels (:mod:`dimplicit.backend`).
"""

from dimplicit.kernels.activations import arctan_f32
from dimplicit.kernels.anderson import anderson_step
from dimplicit.kernels.optim import adam_update, momentum_update
from dimplicit.kernels.projection import rows_outside, shrink_rows
from dimplicit.kernels.residual import relative_residual_rows

__all__ = [
    "adam_update",
    "anderson_step",
    "arctan_f32",
    "momentum_update",
    "relative_residual_rows",
    "rows_outside",
    "shrink_rows",
]
