"""`darts discretize`: Π_S of the final α -> genotype.json and genotype.txt.

The genotype never holds `none` or a pruned op (constraints.choose_edges excludes them).
"""
from __future__ import annotations

from pathlib import Path

import torch

from darts.activations import make_activation
from darts.checkpoint import write_json_atomic
from darts.constraints import derive_genotype

from .params import ParamsError


def run(search_dir: str, out: str) -> dict:
    path = Path(search_dir) / "supernet.pt"
    if not path.is_file():
        raise ParamsError(f"search output {path} is missing; run `darts search` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    activation = make_activation(saved["activation"])
    state = saved["state"]
    weights = {t: activation(state[f"alpha_{t}"], state[f"live_{t}"]) for t in ("normal", "reduce")}
    live = {t: state[f"live_{t}"] for t in ("normal", "reduce")}
    genotype = derive_genotype(weights, live, tuple(saved["ops"]))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(genotype.to_dict(), out_dir / "genotype.json")
    (out_dir / "genotype.txt").write_text(genotype.to_darts_text() + "\n")
    return genotype.to_dict()
