"""`darts retrain`: train the evaluation network of a genotype from scratch (DARTS protocol).

Trains on the whole prepared training set for a fixed number of epochs; nothing is
selected on the test set (it is not even loaded here). Resumes from its checkpoint.
Writes `model.pt`, `retrain.json` (per-epoch curve, params) and `log.txt`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from darts import checkpoint as ckpt
from darts.data import BatchStream
from darts.evalnet import EvalNetwork, count_params_m
from darts.space import Genotype, GenotypeError
from darts.train import RetrainConfig, Retrainer

from .common import checkpoint_path, device_label, drop_checkpoint, load_prepared, pick_device, seed_everything
from .params import ParamsError, check_data, load_params, run_spec, section
from .progress import Progress

EXTRA_KEYS = {"layers": 20, "C": 36, "auxiliary": True, "device": "auto"}


def retrain_settings(params: dict) -> tuple[RetrainConfig, dict]:
    r = section(params, "retrain")
    extra = {k: r.pop(k, v) for k, v in EXTRA_KEYS.items()}
    try:
        cfg = RetrainConfig.from_dict(r)
    except (ValueError, TypeError) as e:
        raise ParamsError(str(e).replace("retrain.", "retrain.", 1)) from None
    for key in ("layers", "C"):
        v = extra[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ParamsError(f"retrain.{key}={v!r} is invalid; must be a positive integer")
    if extra["layers"] < 3:
        raise ParamsError(f"retrain.layers={extra['layers']} is invalid; need >= 3 (two reduction cells)")
    if extra["C"] % 2:
        raise ParamsError(f"retrain.C={extra['C']} is invalid; must be even")
    return cfg, extra


def load_genotype(path: str | Path) -> Genotype:
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"genotype file {p} is missing; run `darts discretize` first")
    try:
        return Genotype.from_json(p.read_text())
    except (GenotypeError, ValueError, TypeError) as e:
        raise ParamsError(f"genotype file {p} is invalid: {e}") from None


def run(params_path: str, config: str | None, seed: int | None, genotype_path: str, prepared: str, out: str) -> dict:
    params = load_params(params_path)
    spec = run_spec(params, config, seed)
    cfg, extra = retrain_settings(params)
    data_params = check_data(section(params, "data"))
    genotype = load_genotype(genotype_path)
    device = pick_device(str(extra["device"]))
    train_set = load_prepared(prepared, "train")

    seed_everything(spec.seed)
    model = EvalNetwork(genotype, C=extra["C"], n_classes=len(train_set.classes), layers=extra["layers"],
                        auxiliary=bool(extra["auxiliary"])).to(device)
    stream = BatchStream(train_set, cfg.batch_size, seed=spec.seed, device=device, cutout=cfg.cutout)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(f"retrain {spec.label} seed {spec.seed}", cfg.epochs, out_dir / "log.txt")
    trainer = Retrainer(model, cfg, on_step=lambda i, n: progress.step(i, n, None))
    key = ckpt.run_key("retrain", spec.seed, genotype.to_dict(), cfg.to_dict(), extra, data_params)
    state_file = checkpoint_path("retrain", key)
    curve: list[dict] = []
    if state_file.is_file():
        state = ckpt.load(state_file)
        trainer.load_state_dict(state["trainer"])
        stream.load_state_dict(state["stream"])
        curve = state["curve"]
        torch.set_rng_state(state["rng"])
        progress.line(f"resuming from {state_file} at epoch {trainer.epoch}/{cfg.epochs}")
    else:
        progress.line(f"retrain {spec.label} seed {spec.seed}: {count_params_m(model):.3f}M params on "
                      f"{device_label(device)}")
    while not trainer.done:
        progress.start_epoch(trainer.epoch + 1, trainer.epoch)
        row = trainer.train_epoch(stream.epoch_batches())
        row["epoch"] = trainer.epoch
        curve.append(row)
        progress.end_epoch(row, ("loss", "acc", "lr"))
        ckpt.save_atomic({"trainer": trainer.state_dict(), "stream": stream.state_dict(), "curve": curve,
                          "rng": torch.get_rng_state()}, state_file)
    ckpt.save_atomic({"state": model.state_dict(), "genotype": genotype.to_dict(), "C": extra["C"],
                      "layers": extra["layers"], "auxiliary": bool(extra["auxiliary"]),
                      "n_classes": len(train_set.classes)}, out_dir / "model.pt")
    summary = {"params_m": count_params_m(model), "device": device_label(device),
               "retrain_seconds": sum(r.get("seconds", 0.0) for r in curve), "epochs": curve}
    ckpt.write_json_atomic(summary, out_dir / "retrain.json")
    progress.close()
    drop_checkpoint(state_file)
    return summary
