"""Resume after kill -9 / SIGTERM gives the uninterrupted result; NaN stops the run;
a failed checkpoint write keeps the previous one; two processes on one run are refused.

These run the real `darts` command in subprocesses (a kill -9 needs a real process).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_params

ROBUST_CONFIG = {"ROBUST": {"activation": "crb", "schedule": "fimt", "regularization": "admm"}}


def _params(tmp: Path, epochs: int = 3) -> Path:
    p = tiny_params(ROBUST_CONFIG)
    p["search"].update({"epochs": epochs, "fimt_threshold": 1e6, "admm_n": 2, "alpha_lr": 0.05})
    p["retrain"].update({"epochs": epochs})
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _darts(args: list[str], cwd: Path, env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(cwd / ".checkpoints"))
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    _params(d)
    _darts(["prepare-split", "--out", "prep"], d)
    _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "ref/search"], d)
    return d


def _same_search(a: Path, b: Path) -> None:
    ha = torch.load(a / "history.pt", weights_only=False)
    hb = torch.load(b / "history.pt", weights_only=False)
    for cell in ("normal", "reduce"):
        assert torch.equal(ha["alpha"][cell], hb["alpha"][cell]), cell
    assert ha["steps"] == hb["steps"] and ha["pruned"] == hb["pruned"] and ha["alpha_steps"] == hb["alpha_steps"]
    sa = json.loads((a / "search.json").read_text())
    sb = json.loads((b / "search.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(sa["epochs"]) == strip(sb["epochs"])
    for key in ("alpha_steps", "w_steps", "pruned_ops", "val_acc", "val_loss"):
        assert sa[key] == sb[key], key
    ga = torch.load(a / "supernet.pt", weights_only=True)["state"]
    gb = torch.load(b / "supernet.pt", weights_only=True)["state"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_search_kill9_mid_epoch_resumes_identically(work):
    steps_per_epoch = 20  # 352 images, train fraction 10/11 -> 320 / batch 16
    r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "k9/search"], work,
               {"DARTS_FAULT_KILL_AT_STEP": str(steps_per_epoch + 7)}, check=False)
    assert r.returncode == -signal.SIGKILL
    assert list((work / ".checkpoints").glob("search-*/state.pt")), "no checkpoint survived the kill"
    r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "k9/search"], work)
    assert "resuming from" in r.stderr
    _same_search(work / "ref" / "search", work / "k9" / "search")
    # a CRB run's genotype never holds `none` or a pruned op
    _darts(["discretize", "--search", "k9/search", "--out", "k9/genotype"], work)
    g = json.loads((work / "k9" / "genotype" / "genotype.json").read_text())
    state = torch.load(work / "k9" / "search" / "supernet.pt", weights_only=True)
    ops = state["ops"]
    from darts.space.primitives import edges

    rows = {(i, j): r for r, (i, j) in enumerate(edges())}
    for cell in ("normal", "reduce"):
        live = state["state"][f"live_{cell}"]
        for n, (op, src) in enumerate(g[cell]):
            assert op != "none" and live[rows[(n // 2, src)], ops.index(op)]


def test_search_sigterm_checkpoints_mid_epoch_and_resumes_identically(work):
    _params(work, epochs=3)
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(work / ".checkpoints"))
    proc = subprocess.Popen([sys.executable, "-m", "stages", "search", "--config", "ROBUST", "--seed", "0",
                             "--prepared", "prep", "--out", "term/search"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = work / "term" / "search" / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 1/3" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the search finished before the signal arrived (machine too fast for this timing)")
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by signal" in err
    r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "term/search"], work)
    assert "resuming from" in r.stderr
    _same_search(work / "ref" / "search", work / "term" / "search")


def test_same_seed_same_result(work):
    _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "again/search"], work)
    _same_search(work / "ref" / "search", work / "again" / "search")


def test_nan_stops_with_step_and_keeps_last_checkpoint(work):
    r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "nan/search"], work,
               {"DARTS_FAULT_NAN_AT_STEP": "25"}, check=False)
    assert r.returncode == 3, r.stderr[-2000:]
    msg = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert msg and "non-finite" in msg[0] and "step" in msg[0], r.stderr[-2000:]
    assert not (work / "nan" / "search" / "search.json").exists()
    owners = [p for p in (work / ".checkpoints").glob("search-*/owner.txt")
              if p.read_text() == str((work / "nan" / "search").resolve())]
    assert owners, "the last good checkpoint is gone"
    state = torch.load(owners[0].with_name("state.pt"), weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())


def test_retrain_kill9_resumes_identically(work):
    _darts(["discretize", "--search", "ref/search", "--out", "ref/genotype"], work)
    args = ["retrain", "--config", "ROBUST", "--seed", "0", "--genotype", "ref/genotype/genotype.json",
            "--prepared", "prep"]
    _darts(args + ["--out", "ref/retrain"], work)
    r = _darts(args + ["--out", "k9/retrain"], work, {"DARTS_FAULT_KILL_AT_STEP": "16"}, check=False)
    assert r.returncode == -signal.SIGKILL
    r = _darts(args + ["--out", "k9/retrain"], work)
    assert "resuming from" in r.stderr
    a = torch.load(work / "ref" / "retrain" / "model.pt", weights_only=True)["state"]
    b = torch.load(work / "k9" / "retrain" / "model.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_second_process_on_same_run_is_refused(work):
    from stages.runguard import RunLock

    lock = RunLock.for_dir(work / ".checkpoints", work / "busy" / "search")
    with RunLock(lock):
        r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "busy/search"],
                   work, check=False)
    assert r.returncode == 2 and "another process" in r.stderr


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    from darts.loops import checkpoint as ckpt

    path = tmp_path / "state.pt"
    ckpt.save_atomic({"epoch": 1}, path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        ckpt.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


# --- Ctrl-C: said at once, stop right after the step in progress (tests/test_stop.py: the handler) ---
STOP_MSG = "SIGINT received: stopping after the current step (checkpoint follows); press Ctrl-C again to stop now"


def _own_checkpoints(work: Path, name: str) -> dict:
    """A checkpoint folder of the test's own: keys do not include the output folder, so
    another test's checkpoint of the same run would otherwise be resumed."""
    return {"DARTS_CHECKPOINT_DIR": str(work / f".checkpoints-{name}")}


