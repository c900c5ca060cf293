"""Checkpoints: weights, optimizer state, step, epoch, RNG seed and data order, as ``.npz``.

Written atomically (temporary file + rename, see :func:`dimplicit.model.save_npz_atomic`), read
with ``allow_pickle=False``.  The data order is a pure function of ``(seed, epoch)`` (see
:mod:`dimplicit.distributed.plan`), so saving the seed, the epoch and the epoch's block order
is enough to continue exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np

from dimplicit.model import GATE, PARAM_NAMES, load_npz, param_names, save_npz_atomic

PATTERN = re.compile(r"^ckpt-(\d{8})\.npz$")
KEEP = 3


def checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.npz"


def save_checkpoint(
    directory, *, params, state, step, epoch, header: dict, order=None, best=None
) -> Path:
    """Write ``ckpt-<step>.npz`` atomically and prune all but the newest ``KEEP``.

    ``best``: the weights of the best evaluation so far (model selection), saved beside the
    current ones so that a resumed run still restores them at the end.
    """
    arrays = {f"param/{k}": np.asarray(params[k]) for k in param_names(params)}
    if best is not None:
        arrays.update({f"best/{k}": np.asarray(best[k]) for k in param_names(best)})
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in state.items()})
    if order is not None:
        arrays["data_order"] = np.asarray(order, dtype=np.int64)
    head = {"format": "dimplicit-checkpoint", "version": 1, "step": step, "epoch": epoch, **header}
    arrays["header"] = np.array(json.dumps(head))
    path = save_npz_atomic(checkpoint_path(directory, step), arrays)
    for old in list_checkpoints(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if PATTERN.match(p.name))


def latest_checkpoint(directory) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path) -> dict:
    """Read a checkpoint; a malformed or truncated file gives one clear ``ValueError``."""
    arrays = load_npz(path, "checkpoint")
    try:
        head = json.loads(str(arrays["header"]))
        if not isinstance(head, dict):
            raise ValueError("header is not a JSON object")
        if head.get("format") != "dimplicit-checkpoint":
            raise ValueError("not a dimplicit checkpoint")
        for key, kind in (("step", int), ("epoch", int), ("fingerprint", dict)):
            if not isinstance(head.get(key), kind) or isinstance(head.get(key), bool):
                raise ValueError(f"header field {key!r} must be {kind.__name__}")
        if head["step"] < 0 or head["epoch"] < 0:
            raise ValueError("header fields 'step' and 'epoch' must be ≥ 0")
        sel = head.get("selection")
        if sel is not None and not (
            isinstance(sel, dict)
            and all(
                sel.get(k) is None or isinstance(sel[k], int | float)
                for k in ("value", "step", "bad_evals")
            )
            and (sel.get("key") is None or isinstance(sel["key"], list))
        ):
            raise ValueError("header field 'selection' is malformed")
        # A gated model's β is saved beside the six weights (dimplicit.model.param_names).
        names = (*PARAM_NAMES, GATE) if f"param/{GATE}" in arrays else PARAM_NAMES
        params = {k: arrays[f"param/{k}"] for k in names}
        best = {k: arrays[f"best/{k}"] for k in names} if "best/A" in arrays else None
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: malformed checkpoint ({exc})") from None
    return {
        "header": head,
        "params": params,
        "state": state,
        "best": best,
        "order": arrays.get("data_order"),
    }


# ----------------------------------------------------------------------------- the lock

LOCK_NAME = ".lock"
_HELD: dict[Path, list] = {}  # directory -> [open lock file, depth]: re-entrant per process


class DirectoryInUseError(RuntimeError):
    """Another live training run holds the checkpoint directory."""


@contextlib.contextmanager
def lock_directory(directory):
    """Hold an exclusive lock on a checkpoint directory for the duration of a ``with``.

    The lock is ``flock`` on ``DIRECTORY/.lock``: the kernel releases it when its process
    dies, so a lock left by a killed run is never stale (its file only records who had it).
    Re-entrant within one process (the CLI and the trainer both take it).  ``None``: no-op.

    Raises
    ------
    DirectoryInUseError
        Naming the process that holds it.
    """
    if directory is None:
        yield None
        return
    d = Path(directory).resolve()
    if d in _HELD:
        _HELD[d][1] += 1
        try:
            yield d
        finally:
            _HELD[d][1] -= 1
        return
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    fh = open(d / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (closed below)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise DirectoryInUseError(
                f"{directory} is in use by another training run ({owner}); wait for it to "
                "finish or choose another checkpoint directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        fh.flush()
        _HELD[d] = [fh, 1]
        try:
            yield d
        finally:
            del _HELD[d]
            fh.seek(0)
            fh.truncate()
            # A run that wrote nothing (it failed before its first step) leaves nothing.
            if created and [p.name for p in d.iterdir()] == [LOCK_NAME]:
                (d / LOCK_NAME).unlink()
                d.rmdir()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
