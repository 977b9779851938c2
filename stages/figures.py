"""`darts figures` / `darts variant-figures`: the paper's figures from run outputs.

Reads exactly params' configs × seeds (like `aggregate`, never a glob of possibly stale
runs): `metrics/<config>/<seed>.json`, `runs/<config>/<seed>/search/history.pt`,
`.../genotype/genotype.json` and `.../retrain/retrain.json`, and hands the data to
`darts.report.figures` / `darts.report.figures_study`. Summary figures are PNG plus PDF; per-run figures PNG.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from darts.method.activations import ACTIVATIONS
from darts.method.schedules import logs_fisher
from darts.report import figures as F
from darts.report import figures_compare as FC
from darts.report import figures_study as FS
from darts.report import table as report

from .aggregate import PAPER_CSV, read_runs, table1
from .params import ParamsError, load_params, study_runs

#: the study's summary figures (reports/figures/<name>.png|.pdf); per-run figures go to runs/
SUMMARY = ("alpha_normal", "alpha_reduce", "cells", "comparisons", "error_vs_params_activation",
           "error_vs_params_schedule", "error_vs_params_regularization", "fimt_schedule", "pruning_timeline")
#: the study's per-run figures: these for every run, plus fimt_schedule (FIMT) and pruning_timeline (CRB)
RUN_FIGURES = ("alpha_normal", "alpha_reduce", "cells", "curves", "fimt_schedule", "pruning_timeline")
#: at most this many processes draw the per-run figures (one per core)
MAX_WORKERS = 4


def load_history(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"search history {path} is missing; run the search stage first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ParamsError(f"{what} {path} is missing; run the earlier stages first")
    return json.loads(path.read_text())


def steps_per_epoch(history: dict) -> int:
    return max(len(history["steps"]["alpha"]) // max(len(history["epochs"]), 1), 1)


def pruning_run(history: dict, label: str, config: str, seed_index: int = 0) -> dict:
    n_edges = int(history["alpha"]["normal"].shape[1]) if history["alpha"]["normal"].numel() else 14
    return {"label": label, "config": config, "seed_index": seed_index, "pruned": history["pruned"],
            "initial": n_edges * len(history["ops"]), "total_steps": len(history["steps"]["alpha"]),
            "steps_per_epoch": steps_per_epoch(history)}


def run_figures(history: dict, genotype: dict, retrain: dict | None, out: Path, title: str,
                names: tuple[str, ...] = RUN_FIGURES, formats: tuple[str, ...] = F.FORMATS,
                prunes: bool = False) -> list[Path]:
    """The figures of one run: α per cell type, final cells, curves, FIMT schedule, pruning."""
    written: list[Path] = []
    spe = steps_per_epoch(history)
    for cell in ("normal", "reduce"):
        if f"alpha_{cell}" in names:
            written += F.alpha_grid(history["alpha"][cell], history["alpha_steps"], history["ops"],
                                    out / f"alpha_{cell}", f"{title}: {cell} cell α over the search",
                                    steps_per_epoch=spe, chosen=genotype.get(cell), formats=formats)
    if "cells" in names:
        cells = ("normal", "reduce")
        written += F.cell_graphs({c: genotype[c] for c in cells}, out / "cells", f"{title}: final cells",
                                 {c: genotype.get(f"{c}_concat") for c in cells}, formats=formats)
    if "curves" in names:
        written += FS.training_curves(history["epochs"], (retrain or {}).get("epochs", []), out / "curves",
                                      f"{title}: training curves", formats=formats)
    if "fimt_schedule" in names:
        written += FS.fimt_schedule(history["steps"], spe, out / "fimt_schedule", f"{title}: FIMT schedule",
                                    empty="this run's schedule is not FIMT: there is no F, F̄ or threshold to show",
                                    formats=formats)
    if "pruning_timeline" in names:
        runs = [pruning_run(history, title, title)] if prunes else []
        written += FS.pruning_timeline(runs, out / "pruning_timeline", f"{title}: live ops during the search",
                                       empty="softmax activation: no op is pruned during the search (only CRB prunes)",
                                       formats=formats)
    return written


def _one_run(job: tuple) -> tuple[list[Path], dict | None, tuple | None]:
    """Per-run figures of one study run (PNG only; PDFs are for the headline figures), plus
    what the study figures need from its history (pruning events, FIMT log)."""
    spec, folder, genotype, retrain, out, seed_index, is_fimt = job
    history = load_history(folder / "search" / "history.pt")
    prunes = ACTIVATIONS[spec.activation].prunes
    names = tuple(n for n in RUN_FIGURES if (n != "fimt_schedule" or logs_fisher(spec.schedule))
                  and (n != "pruning_timeline" or prunes))
    title = f"{spec.label} seed {spec.seed}"
    files = run_figures(history, genotype, retrain, out, title, names, formats=("png",), prunes=prunes)
    crb_run = pruning_run(history, title, spec.name, seed_index) if prunes else None
    steps = (history["steps"], steps_per_epoch(history)) if is_fimt else None
    return files, crb_run, steps


def reference_points(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 rows (with their activation/schedule/regularization) and the literature."""
    ref = paper.copy()
    dims = [report.paper_dimensions(m) if s == "paper" else {} for m, s in zip(ref["method"], ref["source"])]
    for key in ("activation", "schedule", "regularization"):
        ref[key] = [d.get(key) for d in dims]
    return ref


