"""Componentwise activations φ and their derivatives, applied in place.

An activation is named by a string: ``"relu"``, ``"leaky_relu"`` (slope 0.01), ``"leaky_relu:0.1"``
(slope α after the colon), ``"tanh"``, ``"arctan"``, ``"sigmoid"``, ``"identity"``.  A model may
give every hidden neuron its own activation (:class:`Activation` with a list of names); neurons
sharing a name are processed together, so per-neuron activations cost one pass per distinct name.

All functions are 1-Lipschitz except leaky_relu with α > 1, which is rejected, so the
well-posedness condition ‖A‖∞ < 1 of docs/design.md §1 applies to every activation offered
here.
"""

from __future__ import annotations

import numpy as np

from dimplicit.backend import array_module
from dimplicit.kernels import arctan_f32

NAMES = ("relu", "leaky_relu", "tanh", "arctan", "sigmoid", "identity")


def parse(name: str) -> tuple[str, float]:
    """Split ``"leaky_relu:0.1"`` into ``("leaky_relu", 0.1)``; validate the name."""
    base, _, arg = name.partition(":")
    if base not in NAMES:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(NAMES)}")
    alpha = 0.0
    if base == "leaky_relu":
        alpha = float(arg) if arg else 0.01
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"leaky_relu slope must be in [0, 1] (1-Lipschitz), got {alpha}")
    elif arg:
        raise ValueError(f"activation {base!r} takes no parameter, got {name!r}")
    return base, alpha


def apply_(z, name: str):
    """Overwrite ``z`` with φ(z) in place and return it."""
    xp = array_module(z)
    base, alpha = parse(name)
    if base == "relu":
        xp.maximum(z, _zero_row(z, xp), out=z)
    elif base == "leaky_relu":
        # max(z, αz) equals leaky_relu for 0 ≤ α ≤ 1; one fused pass, no mask array.
        xp.maximum(z, alpha * z, out=z)
    elif base == "tanh":
        xp.tanh(z, out=z)
    elif base == "arctan":
        arctan_(z)
    elif base == "sigmoid":
        # 0.5 * (1 + tanh(z/2)) is the overflow-free form of 1 / (1 + exp(-z)).
        z *= 0.5
        xp.tanh(z, out=z)
        z += 1
        z *= 0.5
    return z


def arctan_(z):
    """Overwrite ``z`` with arctan(z) in place and return it.

    Float32 NumPy arrays of one or two dimensions (any strides) take a compiled polynomial
    (:func:`dimplicit.kernels.arctan_f32`, within 2 ulp of the correctly rounded result, a
    tenth of ``np.arctan``'s cost); other dtypes and backends call ``arctan`` (CuPy's is a fast
    device kernel).
    """
    xp = array_module(z)
    if xp is not np or z.dtype != np.float32 or z.ndim not in (1, 2) or z.size == 0:
        return xp.arctan(z, out=z)
    arctan_f32(z.reshape(-1, 1) if z.ndim == 1 else z)  # a 1-D array is one column: a view
    return z


_ZERO_ROWS: dict = {}


def _zero_row(z, xp):
    """A read-only zero row to broadcast against ``z`` (NumPy), or the scalar 0 (other backends).

    NumPy's ``maximum(z, 0)`` takes a slow path for a scalar operand: 0.31 ms against 0.10 ms
    with a zero row, 1.29 against 0.64 ms at 1024 × 1024 float32 (NumPy 2.4, one thread).
    """
    if xp.__name__ != "numpy" or z.ndim == 0:
        return 0
    key = (z.shape[-1], z.dtype.str)
    row = _ZERO_ROWS.get(key)
    if row is None:
        row = xp.zeros(z.shape[-1], dtype=z.dtype)
        row.flags.writeable = False
        _ZERO_ROWS[key] = row
    return row


def derivative(x, name: str):
    """Return φ'(z) as a new array, computed from ``x = φ(z)`` alone.

    Every φ offered here is invertible on its range (or flat where its slope is 0), so the
    slope can be read off the output: this saves recomputing ``z = x Aᵀ + u Bᵀ + b`` (one GEMM)
    after a fixed-point solve, and it is the exact slope at the ``z`` that produced ``x``.
    """
    xp = array_module(x)
    base, alpha = parse(name)
    if base == "relu":
        return (x > 0).astype(x.dtype)
    if base == "leaky_relu":
        return xp.where(x > 0, x.dtype.type(1), x.dtype.type(alpha))
    if base == "tanh":
        return 1 - x * x
    if base == "arctan":
        c = xp.cos(x)  # z = tan(x), so 1 / (1 + z²) = cos²(x)
        return c * c
    if base == "sigmoid":
        return x * (1 - x)
    return xp.ones_like(x)


