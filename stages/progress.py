"""Progress reporting for long commands: a live line on a terminal, epoch lines in logs.

On a TTY the current line shows epoch, step, loss and ETA (refreshed at most twice a
second, so the host sync for the loss value is rare); when stderr is not a TTY (CI,
DVC logs) only one line per epoch is printed. Every line also goes to a log file.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Live progress of an epoch loop; ``clock`` is injectable so tests can check the ETA.

    The live ETA is the measured rate of this process times the work left: seconds per
    step since the first step this process saw (so neither the start-up, nor the first,
    slowest step, nor the epochs a resumed run skipped distort it) times the steps left
    in the run. Steps per epoch come from the loop (``step(i, n, ...)``); when the loop
    cannot tell (``n`` <= 0) the line shows ``step i`` alone and the ETA uses whole epochs
    timed by this process, or is shown as ``ETA ?`` until one has ended: a fraction
    computed from an unknown ``n`` is what made the retrain line read "step 24/0 4.0%".
    """

    def __init__(self, label: str, epochs: int, log_path: str | Path | None = None, stream=None,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.epochs = label, epochs
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log = open(log_path, "a") if log_path else None
        self.clock = clock
        self.epoch = 0
        self._last = -math.inf  # when the live line was last drawn
        self._anchor: tuple[float, float] | None = None  # (time, epochs of work done) at the first step seen
        self._epoch_started: tuple[float, int] | None = None  # (time, epoch) of the first epoch started here
        self._epoch_t = 0.0  # when the current epoch started

    def start_epoch(self, epoch: int, done_epochs: int) -> None:
        """Epoch ``epoch`` (1-based) begins; ``done_epochs`` are complete (kept for callers)."""
        self.epoch = epoch
        self._epoch_t = self.clock()
        if self._epoch_started is None:
            self._epoch_started = (self._epoch_t, epoch)

    def eta(self, i: int, n: int, now: float) -> float | None:
        """Seconds left in the run after step ``i`` of ``n`` of the current epoch; None if unknown."""
        if n > 0:
            done = self.epoch - 1 + i / n  # epochs of work done, counting the part of this one
            if self._anchor is None:
                self._anchor = (now, done)
                return None
            t0, done0 = self._anchor
            if done <= done0:
                return None
            return (now - t0) / (done - done0) * (self.epochs - done)
        if self._epoch_started is None or self.epoch <= self._epoch_started[1]:
            return None  # no whole epoch timed yet
        t0, e0 = self._epoch_started
        per_epoch = (self._epoch_t - t0) / (self.epoch - e0)
        return per_epoch * (self.epochs - self.epoch + 1) - (now - self._epoch_t)

    def step(self, i: int, n: int, loss) -> None:
        """Step ``i`` of ``n`` (``n`` <= 0: unknown) of the current epoch has finished."""
        if not self.tty:
            return
        now = self.clock()
        remaining = self.eta(i, n, now)
        if now - self._last < 0.5 and (n <= 0 or i < n):
            return
        self._last = now
        if n > 0:
            where = f"step {i}/{n} {100 * (self.epoch - 1 + i / n) / self.epochs:5.1f}%"
        else:
            where = f"step {i}"
        self.stream.write(f"\r{self.label} epoch {self.epoch}/{self.epochs} {where} "
                          + (f"loss {float(loss):.3f} " if loss is not None else "")
                          + f"ETA {'?' if remaining is None else _fmt_seconds(remaining)}   ")
        self.stream.flush()

    def end_epoch(self, row: dict, keys: tuple[str, ...]) -> None:
        parts = [f"{self.label} epoch {row.get('epoch', self.epoch)}/{self.epochs}"]
        for k in keys:
            v = row.get(k)
            if v is not None:
                parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        per_epoch = row.get("seconds", 0.0)
        parts.append(f"ETA {_fmt_seconds(per_epoch * (self.epochs - row.get('epoch', self.epoch)))}")
        self.line(" | ".join(parts))

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.log:
            self.log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self.log.flush()

    def close(self) -> None:
        if self.log:
            self.log.close()