def index_markdown(best: str, fimt: str | None, crb: int, run_dirs: list[str]) -> str:
    lines = ["# Figures", "",
             "Generated by `darts figures` (DVC stage `figures`) from params' configs × seeds; "
             "each figure on this page is also a PDF next to the PNG (per-run figures: PNG only).", "",
             f"## Lowest-test-error run (reporting only, nothing is selected by it): {best}", "",
             "![normal cell α](alpha_normal.png)", "", "![reduction cell α](alpha_reduce.png)", "",
             "![final cells](cells.png)", "", "## Test error against random sampling and DARTS", "",
             "Each row's mean test error minus the reference row's, with its 95 % Welch interval over "
             "seeds (the numbers of Table 1's Δ columns).", "", "![comparisons](comparisons.png)", "",
             "## Test error vs params (Figures 3 and S1)", ""]
    lines += [f"![error vs params by {d}](error_vs_params_{d}.png)\n"
              for d in ("activation", "schedule", "regularization")]
    lines += ["## FIMT schedule (Figure 5)" + (f": {fimt}" if fimt else ""), "", "![FIMT schedule](fimt_schedule.png)",
              "", f"## Pruning timeline of the CRB runs ({crb})", "", "![pruning timeline](pruning_timeline.png)", "",
              "## Every run", "", "Per run (`runs/<config>-<seed>/`, kept in the DVC cache rather than git): "
              "`alpha_normal.png`, `alpha_reduce.png`, `cells.png`, `curves.png`, plus `fimt_schedule.png` "
              "for FIMT runs and `pruning_timeline.png` for CRB runs.",
              ""] + [f"- [{d}](runs/{d}/)" for d in run_dirs] + [""]
    return "\n".join(lines)


def run(params_path: str, metrics_dir: str, runs_dir: str, out: str, paper_csv: str | Path = PAPER_CSV) -> list[Path]:
    params = load_params(params_path)
    specs = study_runs(params)
    metrics = read_runs(params, metrics_dir)
    root, out_dir = Path(runs_dir), Path(out)
    base = {(s.name, s.seed): root / s.name / str(s.seed) for s in specs}
    genotypes, retrains = {}, {}
    for key, folder in base.items():  # check every input before drawing anything
        if not (folder / "search" / "history.pt").is_file():
            load_history(folder / "search" / "history.pt")  # raises the one-line error
        genotypes[key] = _json(folder / "genotype" / "genotype.json", "genotype")
        retrains[key] = _json(folder / "retrain" / "retrain.json", "retrain summary")
    seeds = list(params["seeds"])
    fimt = next((s for s in specs if logs_fisher(s.schedule)), None)
    written: list[Path] = []
    run_dirs, crb, fimt_steps = [], [], None
    jobs = [(spec, base[(spec.name, spec.seed)], genotypes[(spec.name, spec.seed)],
             retrains[(spec.name, spec.seed)], out_dir / "runs" / f"{spec.name}-{spec.seed}",
             seeds.index(spec.seed), spec == fimt) for spec in specs]
    # drawing is CPU-bound single-threaded matplotlib: one process per core (each holds one history)
    workers = min(len(jobs), os.cpu_count() or 1, MAX_WORKERS)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_one_run, jobs))
    else:
        results = [_one_run(job) for job in jobs]
    for (spec, *_), (files, crb_run, steps) in zip(jobs, results):
        run_dirs.append(f"{spec.name}-{spec.seed}")
        written += files
        if crb_run is not None:
            crb.append(crb_run)
        if steps is not None:
            fimt_steps = steps
    # the paper shows its highest-performing trial: reporting only, never a selection
    best = metrics.sort_values(["test_error", "config", "seed"]).iloc[0]
    bkey = (str(best["config"]), int(best["seed"]))
    best_run = f"{best['label']} seed {bkey[1]}, test error {best['test_error']:.2f}%"
    written += run_figures(load_history(base[bkey] / "search" / "history.pt"), genotypes[bkey], retrains[bkey],
                           out_dir, f"Lowest-test-error run (reporting only): {best_run}",
                           names=("alpha_normal", "alpha_reduce", "cells"))
    paper = pd.read_csv(paper_csv)
    written += FC.comparisons(table1(params, metrics, paper), report.REFERENCES, out_dir / "comparisons",
                              "Test error against the reference rows: mean difference over seeds, 95 % Welch interval")
    ref = reference_points(paper)
    for dim in ("activation", "schedule", "regularization"):
        written += FS.error_vs_params(metrics, dim, out_dir / f"error_vs_params_{dim}",
                                      f"Test error vs params, coloured by {dim}", reference=ref)
    fimt_title = f"{fimt.label} seed {fimt.seed}" if fimt else None
    if fimt_steps:
        written += FS.fimt_schedule(*fimt_steps, out_dir / "fimt_schedule",
                                    f"FIMT schedule of {fimt_title} (first and last epoch)")
    else:
        written += F.note_figure(out_dir / "fimt_schedule", "FIMT schedule", "no FIMT run in this study")
    written += FS.pruning_timeline(crb, out_dir / "pruning_timeline", "CRB pruning timeline: live ops per cell type")
    index = out_dir / "index.md"
    index.write_text(index_markdown(best_run, fimt_title, len(crb), run_dirs))
    return written + [index]


def run_variant(search_dir: str, genotype_file: str, retrain_dir: str, out: str,
                metrics_file: str | None = None) -> list[Path]:
    """All figures of the variant chain's run (current/) into one folder."""
    search = _json(Path(search_dir) / "search.json", "search summary")
    history = load_history(Path(search_dir) / "history.pt")
    genotype = _json(Path(genotype_file), "genotype")
    retrain = _json(Path(retrain_dir) / "retrain.json", "retrain summary")
    spec = search["run"]
    title = f"{spec['label']} seed {spec['seed']}"
    if metrics_file and Path(metrics_file).is_file():
        title += f" (test error {json.loads(Path(metrics_file).read_text())['test_error']:.2f}%)"
    return run_figures(history, genotype, retrain, Path(out), title, prunes=ACTIVATIONS[spec["activation"]].prunes)
