"""`darts study submit` through submitit: bad options are one-line errors before any work, and
with submitit's local executor (local processes running the same task code as a Slurm array)
a chain stopped mid-search by the scheduler's signal checkpoints, is requeued, resumes, and
ends bit for bit equal to an uninterrupted run of the same computation.

What a real Slurm adds (sbatch, `scontrol requeue`, another node after a requeue, shared
storage) is not exercised here: there is no Slurm on this machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error, tiny_params
from stages.cli import app
from stages.params import ParamsError
from stages.submit import PREEMPT_SIGNAL, SubmitOptions, make_tasks, parse_options

runner = CliRunner()
HAVE_DVC = shutil.which("dvc") is not None


@pytest.mark.parametrize("argv, needles", [
    (["--executor", "pbs"], ("--executor 'pbs' is invalid", "valid: slurm, local")),
    (["--executor", "local", "--parallel", "0"], ("--parallel='0' is invalid", "integer >= 1")),
    (["--executor", "slurm", "--parallel", "two"], ("--parallel='two' is invalid", "integer >= 1")),
    (["--executor", "local", "--time", "0"], ("--time='0' is invalid", "hours per task")),
    (["--executor", "local", "--time", "x"], ("--time='x' is invalid", "hours per task")),
    (["--executor", "local", "--time", "nan"], ("--time='nan' is invalid", "hours per task")),
    (["--executor", "slurm", "--gpus-per-job", "-1"], ("--gpus-per-job='-1' is invalid", "integer >= 0")),
    (["--executor", "local", "--partition", "gpu"], ("--partition='gpu' is a Slurm setting", "--executor slurm")),
])
def test_bad_options_are_one_line_errors_before_any_work(argv, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml, no DVC repo: the options are refused before either is read
    assert_one_line_error(runner.invoke(app, ["study", "submit", *argv]), *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a Slurm login node: sbatch is there")
def test_slurm_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(runner.invoke(app, ["study", "submit", "--executor", "slurm"]), "no `sbatch`",
                          "--executor local")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAVE_DVC, reason="dvc is not installed")
def test_no_default_remote_is_refused_before_any_work(tmp_path, monkeypatch):
    """Every task pushes to the default remote: without one nothing is reproduced or queued."""
    subprocess.run("git init -q && dvc init -q", shell=True, cwd=tmp_path, check=True,
                   env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(runner.invoke(app, ["study", "submit", "--executor", "local", "--gpus-per-job", "0"]),
                          "no default DVC remote is set", "dvc remote add -d")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", ".dvcignore", ".git", "params.yaml"]


def test_slurm_gets_one_task_per_chain_local_one_per_parallel_slot(tmp_path):
    p = tiny_params({"A": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}}, seeds=(0, 1))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    slurm = parse_options("slurm", "2", "4", "gpu", "2", "8")
    tasks, parts = make_tasks(str(path), slurm, tmp_path, tmp_path / "ck")
    assert [[c.name for c in part] for part in parts] == [["A-0"], ["A-1"], ["variant"]]
    assert tasks[1].command()[3:] == ["study", "run", "--shard", "2/3", "--jobs", "2", "--devices", "cuda:0,cuda:1", "--no-setup"]
    assert tasks[0].threads == 4  # 8 cores over the task's 2 chains at once
    local = SubmitOptions("local", 2, 1.0, None, 0, 1)
    tasks, parts = make_tasks(str(path), local, tmp_path, tmp_path / "ck")
    assert [[c.name for c in part] for part in parts] == [["A-0", "variant"], ["A-1"]]
    assert tasks[0].command()[3:] == ["study", "run", "--shard", "1/2", "--jobs", "1", "--no-setup"]
    with pytest.raises(ParamsError, match="--executor 'sge' is invalid"):
        parse_options("sge", None, "1", None, "1", "1")


# --- a chain preempted mid-search, requeued, resumed ---------------------------------------

def _descendants(pid: int) -> list[int]:
    """Every live process under `pid` (from /proc), children first."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _search_checkpoint(repo: Path, run_dir: str) -> Path | None:
    for owner in (repo / ".checkpoints").glob("search-*/owner.txt"):
        if owner.read_text() == str((repo / run_dir).resolve()) and (owner.parent / "state.pt").is_file():
            return owner.parent / "state.pt"
    return None


def _tensors(path: Path, key: str | None = None) -> dict:
    state = torch.load(path, weights_only=False)
    return state[key] if key else state


