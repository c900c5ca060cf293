"""The grouped reduction: cutting the fixed tree into per-worker runs, and merging the runs
in any order, changes no bit.

Tasks per step on a cluster (≤ 2W + 4 with the flat gather), the binomial broadcast (no
worker sends more than ceil(log2 W) copies of the weights) and the merge tree (no worker
receives more than ceil(log2 W) partial sums) are checked against a real local cluster.
"""

import itertools
import math
import re

import numpy as np
import pytest
from conftest import make_trainer
from distributed import Client, LocalCluster

from dimplicit.distributed.reduce import (
    broadcast_parents,
    complete,
    cover,
    merge,
    reduce_run,
    runs_of,
)
from dimplicit.partition import combine, tree_reduce

pytestmark = pytest.mark.timeout(180)


def show(a, b, depth, index):
    """A pair that records the additions and their order as a string."""
    return f"({a}+{b})"


def cuts(n):
    """Every way of cutting [0, n) into contiguous runs (all 2^(n-1) for small n)."""
    for mask in range(1 << (n - 1)):
        bounds = [0] + [k + 1 for k in range(n - 1) if mask >> k & 1] + [n]
        yield list(itertools.pairwise(bounds))


@pytest.mark.parametrize("n", range(1, 14))
def test_any_cut_into_runs_performs_the_additions_of_tree_reduce(n):
    leaves = [str(k) for k in range(n)]
    expected = tree_reduce(leaves, show)
    for runs in cuts(n):
        nodes = [node for a, b in runs for node in reduce_run(leaves[a:b], a, n, show)]
        assert complete(nodes, n, show) == expected, runs


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 64, 100])
def test_cover_tiles_the_run_with_few_maximal_nodes(n):
    depth = math.ceil(math.log2(n)) if n > 1 else 0
    for a in range(n):
        for b in range(a + 1, n + 1):
            nodes = cover(a, b, n)
            assert [s for *_, s, _ in nodes][0] == a and nodes[-1][3] == b
            assert all(x[3] == y[2] for x, y in itertools.pairwise(nodes))
            assert len(nodes) <= max(1, 2 * depth)
            for d, i, start, stop in nodes:
                assert start == i << d and stop == min((i + 1) << d, n)
    # A whole aligned sub-tree is one node; the whole tree is the root.
    assert cover(0, n, n) == [(depth, 0, 0, n)]


def test_grouped_sums_are_bitwise_those_of_tree_reduce():
    """Real partition results (float32 arrays): the same bits for every grouping."""
    n = 11
    leaves = partition_results(n)
    ref = tree_reduce(leaves)
    for runs in [[(0, n)], [(0, 4), (4, 8), (8, 11)], [(0, 3), (3, 7), (7, 11)], [(0, 1), (1, 11)]]:
        nodes = [node for a, b in runs for node in reduce_run(leaves[a:b], a, n)]
        got = complete(nodes, n)
        assert got["grads"]["A"].tobytes() == ref["grads"]["A"].tobytes()
        assert got["loss"] == ref["loss"] and got["stats"] == ref["stats"]
    # …while another order of the same additions does change the bits (the test can fail).
    flat = leaves[0]
    for leaf in leaves[1:]:
        flat = combine(flat, leaf)
    assert flat["grads"]["A"].tobytes() != ref["grads"]["A"].tobytes()


def merged_in_random_order(nodes_per_run, n, rng, pair=None):
    """Merge adjacent runs' node lists, a random adjacent pair at a time, down to one."""
    lists = list(nodes_per_run)
    while len(lists) > 1:
        k = int(rng.integers(len(lists) - 1))
        lists[k : k + 2] = [merge(lists[k], lists[k + 1], n, pair)]
    return lists[0]


@pytest.mark.parametrize("n", range(1, 12))
def test_merging_runs_in_any_order_performs_the_additions_of_tree_reduce(n):
    """Every cut of [0, n) into runs, merged in several random binary-tree orders: the root
    is the exact expression of tree_reduce, and every intermediate merge is the cover of its
    range with the values a direct reduction of that range would give."""
    rng = np.random.default_rng(n)
    leaves = [str(k) for k in range(n)]
    expected = tree_reduce(leaves, show)
    depth = math.ceil(math.log2(n)) if n > 1 else 0
    for runs in cuts(n):
        lists = [reduce_run(leaves[a:b], a, n, show) for a, b in runs]
        for _ in range(3):
            assert merged_in_random_order(lists, n, rng, show) == [(depth, 0, expected)], runs
        # One merge of two adjacent runs equals the reduction of their union, node by node.
        for k in range(len(runs) - 1):
            (a, _), (_, c) = runs[k], runs[k + 1]
            assert merge(lists[k], lists[k + 1], n, show) == reduce_run(leaves[a:c], a, n, show)


