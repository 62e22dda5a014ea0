"""Ctrl-C and SIGTERM in a command's work outside training (loading, evaluation, export, predict).

    with interrupts.ending_the_command("export.py") as ending:
        ...                         # SIGINT or SIGTERM: one line, `Ending.exit_code` 130 or 143

The signal becomes `Interrupted`, a BaseException like KeyboardInterrupt, so `except Exception`
blocks let it through and every writer's own clean-up runs (`files.replacing` and
`files.staging_dir` remove what they had begun): nothing half-written is left, and the same command
redoes what was cut. Training installs its own handlers inside (`training.signals.STOP`: a
checkpoint first), which give these back when its block ends. Standard library only: installed
before TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; `exit_code` is the shell's 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def _raise(signum, frame) -> None:
    for s in SIGNALS:  # a second signal while unwinding: the default, immediate end
        signal.signal(s, signal.SIG_DFL)
    raise Interrupted(signum)


class Ending:
    """What `ending_the_command` saw: the exit code of the signal that ended the block (0: none)."""

    exit_code: int = 0


@contextlib.contextmanager
def ending_the_command(command: str, redo: str = "run the same command again") -> Iterator[Ending]:
    """Ends the block on SIGINT/SIGTERM: one line on stderr, and `Ending.exit_code` 130 or 143 for
    the caller to exit with (through `workarounds.exit_before_finalization`), after the writers'
    clean-up. Only in the main thread, where signals land."""
    ending = Ending()
    if threading.current_thread() is not threading.main_thread():
        yield ending
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield ending
    except Interrupted as err:
        print(f"{command}: {err.name}: stopped; nothing half-written is left: {redo}.", file=sys.stderr)
        ending.exit_code = err.exit_code
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
