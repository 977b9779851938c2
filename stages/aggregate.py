"""`darts aggregate`: Table 1 (md, csv, tex) from exactly params' configs × seeds.

Reads `metrics/<config>/<seed>.json` for every config and seed in params.yaml (never a
glob, so stale files of removed configs or seeds are not counted) and the paper's
figures from `data/table1-paper.csv`. table1.csv holds our rows (source "this study") and
then the literature's (source "reported").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from darts.report import table as report

from .params import ParamsError, load_params, study_runs

PAPER_CSV = Path(__file__).resolve().parents[1] / "data" / "table1-paper.csv"


def read_runs(params: dict, metrics_dir: str | Path) -> pd.DataFrame:
    rows = []
    for spec in study_runs(params):
        path = Path(metrics_dir) / spec.name / f"{spec.seed}.json"
        if not path.is_file():
            raise ParamsError(f"metrics file {path} is missing for config {spec.name} seed {spec.seed}; "
                              "run `dvc repro` (or the test stage) for it first")
        rows.append(json.loads(path.read_text()))
    return pd.DataFrame(rows)


def table1(params: dict, runs: pd.DataFrame, paper: pd.DataFrame,
           references: Sequence[str] = report.REFERENCES) -> pd.DataFrame:
    """Table 1's numbers: per config (params order) the seeds' statistics, the paper's
    figures for that row and the Welch intervals against each reference in the study."""
    labels = {k: str(v) for k, v in (params.get("labels") or {}).items()}
    table = report.with_paper(report.summarize(runs, list(params["configs"]), labels), paper)
    return report.with_comparisons(table, runs, references)


def run(params_path: str, metrics_dir: str, out: str, paper_csv: str | Path = PAPER_CSV,
        references: Sequence[str] = report.REFERENCES) -> pd.DataFrame:
    """Write table1.md/csv/tex; `references` are the config names each row's test error is
    compared with (Welch interval), skipped where not in the study."""
    params = load_params(params_path)
    runs = read_runs(params, metrics_dir)
    paper = pd.read_csv(paper_csv)
    table = table1(params, runs, paper, references)
    display = report.display_table(table, references)
    literature = report.literature_table(paper)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    numeric = table.drop(columns=[c for c in table.columns if c.startswith("why_vs_")])  # md legend only
    csv = pd.concat([numeric.assign(source="this study"), report.literature_rows(paper)], ignore_index=True)
    csv = csv[["source"] + [c for c in csv.columns if c != "source"]]
    csv.to_csv(out_dir / "table1.csv", index=False, float_format="%.6g")
    runs.to_csv(out_dir / "runs.csv", index=False, float_format="%.6g")
    md = ["# Table 1", "",
          ("Ours: mean ± sample std over seeds (n); 'Paper' columns: the figures the paper reports "
           "for the same row. Search time in GPU days is wall time / 86400 on the device listed. "
           + report.comparison_legend(table, references)).rstrip(), "",
          display.to_markdown(index=False), "", "## Reported in the literature (not rerun here)", "",
          literature.to_markdown(index=False), ""]
    (out_dir / "table1.md").write_text("\n".join(md))
    (out_dir / "table1.tex").write_text(report.to_latex(display, literature))
    return table
