"""`darts discretize`: Π_S of the final α -> genotype.json, genotype.txt and genotype_ptdarts.txt.

genotype.txt is the flat DARTS `Genotype(...)` text, genotype_ptdarts.txt pt.darts' nested
per-node form: each one pastes into its project's code, and `darts retrain` reads all three.

The genotype never holds `none` or a pruned op (constraints.choose_edges excludes them).
Ties of activated values are broken by the rule the search ran with (`search.tie_break`,
recorded in supernet.pt; a file without it gets the default, raw α): the genotype and
the tie count in search.json then describe the same choice.

An activation that declares its method's own threshold rule (FairDARTS' sigmoid: σ ≥ 0.85)
also gets `genotype_threshold.json`: the cell that rule keeps, read from the same ranking.
Its nodes may have fewer than two inputs (outside S), so the retrain uses Π_S's genotype for
comparability with every other row; the file says how many of Π_S's 16 choices pass.
"""
from __future__ import annotations

from pathlib import Path

import torch

from darts.loops.checkpoint import write_json_atomic
from darts.method.activations import make_activation
from darts.space.primitives import CELL_TYPES
from darts.space.projection import TIE_BREAKS, discretize, threshold_cell, tie_key

from .params import ParamsError

DEFAULT_TIE_BREAK = TIE_BREAKS[0]  # raw_alpha


def run(search_dir: str, out: str) -> dict:
    path = Path(search_dir) / "supernet.pt"
    if not path.is_file():
        raise ParamsError(f"search output {path} is missing; run `darts search` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    activation = make_activation(saved["activation"])
    tie_break = saved.get("tie_break", DEFAULT_TIE_BREAK)
    if tie_break not in TIE_BREAKS:
        raise ParamsError(f"{path} records tie_break={tie_break!r}; valid: {', '.join(TIE_BREAKS)}")
    state = saved["state"]
    alphas = {t: state[f"alpha_{t}"] for t in CELL_TYPES}
    live = {t: state[f"live_{t}"] for t in CELL_TYPES}
    genotype = discretize(activation, alphas, live, tuple(saved["ops"]), tie_break)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(genotype.to_dict(), out_dir / "genotype.json")
    (out_dir / "genotype.txt").write_text(genotype.to_darts_text() + "\n")
    (out_dir / "genotype_ptdarts.txt").write_text(genotype.to_ptdarts_text() + "\n")
    if activation.threshold is not None:
        weights = {t: activation.for_projection(a, live[t]) for t, a in alphas.items()}
        cells = {t: threshold_cell(weights[t], live[t], tuple(saved["ops"]), activation.threshold,
                                   tie_key(alphas[t], tie_break)) for t in CELL_TYPES}
        write_json_atomic({"rule": "threshold_sparse", "threshold": activation.threshold,
                           "kept": {t: len(c) for t, c in cells.items()}, "of": len(genotype.normal),
                           **{t: [list(x) for x in c] for t, c in cells.items()}},
                          out_dir / "genotype_threshold.json")
    return genotype.to_dict()
