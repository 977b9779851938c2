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

# One worker runs this file's tests, in order: they share one repository (the module's
# `repo`), and the later ones build on what the first one ran (`--dist loadgroup`,
# pyproject.toml). Spread over workers, each would get a fresh repo and the order-dependent
# checks would fail or, worse, pass by luck of the scheduling.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]

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
    return _make_repo(tmp_path_factory.mktemp("pipeline"))


def _make_repo(dst: Path) -> Path:
    """A git copy of the project at the tiny scale: 2 configs × 2 seeds, nothing run yet."""
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


#: metrics that measure time or the machine, not the science
TIMING = ("search_seconds", "search_gpu_days", "retrain_seconds")


def test_study_run_in_parallel_equals_serial_repro_and_survives_a_failed_chain(repo, tmp_path):
    """`darts study run --jobs 2`: a chain that fails (its run is held by another process)
    does not stop the others and is named with exit 1; the rerun finishes it; then every
    metric equals the serial `dvc repro`'s bit for bit, `dvc status` is clean and
    `dvc repro` runs nothing."""
    import fcntl

    from stages.runguard import RunLock

    par = _make_repo(tmp_path / "parallel")
    blocked = par / "runs" / "DARTS" / "1" / "search"
    lock_path = RunLock.for_dir(par / ".checkpoints", blocked)
    lock_path.parent.mkdir(parents=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    with open(lock_path, "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = subprocess.run("darts study run --jobs 2", shell=True, cwd=par, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "DARTS-1 FAILED" in out and "1 chain(s) failed: DARTS-1" in out, out
    assert "4/5 chains done" in out, out  # the three other runs and the variant finished
    assert not (par / "reports" / "table1.md").exists()
    out = sh("darts study run --jobs 2 --devices cpu,cpu", par)  # the README's GPU recipe, CPUs standing in
    assert "4 up to date" in out and "DARTS-1 done" in out and "Running stage 'aggregate'" in out, out
    assert "2 jobs on cpu, cpu" in out, out
    assert json.loads(sh("dvc status --json", par).strip()) == {}
    assert "Running stage" not in sh("dvc repro", par)
    for config in ("DARTS", "FIMT_CRB"):
        for seed in (0, 1):
            ours = json.loads((par / "metrics" / config / f"{seed}.json").read_text())
            serial = json.loads((repo / "metrics" / config / f"{seed}.json").read_text())
            assert {k: v for k, v in ours.items() if k not in TIMING} == \
                   {k: v for k, v in serial.items() if k not in TIMING}, (config, seed)


def test_editing_one_config_reruns_only_it(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["configs"]["FIMT_CRB"]["regularization"] = "pr"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = sh("dvc repro", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran, out
    # check-params reruns on any edit (it validates the whole file) but writes a fixed text
    assert all("FIMT_CRB" in s or s in ("check-params", "aggregate", "claims", "figures") for s in ran), ran
    assert "study/search/dvc.yaml:search@FIMT_CRB-0" in ran and "study/search/dvc.yaml:search@FIMT_CRB-1" in ran


def test_variant_experiment_reruns_only_the_variant_chain(repo):
    sh("git add -A && git commit -qm study", repo)
    out = sh("dvc exp run -S activation=crb -S schedule=constant variant-test", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran and all(s.startswith("variant-") or s == "check-params" for s in ran), ran
    m = json.loads((repo / "current" / "metrics.json").read_text())
    assert m["activation"] == "crb" and m["schedule"] == "constant"
    diff = sh("dvc metrics diff --all --json", repo)  # --all: an unchanged test_error is listed too
    assert "test_error" in diff


def _readme_block(section: str) -> list[str]:
    """The shell lines of the first ```bash block under README's `## <section>`."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"## {section}"):]
    block = body[body.index("```bash") + len("```bash"):]
    return [line for line in block[:block.index("```")].strip().splitlines() if line.strip()]


def _exp_params(repo: Path) -> dict[str, dict]:
    """Each experiment's params.yaml, from `dvc exp show --json` (every commit's)."""
    shown = json.loads(sh("dvc exp show -A --json 2>/dev/null", repo).strip() or "[]")
    found = {}
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp["revs"]:
                if r.get("name"):
                    found[r["name"]] = r["data"]["params"]["params.yaml"]["data"]
    return found


def test_readme_variant_recipe_gives_each_experiment_exactly_its_params(repo):
    """The README's "Comparing variants" block, run literally: every experiment gets the
    committed params plus exactly its own `-S` (DVC's non-temp `exp run` compounds them),
    and `dvc exp apply` restores every output of the applied experiment (the genotype too)."""
    lines = _readme_block("Comparing variants")
    runs = [line for line in lines if line.startswith("dvc exp run")]
    assert len(runs) >= 3, lines
    for line in lines:
        sh(line, repo)
        if line.startswith("git add -A && git commit"):
            committed = yaml.safe_load((repo / "params.yaml").read_text())
    shown = _exp_params(repo)
    for line in runs:
        words = line.split("#")[0].split()
        name = words[words.index("-n") + 1]
        expected = json.loads(json.dumps(committed))
        for i, w in enumerate(words):
            if w == "-S":
                key, value = words[i + 1].split("=", 1)
                expected[key] = yaml.safe_load(value)
        assert shown[name] == expected, (name, {k: (shown[name].get(k), v) for k, v in expected.items()
                                                if shown[name].get(k) != v})
    applied = next(line.split()[3] for line in lines if line.startswith("dvc exp apply"))
    assert yaml.safe_load((repo / "params.yaml").read_text()) == shown[applied]
    # the variant chain and what it depends on (not the study's runs: this test may run alone)
    status = sh("dvc status --json --with-deps variant-figures", repo).strip()
    assert json.loads(status) == {}, status  # every output (the cache: genotype included) is the applied run's
    m = json.loads((repo / "current" / "metrics.json").read_text())
    g = json.loads((repo / "current" / "genotype" / "genotype.json").read_text())
    assert m["activation"] == shown[applied]["activation"] and g
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["variant-discretize"]["outs"]
    assert lock and all(o.get("md5") for o in lock)


def test_a_typo_fails_before_any_stage_runs_and_changes_nothing(repo):
    """check-params is upstream of every stage: a bad value stops `dvc repro` before DVC
    deletes any output, and a failed `dvc exp run --temp` leaves params.yaml as it was."""
    before = (repo / "params.yaml").read_text()
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    r = subprocess.run("dvc exp run --temp -S schedule=fimtt variant-figures", shell=True, cwd=repo, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "schedule='fimtt' is invalid" in r.stdout + r.stderr, r.stdout + r.stderr
    assert (repo / "params.yaml").read_text() == before
    p = yaml.safe_load(before)
    p["configs"]["DARTS"]["activation"] = "crbb"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    genotype = repo / "runs" / "DARTS" / "0" / "genotype" / "genotype.json"
    assert genotype.is_file()
    r = subprocess.run("dvc repro", shell=True, cwd=repo, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "configs.DARTS.activation='crbb' is invalid" in out, out
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'check-params':"], ran
    assert genotype.is_file()
    (repo / "params.yaml").write_text(before)

