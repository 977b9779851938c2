"""Live metrics (DVCLive, stages/livelog.py): a search and a retrain killed or stopped midway
and resumed leave exactly the log of an uninterrupted run (no gap, no duplicate row), and bad
settings fail in one line before any work. These run the real command in subprocesses (a
kill -9 needs a real process), inside a DVC project as the pipeline does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error, tiny_params
from stages.cli import app
from stages.livelog import LiveLog

CONFIG = {"LIVE": {"activation": "softmax", "schedule": "constant", "regularization": "pr"}}


def _darts(args: list[str], cwd: Path, env_extra: dict | None = None, check: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(cwd / ".checkpoints"), DARTS_LIVE_EVERY="5")
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _files(live: Path) -> dict[str, str]:
    return {str(p.relative_to(live)): p.read_text() for p in sorted(live.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("live")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=d, check=True)
    p = tiny_params(CONFIG)
    p["search"].update({"epochs": 3})  # 20 w steps per epoch (320 images / 16)
    p["retrain"].update({"epochs": 3})  # 11 steps per epoch (352 / 32)
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    _darts(["prepare-split", "--out", "prep"], d)
    return d


def _search(work: Path, name: str, env: dict | None = None, check: bool = True):
    return _darts(["search", "--config", "LIVE", "--seed", "0", "--prepared", "prep", "--out", f"{name}/search",
                   "--live", f"{name}/live"], work, env, check)


def test_search_log_rows_and_resume_after_kill_and_after_sigint(work):
    _search(work, "ref")
    ref = _files(work / "ref/live")
    loss = ref["plots/metrics/train_loss_running.tsv"].splitlines()
    # every 5 w steps, except at an epoch's end (20, 40, 60), where the epoch's row is logged
    assert [int(r.split("\t")[0]) for r in loss[1:]] == [5, 10, 15, 25, 30, 35, 45, 50, 55], loss
    curve = ref["plots/metrics/train_loss.tsv"].splitlines()
    assert curve[0] == "step\ttrain_loss" and [int(r.split("\t")[0]) for r in curve[1:]] == [20, 40, 60]
    epochs = (work / "ref/search/epochs.tsv").read_text().splitlines()
    col = epochs[0].split("\t").index("train_loss")
    assert [float(r.split("\t")[1]) for r in curve[1:]] == pytest.approx(
        [float(r.split("\t")[col]) for r in epochs[1:]], rel=1e-5)  # the same curve as epochs.tsv
    summary = json.loads(ref["metrics.json"])
    search = json.loads((work / "ref/search/search.json").read_text())
    assert summary["step"] == 60 and summary["search_w_steps"] == 60 and summary["search_val_acc"] == search["val_acc"]
    assert summary["search_alpha_steps"] == search["alpha_steps"] and summary["alpha_steps"] == 2  # last epoch's

    r = _search(work, "cut", {"DARTS_FAULT_KILL_AT_STEP": "27"}, check=False)  # kill -9 in epoch 2
    assert r.returncode != 0
    killed = _files(work / "cut/live")["plots/metrics/train_loss_running.tsv"].splitlines()
    assert killed[-1].startswith("25\t")  # logged after the epoch-1 checkpoint: the rerun logs it again
    r = _search(work, "cut", {"DARTS_FAULT_SIGINT_AT_STEP": "33"}, check=False)  # resumes at 20, stops at 33
    assert r.returncode != 0 and "checkpoint saved" in r.stderr, r.stderr[-2000:]
    _search(work, "cut")  # resumes mid-epoch at 33
    assert _files(work / "cut/live") == ref  # every row exactly once, the same values


def test_retrain_log_resumes_after_sigint(work):
    genotype = "DARTS_V2"
    args = ["retrain", "--config", "LIVE", "--seed", "0", "--genotype", genotype, "--prepared", "prep"]
    _darts(args + ["--out", "rref/retrain", "--live", "rref/live"], work)
    ref = _files(work / "rref/live")
    assert [r.split("\t")[0] for r in ref["plots/metrics/loss.tsv"].splitlines()] == ["step", "11", "22", "33"]
    assert [r.split("\t")[0] for r in ref["plots/metrics/train_loss_running.tsv"].splitlines()[1:]] == \
        ["5", "10", "15", "20", "25", "30"]
    r = _darts(args + ["--out", "rcut/retrain", "--live", "rcut/live"], work, {"DARTS_FAULT_SIGINT_AT_STEP": "17"},
               check=False)
    assert r.returncode != 0 and "checkpoint saved" in r.stderr, r.stderr[-2000:]
    _darts(args + ["--out", "rcut/retrain", "--live", "rcut/live"], work)
    assert _files(work / "rcut/live") == ref


def test_replayed_rows_write_the_same_files(work, monkeypatch):
    monkeypatch.chdir(work)
    a = LiveLog(work / "unit/a", every=2)
    for step, values in ((2, {"x": 1.5}), (4, {"x": 0.25, "y": 3.0, "skip": None}), (6, {"y": float("nan")})):
        a.log(step, values)
    assert a.rows() == [(2, {"x": 1.5}), (4, {"x": 0.25, "y": 3.0})]  # None and NaN are not rows
    LiveLog(work / "unit/b", rows=a.rows())
    assert _files(work / "unit/a") == _files(work / "unit/b")
    assert a.due(4) and not a.due(5) and not LiveLog(None).due(4)


def test_bad_live_settings_fail_in_one_line(work, tmp_path, monkeypatch):
    runner = CliRunner()
    base = ["search", "--config", "LIVE", "--seed", "0", "--params", str(work / "params.yaml"),
            "--prepared", str(work / "prep"), "--out", str(tmp_path / "s")]
    monkeypatch.chdir(tmp_path)  # no .dvc/ here or above
    assert_one_line_error(runner.invoke(app, base + ["--live", "x"]), "--live x", "DVC project")
    monkeypatch.chdir(work)
    monkeypatch.setenv("DARTS_LIVE_EVERY", "0")
    assert_one_line_error(runner.invoke(app, base + ["--live", "x"]), "DARTS_LIVE_EVERY='0'", "positive integer")
    assert not (tmp_path / "s" / "search.json").exists()
