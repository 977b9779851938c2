"""Progress reporting for long commands: a live line on a terminal, epoch lines in logs.

On a TTY the current line shows epoch, step, loss and ETA (refreshed at most twice a
second, so the host sync for the loss value is rare); when stderr is not a TTY (CI,
DVC logs) only one line per epoch is printed. Every line also goes to a log file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, label: str, epochs: int, log_path: str | Path | None = None, stream=None):
        self.label, self.epochs = label, epochs
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log = open(log_path, "a") if log_path else None
        self.t0 = time.perf_counter()
        self.epoch = 0
        self._last = 0.0

    def start_epoch(self, epoch: int, done_epochs: int) -> None:
        self.epoch = epoch
        if not hasattr(self, "_done0"):
            self._done0 = done_epochs

    def step(self, i: int, n: int, loss) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.5 and i < n:
            return
        self._last = now
        frac = (self.epoch - 1 + i / max(n, 1)) / self.epochs
        done = frac - self._done0 / self.epochs  # progress made by this process (resumes start late)
        remaining = (now - self.t0) / max(done, 1e-9) * (1.0 - frac)
        self.stream.write(f"\r{self.label} epoch {self.epoch}/{self.epochs} step {i}/{n} "
                          + (f"loss {float(loss):.3f} " if loss is not None else "") + f"{100 * frac:5.1f}% ETA {_fmt_seconds(remaining)}   ")
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
