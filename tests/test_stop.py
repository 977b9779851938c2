"""StopOnSignal says at once what a first Ctrl-C does; a second one stops now. Lock helpers
for `darts clean`. (tests/test_resume.py runs the stages: the stop comes right after the
step a signal lands in, at an epoch's end too.)"""
from __future__ import annotations

import os
import signal

import pytest

from stages.runguard import RunLock, StopOnSignal, lock_held, remove_if_unheld


def test_first_sigint_is_acknowledged_at_once_second_stops_now():
    # whatever was installed before (SIG_IGN under nohup or a background CI job, Python's
    # default_int_handler in a terminal) is what must come back
    before = signal.getsignal(signal.SIGINT)
    said: list[str] = []
    with StopOnSignal(notify=said.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set() and stop.signum == signal.SIGINT  # the handler ran before this line
        assert said == ["SIGINT received: stopping after the current step (checkpoint follows); "
                        "press Ctrl-C again to stop now without saving\n"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert len(said) == 1
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_different_second_signal_is_the_same_request_not_stop_now():
    """A Slurm preemption: SIGTERM to every process of the job, then `darts study run` (also
    signalled) passes a SIGINT on to the stage; the stage must still save its checkpoint."""
    said: list[str] = []
    with StopOnSignal(notify=said.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: still stopping after the step
        assert stop.signum == signal.SIGTERM and len(said) == 1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the same one again: stop now


def test_sigterm_message_names_sigterm():
    said: list[str] = []
    with StopOnSignal(notify=said.append):
        os.kill(os.getpid(), signal.SIGTERM)
    assert said and said[0].startswith("SIGTERM received: stopping after the current step")
    assert "send SIGTERM again to stop now without saving" in said[0]


def test_default_notify_writes_to_stderr_descriptor(capfd):
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
    assert "SIGINT received: stopping after the current step" in capfd.readouterr().err


def test_lock_helpers(tmp_path):
    path = tmp_path / "locks" / "a.lock"
    assert not lock_held(path)  # no file: nobody holds it
    with RunLock(path):
        assert lock_held(path)
        assert not remove_if_unheld(path) and path.is_file()  # held: never removed
    assert path.is_file() and not lock_held(path)
    removed: list[bool] = []
    assert remove_if_unheld(path, also=lambda: removed.append(True))
    assert not path.exists() and removed == [True]
    with RunLock(path):  # a run after a clean recreates and takes it
        assert lock_held(path)
