"""Score a finished study's searched supernets again, with and without BN recalibration.

    python -m benchmarks.rescore_supernets STUDY_DIR [CONFIG ...]

For a study searched before the search stage re-estimated BatchNorm statistics
(darts.loops.batchnorm), e.g. the published reports/cifar-cpu run, this gives both
figures per run from its saved supernets: ``val_acc_as_saved``, eval mode with the
statistics saved in supernet.pt (for such a study the search's running averages, so it
must equal the recorded ``val_acc``: a check that the split and the network were rebuilt
as they were), and ``val_acc``, recalibrated (what the search reports now). A study
searched since saves the recalibrated statistics, so there both equal its recorded
``val_acc`` and the running-statistics figure is only in search.json. STUDY_DIR is the
study's checkout: params.yaml, data/prepared and runs/<config>/<seed>/search/. Prints one
JSON line per run; writes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from darts.loops.search import evaluate_supernet
from stages.common import load_prepared, machine
from stages.search import build, settings


def rescore(study: Path, config: str, seed: int, train_set, device: torch.device) -> dict | None:
    """Both figures of one run, or None for a method that trains no supernet (random sampling)."""
    search_dir = study / "runs" / config / str(seed) / "search"
    spec, cfg, extra, data = settings(str(study / "params.yaml"), config, seed)
    searcher, _, evaluation = build(spec, cfg, extra, train_set, device, int(data.get("seed", 0)))
    if evaluation is None:
        return None
    saved = torch.load(search_dir / "supernet.pt", map_location=device, weights_only=True)
    searcher.net.load_state_dict(saved["state"])
    val, calibration = evaluation
    r = evaluate_supernet(searcher.net, val.epoch_batches(), calibration.epoch_batches())
    recorded = json.loads((search_dir / "search.json").read_text())
    return {"config": config, "seed": seed, "recorded_val_acc": recorded.get("val_acc"),
            "recorded_val_acc_running_stats": recorded.get("val_acc_running_stats"),
            "val_acc_as_saved": r["val_acc_running_stats"], "val_acc": r["val_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("configs", nargs="*", help="default: every config of the study that trains a supernet")
    a = ap.parse_args()
    params = yaml.safe_load((a.study / "params.yaml").read_text())
    configs = a.configs or [c for c in params["configs"] if (a.study / "runs" / c).is_dir()]
    device = machine("cpu", 1)  # the thread count of the runs being rescored
    train_set = load_prepared(a.study / "data" / "prepared", "train")
    for config in configs:
        for seed in params["seeds"]:
            row = rescore(a.study, config, seed, train_set, device)
            if row is None:
                break
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