class Activation:
    """φ for all hidden neurons: one name, or one name per neuron.

    Parameters
    ----------
    spec : str or sequence of str
        A single activation name for every neuron, or ``n`` names (one per neuron).
    n : int
        Number of hidden neurons (checked against a per-neuron list).
    """

    def __init__(self, spec, n: int):
        if isinstance(spec, str):
            parse(spec)
            self.names = [spec]
            self.groups = None  # one activation for all columns: the fast path
        else:
            names = [str(s) for s in spec]
            if len(names) != n:
                raise ValueError(f"per-neuron activation list has {len(names)} entries, need {n}")
            for s in set(names):
                parse(s)
            uniq = sorted(set(names))
            if len(uniq) == 1:
                self.names, self.groups = uniq, None
            else:
                self.names = uniq
                arr = np.array(names)
                self.groups = [np.flatnonzero(arr == u) for u in uniq]
            # Runs of consecutive neurons sharing a name (layered models have a handful):
            # applied in place on column slices, which avoids a gather/scatter copy per pass.
            starts = [0] + [i for i in range(1, n) if names[i] != names[i - 1]]
            runs = [(names[a], slice(a, b)) for a, b in zip(starts, [*starts[1:], n], strict=True)]
            self.runs = runs if len(runs) <= 4 * len(uniq) else None
        self.spec = spec if isinstance(spec, str) else list(spec)
        if isinstance(spec, str) or self.groups is None:
            self.runs = None

    def _columns(self, xp):
        # Index arrays on the right device, cached per array module.
        cache = self.__dict__.setdefault("_cols", {})
        if xp.__name__ not in cache:
            cache[xp.__name__] = [xp.asarray(g) for g in self.groups]
        return cache[xp.__name__]

    def apply_(self, z):
        """φ(z) in place (``z`` is batch × n)."""
        if self.groups is None:
            return apply_(z, self.names[0])
        if self.runs is not None:
            for name, cols in self.runs:
                apply_(z[:, cols], name)  # a strided view: the ufuncs write through it
            return z
        xp = array_module(z)
        for name, cols in zip(self.names, self._columns(xp), strict=True):
            sub = z[:, cols]
            z[:, cols] = apply_(sub, name)
        return z

    def derivative(self, x):
        """φ'(z) (batch × n) as a new array, from ``x = φ(z)``."""
        if self.groups is None:
            return derivative(x, self.names[0])
        xp = array_module(x)
        out = xp.empty_like(x)
        if self.runs is not None:
            for name, cols in self.runs:
                out[:, cols] = derivative(x[:, cols], name)
            return out
        for name, cols in zip(self.names, self._columns(xp), strict=True):
            out[:, cols] = derivative(x[:, cols], name)
        return out

    def sub(self, start: int, stop: int) -> Activation:
        """φ of neurons ``start:stop`` only (cached: the layer-by-layer solves reuse it)."""
        cache = self.__dict__.setdefault("_sub", {})
        if (start, stop) not in cache:
            spec = self.spec if isinstance(self.spec, str) else self.spec[start:stop]
            cache[(start, stop)] = Activation(spec, stop - start)
        return cache[(start, stop)]

    def to_list(self, n: int) -> list[str]:
        """One name per neuron (for saving)."""
        if isinstance(self.spec, str):
            return [self.spec] * n
        return list(self.spec)


class GatedActivation:
    """``s ⊙ φ(z)``: an :class:`Activation` whose gated neurons' outputs are scaled by a gate.

    The "v2" latent layer of Szekeres & Izsák (2024): neuron ``i`` outputs ``σ(β_i) φ_i(z_i)``
    (:attr:`dimplicit.model.ImplicitModel.phi` builds this from the model's ``beta``).  Only
    the gated columns are touched, so an ungated neuron computes exactly ``φ(z)`` (no
    multiplication by 1, no rounding change).

    Parameters
    ----------
    base : Activation
        φ of every hidden neuron.
    gate : array (n_gated,)
        ``s_i = σ(β_i) ∈ (0, 1)`` of the gated neurons, on the device of the data.
    cols : ndarray of int (n_gated,)
        Indices of the gated neurons, increasing.
    """

    def __init__(self, base: Activation, gate, cols):
        self.base = base
        self.gate = gate
        self.cols = np.asarray(cols, dtype=np.int64)
        self.names = base.names
        # Gated neurons are usually one contiguous run (a layer): a slice, no fancy indexing.
        c = self.cols
        contiguous = c.size > 0 and c[-1] - c[0] + 1 == c.size
        self._sel = slice(int(c[0]), int(c[-1]) + 1) if contiguous else c

    def _index(self, xp):
        if isinstance(self._sel, slice):
            return self._sel
        cache = self.__dict__.setdefault("_cols", {})
        if xp.__name__ not in cache:
            cache[xp.__name__] = xp.asarray(self._sel)
        return cache[xp.__name__]

    def apply_(self, z):
        """``s ⊙ φ(z)`` in place (``z`` is batch × n)."""
        self.base.apply_(z)
        if self.cols.size:
            z[:, self._index(array_module(z))] *= self.gate.astype(z.dtype, copy=False)
        return z

    def derivative(self, x):
        """``s ⊙ φ'(z)`` (batch × n) from ``x = s ⊙ φ(z)``: φ' is read off ``x / s``."""
        if not self.cols.size:
            return self.base.derivative(x)
        s = self.gate.astype(x.dtype, copy=False)
        if isinstance(self._sel, slice):  # one run of columns: redo only those
            a, b = self._sel.start, self._sel.stop
            out = self.base.derivative(x)
            out[:, a:b] = self.base.sub(a, b).derivative(x[:, a:b] / s) * s
            return out
        sel = self._index(array_module(x))
        pre = x.copy()
        pre[:, sel] = x[:, sel] / s
        out = self.base.derivative(pre)
        out[:, sel] *= s
        return out

    def sub(self, start: int, stop: int):
        """The gated φ of neurons ``start:stop`` (a plain :class:`Activation` if none is gated)."""
        base = self.base.sub(start, stop)
        keep = (self.cols >= start) & (self.cols < stop)
        if not keep.any():
            return base
        xp = array_module(self.gate)
        return GatedActivation(base, self.gate[xp.asarray(np.flatnonzero(keep))],
                               self.cols[keep] - start)  # fmt: skip
