"""Process safety for long stages: one process per run, and a clean stop on signals.

`RunLock` takes an exclusive, non-blocking `flock` on a lock file (released by the OS
even on kill -9), so two processes on the same run directory or checkpoint fail fast
with a clear message instead of corrupting each other. `StopOnSignal` turns the first
SIGINT/SIGTERM into a flag the training loop polls between iterations, so the stage
can write a mid-epoch checkpoint and exit; the same signal again interrupts at once. The
first signal is acknowledged on stderr at once: a paper-size step can take a minute
on a busy CPU, and a silent wait reads as a hang.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Protocol

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
            while True:
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
                if _same_file(f, path):
                    break
                f.close()  # `darts clean` unlinked it between our open and flock: lock the new one
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


def _same_file(f, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def lock_held(path: Path) -> bool:
    """Whether a running process holds the `RunLock` on ``path`` (False if there is no file)."""
    try:
        f = open(path, "r")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def remove_if_unheld(path: Path, also=None) -> bool:
    """Delete the lock file ``path`` (and run ``also()``, e.g. removing the folder it guards)
    while holding its lock, so no process can be inside the run meanwhile; False, and
    nothing removed, if a process holds it. A process that opened the file just before
    the unlink notices (`RunLock` checks the file is still the one at its path)."""
    try:
        f = open(path, "r")
    except FileNotFoundError:
        if also is not None:
            also()
        return True
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if also is not None:
            also()
        path.unlink(missing_ok=True)
        return True


def _say_now(text: str) -> None:
    """Write to stderr's file descriptor directly: a signal handler may run while the main
    thread is inside ``sys.stderr.write`` (the progress line), and re-entering that
    buffered writer raises RuntimeError; ``os.write`` on the descriptor does not."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # replaced stderr (e.g. captured in-process)
        sys.stderr.write(text)
        sys.stderr.flush()
        return
    prefix = "\r" + " " * 100 + "\r" if os.isatty(fd) else ""  # over the live progress line
    os.write(fd, (prefix + text).encode())


class StopOnSignal:
    """First SIGINT/SIGTERM: set a flag (polled after each step) and say so at once; the same
    signal again: stop now (the message says "press Ctrl-C again" / "send SIGTERM again")."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notify: Callable[[str], None] = _say_now):
        self.signum: int | None = None
        self.notify = notify
        self._old = {}

    def is_set(self) -> bool:
        return self.signum is not None

    @staticmethod
    def message(signum: int) -> str:
        again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {signal.Signals(signum).name} again"
        return (f"{signal.Signals(signum).name} received: stopping after the current step (checkpoint follows); "
                f"{again} to stop now without saving\n")

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum != self.signum:
                # the same request arriving twice, not "stop now": a Slurm preemption sends
                # SIGTERM to every process of the job, and `darts study run` (itself signalled)
                # passes a SIGINT on; taking that as a second signal lost the mid-run checkpoint
                return
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # the same signal again: stop now
            raise KeyboardInterrupt
        self.signum = signum
        try:
            self.notify(self.message(signum))
        except OSError:  # stderr gone (closed pipe): stopping matters more than saying so
            pass

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


@contextlib.contextmanager
def guarded(state_file: Path | None, out_dir: str | Path, lock_root: Path, lead: bool = True):
    """What every long stage holds while it runs: the locks of its checkpoint and of its output
    folder (one process per run) and the stop flag a signal sets. Yields the StopOnSignal.
    Under DDP only the lead process (``lead``) locks and speaks; the others still poll."""
    lock = RunLock(state_file.with_name("lock"), RunLock.for_dir(lock_root, out_dir)) if lead else contextlib.nullcontext()
    with lock, StopOnSignal() if lead else StopOnSignal(notify=lambda text: None) as stop:
        yield stop


class EpochLoop(Protocol):
    """A resumable loop as ``run_epochs`` drives it (darts' Searcher, a Retrainer)."""

    epoch: int  # epochs completed

    @property
    def done(self) -> bool: ...


def run_epochs(loop: EpochLoop, run_epoch: Callable[[Callable[[], bool]], dict | None],
               should_stop: Callable[[], bool], progress, end_epoch: Callable[[dict], None],
               stopped: Callable[[], None]) -> None:
    """The epochs of a resumable stage until ``loop.done``, written once for search and retrain.

    ``run_epoch(should_stop)`` runs one epoch and returns its row, or None when a stop request
    cut it short; ``end_epoch(row)`` logs it and checkpoints; on a stop, ``stopped()`` saves the
    checkpoint and says where, then Interrupted is raised. The flag is polled before each epoch
    too: a signal in an epoch's last step lets that epoch finish, and the next must not start
    (that cost a whole extra step)."""
    while not loop.done:
        row = None
        if not should_stop():
            progress.start_epoch(loop.epoch + 1, loop.epoch)
            row = run_epoch(should_stop)
        if row is None:
            stopped()
            raise Interrupted()
        end_epoch(row)
