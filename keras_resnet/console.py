"""What a long step shows while it works: one progress display, plain lines when not on a terminal.

    bar = console.Bar(len(paths), "decoding images under /data/x")
    for i, ... in enumerate(work): bar.update(i + 1)
    bar.close()

On a terminal the bar is redrawn in place; redirected to a file or a pipe it prints a plain line
every `every_s` seconds (no escape codes, no carriage returns), with the rate and the ETA, and a
last line with the total time.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """`1h02m`, `12m05s`, `42s`."""
    seconds = max(int(round(seconds)), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def percent(value: float | None) -> str:
    """An error or accuracy as the user reads it: `7.53%`, or `not measured`."""
    return "not measured" if value is None else f"{value:.2%}"


class Bar:
    """Progress over `total` items of work named `what`."""

    def __init__(self, total: int, what: str, *, unit: str = "images", every_s: float = 10.0, stream=None):
        self.total, self.what, self.unit, self.every_s = max(int(total), 1), what, unit, every_s
        self.stream: TextIO = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.began = self.last = time.perf_counter()
        self.done = 0
        print(f"{what}: {self.total:,} {unit}", file=self.stream, flush=True)

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        line = self._line(now)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        took = time.perf_counter() - self.began
        end = f"{self.what}: {self.done:,}/{self.total:,} {self.unit} in {duration(took)}"
        print(("\r" + end + "\x1b[K") if self.tty else end, file=self.stream, flush=True)

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self.began, 1e-9)
        eta = duration((self.total - self.done) / rate) if rate else "?"
        return f"  {self.done:,}/{self.total:,} ({100 * self.done / self.total:.0f}%) {rate:,.0f}/s ETA {eta}"
