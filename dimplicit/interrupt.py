"""Graceful stops: the first SIGINT or SIGTERM asks a long run to stop at a safe point.

A training run checks :attr:`StopRequest.requested` between steps; when set it finishes the
steps already submitted, writes a final checkpoint (when it has a directory) and raises
:class:`TrainingInterrupted`.  A second signal raises ``KeyboardInterrupt`` at once.  SIGTERM
matters as much as Ctrl-C: it is what ``timeout``, SLURM at walltime and Kubernetes send.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by a signal at a safe point.

    Attributes
    ----------
    signal_name : str
        ``"SIGINT"`` or ``"SIGTERM"``.
    step : int
        Steps completed (what a resumed run starts from).
    checkpoint : str or None
        The checkpoint written on the way out, or None when the run had no directory.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: str | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = (
            f"checkpoint written to {checkpoint}; continue with resume=True"
            if checkpoint
            else "nothing was saved (no checkpoint directory was given)"
        )
        super().__init__(f"{signal_name}: stopped after step {step}; {where}")

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + int(getattr(signal, self.signal_name))


class StopRequest:
    """Set by the first signal; read by the training loop."""

    def __init__(self):
        self.requested: str | None = None

    def _handler(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.requested = signal.Signals(signum).name


@contextlib.contextmanager
def graceful_stop():
    """Route SIGINT/SIGTERM to a :class:`StopRequest` for the duration of a ``with``.

    Signal handlers exist only in the main thread; elsewhere (a notebook's worker thread)
    the request simply never fires and signals keep their usual effect.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop._handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
