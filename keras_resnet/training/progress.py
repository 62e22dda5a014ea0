"""Progress on stdout: the run's step, errors, speed and the ETA of the whole run.

The run's only progress display (Keras' own bar stays off): on a terminal a status line redrawn in
place, with the phase the run is in (training, evaluating); redirected, a plain line a minute.
Every chunk ends with a permanent line that says how long its evaluation took.
"""

from __future__ import annotations

import collections
import sys
import time

import keras

from keras_resnet.console import duration
from keras_resnet.training.optimization import global_step

# The ETA's window: the last chunks (their evaluations and checkpoints included), so that a pause
# (Ctrl-Z, SIGSTOP, a sleeping machine) or a change of load fades from it within a few chunks.
ETA_CHUNKS = 5


class Progress(keras.callbacks.Callback):
    """Whole-run progress: global step, errors, training images/s and the ETA of the whole run.

    Prints one line per chunk; `live` (a terminal) redraws a status line in place between them,
    else `intra_epoch` prints a plain line every `every_s`. The ETA comes from the wall time per
    step over the last ETA_CHUNKS chunks (since this process began while there are fewer),
    evaluations included; `cheap_steps` (n, c) says that the run's first n steps cost c of a later
    one (low-resolution epochs), so that the ETA of a run in those steps counts the dearer ones to
    come.
    """

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        every_s: float = 60.0,
        intra_epoch: bool = False,
        quiet: bool = False,
        cheap_steps: tuple[int, float] = (0, 1.0),
        live: bool = False,
    ):
        super().__init__()
        self.quiet, self.cheap_steps, self.live = quiet, cheap_steps, live and not quiet
        self.phase_seconds = 0.0  # evaluation etc. since the last chunk line
        self.total, self.batch_size = total_steps, batch_size
        self.every_s, self.intra_epoch = every_s, intra_epoch
        self.step = self.start_step = 0
        self.epoch_steps, self.epoch_time = 0, 0.0
        self.train_time = 0.0  # seconds inside training steps, this process
        self.earlier_train_time = 0.0  # the same, of the invocations this run resumed from
        self.earlier_images_per_sec = 0.0  # the speed they measured (a run resumed at its end trains none)
        self.steady_steps, self.steady_time = 0, 0.0  # excluding the first steps (tracing)
        # (perf_counter, global step) at this process's start and its last chunk ends: the ETA's window
        self.marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=ETA_CHUNKS + 1)
        # The run's wall time over every command that trained it: `command_started` is when this
        # command began (time.time(); the procedure sets it). --time_budget runs a command in
        # segments, each restoring the last one's checkpoint: that is no resume, so a restored
        # state from this very command keeps the command's first step and earlier time.
        self.command_started = time.time()
        self.command_step: int | None = None  # the step this command began at
        self.wall_before_command = 0.0  # the earlier commands' wall seconds, to their last checkpoint

    @property
    def total_train_time(self) -> float:
        """Seconds inside training steps over every invocation of the run (kept in checkpoints)."""
        return self.earlier_train_time + self.train_time

    def command_time(self) -> float:
        """Wall seconds since this command began."""
        return time.time() - self.command_started

    def run_wall_time(self) -> float:
        """Wall seconds of the whole run: the earlier commands' (each to its last checkpoint), and
        this one's."""
        return self.wall_before_command + self.command_time()

    def get_state(self) -> dict:
        return {
            "train_time_s": self.total_train_time,
            "images_per_sec": self.images_per_sec(),
            "wall_time_s": self.run_wall_time(),
            "command_started": self.command_started,
            "command_step": self.command_step or 0,
            "wall_before_command_s": self.wall_before_command,
        }

    def set_state(self, state: dict) -> None:
        self.earlier_train_time = float(state.get("train_time_s", 0.0))
        self.earlier_images_per_sec = float(state.get("images_per_sec", 0.0))
        if state.get("command_started") == self.command_started:  # a segment of this command
            self.command_step = int(state.get("command_step", 0))
            self.wall_before_command = float(state.get("wall_before_command_s", 0.0))
        else:  # a command resuming the run; checkpoints written before wall times: their training time
            self.wall_before_command = float(state.get("wall_time_s", self.earlier_train_time))

    def continues_finished_run(self, wall_time_s: float) -> None:
        """This command extends a finished run: its whole time is its summary's `wall_time_s`."""
        if self.command_step is None:  # not a later segment of the command that finished it
            self.wall_before_command = max(self.wall_before_command, wall_time_s)

    def on_train_begin(self, logs=None):
        self.step = self.start_step = global_step(self.model)
        if self.command_step is None:
            self.command_step = self.step
        self.began = self.last_print = time.perf_counter()
        self.marks.append((self.began, self.step))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_steps, self.epoch_time = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        dt = now - self.t0
        self.step += 1
        self.epoch_steps += 1
        self.epoch_time += dt
        self.train_time += dt
        if self.step - self.start_step > 5:
            self.steady_steps += 1
            self.steady_time += dt
        every = 0.5 if self.live else self.every_s
        if (self.live or self.intra_epoch) and not self.quiet and now - self.last_print >= every:
            self.last_print = now
            loss = float(logs["loss"]) if logs and "loss" in logs else float("nan")
            self._show(f"{self._where()} loss {loss:.4f} {self.images_per_sec():.0f} img/s ETA {self.eta()}")

    def _show(self, line: str, permanent: bool = False) -> None:
        """A status line: redrawn in place on a terminal (until a permanent one), else printed."""
        if self.live:
            sys.stdout.write(f"\r{line}\x1b[K" + ("\n" if permanent else ""))
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def phase(self, what: str) -> None:
        """Shows, on a terminal, what the run is doing between training steps (e.g. evaluating)."""
        if self.live:
            self._show(f"{self._where()} {what}...")

    def took(self, seconds: float) -> None:
        """Counts `seconds` spent outside training steps (evaluation) into the next chunk line."""
        self.phase_seconds += seconds

    def _where(self) -> str:
        return f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"

    def eta(self) -> str:
        since, first = self.marks[0]  # on_train_begin put the first mark
        done = self._cost(first, self.step)
        if done <= 0:
            return "?"
        per_step = (time.perf_counter() - since) / done
        return duration(self._cost(self.step, self.total) * per_step)

    def _cost(self, first: int, end: int) -> float:
        """Steps first..end-1 in later steps' cost."""
        n, c = self.cheap_steps
        cheap = max(0, min(end, n) - first)
        return end - first - (1 - c) * cheap

    def images_per_sec(self) -> float:
        """Training images per second in this invocation's steady steps (else the previous one's)."""
        steady = self.steady_steps > 0
        steps, secs = (self.steady_steps, self.steady_time) if steady else (self.epoch_steps, self.epoch_time)
        return steps * self.batch_size / secs if secs else self.earlier_images_per_sec

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self.marks.append((time.perf_counter(), self.step))
        logs["step"] = self.step
        logs["images_per_sec"] = (
            self.epoch_steps * self.batch_size / self.epoch_time if self.epoch_time else 0.0
        )
        parts = [self._where()]
        for key in ("loss", "error", "val_loss", "val_error", "test_loss", "test_error"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}" if "loss" in key else f"{key} {logs[key]:.2%}")
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.4g}")
        parts.append(f"{logs['images_per_sec']:.0f} img/s")
        if self.phase_seconds >= 1:
            parts.append(f"evaluation {duration(self.phase_seconds)}")
        parts.append(f"ETA {self.eta()}")
        self.phase_seconds = 0.0
        if not self.quiet:
            self._show("  ".join(parts), permanent=True)
        self.last_print = time.perf_counter()
