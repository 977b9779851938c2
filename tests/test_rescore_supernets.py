"""benchmarks/rescore_supernets.py: a finished search's supernet scored again from its saved
state gives the search's own figure (the split and the network rebuilt as they were)."""
from __future__ import annotations

import json
import sys

import yaml
from conftest import ROOT, tiny_params

from stages import prepare_split, search

sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder, not an installed package
from benchmarks.rescore_supernets import rescore  # noqa: E402
from stages.common import load_prepared, machine  # noqa: E402


def test_rescore_reproduces_the_search_s_own_figures_and_skips_random_sampling(tmp_path):
    configs = {"CRB": {"activation": "crb", "schedule": "alternate", "regularization": "none"},
               "Random": {"method": "random"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(configs), sort_keys=False))
    prepare_split.run(str(tmp_path / "params.yaml"), str(tmp_path / "data" / "prepared"))
    for config in configs:
        search.run(str(tmp_path / "params.yaml"), config, 0, str(tmp_path / "data" / "prepared"),
                   str(tmp_path / "runs" / config / "0" / "search"), device="cpu", threads=1)
    recorded = json.loads((tmp_path / "runs" / "CRB" / "0" / "search" / "search.json").read_text())
    train = load_prepared(tmp_path / "data" / "prepared", "train")
    row = rescore(tmp_path, "CRB", 0, train, machine("cpu", 1))
    # the search saved its recalibrated statistics: scored as saved or recalibrated again, the same
    assert row["val_acc_as_saved"] == row["val_acc"] == recorded["val_acc"] == row["recorded_val_acc"]
    assert row["recorded_val_acc_running_stats"] == recorded["val_acc_running_stats"]
    assert recorded["val_acc_running_stats"] != recorded["val_acc"]  # the two figures differ here
    assert rescore(tmp_path, "Random", 0, train, machine("cpu", 1)) is None