#: fields of a metrics file that name the run or time it, not what it computed
NOT_SCIENCE = {"config", "label", "search_seconds", "search_gpu_days", "retrain_seconds", "device"}


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DVC, reason="dvc is not installed")
def test_local_array_chain_preempted_mid_search_requeues_and_ends_bit_identical(tmp_path, monkeypatch):
    """Two local array tasks: shard 1/2 is the chain DARTS-0, shard 2/2 the variant chain, which
    with these params is the same computation (DARTS, seed 0) under another name, so it is the
    uninterrupted reference. Once DARTS-0's search has saved its epoch-1 checkpoint, the
    preemption signal goes to task 1 and every process under it, as Slurm signals a whole job
    step. (submitit's `job._interrupt()` on a local job signals the controller process, which has
    no handler for it and dies, leaving the task orphaned and never requeued: measured, submitit
    1.5.4, so the test signals the task itself.) The task stops its shard (the search saves a
    mid-run checkpoint), submitit requeues it, the rerun resumes from that checkpoint, and both
    tasks push."""
    from test_pipeline import _make_repo
    from test_shard import _sh
    from stages.submit import _follow, submit

    repo = _make_repo(tmp_path / "repo")
    params = tiny_params({"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}})
    params["search"]["epochs"] = 4  # after epoch 1's checkpoint, 3 epochs for the signal to land in
    assert (params["activation"], params["schedule"], params["regularization"], params["order"], params["seed"]) \
        == ("softmax", "alternate", "none", 1, 0)  # the variant run is DARTS seed 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(f"dvc remote add -d shared {tmp_path / 'remote'} && git add -A && git commit -qm 'tiny, remote'", repo)
    monkeypatch.chdir(repo)
    for var in ("DARTS_CHECKPOINT_DIR", "DARTS_RESTORE_ONLY", "DARTS_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    said: list[str] = []
    out = type("Out", (), {"write": lambda self, s: said.append(s), "flush": lambda self: None})()
    opts = parse_options("local", "2", "0.5", None, "0", "1")
    # the tasks start with SIGINT ignored, as every process started in the background of a
    # non-interactive shell does (`nohup ... &`, a batch script): the shard must still stop on
    # the task's SIGINT (it was lost there once, and this test failed only in such a CI run)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, jobs = submit("params.yaml", opts, wait=False, out=out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and len(jobs) == 2
    tasks, parts = make_tasks("params.yaml", opts, repo, repo / ".checkpoints")
    assert [[c.name for c in part] for part in parts] == [["DARTS-0"], ["variant"]]

    deadline = time.monotonic() + 300
    while _search_checkpoint(repo, "runs/DARTS/0/search") is None:
        assert time.monotonic() < deadline and not jobs[0].done(), (said, jobs[0].stdout(), jobs[0].stderr())
        time.sleep(0.05)
    task = _descendants(jobs[0]._process.pid)[0]  # the controller's one child: submitit's task process
    for pid in [task, *_descendants(task)]:  # the whole "job step", as Slurm signals it
        try:
            os.kill(pid, PREEMPT_SIGNAL)
        except ProcessLookupError:
            pass

    assert _follow(jobs, tasks, parts, "params.yaml", lambda t: said.append(t + "\n"), poll_s=0.5,
                   then_collect=False) == 0, "".join(said)
    log = jobs[0].stdout() + jobs[0].stderr()
    assert "shard 1/2: stopping (checkpoints follow)" in log and "Requeued job" in log, log
    assert "[study] interrupted: running chains saved their checkpoints" in log, log
    assert log.count("[submit] shard 1/2 in") == 2, log  # started, then requeued once
    assert "Requeued" not in jobs[1].stdout() + jobs[1].stderr()
    resumed = re.search(r"resuming from \S+ at epoch (\d+)/4, step (\d+)", (repo / "logs/study/DARTS-0.log").read_text())
    steps = json.loads((repo / "runs/DARTS/0/search/search.json").read_text())["w_steps"]
    assert resumed and 0 < int(resumed[2]) < steps and int(resumed[1]) >= 1, resumed  # mid-search
    assert "2/2 tasks done, 0 running, 0 failed, 0 queued" in "".join(said), "".join(said)

    ours, ref = repo / "runs" / "DARTS" / "0", repo / "current"
    for name in ("normal", "reduce"):
        assert torch.equal(_tensors(ours / "search/history.pt")["alpha"][name],
                           _tensors(ref / "search/history.pt")["alpha"][name])
    for sub, key in (("search/supernet.pt", "state"), ("retrain/model.pt", "state")):
        a, b = _tensors(ours / sub, key), _tensors(ref / sub, key)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    for sub in ("search/epochs.tsv", "genotype/genotype.json", "retrain/epochs.tsv"):
        assert (ours / sub).read_bytes() == (ref / sub).read_bytes(), sub
    m_ours = json.loads((repo / "metrics/DARTS/0.json").read_text())
    m_ref = json.loads((repo / "current/metrics.json").read_text())
    assert {k: v for k, v in m_ours.items() if k not in NOT_SCIENCE} == \
        {k: v for k, v in m_ref.items() if k not in NOT_SCIENCE}
    # both shards pushed; Table 1 from here is `darts study collect` (tests/test_shard.py), not rerun here
    stale = json.loads(subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True).stdout)
    assert set(stale) == {"aggregate", "claims", "figures"}, stale
    assert "[study] shard 1/2 done in" in log and any((tmp_path / "remote").rglob("*")), log
