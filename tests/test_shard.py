"""Several machines sharing a DVC remote: `darts study run --shard I/N` and `darts study collect`.

The end-to-end test plays three machines with three git clones of one tiny study and a
local folder as the remote (S3, GCS or SSH behave the same to DVC): two shards and a
collector that must restore every run from the remote's run-cache and compute none.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error, tiny_params
from stages.cli import app
from stages.params import ParamsError
from stages.chains import RESTORE_ONLY_ENV, RUN_STAGES, VARIANT_STAGES, run_stage, run_stage_file, study_chains
from stages.shard import parse_shard, shard_chains

runner = CliRunner()
HAVE_DVC = shutil.which("dvc") is not None


# --- the split ----------------------------------------------------------------------------

def test_shard_parsing_and_one_line_errors():
    assert parse_shard(None) is None
    assert parse_shard("1/2") == (1, 2) and parse_shard(" 3 / 3 ") == (3, 3)
    for bad in ("0/2", "3/2", "x", "1/0", "-1/2", "1/2/3", "1.0/2", ""):
        with pytest.raises(ParamsError, match="is invalid; valid: I/N with integers 1 <= I <= N"):
            parse_shard(bad)
    for bad in ("0/2", "3/2", "x"):  # refused before params.yaml or DVC is even read
        assert_one_line_error(runner.invoke(app, ["study", "run", "--shard", bad]), f"--shard '{bad}'", "I/N")


def test_shards_are_a_round_robin_partition_of_the_study():
    p = tiny_params({"A": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
                     "B": {"activation": "crb", "schedule": "fimt", "regularization": "pr"}}, seeds=(0, 1))
    chains = study_chains(p)
    names = [c.name for c in chains]
    assert [c.name for c in shard_chains(chains, 1, 2)] == ["A-0", "B-0", "variant"]
    assert [c.name for c in shard_chains(chains, 2, 2)] == ["A-1", "B-1"]
    for n in range(1, 8):  # more shards than chains: the extra shards are empty
        parts = [[c.name for c in shard_chains(chains, i, n)] for i in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(names), n  # every chain in exactly one shard
        assert max(map(len, parts)) - min(map(len, parts)) <= 1, parts  # balanced
        assert sum("variant" in part for part in parts) == 1


def test_run_commands_refuse_when_restore_only(monkeypatch, tmp_path):
    """What makes `collect` unable to compute: every command a chain stage runs refuses."""
    from conftest import ROOT
    from stages.cli import RUN_COMMANDS

    # every stage of a chain that computes (all but variant-figures) runs one of the refused commands
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in RUN_STAGES:
        stages[name] = yaml.safe_load((ROOT / run_stage_file(name)).read_text())["stages"][name]
    for name in (*RUN_STAGES, *VARIANT_STAGES[:-1]):
        assert stages[name]["cmd"].split()[3] in RUN_COMMANDS, stages[name]["cmd"]
    monkeypatch.setenv(RESTORE_ONLY_ENV, "1")
    for argv in (["search", "--out", str(tmp_path / "s")],
                 ["discretize", "--search", str(tmp_path / "x"), "--out", str(tmp_path / "g")],
                 ["retrain", "--genotype", "DARTS_V2", "--out", str(tmp_path / "r")],
                 ["test", "--retrain", str(tmp_path / "x"), "--out", str(tmp_path / "m.json")]):
        assert_one_line_error(runner.invoke(app, argv), f"`darts {argv[0]}` refused", RESTORE_ONLY_ENV)
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv(RESTORE_ONLY_ENV, "0")  # "0" or unset: the commands run as usual
    r = runner.invoke(app, ["discretize", "--search", str(tmp_path / "none"), "--out", str(tmp_path / "g")])
    assert "refused" not in r.output


@pytest.mark.skipif(not HAVE_DVC, reason="dvc is not installed")
def test_shard_and_collect_need_a_default_remote(tmp_path, monkeypatch):
    """Refused before any stage: a shard could not push its results, a collector has nothing to pull."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run("git init -q && dvc init -q", shell=True, cwd=tmp_path, env=env, check=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    for argv in (["study", "run", "--shard", "1/2"], ["study", "collect"]):
        assert_one_line_error(runner.invoke(app, argv), "no default DVC remote is set", "dvc remote add -d")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", ".dvcignore", ".git", "params.yaml"]


# --- three machines -----------------------------------------------------------------------

