"""`darts clean`: held checkpoints are never touched, resumable ones are kept however old,
stale ones (their command now computes another key) and superseded unknown ones are
removed, --dry-run removes nothing, --all removes every unheld one; unheld locks go."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params
from darts.space.primitives import DARTS_V2
from stages import clean, common, search
from stages.runguard import RunLock

CONFIG = {"ROBUST": {"activation": "crb", "schedule": "fimt", "regularization": "admm"}}
DAY = 86400.0


def _darts(args: list[str], cwd: Path, ck: Path, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(ck), **env_extra)
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """A project with tiny params, prepared data and a genotype file."""
    d = tmp_path_factory.mktemp("clean")
    p = tiny_params(CONFIG)
    p["search"].update({"epochs": 2})
    p["retrain"].update({"epochs": 2})
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    from stages import prepare_split

    prepare_split.run(str(d / "params.yaml"), str(d / "prep"))
    (d / "genotype.json").write_text(DARTS_V2.to_json())
    return d


def _command(proj: Path, stage: str) -> dict:
    c = {"params": str(proj / "params.yaml"), "config": "ROBUST", "seed": 0, "prepared": str(proj / "prep")}
    return {**c, "genotype": str(proj / "genotype.json")} if stage == "retrain" else c


def _fake(root: Path, stage: str, key: str, owner: str, age_s: float, command: dict | None = None,
          state: bool = True) -> Path:
    folder = root / f"{stage}-{key}"
    folder.mkdir(parents=True)
    (folder / "owner.txt").write_text(owner)
    if command is not None:
        (folder / "command.json").write_text(json.dumps(command))
    t = time.time() - age_s
    if state:
        (folder / "state.pt").write_bytes(b"x" * 1000)
        os.utime(folder / "state.pt", (t, t))
    for f in (*folder.iterdir(), folder):
        os.utime(f, (t, t))
    return folder


def _layout(proj: Path, root: Path) -> dict[str, Path]:
    """One checkpoint for each rule; returns name -> folder."""
    cmd = _command(proj, "search")
    owner = str(proj / "runs" / "A" / "search")
    key = common.owned_key(search.checkpoint_key(cmd), owner)
    f = {
        "resumable": _fake(root, "search", key, owner, 30 * DAY, cmd),  # oldest, still the one to resume
        "stale": _fake(root, "search", "0" * 16, owner, 2 * DAY, cmd),
        "stale_held": _fake(root, "search", "1" * 16, owner, 2 * DAY, cmd),
        "old_unknown": _fake(root, "retrain", "2" * 16, str(proj / "runs" / "B" / "retrain"), 3 * DAY),
        "new_unknown": _fake(root, "retrain", "3" * 16, str(proj / "runs" / "B" / "retrain"), 1 * DAY),
        "empty_old": _fake(root, "retrain", "4" * 16, str(proj / "runs" / "C" / "retrain"), DAY, state=False),
        "empty_young": _fake(root, "retrain", "5" * 16, str(proj / "runs" / "D" / "retrain"), 1, state=False),
    }
    (root / "notes").mkdir()  # not a checkpoint: left alone
    (root / "locks").mkdir()
    for name in ("free", "held"):
        (root / "locks" / f"{name}.lock").write_text("123")
    return f


def _exists(folders: dict[str, Path]) -> set[str]:
    return {n for n, f in folders.items() if f.exists()}


def test_default_rule_dry_run_then_clean(proj, tmp_path):
    root = tmp_path / "ck"
    f = _layout(proj, root)
    lines: list[str] = []
    with RunLock(f["stale_held"] / "lock"), RunLock(root / "locks" / "held.lock"):
        dry = clean.run(dry_run=True, root=root, echo=lines.append)
        assert _exists(f) == set(f) and (root / "locks" / "free.lock").exists()  # --dry-run removes nothing
        assert sorted(map(Path, dry["removed"])) == sorted([f["stale"], f["old_unknown"], f["empty_old"]])
        assert dry["locks_removed"] == 1 and "--dry-run: nothing removed" in lines[-1]
        table = "\n".join(lines)
        assert f"{f['resumable'].name.split('-')[1]}" in table and "keep: resumable" in table
        assert "held  " in table and "30d00h" in table  # lock state and age are listed
        done = clean.run(root=root, echo=lines.append)
        assert done["removed"] == dry["removed"] and done["freed_bytes"] == dry["freed_bytes"] > 0
        assert _exists(f) == {"resumable", "stale_held", "new_unknown", "empty_young"}
        assert not (root / "locks" / "free.lock").exists() and (root / "locks" / "held.lock").exists()
        assert (root / "notes").is_dir()
    # released: the stale one goes now, the resumable one still stays
    clean.run(root=root, echo=lines.append)
    assert _exists(f) == {"resumable", "new_unknown", "empty_young"}
    assert not (root / "locks" / "held.lock").exists()


def test_all_removes_every_unheld_checkpoint(proj, tmp_path):
    root = tmp_path / "ck"
    f = _layout(proj, root)
    with RunLock(f["stale_held"] / "lock"):
        r = clean.run(everything=True, root=root, echo=lambda s: None)
        assert _exists(f) == {"stale_held"}
    assert len(r["removed"]) == len(f) - 1


def test_real_runs_resumable_then_stale_when_params_or_genotype_change(proj, tmp_path):
    """The key clean recomputes from command.json is the one the stage used (no drift)."""
    ck = tmp_path / "ck"
    r = _darts(["search", "--config", "ROBUST", "--seed", "0", "--prepared", "prep", "--out", "runs/s"], proj, ck,
               DARTS_FAULT_SIGINT_AT_STEP="3")
    assert r.returncode == 130, r.stderr[-2000:]
    r = _darts(["retrain", "--config", "ROBUST", "--seed", "0", "--genotype", "genotype.json", "--prepared", "prep",
                "--out", "runs/r"], proj, ck, DARTS_FAULT_SIGINT_AT_STEP="2")
    assert r.returncode == 130, r.stderr[-2000:]
    entries = {e.stage: e for e in clean.scan(ck)}
    assert set(entries) == {"search", "retrain"}
    for e in entries.values():
        assert clean.current_key(e, clean._digest_cache())[0] == e.key
    kept = clean.run(root=ck, echo=lambda s: None)
    assert kept["removed"] == [] and len(kept["kept"]) == 2
    params_text, genotype_text = (proj / "params.yaml").read_text(), (proj / "genotype.json").read_text()
    try:
        p = yaml.safe_load(params_text)
        p["retrain"]["lr"] = 0.0123  # only the retrain's key changes
        (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        r = clean.run(dry_run=True, root=ck, echo=lambda s: None)
        assert r["removed"] == [str(entries["retrain"].folder)]
        (proj / "params.yaml").write_text(params_text)
        g = json.loads(genotype_text)
        g["normal"][0][0] = "max_pool_3x3"
        (proj / "genotype.json").write_text(json.dumps(g))
        r = clean.run(dry_run=True, root=ck, echo=lambda s: None)
        assert r["removed"] == [str(entries["retrain"].folder)]
    finally:
        (proj / "params.yaml").write_text(params_text)
        (proj / "genotype.json").write_text(genotype_text)


def test_cli_respects_checkpoint_dir_and_rejects_a_file(proj, tmp_path):
    ck = tmp_path / "elsewhere"
    _fake(ck, "search", "6" * 16, str(proj / "x"), DAY)
    r = _darts(["clean", "--dry-run"], tmp_path, ck)
    assert r.returncode == 0, r.stderr
    assert "6666666666666666" in r.stdout and "would remove 0 checkpoint(s)" in r.stdout
    assert (ck / f"search-{'6' * 16}").is_dir()
    r = _darts(["clean"], tmp_path, ck)
    assert r.returncode == 0 and (ck / f"search-{'6' * 16}").is_dir()  # newest for its folder: kept
    (tmp_path / "afile").write_text("")
    r = _darts(["clean"], tmp_path, tmp_path / "afile")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "afile" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_same_computation_for_two_folders_gets_two_checkpoints(tmp_path, monkeypatch):
    """The default variant run computes exactly DARTS seed 0: run in parallel by `darts study
    run`, the two retrains once shared one checkpoint and lock, and the second was refused."""
    from stages import common

    monkeypatch.setattr(common, "CHECKPOINT_ROOT", tmp_path / "ck")
    a = common.checkpoint_path("retrain", "0123456789abcdef", tmp_path / "runs/DARTS/0/retrain")
    b = common.checkpoint_path("retrain", "0123456789abcdef", tmp_path / "current/retrain")
    assert a != b and a.parent.is_dir() and b.parent.is_dir()
    assert a == common.checkpoint_path("retrain", "0123456789abcdef", tmp_path / "runs/DARTS/0/retrain")
