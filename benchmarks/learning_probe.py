"""Does a study's supernet learn, and at what cost? One search of a config × seed under
params.yaml with some `search` keys changed, evaluated after every epoch.

    python -m benchmarks.learning_probe DARTS 0 '{"epochs": 4, "batch_size": 16, "w_lr": 0.05}'

prints one JSON line: the search's own seconds (``Searcher.seconds``, evaluation excluded),
and per epoch the training accuracy, the supernet's validation accuracy in eval mode (what
the search stage reported until 2026-12-07), with batch statistics (BatchNorm in training
mode, running statistics left as they were) and after re-estimating the running statistics
on the w split (what the search stage reports now, darts.loops.batchnorm). All low: an
undertrained network; only the first low: running statistics that lag the weights. It reads the prepared data the
pipeline made (``--prepared``, default data/prepared) and writes nothing but a temporary
params file. Run it on idle cores for the seconds to mean anything.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml

from darts.loops.batchnorm import recalibrate_batchnorm
from darts.loops.train import evaluate
from stages.common import load_prepared, machine
from stages.search import build, settings


@torch.no_grad()
def batch_stat_accuracy(net: torch.nn.Module, batches) -> float:
    """Accuracy with BatchNorm normalising by each batch's statistics; the running statistics
    (which a training-mode forward updates) are put back afterwards."""
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    was_training = net.training
    net.train()
    correct = n = 0
    for x, y in batches:
        out = net(x)
        logits = out[0] if isinstance(out, tuple) else out
        correct += (logits.argmax(1) == y).sum().item()
        n += y.numel()
    net.load_state_dict(saved)
    net.train(was_training)
    return correct / n


def recalibrated_accuracy(net: torch.nn.Module, batches, calibration) -> float:
    """Eval-mode accuracy after re-estimating BN statistics on the w split (what the search
    stage reports as val_acc, darts.loops.batchnorm); the search's own statistics are put back."""
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    recalibrate_batchnorm(net, calibration)
    acc = evaluate(net, batches)["acc"]
    net.load_state_dict(saved)
    return acc


def probe(params: str, config: str, seed: int, search: dict, prepared: str) -> dict:
    p = yaml.safe_load(Path(params).read_text())
    p["search"].update(search)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(p, f)
        f.flush()
        spec, cfg, extra, data = settings(f.name, config, seed)
    device = machine("cpu", 1)
    searcher, split, (val, calibration) = build(spec, cfg, extra, load_prepared(prepared, "train"), device,
                                                int(data.get("seed", 0)))
    epochs = []
    while not searcher.done:
        row = searcher.run_epoch()
        epochs.append({"train_acc": round(row["train_acc"], 4),
                       "val_acc": round(evaluate(searcher.net, val.epoch_batches())["acc"], 4),
                       "val_acc_batch_stats": round(batch_stat_accuracy(searcher.net, val.epoch_batches()), 4),
                       "val_acc_recalibrated": round(recalibrated_accuracy(searcher.net, val.epoch_batches(),
                                                                           calibration.epoch_batches()), 4)})
    return {"config": config, "seed": seed, "search": search, "w_steps": searcher.step,
            "search_seconds": round(searcher.seconds, 2), "final_val_acc": epochs[-1]["val_acc"], "epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("seed", type=int)
    ap.add_argument("search", nargs="?", default="{}", help="JSON object of params.search keys to change")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared")
    a = ap.parse_args()
    print(json.dumps(probe(a.params, a.config, a.seed, json.loads(a.search), a.prepared)), flush=True)


if __name__ == "__main__":
    main()
