"""The one place that chooses between NumPy (CPU) and CuPy (GPU).

Every other module asks this one for its array module (``xp``) and moves arrays through
:func:`to_device` / :func:`to_host`; no other module imports CuPy.  The style follows
dask-glm's ``maybe_to_cupy``: plain functions, no global state beyond a cached import.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import numpy as np

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")


class DeviceUnavailableError(RuntimeError):
    """``device="gpu"`` was asked for but CuPy or a CUDA device is missing."""


@functools.cache
def _cupy():
    """Import CuPy lazily; ``None`` when it is not installed or no device is usable."""
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # ImportError, CUDARuntimeError (no driver / no device)
        return None


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    cp = _cupy()
    return cp is not None and cp.cuda.runtime.getDeviceCount() > 0


@dataclass(frozen=True)
class Backend:
    """An array module plus a floating dtype.

    Parameters
    ----------
    device : {"cpu", "gpu"}
        ``"cpu"`` uses NumPy, ``"gpu"`` uses CuPy on the current CUDA device.
    dtype : {"float32", "float64"}
        Floating dtype of weights, activations and gradients.
    tf32 : bool
        GPU only: allow TF32 tensor-core GEMMs for float32 (explicit opt-in; lower precision).
    """

    device: str = "cpu"
    dtype: str = "float32"
    tf32: bool = False

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.tf32 and self.device == "gpu":
            # CuPy reads CUPY_TF32 when it picks a cuBLAS compute type; must precede the GEMMs.
            os.environ["CUPY_TF32"] = "1"
        if self.device == "gpu" and not gpu_available():
            raise DeviceUnavailableError(
                "device='gpu' needs CuPy and a CUDA device; install the 'gpu' extra "
                "(pip install 'dimplicit[gpu]') or use device='cpu'"
            )
        if self.tf32 and (self.device != "gpu" or self.dtype != "float32"):
            raise ValueError("tf32=True is only meaningful with device='gpu' and dtype='float32'")

    @property
    def xp(self):
        """The array module: ``numpy`` or ``cupy``."""
        return _cupy() if self.device == "gpu" else np

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)

    def asarray(self, a, dtype=None):
        """Move ``a`` to this backend's device and dtype (no copy if already there)."""
        dt = self.np_dtype if dtype is None else dtype
        if self.device == "gpu":
            return _cupy().asarray(a, dtype=dt)
        return np.ascontiguousarray(to_host(a), dtype=dt)

    def synchronize(self):
        """Wait for queued device work (a no-op on CPU); used only around timers."""
        if self.device == "gpu":
            _cupy().cuda.get_current_stream().synchronize()


def get_backend(device: str = "cpu", dtype: str = "float32", tf32: bool = False) -> Backend:
    """Return a :class:`Backend`; the usual entry point."""
    return Backend(device=device, dtype=str(np.dtype(dtype)), tf32=tf32)


def array_module(a):
    """``cupy`` for a CuPy array, ``numpy`` otherwise (like ``cupy.get_array_module``)."""
    cp = _cupy()
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    return np


def to_host(a):
    """Return a NumPy array (copies from the GPU when ``a`` is a CuPy array)."""
    cp = _cupy()
    if cp is not None and isinstance(a, cp.ndarray):
        return cp.asnumpy(a)
    return np.asarray(a)


def to_device(a, backend: Backend):
    """Move ``a`` onto ``backend``'s device and dtype; alias of :meth:`Backend.asarray`."""
    return backend.asarray(a)


def check_same_device(arrays: dict, backend: Backend, what: str = "arrays"):
    """Raise a clear error when arrays live on another device than ``backend``.

    Mixing host and device arrays would otherwise make CuPy/NumPy copy silently on every
    operation (a "copy storm") or fail deep inside a GEMM.
    """
    want = "cupy" if backend.device == "gpu" else "numpy"
    for name, a in arrays.items():
        if a is None:
            continue
        have = array_module(a).__name__
        if have != want:
            raise TypeError(
                f"{what}: {name!r} is a {have} array but the backend is device={backend.device!r}; "
                f"move it with dimplicit.backend.to_device(...) first"
            )


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit BLAS/OpenMP threads inside the block (``None`` leaves them unchanged)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n)):
        yield
