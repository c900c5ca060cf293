"""The fixed reduction tree, cut into contiguous pieces that different workers reduce.

:func:`dimplicit.partition.tree_reduce` fixes the order of a step's additions: level by level,
neighbours ``(0, 1), (2, 3), …`` are merged and an odd last item moves up unchanged.  Node
``(d, i)`` of that tree (level ``d``, index ``i``) is the sum of the leaves
``[i·2^d, min((i+1)·2^d, n))``; its value depends only on those leaves and on ``n``.

A worker that holds a contiguous run ``[a, b)`` of a step's blocks can therefore compute the
*maximal* tree nodes inside its run (:func:`cover`) by itself, each with ``tree_reduce`` over
its leaves.  The node lists of two adjacent runs merge into the maximal nodes of their
union (:func:`merge`), and one task completes the tree from nodes that tile all leaves
(:func:`complete`, the merge over ``[0, n)``).  Both perform exactly the additions of
``tree_reduce`` in exactly its order, so the result is bitwise the same however the blocks
are grouped and in whatever order adjacent runs are merged (tests/test_reduction.py).

The Dask executor uses this to run one task per worker per step instead of one per block
(:func:`group_sums`); the runs' node lists either all go to the step's last task,
:func:`finish_step` (a flat gather), or are first merged pairwise in a tree of tasks across
the workers (:func:`merge`), so that no worker receives more than ``ceil(log2 W)`` of them;
:func:`finish_step` completes the tree and applies the update.
"""

from __future__ import annotations

import time

from dimplicit.partition import combine, tree_reduce

__all__ = [
    "cover",
    "reduce_run",
    "merge",
    "complete",
    "runs_of",
    "broadcast_parents",
    "group_sums",
    "finish_step",
]


def cover(a: int, b: int, n: int) -> list[tuple[int, int, int, int]]:
    """The maximal nodes of the tree of ``n`` leaves inside the run ``[a, b)``.

    Parameters
    ----------
    a, b : int
        The run of leaves, ``0 ≤ a < b ≤ n``.
    n : int
        Leaves of the whole tree (blocks of the step).

    Returns
    -------
    list of (level, index, start, stop)
        Left to right; their leaf ranges ``[start, stop)`` tile ``[a, b)``.  A run that is a
        whole sub-tree is one node; any run is at most ``2·ceil(log2 n)`` nodes.
    """
    if not 0 <= a < b <= n:
        raise ValueError(f"need 0 ≤ a < b ≤ n, got a={a}, b={b}, n={n}")
    out, pos = [], a
    while pos < b:
        d = 0
        # Grow while the node starting at `pos` stays aligned, inside the run and a node of
        # this tree (a clipped last node equals its lower copy: it moved up unchanged).
        while (pos % (2 << d) == 0 and min(pos + (2 << d), n) <= b
               and (2 << d) < 2 * n):  # fmt: skip
            d += 1
        stop = min(pos + (1 << d), n)
        out.append((d, pos >> d, pos, stop))
        pos = stop
    return out


def reduce_run(results: list, a: int, n: int, pair=None) -> list[tuple[int, int, object]]:
    """Reduce the leaves ``results`` (the run starting at leaf ``a``) to their maximal nodes.

    Parameters
    ----------
    results : list
        Leaf values ``a, a+1, …`` of the run.
    a, n : int
        First leaf of the run; leaves of the whole tree.
    pair : callable, optional
        As for :func:`~dimplicit.partition.tree_reduce`.

    Returns
    -------
    list of (level, index, value)
    """
    out = []
    for d, i, start, stop in cover(a, a + len(results), n):
        out.append((d, i, tree_reduce(results[start - a : stop - a], pair)))
    return out


def _span(nodes, n: int) -> tuple[int, int]:
    """The leaf range ``[start, stop)`` that a left-to-right node list covers."""
    (d0, i0, *_), (d1, i1, *_) = nodes[0], nodes[-1]
    return i0 << d0, min((i1 + 1) << d1, n)


def _cover_values(nodes, a: int, c: int, n: int, pair=None) -> list[tuple[int, int, object]]:
    """The maximal nodes of ``[a, c)`` with their values, from node values that tile it.

    Every missing node is computed from its children, exactly as ``tree_reduce`` computes
    it: ``pair(left, right, depth, index)``, or the left child alone when there is no right
    child (the odd last item moves up unchanged).
    """
    known = {(d, i): v for d, i, v in nodes}
    if pair is None:

        def pair(a, b, depth, index):
            return combine(a, b)

    def value(d, i):
        if (d, i) in known:
            return known[(d, i)]
        if d == 0:
            raise ValueError(f"leaf {i} is covered by no node")
        left = value(d - 1, 2 * i)
        if (2 * i + 1) << (d - 1) >= n:  # no right child: the odd last item moves up
            return left
        return pair(left, value(d - 1, 2 * i + 1), d - 1, 2 * i)

    return [(d, i, value(d, i)) for d, i, _, _ in cover(a, c, n)]


