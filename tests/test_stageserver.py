"""The stage server (stages/stageserver.py): a stage run through it is the same run as a
fresh `python -m stages` process (bit-identical search, exit codes, one-line errors,
Ctrl-C), and anything unusual falls back to the plain run. Auto mode (stages/autoserver.py)
starts a server on first use, which exits when idle or stale; `off` never starts one."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT
from test_resume import _params, _same_search, ctrl_c_after_epoch_1

from stages import autoserver, stageclient, stageserver

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the stage server needs fork (POSIX)")


def _env(work: Path, server: str | None, tag: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(work / f".ck-{tag}"))
    env["DARTS_STAGE_SERVER"] = server or "off"
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
    ctrl_c_after_epoch_1(work, _env(work, sock, "ctrlc"), "ctrlc/search")


def test_no_server_or_a_refusal_falls_back_to_the_plain_run(served, tmp_path, capfd):
    work, sock, _ = served
    assert stageclient.run_via_server(str(tmp_path / "absent"), ["--help"]) is None
    assert "running in this process" in capfd.readouterr().err
    # a stage run with an unreachable server still runs, in its own process
    r = _stages(["check-params", "--out", "ok"], work, _env(work, str(tmp_path / "absent"), "x"))
    assert r.returncode == 0 and (work / "ok").is_file(), r.stderr


def test_refusal_reasons(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("x = 1\n")
    sources = {str(src): stageserver._stamp(str(src))}
    ok = {"python": stageserver.interpreter(), "package": stageserver._here()}
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


# --------------------------------------------------------------------------- auto mode

@pytest.fixture
def auto(tmp_path):
    """An environment in auto mode with a private runtime folder (short: a socket path has
    ~100 bytes) and this checkout first on the path; kills whatever server it started."""
    runtime = tempfile.mkdtemp(prefix="dsa")
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime, OMP_NUM_THREADS="1", DARTS_STAGE_SERVER="auto",
               DARTS_CHECKPOINT_DIR=str(tmp_path / ".ck"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    yield env
    autoserver.stop_all(runtime)
    shutil.rmtree(runtime, ignore_errors=True)


def _wait(cond, seconds: float = 90.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def _listening(env: dict, count: int = 1) -> autoserver.Place:
    """Wait until the auto server for ``env`` has started ``count`` times and listens."""
    where = autoserver.place(env)
    log = Path(where.log)
    assert _wait(lambda: os.path.exists(where.socket) and log.is_file()
                 and log.read_text().count(" listening on ") >= count), log.read_text() if log.is_file() else "no log"
    return where


def test_auto_mode_starts_a_server_and_the_next_search_through_it_equals_a_plain_one(served, auto):
    work, _, _ = served
    first = _stages(["check-params", "--out", "auto-ok"], work, auto)
    assert first.returncode == 0 and (work / "auto-ok").is_file(), first.stderr
    assert first.stderr.startswith("stage server: starting one for the next commands (log ")
    assert len(first.stderr.splitlines()) == 1  # one informative line, no warning
    where = _listening(auto)
    args = ["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep"]
    plain = _stages(args + ["--out", "plain/search"], work, {**auto, "DARTS_STAGE_SERVER": "off"})
    forked = _stages(args + ["--out", "auto/search"], work, auto)
    assert plain.returncode == 0 and forked.returncode == 0, forked.stderr[-2000:]
    assert "stage server" not in forked.stderr and "running in this process" not in forked.stderr
    assert f"{' '.join(args)} --out auto/search" in Path(where.log).read_text()
    _same_search(work / "plain" / "search", work / "auto" / "search")
    assert plain.stdout == forked.stdout


def test_an_idle_auto_server_exits_and_frees_its_place(served, auto):
    work, _, _ = served
    env = {**auto, "DARTS_STAGE_SERVER_IDLE": "1.5"}
    assert _stages(["check-params", "--out", "idle-ok"], work, env).returncode == 0
    where = autoserver.place(env)
    log = Path(where.log)  # it may be gone before we could see its socket: read its log
    assert _wait(lambda: log.is_file() and "exiting" in log.read_text()), log.read_text() if log.is_file() else ""
    assert " listening on " in log.read_text() and "stopped listening: idle for 1.5 s" in log.read_text()
    assert not os.path.exists(where.socket) and not autoserver._held(where.lock)


def test_a_changed_module_file_makes_the_auto_server_refuse_and_make_way(served, auto, tmp_path):
    """Any loaded module file counts: here a sitecustomize.py that the server imported at start-up."""
    work, _, _ = served
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sitecustomize.py").write_text("WATCHED = 1\n")
    env = {**auto, "PYTHONPATH": os.pathsep.join([str(mods), auto["PYTHONPATH"]])}
    assert _stages(["check-params", "--out", "s1"], work, env).returncode == 0
    where = _listening(env)
    assert _stages(["check-params", "--out", "s2"], work, env).stderr == ""  # through the server
    (mods / "sitecustomize.py").write_text("WATCHED = 2\n")
    r = _stages(["check-params", "--out", "s3"], work, env)
    assert r.returncode == 0 and (work / "s3").is_file(), r.stderr
    assert "sitecustomize.py changed since the server started; running in this process, a fresh server" in r.stderr
    text = Path(where.log).read_text()
    assert "stopped listening: a module file changed" in text and "exiting" in text
    _listening(env, count=2)  # the refused client started the next one


def test_off_never_starts_a_server(served, auto):
    work, _, _ = served
    env = {**auto, "DARTS_STAGE_SERVER": "off"}
    for out in ("off1", "off2"):
        r = _stages(["check-params", "--out", out], work, env)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not list(Path(auto["XDG_RUNTIME_DIR"]).rglob("*.sock")) and not list(Path(auto["XDG_RUNTIME_DIR"]).rglob("*.log"))


def test_the_auto_key_covers_import_time_settings_only():
    base = {"PATH": "/bin"}
    key = autoserver.fingerprint(base)
    for name in ("OMP_NUM_THREADS", "PYTHONPATH", "LD_PRELOAD", "DARTS_CHECKPOINT_DIR", "TORCH_HOME"):
        assert autoserver.fingerprint({**base, name: "x"}) != key, name
    for name in ("CUDA_VISIBLE_DEVICES", "DARTS_DEVICE", "DARTS_THREADS", "DARTS_STAGE_SERVER", "HOME"):
        assert autoserver.fingerprint({**base, name: "x"}) == key, name
    # every environment variable our modules read at import time is in the key
    names = set()
    for f in [*ROOT.joinpath("darts").rglob("*.py"), *ROOT.joinpath("stages").rglob("*.py")]:
        if f.name == "__main__.py":  # the client's, never imported by a server
            continue
        for line in f.read_text().splitlines():
            if not line.startswith((" ", "\t", "#")) and ("environ" in line or "getenv" in line):
                names.update(re.findall(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["']([A-Z0-9_]+)""", line))
    assert names, "the scan found nothing: it no longer matches the code"
    for n in names:
        assert n.startswith(autoserver.IMPORT_TIME_PREFIXES) or n in autoserver.IMPORT_TIME_NAMES, n