def _sh(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # one thread per stage: the setting a serial `dvc repro` uses, so its numbers are comparable
    env = dict(os.environ, DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", DARTS_THREADS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop(RESTORE_ONLY_ENV, None)
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _ran(text: str) -> set[str]:
    """The stages whose command DVC started: its lines `Running stage 'X':`."""
    return {line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage '")}


def _restored(text: str) -> set[str]:
    """The stages DVC checked out from the run-cache: `Stage 'X' is cached - skipping run, …`."""
    return {line.split("'")[1] for line in text.splitlines()
            if line.startswith("Stage '") and "is cached - skipping run" in line}


#: Table 1's columns that measure time on the machine, not the science
TIMING_COLUMNS = ("search_gpu_days_mean", "search_gpu_days_std", "search_hours_mean", "search_hours_std")


def _science(table: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(table.open())]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DVC, reason="dvc is not installed")
def test_two_shards_and_a_collector_share_a_remote(tmp_path):
    """Shard 1/2 runs and pushes; a collector then names the chain still missing, exit 1,
    computing nothing; shard 2/2 runs and pushes; the collector restores every chain from the
    run-cache (DVC's log: every chain stage "is cached", none "Running"), writes Table 1,
    claims and figures, and `dvc status` is clean. Its metrics are the shards' bytes, and its
    Table 1 equals a serial one: shard 1's clone, with no remote, computes the other shard's
    run itself and aggregates (timing columns aside)."""
    from test_pipeline import _make_repo

    py = sys.executable
    origin = _make_repo(tmp_path / "origin")
    # the fewest chains that give each shard a study run: DARTS × seeds 0, 1 and the variant
    params = tiny_params({"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}},
                         seeds=(0, 1))
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    remote = tmp_path / "remote"
    _sh(f"dvc remote add -d shared {remote} && git add -A && git commit -qm 'tiny study, shared remote'", origin)
    one, two, collector = (tmp_path / n for n in ("shard1", "shard2", "collector"))
    for clone in (one, two, collector):
        _sh(f"git clone -q {origin} {clone}", tmp_path)

    r = _sh(f"{py} -m stages study run --shard 1/2 --jobs 2", one)  # its 2 chains side by side
    out = r.stdout + r.stderr
    assert "shard 1/2: 2 of the study's 3 chains (DARTS-0, variant)" in out and "pushed" in out, out
    assert not (one / "reports" / "table1.csv").exists() and not (one / "logs" / "study" / "final.log").exists()
    assert remote.is_dir()

    # a collector before shard 2 has pushed: says what is missing and computes nothing of it
    r = _sh(f"{py} -m stages study collect", collector, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 chain(s) not in remote 'shared' for this params.yaml: DARTS-1;" in out, out
    first_log = (collector / "logs" / "study" / "collect.log").read_text()
    # the missing chain's first command was started by DVC and refused at once; nothing after it,
    # and the prepared data came from shard 1's run-cache entry (the chains' dependency hashes match)
    assert _ran(first_log) == {run_stage("search", "DARTS-1")} and first_log.count("`darts search` refused") == 1, first_log
    assert {"check-params", "prepare-split", run_stage("search", "DARTS-0")} <= _restored(first_log), first_log
    assert not (collector / "runs" / "DARTS" / "1").exists() and not (collector / ".checkpoints").exists()
    assert not (collector / "reports" / "table1.csv").exists()

    r = _sh(f"{py} -m stages study run --shard 2/2", two)
    out = r.stdout + r.stderr
    assert "shard 2/2: 1 of the study's 3 chains (DARTS-1)" in out and "pushed" in out, out

    r = _sh(f"{py} -m stages study collect", collector)
    out = r.stdout + r.stderr
    assert "1 chain(s) restored from the remote" in out and "2 already here" in out, out
    logs = collector / "logs" / "study"
    second_log, final_log = (logs / "collect.log").read_text(), (logs / "final.log").read_text()
    chain_stages = {st for c in study_chains(params) for st in c.stages}
    assert len(chain_stages) == 2 * len(RUN_STAGES) + len(VARIANT_STAGES)
    restored = _restored(first_log + second_log) - {"check-params", "prepare-split"}
    assert restored == chain_stages, chain_stages ^ restored  # every chain stage came from the run-cache
    assert _ran(second_log) == set(), second_log
    # the cache: false outputs (reports/*, the summary figures) never travel: the collector writes them
    assert _ran(final_log) == {"aggregate", "claims", "figures"}, final_log
    assert (collector / "reports" / "claims.md").is_file()
    assert (collector / "reports" / "figures" / "comparisons.png").is_file()
    assert json.loads(_sh("dvc status --json", collector).stdout.strip()) == {}
    for clone, rel in ((one, "metrics/DARTS/0.json"), (one, "current/metrics.json"), (two, "metrics/DARTS/1.json")):
        assert (collector / rel).read_bytes() == (clone / rel).read_bytes(), rel

    # the serial reference: shard 1's clone finishes alone (no --pull, and its run-cache lacks
    # shard 2's run, so it computes DARTS-1 itself) as a machine without a remote would
    r = _sh("dvc repro aggregate", one)
    assert _ran(r.stdout) == {*(run_stage(st, "DARTS-1") for st in RUN_STAGES), "aggregate"}, r.stdout
    ours, serial = _science(collector / "reports" / "table1.csv"), _science(one / "reports" / "table1.csv")
    assert any(row["config"] == "DARTS" and row["n"] == "2" for row in ours), ours
    assert ours == serial
