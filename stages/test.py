"""`darts test`: test error of a retrained network, and the run's metrics file.

The only stage that reads the test set. Writes `metrics/<config>/<seed>.json` with
test_error (%), params_m (without the auxiliary head), search time and device.

The run's identity (config, label, seed) is the retrain's own (retrain.json "run"), so a
genotype that was never searched (a published one) is tested without `--search`; its
search fields are null. With `--search`, the search must be of the same run (name and
seed): borrowing another run's search time would mislabel the metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from darts.data import BatchStream
from darts.inference import network_from_record
from darts.loops.checkpoint import write_json_atomic
from darts.loops.train import evaluate
from darts.nn.evalnet import count_params_m

from .common import load_prepared, machine
from .params import ParamsError


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ParamsError(f"{what} {path} is missing; run the earlier stages first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParamsError(f"{what} {path} is not valid JSON ({e}); rerun the stage that writes it") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{what} {path} holds {type(data).__name__}, not a JSON object; "
                          "rerun the stage that writes it")
    return data


def run_identity(retrain: dict, search: dict | None, retrain_dir: str, search_dir: str | None) -> dict:
    """The run the metrics belong to: the retrain's; checked against the search's when given."""
    own = retrain.get("run")
    if search is None:
        if own is None:
            raise ParamsError(f"retrain summary {Path(retrain_dir) / 'retrain.json'} records no run (written by an "
                              "older `darts retrain`); rerun `darts retrain`, or pass --search with its search folder")
        return own
    theirs = search.get("run")
    if not isinstance(theirs, dict):
        raise ParamsError(f"search summary {Path(search_dir) / 'search.json'} records no run; rerun `darts search`")
    if own is None:  # retrain.json of an older darts: the search's run is the only identity there is
        return theirs
    if (own.get("name"), own.get("seed")) != (theirs.get("name"), theirs.get("seed")):
        raise ParamsError(f"--search {search_dir} is the search of {theirs.get('name')} seed {theirs.get('seed')}, "
                          f"but --retrain {retrain_dir} retrained {own.get('name')} seed {own.get('seed')}; "
                          "pass that run's search folder, or omit --search for a genotype that was not searched")
    return own


def run(retrain_dir: str, search_dir: str | None, prepared: str, out: str, batch_size: int = 256,
        device: str | None = None, threads: int | None = None) -> dict:
    model_file = Path(retrain_dir) / "model.pt"
    if not model_file.is_file():
        raise ParamsError(f"retrained model {model_file} is missing; run `darts retrain` first")
    search = None if search_dir is None else _read_json(Path(search_dir) / "search.json", "search summary")
    retrain = _read_json(Path(retrain_dir) / "retrain.json", "retrain summary")
    run = run_identity(retrain, search, retrain_dir, search_dir)
    dev = machine(device, threads)
    saved = torch.load(model_file, map_location="cpu", weights_only=True)
    model = network_from_record(saved).to(dev)  # darts.inference: the CIFAR or ImageNet network, 1 or 3 channels
    test_set = load_prepared(prepared, "test")
    result = evaluate(model, BatchStream(test_set, batch_size, seed=0, device=dev, train=False).epoch_batches())
    metrics = {  # the same keys with or without a search: aggregate and figures read them
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
        "search_seconds": search["search_seconds"] if search is not None else None,
        "search_gpu_days": search["search_gpu_days"] if search is not None else None,
        "search_alpha_ratio": search["alpha_ratio"] if search is not None else None,
        "search_pruned_ops": search["pruned_ops"] if search is not None else None,
        "search_val_acc": search.get("val_acc") if search is not None else None,
        "retrain_seconds": retrain["retrain_seconds"],
        "retrain_train_acc": retrain["epochs"][-1]["acc"] if retrain["epochs"] else None,
        "device": search["device"] if search is not None else retrain.get("device"),
    }
    write_json_atomic(metrics, out)
    return metrics
