"""Shared fixtures: the project root, a tiny params dict, and a single-threaded torch.

On a 2-core machine that also runs other processes, torch with 2 threads on tiny
tensors is many times slower than with 1; tests pin 1 thread for stable timing.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Every `python -m stages` a test starts is a plain process (tests kill stage processes, time
# them, compare serial `dvc repro`s): no auto-mode stage server (stages/autoserver.py), except
# where tests/test_stageserver.py asks for one. os.environ, so that subprocesses inherit it.
os.environ["DARTS_STAGE_SERVER"] = "off"
CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_params(configs: dict | None = None, seeds=(0,)) -> dict:
    """params.yaml content at a scale where one run takes a few seconds."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = copy.deepcopy(p)
    if configs is not None:
        p["configs"] = configs
        p["labels"] = {k: v for k, v in p["labels"].items() if k in configs}
    p["seeds"] = list(seeds)
    p["data"].update({"dataset": "synthetic", "train_size": 352, "test_size": 80, "image_size": 8})
    p["search"].update({"layers": 3, "C": 4, "epochs": 1, "batch_size": 16})
    p["retrain"].update({"layers": 3, "C": 4, "epochs": 1, "batch_size": 32, "cutout": 2})
    return p


@pytest.fixture
def tiny_params_file(tmp_path):
    def write(configs: dict | None = None, seeds=(0,)) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(tiny_params(configs, seeds), sort_keys=False))
        return path

    return write


def assert_one_line_error(result, *needles: str) -> None:
    """A typer CliRunner result that is exactly one `error: ...` line containing every needle, exit 2."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
