"""Process safety for long stages: one process per run, and a clean stop on signals.

`RunLock` takes an exclusive, non-blocking `flock` on a lock file (released by the OS
even on kill -9), so two processes on the same run directory or checkpoint fail fast
with a clear message instead of corrupting each other. `StopOnSignal` turns the first
SIGINT/SIGTERM into a flag the training loop polls between iterations, so the stage
can write a mid-epoch checkpoint and exit; a second signal interrupts at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import signal
from pathlib import Path

from .params import ParamsError


class Interrupted(Exception):
    """The stage stopped on a signal after saving its checkpoint."""


class RunLock:
    def __init__(self, *paths: Path):
        self.paths = [Path(p) for p in paths]
        self._files = []

    @staticmethod
    def for_dir(lock_root: Path, run_dir: str | Path) -> Path:
        key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        return lock_root / "locks" / f"{key}.lock"

    def __enter__(self) -> "RunLock":
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                f.close()
                self.__exit__()
                raise ParamsError(f"another process (pid {holder}) is already running this stage "
                                  f"(lock {path}); wait for it or stop it") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            self._files.append(f)
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()
        self._files = []


class StopOnSignal:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def is_set(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopOnSignal":
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
