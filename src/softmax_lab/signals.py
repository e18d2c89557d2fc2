"""SIGINT and SIGTERM end a run within moments: recorded KILLED, exit code 130 / 143.

The handler raises RunInterrupted wherever the main thread is, except inside a `protected()`
section (an MLflow write, a checkpoint write): there the signal waits for the section to end, so
the store is never left mid-transaction and last.ckpt is never half written. A second signal while
the first waits is not held back.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from softmax_lab.errors import RunInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.active = False

    def _handler(self, signum, frame):
        if self.depth and self.pending is None:
            self.pending = signum  # raised when the protected section ends
            return
        raise RunInterrupted(signum)

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT/SIGTERM for the block (main thread only; elsewhere a no-op)."""
        try:
            saved = {s: signal.signal(s, self._handler) for s in SIGNALS}
        except ValueError:  # not the main thread (a launcher's worker thread): leave the signals alone
            yield self
            return
        self.active, self.pending, self.depth = True, None, 0
        try:
            yield self
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
            self.active = False

    @contextlib.contextmanager
    def protected(self):
        """A section a signal must not cut in two; the signal is raised when it ends. Python raises a signal in the
        main thread only: another thread's section (the pictures drawn beside the model's logging) holds nothing
        back, and a signal is never raised there, where the main thread would go on without it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise RunInterrupted(signum)


INTERRUPTS = Interrupts()
protected = INTERRUPTS.protected


def raise_on_signals() -> bool:
    """From now on SIGINT and SIGTERM raise RunInterrupted in this process (a sweep, between and around its jobs:
    each job installs its own handler for its own time and puts this one back). False off the main thread."""
    def handler(signum, frame):
        raise RunInterrupted(signum)

    try:
        for s in SIGNALS:
            signal.signal(s, handler)
    except ValueError:
        return False
    return True
