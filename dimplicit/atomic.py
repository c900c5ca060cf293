"""Atomic publication of files and directories: nothing half-written is visible, nothing is lost.

Every output is first written to a temporary sibling named ``.NAME.tmp-PID-TAG`` (same
directory, hence same file system) and then moved into place by a single rename:

- a new output appears with ``renameat2(RENAME_NOREPLACE)``, which fails if something
  appeared at ``NAME`` meanwhile, so two runs can never silently replace each other;
- a replaced directory is swapped with ``renameat2(RENAME_EXCHANGE)``: at every instant
  ``NAME`` holds either the complete old or the complete new output; the old one, now at the
  temporary name, is deleted afterwards.

Where the kernel or file system lacks ``renameat2`` (non-Linux, some network file systems) the
swap falls back to two renames through a ``.NAME.old-PID-TAG`` sibling; if the process dies
between them, :func:`recover` (run by the next writer of the same path) moves the old output
back.  The process id in the names lets the next run tell the leftovers of a killed run
(removed) from the work of a live one (left alone).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

# .NAME.tmp-PID-TAG / .NAME.old-PID-TAG (TAG: 8 hex digits).
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def temp_sibling(path, kind: str = "tmp") -> Path:
    """A fresh hidden sibling name of ``path`` that records this process's id."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path) -> list[str]:
    """Repair what killed runs left beside ``path``; return one line per action taken.

    - ``.NAME.old-PID-TAG`` of a dead process while ``NAME`` is missing: the run died in the
      middle of a fallback swap; the old output is moved back to ``NAME``.
    - any other ``.NAME.tmp-…`` / ``.NAME.old-…`` of a dead process: removed.

    Leftovers of live processes are not touched.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    actions = []
    for entry in sorted(parent.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if not m or m["name"] != path.name or pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not os.path.lexists(path):
            os.rename(entry, path)
            actions.append(f"restored {path} from an interrupted replacement ({entry.name})")
        else:
            _remove(entry)
            actions.append(f"removed {entry}, left by a killed run (pid {m['pid']})")
    for line in actions:
        log.warning(line)
    return actions


def remove_temporary(path) -> None:
    """Delete a temporary of THIS process (``.NAME.tmp-PID-TAG``, from :func:`temp_sibling`).

    The one way dimplicit deletes a directory tree of its own making: anything that is not
    this process's temporary is refused, so a mistake can never delete a user's directory.
    Missing paths are fine (the temporary may never have been created).
    """
    path = Path(path)
    m = _LEFTOVER.match(path.name)
    if not m or m["kind"] != "tmp" or int(m["pid"]) != os.getpid():
        raise ValueError(f"refusing to delete {path}: not a temporary of this process")
    if os.path.lexists(path):
        _remove(path)


def make_temporary_dir(parent, name: str) -> Path:
    """Create and return a fresh temporary directory ``parent/.NAME.tmp-PID-TAG``."""
    path = temp_sibling(Path(parent) / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    return path


def clean_directory(directory) -> list[str]:
    """:func:`recover` every output name in ``directory`` that has leftovers."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = {m["name"] for e in directory.iterdir() if (m := _LEFTOVER.match(e.name))}
    return [line for name in sorted(names) for line in recover(directory / name)]


def _renameat2(src, dst, flags: int) -> bool:
    """``renameat2(2)``; False when this system cannot do it (then the caller falls back)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = object()
    return _LIBC


def exchange(a, b) -> bool:
    """Atomically swap two existing paths; False when the system cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def move_new(tmp, path) -> None:
    """Rename ``tmp`` to ``path``, failing with ``FileExistsError`` if ``path`` exists."""
    try:
        if _renameat2(tmp, path, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while this run was writing it") from None
    # Fallback: a file can be published without replacing by a hard link.
    if os.path.isfile(tmp):
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} appeared while this run was writing it") from None
        os.unlink(tmp)
        return
    if os.path.lexists(path):
        raise FileExistsError(f"{path} appeared while this run was writing it")
    os.rename(tmp, path)


def replace_dir(tmp, path, check_old=None) -> None:
    """Swap directory ``tmp`` into ``path`` (which may exist) so that no instant lacks one.

    Parameters
    ----------
    tmp, path : Path
        The finished new output and its final place (same parent).
    check_old : callable, optional
        Called with the path now holding whatever was replaced; if it raises, the swap is
        undone (the old output goes back) and the error propagates.  Guards against
        something other than the expected kind of output appearing at ``path`` after the
        caller's own check.
    """
    tmp, path = Path(tmp), Path(path)
    if not os.path.lexists(path):
        try:
            move_new(tmp, path)
            return
        except FileExistsError:
            pass  # it appeared meanwhile: swap below, and let check_old judge it
    if exchange(tmp, path):
        old = tmp
    else:
        old = temp_sibling(path, "old")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
    if check_old is not None:
        try:
            check_old(old)
        except BaseException:
            if not exchange(old, path):
                # Put the stranger back under its name; ours goes to the temporary name.
                os.rename(path, tmp)
                os.rename(old, path)
            raise
    _remove(old)


def write_file(path, write, *, replace: bool = True) -> Path:
    """Write a file through ``write(fh)`` into a temporary sibling, fsync, then publish it.

    ``replace``: atomically replace an existing file (``os.replace``); otherwise fail with
    ``FileExistsError`` if ``path`` exists at the moment of publication.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            move_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
