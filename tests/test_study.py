"""`darts study run`'s pieces with known answers: the chains, device slots, thread shares,
the ETA and the progress line (the end-to-end run is in test_pipeline.py)."""
from __future__ import annotations

import pytest

from conftest import tiny_params
from stages.params import ParamsError
from stages.chains import Board, run_stage, study_chains, eta_seconds, parse_devices, worker_env


def test_chains_are_every_config_seed_then_the_variant():
    p = tiny_params({"A": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
                     "B": {"activation": "crb", "schedule": "fimt", "regularization": "pr"}}, seeds=(0, 3))
    chains = study_chains(p)
    assert [c.name for c in chains] == ["A-0", "A-3", "B-0", "B-3", "variant"]
    assert chains[3].stages == ("study/search/dvc.yaml:search@B-3", "study/discretize/dvc.yaml:discretize@B-3",
                                "study/retrain/dvc.yaml:retrain@B-3", "study/test/dvc.yaml:test@B-3")
    assert run_stage("search", "B-3") == chains[3].stages[0]
    assert chains[3].metrics == "metrics/B/3.json"
    assert chains[-1].stages[0] == "variant-search" and chains[-1].stages[-1] == "variant-figures"
    assert [c.cost for c in chains] == [1.0, 1.0, 1.0, 1.0, 1.2]
    p["configs"]["B"]["order"] = 2
    assert [c.cost for c in study_chains(p)][2:4] == [2.0, 2.0]  # second order: started first


def test_chain_stages_exist_in_dvc_yaml():
    import yaml

    from conftest import ROOT

    for chain in study_chains(tiny_params(seeds=(0,))):
        for stage in chain.stages:
            file, _, name = stage.rpartition(":")  # study/search/dvc.yaml:search@A-0, or a root stage
            stages = yaml.safe_load((ROOT / (file or "dvc.yaml")).read_text())["stages"]
            assert name.split("@")[0] in stages, stage


def test_devices_round_robin_and_threads_split():
    devices = parse_devices("cuda:0, cuda:1", jobs=4)
    assert devices == ["cuda:0", "cuda:1"]
    envs = [worker_env(slot, 4, devices, cores=16, base={}) for slot in range(4)]
    assert [e["DARTS_DEVICE"] for e in envs] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert {e["DARTS_THREADS"] for e in envs} == {"4"} and envs[0]["OMP_NUM_THREADS"] == "4"
    assert worker_env(0, 2, ["cpu"], cores=2, base={})["DARTS_THREADS"] == "1"
    assert worker_env(0, 3, ["cpu"], cores=2, base={})["DARTS_THREADS"] == "1"  # at least one each
    assert worker_env(0, 2, ["cpu"], cores=16, base={"DARTS_THREADS": "3"})["DARTS_THREADS"] == "3"  # user's
    assert parse_devices(None, 2) == ["auto"]
    with pytest.raises(ParamsError, match="'gpu0' is invalid; valid: auto, cpu, cuda, cuda:N"):
        parse_devices("cuda:0,gpu0", 2)


def test_eta_from_finished_chains():
    assert eta_seconds([], left=5, running=[], jobs=2) is None
    # mean 60 s; 4 left and one running for 20 s (40 s to go): (240 + 40) / 2 jobs
    assert eta_seconds([50.0, 70.0], left=4, running=[20.0], jobs=2) == pytest.approx(140.0)
    # more jobs than chains: the work is spread over the chains that remain
    assert eta_seconds([60.0], left=1, running=[], jobs=8) == pytest.approx(60.0)
    assert eta_seconds([60.0], left=0, running=[90.0], jobs=2) == 0.0


def test_board_line_counts_and_eta():
    b = Board(total=10, jobs=2, t0=0.0)
    b.done += ["a", "b"]
    b.durations += [30.0, 30.0]
    b.failed.append("c")
    b.running.update({"d": 100.0, "e": 110.0})
    line = b.line(now=120.0)
    # left 5: (5·30 + max(30−20, 0) + max(30−10, 0)) / 2 = 90 s
    assert line == ("[study] 2/10 chains done, 2 running, 1 failed, 5 left; elapsed 2m00s, ETA 1m30s")