def merge(left, right, n: int, pair=None) -> list[tuple[int, int, object]]:
    """Merge the node lists of two adjacent runs into the maximal nodes of their union.

    ``left`` tiles ``[a, b)`` and ``right`` tiles ``[b, c)`` (outputs of :func:`reduce_run`
    or of this function); the result is the maximal nodes of ``[a, c)``
    (``cover(a, c, n)``), each computed with exactly the additions of
    :func:`~dimplicit.partition.tree_reduce` in its order.  Any split of ``[0, n)`` into
    runs, merged pairwise in any binary-tree order, therefore ends in ``[(depth, 0, root)]``
    with the root bitwise that of ``tree_reduce`` (tests/test_reduction.py); the Dask
    executor's merge tree relies on it.

    Parameters
    ----------
    left, right : list of (level, index, value)
        Left to right, as :func:`reduce_run` returns them; neither empty.
    n : int
        Leaves of the whole tree.
    pair : callable, optional
        ``pair(a, b, depth, index)``; default :func:`~dimplicit.partition.combine`.

    Returns
    -------
    list of (level, index, value)
    """
    a, b = _span(left, n)
    b2, c = _span(right, n)
    if b != b2:
        raise ValueError(f"runs [{a}, {b}) and [{b2}, {c}) are not adjacent")
    return _cover_values([*left, *right], a, c, n, pair)


def complete(nodes, n: int, pair=None):
    """The root of the tree of ``n`` leaves from node values that tile the leaves.

    The merge (:func:`merge`) over the whole range ``[0, n)``, whose cover is the root.

    Parameters
    ----------
    nodes : iterable of (level, index, value)
        E.g. the concatenated outputs of :func:`reduce_run` for runs that tile ``[0, n)``.
    n : int
    pair : callable, optional
        ``pair(a, b, depth, index)``; default :func:`~dimplicit.partition.combine`.

    Returns
    -------
    The root value: bitwise what ``tree_reduce`` of all leaves returns.
    """
    ((_, _, root),) = _cover_values(nodes, 0, n, n, pair)
    return root


def runs_of(owners: list) -> list[tuple[object, int, int]]:
    """Maximal runs of equal consecutive owners: ``[(owner, start, stop), …]``."""
    runs = []
    for k, o in enumerate(owners):
        if runs and runs[-1][0] == o:
            runs[-1] = (o, runs[-1][1], k + 1)
        else:
            runs.append((o, k, k + 1))
    return runs


def broadcast_parents(m: int) -> list[int | None]:
    """Parents in a binomial broadcast tree of ``m`` members rooted at member 0.

    Member ``j > 0`` receives from ``j − 2^⌊log2 j⌋``: in round ``r`` every member that already
    has the data sends it to the member ``2^r`` further, so the data reaches all ``m`` members
    in ``ceil(log2 m)`` rounds and no member sends more than ``ceil(log2 m)`` copies.
    """
    return [None] + [j - (1 << (j.bit_length() - 1)) for j in range(1, m)]


# ---------------------------------------------------------------------------- worker tasks


def group_sums(params, template, chunks, blocks, a, n, spec=None):
    """One worker's share of a step (a task): its run of blocks, reduced to tree nodes.

    Parameters
    ----------
    params : dict
        The weights (a copy on this worker).
    template : ImplicitModel
    chunks : list
        The loaded training chunk ``(U, Y)`` of every block, in run order; with ``spec``,
        chunk numbers instead, read here (streaming: each chunk once per task).
    blocks : list of tuple
        :meth:`TrainingRun.block_args` of every block of the run, in run order.
    a, n : int
        The run's first position in the step's block list; blocks in the step.
    spec : DataSpec, optional
        Read the chunks from this store (``persist`` off).

    Returns
    -------
    list of (level, index, partition result)
    """
    from dimplicit.distributed.tasks import block_sums, fresh_copies, load_chunk

    params = fresh_copies(params)  # bitwise results whatever the frame offset they came at
    if spec is not None:
        loaded = {c: load_chunk(spec, c, "train") for c in dict.fromkeys(chunks)}
        chunks = [loaded[c] for c in chunks]
    pairs = zip(chunks, blocks, strict=True)
    sums = [block_sums(params, template, data, *args) for data, args in pairs]
    return reduce_run(sums, a, n)


def finish_step(params, state, parts, n, step, optimizer, template):
    """Complete the step's reduction tree and apply the update (a task).

    Returns ``(params, state, summary)``: :func:`dimplicit.distributed.tasks.update`'s new
    weights and optimizer state, and :func:`~dimplicit.distributed.tasks.step_summary` with
    ``update_seconds`` (the time of this task).
    """
    from dimplicit.distributed.tasks import step_summary, update

    t0 = time.perf_counter()
    total = complete([node for run in parts for node in run], n)
    new_params, new_state, finite = update(params, state, total, step, optimizer, template)
    # The serial part of a step, for the benchmark's cost model.
    summary = step_summary(total, finite) | {"update_seconds": time.perf_counter() - t0}
    return new_params, new_state, summary
