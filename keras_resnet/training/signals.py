"""Ctrl-C and SIGTERM: the first asks a run (or search) to stop after its step with a checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class StopSignals:
    """The first SIGINT or SIGTERM asks the run (or search) to stop after its current step with a
    checkpoint; a second one kills the process.

    Installed for the outermost `handling()` block only, in the main thread, and restored after
    it, so a user's own handlers come back. Handling SIGINT explicitly also covers processes
    started in the background by a shell, which would otherwise ignore it.
    """

    def __init__(self):
        self.requested: str | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def handling(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            yield self
            return
        if self._depth == 0:
            self.requested = None
            self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in self._previous:
                signal.signal(s, self._handle)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for s, h in self._previous.items():
                    signal.signal(s, h)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second signal: die as the signal's default action says
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        log.info(f"\n{self.requested}: checkpointing after this step, then stopping (again to kill)...")


STOP = StopSignals()
