"""Ctrl-C and SIGTERM in a command's work outside training, and how every command ends.

    if __name__ == "__main__":
        interrupts.run_command("predict", main)   # SIGINT or SIGTERM: one line, exit 130 or 143

`ExitCode` names the exit statuses the commands share (one home for them). `run_command` runs a
command's work under `ending_the_command` and leaves through `workarounds.exit_before_finalization`.

The signal becomes `Interrupted`, a BaseException like KeyboardInterrupt, so `except Exception`
blocks let it through and every writer's own clean-up runs (`files.replacing` and
`files.staging_dir` remove what they had begun): nothing half-written is left, and the same command
redoes what was cut. Training installs its own handlers inside (`training.signals.STOP`: a
checkpoint first), which give these back when its block ends. Standard library only: installed
before TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from keras_resnet import workarounds

SIGNALS = (signal.SIGINT, signal.SIGTERM)
HELP = frozenset({"-h", "-?", "--help", "--helpshort", "--helpfull"})


class ExitCode(enum.IntEnum):
    """The exit statuses of the commands (train.py, export.py, predict, reproduce)."""

    OK = 0
    ERROR = 1  # bad flags, data or output location, or a search with no trial completed: one line
    DIVERGED = 3  # the loss diverged; the last good checkpoint is kept
    INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's convention: Ctrl-C (a checkpoint is written)
    TERMINATED = 128 + signal.SIGTERM  # 143: SIGTERM


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; `exit_code` is the shell's 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name
        self.exit_code = ExitCode(128 + signum)


def _raise(signum, frame) -> None:
    for s in SIGNALS:  # a second signal while unwinding: the default, immediate end
        signal.signal(s, signal.SIG_DFL)
    raise Interrupted(signum)


def _interrupted(err: BaseException | None) -> Interrupted | None:
    """The `Interrupted` that `err` is, or that it was raised from: a signal landing inside
    TensorFlow's tracing comes back wrapped in TensorFlow's own error (seen in export.py)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Interrupted):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class Ending:
    """What `ending_the_command` saw: the exit code of the signal that ended the block (0: none)."""

    exit_code: ExitCode = ExitCode.OK


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
    except BaseException as err:
        interrupted = _interrupted(err)
        if interrupted is None:
            raise
        print(
            f"{command}: {interrupted.name}: stopped; nothing half-written is left: {redo}.", file=sys.stderr
        )
        ending.exit_code = interrupted.exit_code
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_command(command: str, work: Callable[[], int]) -> NoReturn:
    """Runs a command's `work` (which returns its exit status) under `ending_the_command`, then exits
    with that status, or 130/143 when a signal ended it, through `workarounds.exit_before_finalization`
    (TensorFlow can otherwise block the exit)."""
    code = ExitCode.OK
    with ending_the_command(command) as ending:
        code = work()
    code = ending.exit_code or code
    workarounds.exit_before_finalization(code)
    raise SystemExit(code)


def run_absl_command(main: Callable[[list[str]], None], help_text: Callable[[], str]) -> None:
    """absl's `app.run(main)` for train.py and export.py, but asking for help prints `help_text()`
    and exits 0 (absl's own --help exits 1, and asking for help is no error)."""
    if HELP & set(sys.argv[1:]):
        print(help_text())
        raise SystemExit(ExitCode.OK)
    from absl import app

    app.run(main)