def _state_of(work: Path, out: str, name: str) -> dict:
    owner = str((work / out).resolve())
    states = [p.with_name("state.pt") for p in (work / f".checkpoints-{name}").glob("*/owner.txt")
              if p.read_text() == owner]
    assert len(states) == 1, states
    return torch.load(states[0], weights_only=False)


def _said_then_stopped(stderr: str, stopped: str) -> None:
    lines = stderr.splitlines()
    said = [i for i, line in enumerate(lines) if STOP_MSG in line]
    done = [i for i, line in enumerate(lines) if stopped in line]
    assert said and done and said[0] < done[0], stderr[-2000:]


@pytest.mark.parametrize("at_step,epoch", [(5, 0), (20, 1)])  # mid-epoch; an epoch's last step
def test_search_sigint_stops_after_the_step_it_lands_in(work, at_step, epoch):
    """The stop comes right after the step in progress: at step 20 (the last of epoch 1) the
    old loop finished the epoch, then ran step 21 of the next before it looked at the flag."""
    _params(work, epochs=3)
    out = f"int{at_step}/search"
    args = ["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", out]
    own = _own_checkpoints(work, out.split("/")[0])
    r = _darts(args, work, {**own, "DARTS_FAULT_SIGINT_AT_STEP": str(at_step)}, check=False)
    assert r.returncode == 130, r.stderr[-2000:]
    _said_then_stopped(r.stderr, f"stopped by signal {int(signal.SIGINT)} at step {at_step};")
    state = _state_of(work, out, out.split("/")[0])
    assert (state["step"], state["epoch"]) == (at_step, epoch)
    r = _darts(args, work, own)
    assert "resuming from" in r.stderr
    _same_search(work / "ref" / "search", work / out)


