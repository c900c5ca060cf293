"""Checkpoints: weights, optimizer state, step, epoch, RNG seed and data order, as ``.npz``.

Written atomically (temporary file + rename, see :func:`dimplicit.model.save_npz_atomic`), read
with ``allow_pickle=False``.  The data order is a pure function of ``(seed, epoch)`` (see
:mod:`dimplicit.distributed.plan`), so saving the seed, the epoch and the epoch's block order
is enough to continue exactly where a run stopped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from dimplicit.model import PARAM_NAMES, load_npz, save_npz_atomic

PATTERN = re.compile(r"^ckpt-(\d{8})\.npz$")
KEEP = 3


def checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.npz"


def save_checkpoint(directory, *, params, state, step, epoch, header: dict, order=None) -> Path:
    """Write ``ckpt-<step>.npz`` atomically and prune all but the newest ``KEEP``."""
    arrays = {f"param/{k}": np.asarray(params[k]) for k in PARAM_NAMES}
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
        if head.get("format") != "dimplicit-checkpoint":
            raise ValueError("not a dimplicit checkpoint")
        params = {k: arrays[f"param/{k}"] for k in PARAM_NAMES}
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: malformed checkpoint ({exc})") from None
    return {"header": head, "params": params, "state": state, "order": arrays.get("data_order")}
