"""A one-off warm-up of NumPy's BLAS, run before the first fixed-point solve of a process.

Measured on the 2-core AMD EPYC machine of docs/performance.md (NumPy 2.4, OpenBLAS 0.3.31 with
its Haswell kernels): in a fresh process a (1024 × 256) @ (256 × 256) float32 GEMM on one BLAS
thread takes 14 ms, and 3.7 ms — 3.8× less, for the rest of the process — once any GEMM with a
wide result (2048 or more columns, e.g. (64 × 256) @ (256 × 2048), or a square one of size 512
or more) has run; a tall one, (4096 × 256) @ (256 × 256), does not do it.  A profile shows the
same kernel (``sgemm_kernel_HASWELL``) running slower, so it is a state of OpenBLAS's memory
(presumably its packing buffer, of which only a wide GEMM touches the far end), not a
different code path.  The fixed-point solves at hidden width n = 256 never issue such a GEMM:
without this warm-up every GEMM of a training step there ran in the slow state (one thread:
0.157 s per step against 0.058 s after it; two threads: 0.041 against 0.033 s).  At n ≥ 1024
the first GEMM of the solve is wide enough by itself.

The warm-up is one (512 × 512) @ (512 × 4096) GEMM (60–100 ms on one thread), once per
process, under whatever thread limit is active at the first solve; CuPy and other backends
skip it.  It costs nothing in arithmetic: no result of the package changes.
"""

from __future__ import annotations

_done = False


def warm_blas(xp) -> None:
    """Run the warm-up GEMM once per process when ``xp`` is NumPy (see the module docstring)."""
    global _done
    if _done or xp.__name__ != "numpy":
        return
    _done = True
    left = xp.ones((512, 512), dtype=xp.float32)
    right = xp.ones((512, 4096), dtype=xp.float32)
    left @ right
