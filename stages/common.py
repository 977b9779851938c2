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


def set_threads(n) -> None:
    """CPU threads for torch; 0 keeps torch's default (all cores).

    The quick scale uses 1: on tiny tensors a second thread gains little, and when any
    other process is busy, 2 OpenMP threads on 2 cores were measured 10x slower than 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ParamsError(f"threads={n!r} is invalid; must be an integer >= 0 (0 = all cores)")
    if n > 0:
        torch.set_num_threads(n)


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


def checkpoint_path(stage: str, key: str, out_dir: str | Path) -> Path:
    """Where a run's checkpoint lives; records which output folder owns it."""
    folder = CHECKPOINT_ROOT / f"{stage}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "owner.txt").write_text(str(Path(out_dir).resolve()))
    return folder / "state.pt"


def drop_checkpoint(path: Path) -> None:
    """Remove a finished run's checkpoint and stale ones left for the same output folder
    by runs of an earlier configuration (their key differs, their owner does not)."""
    owner_file = path.parent / "owner.txt"
    owner = owner_file.read_text() if owner_file.is_file() else None
    shutil.rmtree(path.parent, ignore_errors=True)
    if owner is None or not CHECKPOINT_ROOT.is_dir():
        return
    for other in CHECKPOINT_ROOT.glob(f"{path.parent.name.split('-')[0]}-*/owner.txt"):
        if other.read_text() == owner:
            shutil.rmtree(other.parent, ignore_errors=True)


def fault_injection(step: int, net) -> None:
    """Test hooks (environment variables, used by the robustness tests only):
    DARTS_FAULT_KILL_AT_STEP=N kills this process with SIGKILL after iteration N;
    DARTS_FAULT_NAN_AT_STEP=N writes NaN into a network weight after iteration N."""
    kill = os.environ.get("DARTS_FAULT_KILL_AT_STEP")
    if kill is not None and step == int(kill):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    nan = os.environ.get("DARTS_FAULT_NAN_AT_STEP")
    if nan is not None and step == int(nan):
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))


def fresh_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