def partition_results(n, seed=0):
    """Float32 partition results of very different magnitudes: summation order shows."""
    rng = np.random.default_rng(seed)
    return [
        {
            "loss": float(rng.standard_normal()),
            "count": 3,
            "grads": {
                "A": rng.standard_normal((4, 4)).astype(np.float32) * 10.0 ** rng.integers(-3, 4)
            },
            "stats": {"blocks": 1, "x_max": float(rng.random())},
        }
        for _ in range(n)
    ]


def test_merged_float32_sums_are_bitwise_those_of_tree_reduce():
    n = 13
    leaves = partition_results(n, seed=1)
    ref = tree_reduce(leaves)
    rng = np.random.default_rng(0)
    for _ in range(40):
        bounds = [0, *sorted(rng.choice(np.arange(1, n), rng.integers(0, n - 1), False)), n]
        runs = list(itertools.pairwise(int(b) for b in bounds))
        lists = [reduce_run(leaves[a:b], a, n) for a, b in runs]
        ((_, _, got),) = merged_in_random_order(lists, n, rng)
        assert got["grads"]["A"].tobytes() == ref["grads"]["A"].tobytes(), runs
        assert got["loss"] == ref["loss"] and got["stats"] == ref["stats"]
        assert got["count"] == 3 * n


def test_merge_needs_adjacent_runs():
    leaves = [str(k) for k in range(6)]
    left, right = reduce_run(leaves[0:2], 0, 6, show), reduce_run(leaves[3:6], 3, 6, show)
    with pytest.raises(ValueError, match="not adjacent"):
        merge(left, right, 6, show)


def test_auto_gather_picks_the_tree_for_large_partial_sums_and_many_runs():
    from dimplicit.distributed.executor_dask import merge_tree_pays

    mb = 10**6
    # 3 runs or fewer: the tree receives as many partial sums as the flat gather.
    assert not any(merge_tree_pays(r, 10**4 * mb) for r in (1, 2, 3))
    # The break-even sizes of the cost model: 5 MB at 4 runs, 2.5 at 8, ~1.7 at 16.
    for runs, even in ((4, 5 * mb), (8, 2.5 * mb), (16, 19 / 11 * mb)):
        assert not merge_tree_pays(runs, int(0.9 * even)) and merge_tree_pays(runs, int(1.1 * even))
    # The models of the tests (a few KB) keep the flat gather at any size.
    assert not merge_tree_pays(64, 10**5)


def test_runs_of_and_binomial_broadcast():
    assert runs_of([0, 0, 1, 1, 1, 3]) == [(0, 0, 2), (1, 2, 5), (3, 5, 6)]
    for m in range(1, 70):
        parents = broadcast_parents(m)
        sent = np.bincount([p for p in parents if p is not None], minlength=m)
        assert sent.max(initial=0) <= math.ceil(math.log2(m)) if m > 1 else sent.sum() == 0
        # Member j receives in round bit_length(j), after its parent got the data, and
        # every member has it after ceil(log2 m) rounds.
        for j in range(1, m):
            assert parents[j].bit_length() < j.bit_length()
        assert (m - 1).bit_length() == (math.ceil(math.log2(m)) if m > 1 else 0)


# ----------------------------------------------------------------------------- on a cluster

MANY_BLOCKS = dict(batch_size=1600, block_rows=100, eval_every=10**6, sync_every=10**6)


def cluster_run(n_workers, trainer):
    """Fit on a threads cluster; return the trainer, the tasks run and every transfer."""
    from distributed import get_task_stream

    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with get_task_stream(client) as stream:
            trainer.fit(client)
        logs = client.run(
            lambda dask_worker: [
                {"keys": list(t["keys"]), "bytes": t["total"], "to": t["who"]}
                for t in dask_worker.transfer_outgoing_log
            ]
        )
    return trainer, stream.data, logs


