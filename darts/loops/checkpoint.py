"""Atomic, configuration-keyed checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced,
then renamed over the previous one, so a crash or a full disk mid-write never
corrupts the last good checkpoint. Checkpoints are keyed by a hash of everything that
determines a run, so a run is never resumed from another configuration's state.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

#: bump when a change to the science makes old checkpoints meaningless
SCIENCE_VERSION = "1"


def science_fingerprint() -> str:
    """Hash of the `darts` package sources, subpackages (darts.data) included: any change to
    the science invalidates checkpoints. A top-level file is hashed under its bare name, as
    before subpackages existed."""
    h = hashlib.sha256(SCIENCE_VERSION.encode())
    root = Path(__file__).resolve().parents[1]  # the darts package
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_key(*parts) -> str:
    """A short stable hash of what determines a run (config, hyperparameters, data, code)."""
    blob = json.dumps([science_fingerprint(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_atomic(path: str | Path, mode: str, write) -> None:
    """Write through a temp file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj, path: str | Path) -> None:
    _write_atomic(path, "wb", lambda f: torch.save(obj, f))


def load(path: str | Path):
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def write_json_atomic(obj, path: str | Path) -> None:
    _write_atomic(path, "w", lambda f: f.write(json.dumps(obj, indent=2) + "\n"))
