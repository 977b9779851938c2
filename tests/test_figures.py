"""Every figure file is produced and non-empty for a tiny (synthetic, in-memory) study."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from darts.method.activations import make_activation
from darts.report import figures as F
from darts.report import figures_study as FS
from darts.space.primitives import DARTS_V2, N_EDGES
from stages import figures as stage

STEPS_PER_EPOCH, EPOCHS = 12, 2
CONFIGS = {"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
           "FIMT_CRB": {"activation": "crb", "schedule": "fimt", "regularization": "pr"}}
LABELS = {"DARTS": "DARTS", "FIMT_CRB": "+PR+FIMT+CRB"}


def history(activation: str, schedule: str, seed: int = 0) -> dict:
    """What History.state_dict() holds after a tiny search (values are made up but shaped right)."""
    g = torch.Generator().manual_seed(seed)
    ops = list(make_activation(activation).ops)
    n = STEPS_PER_EPOCH * EPOCHS
    every = 1 if schedule == "alternate" else 4
    alpha_steps = [0] + [i for i in range(n) if i % every == every - 1]
    alpha = {}
    for cell in ("normal", "reduce"):
        a = torch.rand(len(alpha_steps), N_EDGES, len(ops), generator=g).cumsum(0)
        alpha[cell] = a / a.sum(-1, keepdim=True) if activation == "softmax" else (a / a.max()).clamp(0, 1)
    pruned = []
    if activation == "crb":
        pruned = [{"step": alpha_steps[1 + i], "cell": ("normal", "reduce")[i % 2], "edge": i, "op": ops[i % 7]}
                  for i in range(6)]
    steps = {"alpha": [i in alpha_steps[1:] for i in range(n)]}
    if schedule == "fimt":
        steps["fisher"] = [5.0 * math.exp(-i / 10) + 1 for i in range(n)]
        steps["fbar"] = [4.0 * math.exp(-i / 12) + 1.2 for i in range(n)]
        steps["threshold"] = [1.0 * 1.05 ** (i % 5) for i in range(n)]
    epochs = [{"epoch": e + 1, "train_loss": 2.3 - 0.1 * e, "train_acc": 0.1 + 0.05 * e, "val_loss": None if e == 0 and
               schedule == "fimt" else 2.4 - 0.1 * e, "alpha_ratio": 0.1 * (e + 1), "alpha_steps": 3,
               "live_ops": {"normal": 98 - 3 * e, "reduce": 98 - 3 * e}, "penalty": None} for e in range(EPOCHS)]
    return {"ops": ops, "alpha_steps": alpha_steps, "alpha_epochs": [s // STEPS_PER_EPOCH for s in alpha_steps],
            "alpha": alpha, "penalty": [], "val_loss": [], "pruned": pruned, "steps": steps, "epochs": epochs}


def genotype() -> dict:
    return DARTS_V2.to_dict()


@pytest.fixture
def fast(monkeypatch):
    """Stage-level tests: PNG only at a low dpi (the figure functions' test covers PDF)."""
    monkeypatch.setattr(F, "FORMATS", ("png",))
    monkeypatch.setattr(F, "DPI", 40)


def assert_files(paths, expected_names, folder: Path) -> None:
    for name in expected_names:
        for ext in F.FORMATS:
            f = folder / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 500, f
            assert f in paths
    png = (folder / f"{expected_names[0]}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_functions_write_png_and_pdf(tmp_path):
    h = history("crb", "fimt")
    paths = F.alpha_grid(h["alpha"]["normal"], h["alpha_steps"], h["ops"], tmp_path / "alpha", "α",
                         steps_per_epoch=STEPS_PER_EPOCH, chosen=DARTS_V2.normal)
    paths += F.cell_graphs({"normal": DARTS_V2.normal, "reduce": DARTS_V2.reduce}, tmp_path / "cells", "cells")
    paths += FS.fimt_schedule(h["steps"], STEPS_PER_EPOCH, tmp_path / "fimt", "FIMT")
    runs = [{"label": "a", "config": "a", "pruned": h["pruned"], "initial": 98, "total_steps": 24,
             "steps_per_epoch": 12}]
    paths += FS.pruning_timeline(runs, tmp_path / "pruning", "pruning")
    paths += FS.training_curves(h["epochs"], [{"epoch": 1, "loss": 2.0, "acc": 0.2}], tmp_path / "curves", "curves")
    assert_files(paths, ["alpha", "cells", "fimt", "pruning", "curves"], tmp_path)
    assert len(paths) == 10 and {p.suffix for p in paths} == {".png", ".pdf"}


def test_nothing_to_draw_still_writes_a_labelled_figure(tmp_path):
    paths = FS.pruning_timeline([], tmp_path / "pruning", "pruning")
    paths += FS.fimt_schedule({"alpha": [True, False]}, 1, tmp_path / "fimt", "FIMT")
    assert_files(paths, ["pruning", "fimt"], tmp_path)


def test_helpers():
    assert list(F.thin(5)) == [0, 1, 2, 3, 4]
    idx = F.thin(10_000, 100)
    assert idx[0] == 0 and idx[-1] == 9_999 and len(idx) <= 100
    assert F.chosen_edges(DARTS_V2.normal)[0] == "sep_conv_3x3"  # (node 0, source c_{k-2}) is α row 0
    xs, ys = FS.live_ops_series([{"step": 5, "cell": "normal"}, {"step": 2, "cell": "normal"},
                                 {"step": 3, "cell": "reduce"}], 98, 10, "normal")
    assert xs == [0, 2, 5, 10] and ys == [98, 97, 96, 96]


def test_error_vs_params_on_one_axes_or_two(tmp_path, fast):
    runs = pd.DataFrame({"test_error": [2.8, 3.1], "params_m": [3.0, 2.0], "activation": ["softmax", "crb"]})
    ref = stage.reference_points(pd.read_csv(stage.PAPER_CSV))
    assert FS._spans(runs, ref)
    assert not FS._spans(runs.assign(test_error=[80.0, 85.0], params_m=[0.01, 0.02]), ref)
    paths = FS.error_vs_params(runs, "activation", tmp_path / "same", "t", reference=ref)
    paths += FS.error_vs_params(runs.assign(test_error=[80.0, 85.0]), "activation", tmp_path / "apart", "t",
                                reference=ref)
    assert_files(paths, ["same", "apart"], tmp_path)


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    """params.yaml, metrics/ and runs/ of a 2-config × 1-seed study, written from memory."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"configs": CONFIGS, "labels": LABELS, "seeds": [0]},
                                                         sort_keys=False))
    for k, (name, c) in enumerate(CONFIGS.items()):
        base = tmp_path / "runs" / name / "0"
        for sub in ("search", "genotype", "retrain"):
            (base / sub).mkdir(parents=True)
        torch.save(history(c["activation"], c["schedule"]), base / "search" / "history.pt")
        (base / "genotype" / "genotype.json").write_text(json.dumps(genotype()))
        (base / "retrain" / "retrain.json").write_text(json.dumps({"epochs": [{"epoch": 1, "loss": 2.0, "acc": 0.3}]}))
        m = tmp_path / "metrics" / name / "0.json"
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(json.dumps({"config": name, "label": LABELS[name], "seed": 0, **c, "order": 1,
                                 "test_error": 60.0 - 5 * k, "params_m": 0.02 + 0.01 * k, "search_gpu_days": 1e-4}))
    return tmp_path


def test_study_figures_stage_writes_every_figure(tiny_study, monkeypatch, fast):
    monkeypatch.setattr(stage, "RUN_FIGURES", ("curves", "pruning_timeline"))  # α and cells: in the summary
    out = tiny_study / "reports" / "figures"
    written = stage.run(str(tiny_study / "params.yaml"), str(tiny_study / "metrics"), str(tiny_study / "runs"),
                        str(out))
    assert_files(written, list(stage.SUMMARY), out)
    assert_files(written, ["curves"], out / "runs" / "DARTS-0")
    assert_files(written, ["pruning_timeline"], out / "runs" / "FIMT_CRB-0")  # CRB runs only
    assert not (out / "runs" / "DARTS-0" / "pruning_timeline.png").exists()
    index = (out / "index.md").read_text()
    assert "(reporting only, nothing is selected by it): +PR+FIMT+CRB seed 0, test error 55.00%" in index
    assert all(f"({n}.png)" in index for n in stage.SUMMARY)


def test_study_figures_stage_reads_params_runs_not_a_glob(tiny_study):
    import shutil

    shutil.rmtree(tiny_study / "runs" / "FIMT_CRB")
    from stages.params import ParamsError

    with pytest.raises(ParamsError, match="FIMT_CRB/0/search/history.pt is missing"):
        stage.run(str(tiny_study / "params.yaml"), str(tiny_study / "metrics"), str(tiny_study / "runs"),
                  str(tiny_study / "out"))
    assert not (tiny_study / "out").exists()  # validated before drawing anything


def test_variant_figures(tiny_study, fast):
    base = tiny_study / "runs" / "FIMT_CRB" / "0"
    (base / "search" / "search.json").write_text(json.dumps({"run": {"label": "crb-fimt-pr", "seed": 0, "activation": "crb"}}))
    written = stage.run_variant(str(base / "search"), str(base / "genotype" / "genotype.json"),
                                str(base / "retrain"), str(tiny_study / "current" / "figures"),
                                str(tiny_study / "metrics" / "FIMT_CRB" / "0.json"))
    assert_files(written, list(stage.RUN_FIGURES), tiny_study / "current" / "figures")


def test_comparison_figure_draws_table1s_intervals(tmp_path):
    """The figure's bars are Table 1's numbers: Random [2, 4, 6, 8] vs X [1, 2, 3, 4] is
    −2.50 [−6.36, +1.36] (no difference shown; the by-hand case of test_stats), Y lies
    wholly below; a one-seed row has no interval."""
    from darts.report import figures_compare as FC
    from darts.report import table as report

    errors = {"Random": [2, 4, 6, 8], "X": [1, 2, 3, 4], "Y": [0.1, 0.2, 0.3, 0.4], "Z": [5.0]}
    runs = pd.DataFrame([{"config": c, "seed": s, "test_error": e, "params_m": 1.0, "search_seconds": 0.0,
                          "search_gpu_days": 0.0, "device": "cpu"} for c, es in errors.items() for s, e in enumerate(es)])
    table = report.with_comparisons(report.summarize(runs, list(errors), {}), runs, ("Random", "DARTS"))
    rows = FC.interval_rows(table, "Random")
    assert [r["label"] for r in rows] == ["Random (n=4)", "X (n=4)", "Y (n=4)", "Z (n=1)"]  # every panel: all rows
    assert (rows[1]["diff"], rows[1]["low"], rows[1]["high"]) == pytest.approx((-2.5, -6.364167, 1.364167), rel=1e-6)
    assert [r["verdict"] for r in rows] == ["reference", "no difference shown", "lower", None]
    assert rows[3]["low"] is None and rows[3]["diff"] == pytest.approx(0.0)
    written = FC.comparisons(table, ("Random", "DARTS"), tmp_path / "c", "t", formats=("png",))
    assert [p.name for p in written] == ["c.png"] and written[0].stat().st_size > 1000
