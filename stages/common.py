"""Small helpers the stage commands share: devices, seeding, prepared data, checkpoints."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from darts.data import ImageSet, load_imageset

from .params import ParamsError

#: checkpoints live outside every DVC output (DVC deletes outputs before a stage reruns)
CHECKPOINT_ROOT = Path(os.environ.get("DARTS_CHECKPOINT_DIR", ".checkpoints"))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ParamsError(f"device={name!r} is invalid; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"device={name!r} requested but no CUDA device is available; valid here: auto, cpu")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_prepared(folder: str | Path, name: str) -> ImageSet:
    path = Path(folder) / f"{name}.pt"
    if not path.is_file():
        raise ParamsError(f"prepared data {path} is missing; run `darts prepare-split` first")
    return load_imageset(path)


def checkpoint_path(stage: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{stage}-{key}" / "state.pt"


def drop_checkpoint(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def fresh_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
