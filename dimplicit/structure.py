"""Block sparsity of masked weights: products that skip the blocks a mask keeps at zero.

A layered network written as an implicit model (``layered_model``: the autoencoders of
Szekeres & Izsák 2024) has a dense ``n × n`` matrix ``A`` that is mostly structural zeros: only
the blocks from one layer to the next (and a v1 latent block) can be non-zero, ``B`` feeds only
the first layer, ``C`` reads only the last and ``D`` is masked out.  Multiplying the zeros costs
about ten times the useful work for a (7;64;16) autoencoder.

:class:`BlockStructure` cuts each matrix along the model's layer boundaries and keeps the tiles
its mask allows to be non-zero; the products below then run one GEMM per output range and run
of adjacent kept tiles (their concatenated inputs), written straight into the output's columns.
A matrix whose kept tiles cover (nearly) all of it stays one dense GEMM, so dense El Ghaoui
models run exactly the code they ran before.  Masked entries are structural zeros
(:class:`~dimplicit.model.ImplicitModel` enforces it), so skipping them changes no result
beyond floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np

from dimplicit.backend import array_module, to_host

# Below this fraction of zero area, one dense GEMM beats several smaller ones.
_MIN_SAVING = 0.25


@dataclass(frozen=True)
class Blocks:
    """The tiles ``(r0, r1, c0, c1)`` of one ``rows × cols`` matrix that may be non-zero.

    Tiles are cells of a grid (the layer boundaries), so two tiles' row ranges, or column
    ranges, are either equal or disjoint.  ``dense`` means: use the whole matrix in one GEMM.
    """

    shape: tuple[int, int]
    tiles: tuple[tuple[int, int, int, int], ...]
    dense: bool

    @classmethod
    def from_mask(cls, mask, row_cuts, col_cuts) -> Blocks:
        rows, cols = int(row_cuts[-1]), int(col_cuts[-1])
        full = cls((rows, cols), ((0, rows, 0, cols),), True)
        if mask is None:
            return full
        m = np.asarray(to_host(mask)) != 0
        rc = [(int(a), int(b)) for a, b in pairwise(row_cuts)]
        cc = [(int(a), int(b)) for a, b in pairwise(col_cuts)]
        tiles = tuple((*r, *c) for r in rc for c in cc if m[r[0] : r[1], c[0] : c[1]].any())
        area = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in tiles)
        if area > (1 - _MIN_SAVING) * rows * cols:
            return full
        return cls((rows, cols), tiles, False)

    @property
    def empty(self) -> bool:
        return not self.dense and not self.tiles

    @cached_property
    def _row_spans(self):
        """Per row range of the tiles, the column spans it reads (adjacent tiles merged)."""
        return _spans([((r0, r1), (c0, c1)) for r0, r1, c0, c1 in self.tiles])

    @cached_property
    def _col_spans(self):
        """Per column range of the tiles, the row spans that feed it (adjacent tiles merged)."""
        return _spans([((c0, c1), (r0, r1)) for r0, r1, c0, c1 in self.tiles])

    def matmul_t(self, x, W, out=None):
        """``x @ W.T`` (``x``: batch × cols), written into ``out`` when given.

        One GEMM per row range and contiguous run of tiles, written straight into its columns
        of ``out``; ``out`` must not overlap ``x``.
        """
        xp = array_module(x)
        if self.dense:
            return x @ W.T if out is None else xp.matmul(x, W.T, out=out)
        out = xp.empty((x.shape[0], self.shape[0]), dtype=x.dtype) if out is None else out
        for (r0, r1), spans in self._row_spans:
            for k, (c0, c1) in enumerate(spans):
                _product(xp, x[:, c0:c1], W[r0:r1, c0:c1].T, out[:, r0:r1], add=k > 0)
        return _zero_gaps(out, self._row_spans)

    def matmul(self, v, W, out=None):
        """``v @ W`` (``v``: batch × rows), written into ``out`` when given (not overlapping
        ``v``); one GEMM per column range and contiguous run of tiles, as :meth:`matmul_t`."""
        xp = array_module(v)
        if self.dense:
            return v @ W if out is None else xp.matmul(v, W, out=out)
        out = xp.empty((v.shape[0], self.shape[1]), dtype=v.dtype) if out is None else out
        for (c0, c1), spans in self._col_spans:
            for k, (r0, r1) in enumerate(spans):
                _product(xp, v[:, r0:r1], W[r0:r1, c0:c1], out[:, c0:c1], add=k > 0)
        return _zero_gaps(out, self._col_spans)

    def outer(self, left, right):
        """``left.T @ right`` restricted to the tiles (zeros elsewhere): a weight gradient."""
        if self.dense:
            return left.T @ right
        xp = array_module(left)
        g = xp.zeros(self.shape, dtype=left.dtype)
        for r0, r1, c0, c1 in self.tiles:
            g[r0:r1, c0:c1] = left[:, r0:r1].T @ right[:, c0:c1]
        return g


def _spans(pairs):
    """Group ``(output range, input range)`` pairs by output range, sorted, and merge adjacent
    input ranges: tiles ``[c0, c1)`` and ``[c1, c2)`` of one row range are one GEMM over
    ``[c0, c2)`` (the concatenated inputs), not two half-size ones and a sum."""
    by_out = {}
    for o, i in sorted(pairs):
        spans = by_out.setdefault(o, [])
        if spans and spans[-1][1] == i[0]:
            spans[-1] = (spans[-1][0], i[1])
        else:
            spans.append(i)
    return tuple((o, tuple(s)) for o, s in sorted(by_out.items()))


def _product(xp, a, b, out, add):
    """``out = a @ b`` (or ``out += a @ b``) where ``out`` is a column slice of a larger array.

    NumPy's GEMM writes a strided ``out`` directly (its leading dimension is the row stride):
    no temporary and no copy.  Other backends get the plain assignment (CuPy's matmul into a
    non-contiguous ``out`` is not guaranteed)."""
    if add:
        out += a @ b
    elif xp is np or out.flags.c_contiguous:
        xp.matmul(a, b, out=out)
    else:
        out[...] = a @ b


def _zero_gaps(out, spans):
    """Zero the columns of ``out`` that no output range covers (grid ranges never overlap)."""
    start = 0
    for a, b in [*(o for o, _ in spans), (out.shape[1], out.shape[1])]:
        if a > start:
            out[:, start:a] = 0
        start = max(start, b)
    return out


@dataclass(frozen=True)
class BlockStructure:
    """The :class:`Blocks` of ``A``, ``B``, ``C`` and ``D`` of one model.

    ``groups`` are the hidden-layer ranges ``(start, stop)`` the matrices are cut along.
    """

    A: Blocks
    B: Blocks
    C: Blocks
    D: Blocks
    groups: tuple[tuple[int, int], ...]

    @property
    def layer_order(self) -> bool:
        """``A`` is block lower-triangular over several groups: a layer reads only earlier
        layers and itself, so the equilibrium can be solved layer by layer, in one sweep."""
        return (
            len(self.groups) > 1
            and not self.A.dense
            and all(c0 <= r0 for r0, _, c0, _ in self.A.tiles)
        )

    def reads(self, g0):
        """Tiles ``(r0, r1, c0, c1)`` of ``A`` in row range ``g0`` reading *earlier* layers."""
        return [t for t in self.A.tiles if t[0] == g0 and t[2] < g0]

    def read_spans(self, g0):
        """Column spans of :meth:`reads` with adjacent tiles merged: one GEMM per span."""
        cache = self.__dict__.setdefault("_read_spans", {})
        if g0 not in cache:
            spans = _spans([((r0, r1), (c0, c1)) for r0, r1, c0, c1 in self.reads(g0)])
            cache[g0] = spans[0][1] if spans else ()
        return cache[g0]

    def fed_by_inputs(self, g0) -> bool:
        """Some tile of ``B`` writes the layer starting at ``g0`` (rows of ``U Bᵀ``)."""
        return self.B.dense or any(t[0] <= g0 < t[1] for t in self.B.tiles)

    def read_by(self, g0):
        """Tiles of ``A`` in column range ``g0`` read by *later* layers."""
        return [t for t in self.A.tiles if t[2] == g0 and t[0] > g0]

    def has_self_block(self, g0) -> bool:
        """The layer starting at ``g0`` has an intra-layer (implicit) block."""
        return any(t[0] == g0 and t[2] == g0 for t in self.A.tiles)

    @classmethod
    def of(cls, model) -> BlockStructure:
        """Cut along the model's hidden-layer boundaries (``meta["widths"]``; one group if none)."""
        n, p, q = model.n_hidden, model.n_inputs, model.n_outputs
        widths = model.meta.get("widths") if model.meta.get("builder") == "layered" else None
        hidden = [int(w) for w in widths[1:-1]] if widths else [n]
        if sum(hidden) != n:
            hidden = [n]
        h = np.concatenate([[0], np.cumsum(hidden)]).astype(int)
        ins, outs = np.array([0, p]), np.array([0, q])
        m = model.masks
        return cls(
            Blocks.from_mask(m.get("A"), h, h),
            Blocks.from_mask(m.get("B"), h, ins),
            Blocks.from_mask(m.get("C"), outs, h),
            Blocks.from_mask(m.get("D"), outs, ins),
            tuple((int(a), int(b)) for a, b in pairwise(h)),
        )
