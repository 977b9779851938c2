"""Small helpers the stage commands share: devices, seeding, prepared data, checkpoints."""
from __future__ import annotations

import hashlib
import json
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
    """CPU threads for torch; 0 keeps torch's default (all cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ParamsError(f"threads={n!r} is invalid; must be an integer >= 0 (0 = all cores)")
    if n > 0:
        torch.set_num_threads(n)


#: machine settings: where and how fast a run goes, never what it computes (on a GPU
#: cuDNN may differ bitwise anyway). They come from the command line or the environment,
#: not params.yaml: a param would change the stage's hash, so moving a run to another GPU
#: or machine would rerun it and miss DVC's run-cache.
MACHINE_SETTINGS = {"device": ("DARTS_DEVICE", "auto"), "threads": ("DARTS_THREADS", "1")}


def reject_machine_settings(where: str, section: dict) -> None:
    """A params section that still holds a machine setting gets a one-line error saying where it went."""
    for key, (env, _) in MACHINE_SETTINGS.items():
        if key in section:
            raise ParamsError(f"{where}.{key}={section[key]!r}: {key} is a machine setting, not a param (it would "
                              f"change the stage's hash and miss DVC's run-cache); remove it and use --{key} or {env}")


def machine(device: str | None = None, threads: int | None = None) -> torch.device:
    """This process's device and CPU threads: the command line, else DARTS_DEVICE /
    DARTS_THREADS, else `auto` (cuda if present) and 1 thread (0 = all cores).

    One thread is the default because it is what the committed quick study ran with (the
    thread count can change float reductions on a CPU) and because 2 OpenMP threads on
    2 cores that another process also uses were measured 10× slower than 1."""
    if threads is None:
        raw = os.environ.get("DARTS_THREADS", MACHINE_SETTINGS["threads"][1])
        try:
            threads = int(raw)
        except ValueError:
            raise ParamsError(f"DARTS_THREADS={raw!r} is invalid; must be an integer >= 0 (0 = all cores)") from None
    set_threads(threads)
    return pick_device(device if device is not None else os.environ.get("DARTS_DEVICE", "auto"))


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


def owned_key(key: str, out_dir: str | Path) -> str:
    """A run's key made specific to its output folder. Two chains of a study can compute the
    same thing (the default variant run is DARTS seed 0): with the content key alone they
    shared one checkpoint and lock, and the second, run in parallel, was refused."""
    return hashlib.sha256(f"{key}\0{Path(out_dir).resolve()}".encode()).hexdigest()[:16]


def checkpoint_path(stage: str, key: str, out_dir: str | Path, command: dict | None = None) -> Path:
    """Where a run's checkpoint lives (``owned_key``); records which output folder owns it and,
    in ``command.json``, the command's arguments, so `darts clean` can recompute the key that
    command would use now and tell a resumable checkpoint from a stale one."""
    folder = CHECKPOINT_ROOT / f"{stage}-{owned_key(key, out_dir)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "owner.txt").write_text(str(Path(out_dir).resolve()))
    if command is not None:
        (folder / "command.json").write_text(json.dumps(command, indent=1) + "\n")
    return folder / "state.pt"


def as_recorded(arg: str | None) -> str | None:
    """A command argument as `command.json` keeps it: an existing path made absolute (the
    command may have run from another folder), anything else (inline text) verbatim."""
    if arg is None:
        return None
    try:
        return str(Path(arg).resolve()) if Path(arg).exists() else arg
    except (OSError, ValueError):  # too long for a path: inline text
        return arg


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
    DARTS_FAULT_SIGINT_AT_STEP=N sends this process SIGINT after iteration N (as a
    Ctrl-C landing during it would: the stop must come right after it);
    DARTS_FAULT_NAN_AT_STEP=N writes NaN into a network weight after iteration N."""
    import signal

    kill = os.environ.get("DARTS_FAULT_KILL_AT_STEP")
    if kill is not None and step == int(kill):
        os.kill(os.getpid(), signal.SIGKILL)
    sigint = os.environ.get("DARTS_FAULT_SIGINT_AT_STEP")
    if sigint is not None and step == int(sigint):
        os.kill(os.getpid(), signal.SIGINT)
    nan = os.environ.get("DARTS_FAULT_NAN_AT_STEP")
    if nan is not None and step == int(nan):
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))


def fresh_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