def _ref_retrain(work: Path) -> list[str]:
    args = ["retrain", "--config", "ROBUST", "--seed", "0", "--genotype", "ref/genotype/genotype.json",
            "--prepared", "prep"]
    if not (work / "ref" / "retrain" / "model.pt").is_file():
        _params(work, epochs=3)
        _darts(["discretize", "--search", "ref/search", "--out", "ref/genotype"], work)
        _darts(args + ["--out", "ref/retrain"], work)
    return args


def test_retrain_sigint_in_an_epochs_last_step_resumes_identically(work):
    """352 images / batch 32 = 11 steps an epoch. The old loop stopped after step 11 with the
    epoch 'unfinished' while the stream had moved on, so the resume trained an extra epoch."""
    args = _ref_retrain(work)
    own = _own_checkpoints(work, "int")
    r = _darts(args + ["--out", "int/retrain"], work, {**own, "DARTS_FAULT_SIGINT_AT_STEP": "11"}, check=False)
    assert r.returncode == 130, r.stderr[-2000:]
    _said_then_stopped(r.stderr, f"stopped by signal {int(signal.SIGINT)} after epoch 1;")
    state = _state_of(work, "int/retrain", "int")
    assert state["trainer"]["epoch"] == 1 and state["trainer"]["epoch_acc"] is None
    assert (state["stream"]["epoch"], state["stream"]["position"]) == (1, 0)
    r = _darts(args + ["--out", "int/retrain"], work, own)
    assert "resuming from" in r.stderr
    a = torch.load(work / "ref" / "retrain" / "model.pt", weights_only=True)["state"]
    b = torch.load(work / "int" / "retrain" / "model.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_retrain_sigint_mid_epoch_stops_after_that_step(work):
    args = _ref_retrain(work)
    own = _own_checkpoints(work, "int4")
    r = _darts(args + ["--out", "int4/retrain"], work, {**own, "DARTS_FAULT_SIGINT_AT_STEP": "4"}, check=False)
    assert r.returncode == 130, r.stderr[-2000:]
    _said_then_stopped(r.stderr, f"stopped by signal {int(signal.SIGINT)} in epoch 1;")
    assert _state_of(work, "int4/retrain", "int4")["trainer"]["epoch_acc"]["steps"] == 4


def ctrl_c_after_epoch_1(work: Path, env: dict, out: str) -> None:
    """Start a 3-epoch search, send SIGINT (as a terminal's Ctrl-C) once epoch 1 is logged:
    the stop line at once, exit 130, within a minute (a tiny step takes ~0.1 s; this only
    catches a hang). Skips when the search finished before the signal arrived."""
    proc = subprocess.Popen([sys.executable, "-m", "stages", "search", "--config", "ROBUST", "--seed", "0",
                             "--prepared", "prep", "--out", out], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = work / out / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 1/3" in log.read_text()):
        time.sleep(0.05)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.perf_counter() - sent
    if proc.returncode == 0:
        pytest.skip("the search finished before the signal arrived (machine too fast for this timing)")
    assert proc.returncode == 130, err[-2000:]
    _said_then_stopped(err, "stopped by signal 2 at step")
    assert took < 60, took


def test_real_ctrl_c_is_acknowledged_and_stops(work):
    """An external SIGINT (as a terminal's Ctrl-C) mid-run: the line at once, exit 130, checkpoint."""
    _params(work, epochs=3)
    ctrl_c_after_epoch_1(work, dict(os.environ, OMP_NUM_THREADS="1", **_own_checkpoints(work, "ctrlc")),
                         "ctrlc/search")
