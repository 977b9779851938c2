"""benchmarks/learning_probe.py: one search with some search keys changed, evaluated after every
epoch (README, "Speed": the probe behind issue 20.3's measurements)."""
from __future__ import annotations

import copy
import sys

import torch
from conftest import ROOT

from stages import prepare_split

sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder, not an installed package
from benchmarks.learning_probe import batch_stat_accuracy, probe  # noqa: E402


def test_probe_runs_the_changed_search_and_reports_each_epoch(tiny_params_file, tmp_path):
    params = tiny_params_file({"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}})
    prepare_split.run(str(params), str(tmp_path / "prepared"))
    row = probe(str(params), "DARTS", 0, {"epochs": 2, "batch_size": 8}, str(tmp_path / "prepared"))
    # 352 images, half for w at batch 8: 22 w steps per epoch, two epochs
    assert row["w_steps"] == 44 and len(row["epochs"]) == 2 and row["search"] == {"epochs": 2, "batch_size": 8}
    for e in row["epochs"]:
        assert set(e) == {"train_acc", "val_acc", "val_acc_batch_stats", "val_acc_recalibrated"}
        assert all(0.0 <= v <= 1.0 for v in e.values())
    assert row["final_val_acc"] == row["epochs"][-1]["val_acc"] and row["search_seconds"] > 0


def test_batch_stat_accuracy_normalises_by_the_batch_and_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(64, 2))
    x, y = torch.randn(8, 3, 6, 6) * 3 + 1, torch.tensor([0, 1] * 4)
    net.eval()
    before = copy.deepcopy(net.state_dict())
    twin = copy.deepcopy(net).train()
    with torch.no_grad():
        expected = (twin(x).argmax(1) == y).float().mean().item()
    assert batch_stat_accuracy(net, [(x, y)]) == expected
    assert not net.training  # its mode is restored
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # running stats untouched
    assert not torch.equal(twin[1].running_mean, before["1.running_mean"])  # a training forward would move them