def test_the_child_takes_the_clients_umask_niceness_and_cpus():
    """A fork would keep the server's: `nice dvc repro` or a umask must reach the stage."""
    cpus = sorted(os.sched_getaffinity(0))[:1] if hasattr(os, "sched_getaffinity") else None
    want = {"umask": 0o027, "nice": os.getpriority(os.PRIO_PROCESS, 0) + 2, "cpus": cpus}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        stageserver._take_process_settings(want)
        got = [os.umask(0), os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)) if cpus else None]
        os.write(w, json.dumps(got).encode())
        os._exit(0)
    os.close(w)
    got = json.loads(os.read(r, 1000))
    os.waitpid(pid, 0)
    assert got == [want["umask"], want["nice"], cpus]


def test_one_interpreter_under_two_names_is_served(served, tmp_path):
    """`darts study run` runs as `.../bin/python3.11` (its entry-point script), DVC's stages as
    `.../bin/python`: the same interpreter, which the server must not refuse (it did)."""
    work, sock, log = served
    alias = tmp_path / "python-alias"
    alias.symlink_to(os.path.realpath(sys.executable))
    probe = "from stages.stageclient import interpreter; print(interpreter())"
    named = subprocess.run([str(alias), "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    if named != stageserver.interpreter():
        pytest.skip(f"this Python reports another prefix under a symlinked name ({named})")
    r = subprocess.run([str(alias), "-m", "stages", "check-params", "--out", "alias.ok"], cwd=work,
                       env=_env(work, sock, "alias"), capture_output=True, text=True)
    assert r.returncode == 0 and "running in this process" not in r.stderr, r.stderr
    assert "check-params --out alias.ok" in log.read_text()


def test_study_commands_never_go_through_a_server(tmp_path):
    """`python -m stages study …` orchestrates (processes, signals) for hours: it runs in its own
    process even when DARTS_STAGE_SERVER names a server (here an absent one: no fallback line)."""
    env = dict(os.environ, DARTS_STAGE_SERVER=str(tmp_path / "absent"))
    r = subprocess.run([sys.executable, "-m", "stages", "study", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout, r.stderr
    assert "stage server" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "stages", "check-params", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert "unreachable" in r.stderr, r.stderr  # any other command does try the server
