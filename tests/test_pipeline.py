"""End to end: the real DVC pipeline (`dvc repro`) in a temporary git copy, tiny scale.

Checks what a user relies on: Table 1 appears, a second `dvc repro` does nothing,
editing one config reruns only that config's stages, and the variant chain runs alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_params

pytestmark = pytest.mark.slow

if shutil.which("dvc") is None or shutil.which("darts") is None:
    pytest.skip("dvc or the darts command is not installed (pip install -e '.[test]')", allow_module_level=True)


def sh(cmd: str, cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("pipeline")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("reports/", "metrics/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    configs = {"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
               "FIMT_CRB": {"activation": "crb", "schedule": "fimt", "regularization": "admm"}}
    (dst / "params.yaml").write_text(yaml.safe_dump(tiny_params(configs, seeds=(0, 1)), sort_keys=False))
    sh("git init -q && git add -A && git commit -qm init", dst)
    return dst


def test_repro_builds_table_then_is_a_noop(repo):
    sh("dvc repro", repo)
    table = (repo / "reports" / "table1.md").read_text()
    assert "+FIMT+CRB" in table and "DARTS" in table
    for config in ("DARTS", "FIMT_CRB"):
        for seed in (0, 1):
            m = json.loads((repo / "metrics" / config / f"{seed}.json").read_text())
            assert 0 <= m["test_error"] <= 100 and m["params_m"] > 0 and m["device"]
            g = json.loads((repo / "runs" / config / str(seed) / "genotype" / "genotype.json").read_text())
            assert len(g["normal"]) == 8 and all(op != "none" for op, _ in g["normal"] + g["reduce"])
    assert (repo / "current" / "metrics.json").is_file()
    again = sh("dvc repro", repo)
    assert "Running stage" not in again, again


def test_editing_one_config_reruns_only_it(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["configs"]["FIMT_CRB"]["regularization"] = "pr"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = sh("dvc repro", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran, out
    assert all("FIMT_CRB" in s or s in ("aggregate", "figures") for s in ran), ran
    assert "search@FIMT_CRB-0" in ran and "search@FIMT_CRB-1" in ran


def test_variant_experiment_reruns_only_the_variant_chain(repo):
    sh("git add -A && git commit -qm study", repo)
    out = sh("dvc exp run -S activation=crb -S schedule=constant variant-test", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran and all(s.startswith("variant-") for s in ran), ran
    m = json.loads((repo / "current" / "metrics.json").read_text())
    assert m["activation"] == "crb" and m["schedule"] == "constant"
    diff = sh("dvc metrics diff --all --json", repo)  # --all: an unchanged test_error is listed too
    assert "test_error" in diff