def test_weights_are_identical_for_any_worker_count_and_the_in_process_executor(teacher_store):
    """16 blocks a step, cut into runs of other sizes on 1–4 workers, gathered flat or
    through the merge tree: the same bits."""
    local = make_trainer(teacher_store, executor="local", **MANY_BLOCKS).fit()
    hashes = {"local": local.summary_["weights_sha256"]}
    for w in (1, 2, 3, 4):
        for gather in ("flat", "tree"):
            trainer = make_trainer(teacher_store, executor="dask", gather=gather, **MANY_BLOCKS)
            t, _, _ = cluster_run(w, trainer)
            hashes[w, gather] = t.summary_["weights_sha256"]
            assert t.summary_["gather"] == gather
    assert len(set(hashes.values())) == 1, hashes


@pytest.mark.parametrize("n_workers", [1, 2, 4])
def test_tasks_per_step_and_weight_copies_sent(teacher_store, n_workers):
    """≤ 2W + 4 tasks a step (16 blocks a step: one task a block would be far more), and no
    worker sends more than ceil(log2 W) copies of the weights a step."""
    runs = {}
    for steps in (2, 6):
        trainer = make_trainer(
            teacher_store, executor="dask", gather="flat", max_steps=steps, **MANY_BLOCKS
        )
        runs[steps] = cluster_run(n_workers, trainer)
    # Everything but the steps (chunk loads, placing the weights, the final evaluation) is
    # the same in both runs: the difference is 4 steps' tasks.
    # (A step whose blocks miss a worker has fewer tasks: the mean need not be an integer.)
    per_step = (len(runs[6][1]) - len(runs[2][1])) / 4
    assert per_step <= 2 * n_workers + 4, per_step
    assert per_step < 16  # fewer tasks than blocks
    _, tasks_run, logs = runs[6]
    # Weight copies a worker sent to another worker (not to the client, which gathers the
    # final weights): transfers of `params-…` (the update's output) and of
    # `weights-<step>-<slot>-…` (the broadcast tree's copies).
    step_weights = re.compile(r"^(params-\d+-|weights-\d+-\d+-)")
    sent = {
        w: sum(bool(step_weights.match(k)) for t in log if t["to"] in logs for k in t["keys"])
        for w, log in logs.items()
    }
    limit = math.ceil(math.log2(n_workers)) if n_workers > 1 else 0
    assert max(sent.values()) <= 6 * limit, sent  # one task a block: W − 1 a step from one
    # Each copy task but the one on the update's worker (slot 0) is one transfer (Dask's
    # memory manager may drop a replica that then travels once more: at most one a step).
    copies = sum(bool(re.match(r"^weights-\d+-[1-9]\d*-", t["key"])) for t in tasks_run)
    assert copies <= sum(sent.values()) <= copies + 6, (sent, copies)


def test_merge_tree_bounds_the_partial_sums_a_worker_receives(teacher_store):
    """4 workers: with the merge tree no worker receives more than ceil(log2 4) = 2 node
    lists a step (of `group-` or `merge-` tasks); the flat gather brings 3 to the update's
    worker.  The tree adds at most W − 1 = 3 tasks a step."""
    steps, w = 4, 4
    received, tasks = {}, {}
    for gather in ("flat", "tree"):
        trainer = make_trainer(
            teacher_store, executor="dask", gather=gather, max_steps=steps, **MANY_BLOCKS
        )
        _, tasks_run, logs = cluster_run(w, trainer)
        partial = re.compile(r"^(group|merge)-(\d+)-")
        counts = {}  # (receiving worker, step) → node lists received
        for log in logs.values():
            for t in log:
                for key in t["keys"]:
                    m = partial.match(key)
                    if m and t["to"] in logs:
                        counts[t["to"], m[2]] = counts.get((t["to"], m[2]), 0) + 1
        received[gather] = max(counts.values(), default=0)
        tasks[gather] = len(tasks_run)
    assert received["tree"] <= math.ceil(math.log2(w)), received
    assert received["flat"] >= w - 1, received  # the flat gather: W − 1 to the update
    assert 0 < tasks["tree"] - tasks["flat"] <= (w - 1) * steps, tasks


