"""`darts claims`: the paper's claims (a)-(d) tested on this study's runs (darts.report.claims).

Reads exactly params' configs × seeds: `metrics/<config>/<seed>.json` (test error, params,
dimensions) and each run's `search/history.pt` for the index of its first α step. Writes
`claims.md` (to read; the README quotes it) and `claims.csv` (the numbers).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from darts.report import claims

from darts.report import table as report

from .aggregate import read_runs
from .params import load_params, study_runs


def first_alpha_step(history_file: Path) -> float:
    """Index (0-based, in w steps) of the run's first α step; NaN when it took none."""
    if not history_file.is_file():
        return math.nan
    flags = torch.load(history_file, map_location="cpu", weights_only=True)["steps"]["alpha"]
    return float(next((i for i, took in enumerate(flags) if took), math.nan))


def run(params_path: str, metrics_dir: str, runs_dir: str, out: str) -> pd.DataFrame:
    params = load_params(params_path)
    runs = read_runs(params, metrics_dir)
    methods = {s.name: s.method for s in study_runs(params)}
    runs["method"] = runs["config"].map(methods)
    runs["first_alpha_step"] = [first_alpha_step(Path(runs_dir) / c / str(s) / "search" / "history.pt")
                                for c, s in zip(runs["config"], runs["seed"])]
    random_row = report.REFERENCES[0]  # the random-sampling config (Table 1's first reference)
    reference = random_row if random_row in set(runs["config"]) else None
    table = claims.evaluate(runs, reference)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "claims.csv", index=False, float_format="%.6g")
    (out_dir / "claims.md").write_text(claims.markdown(table))
    return table
