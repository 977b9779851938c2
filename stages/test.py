"""`darts test`: test error of a retrained network, and the run's metrics file.

The only stage that reads the test set. Writes `metrics/<config>/<seed>.json` with
test_error (%), params_m (without the auxiliary head), search time and device.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from darts.checkpoint import write_json_atomic
from darts.data import BatchStream
from darts.evalnet import EvalNetwork, count_params_m
from darts.space import Genotype
from darts.train import evaluate

from .common import load_prepared, pick_device
from .params import ParamsError


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ParamsError(f"{what} {path} is missing; run the earlier stages first")
    return json.loads(path.read_text())


def run(retrain_dir: str, search_dir: str, prepared: str, out: str, batch_size: int = 256, device: str = "auto") -> dict:
    model_file = Path(retrain_dir) / "model.pt"
    if not model_file.is_file():
        raise ParamsError(f"retrained model {model_file} is missing; run `darts retrain` first")
    search = _read_json(Path(search_dir) / "search.json", "search summary")
    retrain = _read_json(Path(retrain_dir) / "retrain.json", "retrain summary")
    saved = torch.load(model_file, map_location="cpu", weights_only=True)
    dev = pick_device(device)
    model = EvalNetwork(Genotype.from_dict(saved["genotype"]), C=saved["C"], n_classes=saved["n_classes"],
                        layers=saved["layers"], auxiliary=saved["auxiliary"])
    model.load_state_dict(saved["state"])
    model.to(dev)
    test_set = load_prepared(prepared, "test")
    result = evaluate(model, BatchStream(test_set, batch_size, seed=0, device=dev, train=False).epoch_batches())
    run = search["run"]
    metrics = {
        "config": run["name"],
        "label": run["label"],
        "seed": run["seed"],
        "activation": run["activation"],
        "schedule": run["schedule"],
        "regularization": run["regularization"],
        "order": run["order"],
        "test_error": result["error_pct"],
        "test_n": result["n"],
        "params_m": count_params_m(model),
        "search_seconds": search["search_seconds"],
        "search_gpu_days": search["search_gpu_days"],
        "search_alpha_ratio": search["alpha_ratio"],
        "search_pruned_ops": search["pruned_ops"],
        "search_val_acc": search.get("val_acc"),
        "retrain_seconds": retrain["retrain_seconds"],
        "retrain_train_acc": retrain["epochs"][-1]["acc"] if retrain["epochs"] else None,
        "device": search["device"],
    }
    write_json_atomic(metrics, out)
    return metrics
