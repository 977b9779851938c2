"""The stage server (stages/stageserver.py): a stage run through it is the same run as a
fresh `python -m stages` process (bit-identical search, exit codes, one-line errors,
Ctrl-C), and anything unusual falls back to the plain run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from test_resume import _params, _same_search, _said_then_stopped

from stages import stageserver

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the stage server needs fork (POSIX)")


def _env(work: Path, server: str | None, tag: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(work / f".ck-{tag}"))
    env.pop("DARTS_STAGE_SERVER", None)
    if server:
        env["DARTS_STAGE_SERVER"] = server
    return env


def _stages(args: list[str], work: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=work, env=env, capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A work folder with prepared data, and a server started as `darts study run` starts it
    (from the checkout's root, as DVC runs stages there)."""
    work = tmp_path_factory.mktemp("served")
    _params(work)
    assert _stages(["prepare-split", "--out", "prep"], work, _env(work, None, "prep")).returncode == 0
    log = work / "server.log"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with stageserver.started(_env(work, None, "server"), log) as sock:
            os.chdir(cwd)
            assert sock, log.read_text()
            yield work, sock, log
    finally:
        os.chdir(cwd)


def test_search_through_the_server_equals_a_fresh_process(served):
    work, sock, log = served
    args = ["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep"]
    fresh = _stages(args + ["--out", "fresh/search"], work, _env(work, None, "fresh"))
    forked = _stages(args + ["--out", "forked/search"], work, _env(work, sock, "forked"))
    assert fresh.returncode == 0 and forked.returncode == 0, forked.stderr[-2000:]
    assert "running in this process" not in forked.stderr  # it did go through the server
    assert "search --config ROBUST --seed 0 --prepared prep --out forked/search" in log.read_text()
    _same_search(work / "fresh" / "search", work / "forked" / "search")
    assert fresh.stdout == forked.stdout


def test_bad_input_gives_the_same_one_line_error_and_exit_code(served):
    work, sock, _ = served
    args = ["search", "--config", "NO_SUCH", "--seed", "0", "--prepared", "prep", "--out", "bad/search"]
    fresh = _stages(args, work, _env(work, None, "bad"))
    forked = _stages(args, work, _env(work, sock, "bad"))
    assert fresh.returncode == forked.returncode == 2
    assert forked.stderr == fresh.stderr and forked.stderr.startswith("error: ") and "NO_SUCH" in forked.stderr


def test_ctrl_c_reaches_the_stage_through_the_client(served):
    """The client forwards SIGINT: the stage says so at once, checkpoints, exits 130."""
    work, sock, _ = served
    proc = subprocess.Popen([sys.executable, "-m", "stages", "search", "--config", "ROBUST", "--seed", "0",
                             "--prepared", "prep", "--out", "ctrlc/search"], cwd=work, env=_env(work, sock, "ctrlc"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = work / "ctrlc" / "search" / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 1/3" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the search finished before the signal arrived (machine too fast for this timing)")
    assert proc.returncode == 130, err[-2000:]
    _said_then_stopped(err, "stopped by signal 2 at step")


def test_no_server_or_a_refusal_falls_back_to_the_plain_run(served, tmp_path, capfd):
    work, sock, _ = served
    assert stageserver.run_via_server(str(tmp_path / "absent"), ["--help"]) is None
    assert "running in this process" in capfd.readouterr().err
    # a stage run with an unreachable server still runs, in its own process
    r = _stages(["check-params", "--out", "ok"], work, _env(work, str(tmp_path / "absent"), "x"))
    assert r.returncode == 0 and (work / "ok").is_file(), r.stderr


def test_refusal_reasons(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("x = 1\n")
    sources = {str(src): src.stat().st_mtime_ns}
    ok = {"python": sys.executable, "package": stageserver._here()}
    assert stageserver._refusal(ok, [0, 1, 2], sources) is None
    assert "3 file descriptors" in stageserver._refusal(ok, [0, 1], sources)
    assert "client runs /other/python" in stageserver._refusal({**ok, "python": "/other/python"}, [0, 1, 2], sources)
    assert "stages package" in stageserver._refusal({**ok, "package": "/elsewhere"}, [0, 1, 2], sources)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 1_000_000_000))
    assert "changed since the server started" in stageserver._refusal(ok, [0, 1, 2], sources)


def test_a_stage_killed_in_the_server_kills_its_client_the_same_way_and_resumes(served):
    """The stage dies of SIGKILL mid-epoch (fault injection): the client dies of SIGKILL too,
    as a plain stage process would for DVC, and the rerun resumes to the uninterrupted result."""
    work, sock, _ = served
    args = ["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep"]
    ref = _stages(args + ["--out", "ref9/search"], work, _env(work, None, "ref9"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    env = _env(work, sock, "k9")
    r = _stages(args + ["--out", "k9/search"], work, {**env, "DARTS_FAULT_KILL_AT_STEP": "27"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = _stages(args + ["--out", "k9/search"], work, env)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-2000:]
    _same_search(work / "ref9" / "search", work / "k9" / "search")


def test_a_client_killed_with_sigkill_takes_its_stage_with_it(served):
    """kill -9 of the process DVC started ends the stage too (no orphan holding the run):
    a rerun right after can take the run's lock and resume."""
    work, sock, _ = served
    env = _env(work, sock, "orphan")
    args = ["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "orphan/search"]
    proc = subprocess.Popen([sys.executable, "-m", "stages", *args], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = work / "orphan" / "search" / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 1/3" in log.read_text()):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    time.sleep(1.0)  # the server's loop notices within 0.1 s
    r = _stages(args, work, env)
    assert r.returncode == 0, r.stderr[-2000:]