def test_weight_copies_run_before_their_workers_compute(teacher_store):
    """A worker's relay copy of the weights and its group task become ready together; the
    copy must go first, or every worker that receives from it idles for a whole group task
    (it did, in about half the steps: speed-up 1.23 instead of 1.70, docs/scaling.md)."""
    trainer = make_trainer(teacher_store, executor="dask", max_steps=8, **MANY_BLOCKS)
    _, tasks_run, _ = cluster_run(2, trainer)
    start = {
        t["key"]: min(s["start"] for s in t["startstops"] if s["action"] == "compute")
        for t in tasks_run
    }
    worker = {t["key"]: t["worker"] for t in tasks_run}
    checked = 0
    for step in range(8):
        for copy in (k for k in start if k.startswith(f"weights-{step}-")):
            groups = [
                g for g in start if g.startswith(f"group-{step}-") and worker[g] == worker[copy]
            ]
            assert all(start[copy] <= start[g] for g in groups), (copy, groups)
            checked += len(groups)
    assert checked >= 8  # every step: at least slot 0's relay and its group


def test_step_blocks_are_in_store_order_and_slots_are_contiguous_and_balanced():
    from dimplicit.distributed.plan import Plan

    plan = Plan(chunk_counts=(800, 0, 800, 350, 800, 800), block_rows=100, blocks_per_step=7,
                seed=3)  # fmt: skip
    seen = []
    for step in range(plan.steps_per_epoch):
        _, blocks = plan.step_blocks(step)
        assert blocks == sorted(blocks)
        seen += blocks
    assert sorted(seen) == plan.blocks  # every block once an epoch, as before
    for w in (1, 2, 3, 4, 8):
        slots = plan.chunk_slots(w)
        assert slots == sorted(slots) and max(slots) < w
        per_slot = np.bincount(
            [slots[c] for c, _ in plan.blocks], minlength=w
        )  # blocks each slot holds
        assert per_slot.max() - per_slot.min() <= 8  # at most a chunk apart


@pytest.mark.slow
@pytest.mark.parametrize("gather", ["flat", "tree"])
def test_killing_a_worker_of_three_keeps_the_weights(teacher_store, monkeypatch, gather):
    """SIGKILL one of 3 worker processes mid-run: its pinned share moves, the bits do not.

    Worker processes matter here: weights that arrive over the network may be misaligned
    in memory, which changed NumPy's rounding until `group_sums` copied them.  Every process
    gets one BLAS thread from the environment, so that the worker the nanny starts in place
    of the dead one has it too.
    """
    import os
    import signal

    from dimplicit.distributed.blas import BLAS_ENV_VARS
    from dimplicit.distributed.connect import connect

    for name in BLAS_ENV_VARS:
        monkeypatch.setenv(name, "1")

    def run(kill):
        killed = []
        with connect(workers=3, threads_per_worker=1, quiet=True, dashboard=False) as client:
            pids = client.run(os.getpid)

            def kill_one(rec):
                if kill and rec["step"] == 2 and not killed:
                    pid = sorted(pids.values())[1]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            t = make_trainer(
                teacher_store,
                executor="dask",
                epochs=3,
                callback=kill_one,
                gather=gather,
                **MANY_BLOCKS,
            ).fit(client)
        return t, killed

    reference, _ = run(kill=False)
    t, killed = run(kill=True)
    assert killed
    assert t.summary_["steps"] == reference.summary_["steps"]
    assert t.summary_["weights_sha256"] == reference.summary_["weights_sha256"]
    local = make_trainer(teacher_store, executor="local", epochs=3, **MANY_BLOCKS).fit()
    assert local.summary_["weights_sha256"] == reference.summary_["weights_sha256"]


def test_streaming_chunks_give_the_same_weights(teacher_store):
    """persist="never": each group task reads its chunks itself, one task a worker still."""
    local = make_trainer(teacher_store, executor="local", max_steps=3, **MANY_BLOCKS).fit()
    t, stream, _ = cluster_run(
        3, make_trainer(teacher_store, executor="dask", persist="never", max_steps=3, **MANY_BLOCKS)
    )
    assert t.summary_["weights_sha256"] == local.summary_["weights_sha256"]
    # Load tasks only for the final evaluation's 6 validation chunks, none for training.
    assert sum(str(s["key"]).startswith("load_chunk") for s in stream) <= 6
