"""Table 1: the numbers equal a pandas computation on the metrics files; one seed shows '—'."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from darts import report
from stages import aggregate
from stages.params import ParamsError

CONFIGS = {
    "DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
    "PR_FIMT_CRB": {"activation": "crb", "schedule": "fimt", "regularization": "pr"},
    "DARTS_2nd": {"activation": "softmax", "schedule": "alternate", "regularization": "none", "order": 2},
}
LABELS = {"DARTS": "DARTS", "PR_FIMT_CRB": "+PR+FIMT+CRB", "DARTS_2nd": "DARTS (2nd order)"}


def metrics_row(config: str, seed: int, k: int) -> dict:
    c = CONFIGS[config]
    return {"config": config, "label": LABELS[config], "seed": seed, "activation": c["activation"],
            "schedule": c["schedule"], "regularization": c["regularization"], "order": c.get("order", 1),
            "test_error": 2.5 + 0.37 * k + 0.11 * seed ** 2, "test_n": 10000, "params_m": 1.9 + 0.13 * k - 0.05 * seed,
            "search_seconds": 3600.0 * (1 + k) + 77 * seed, "search_gpu_days": (3600.0 * (1 + k) + 77 * seed) / 86400,
            "search_alpha_ratio": 0.1, "search_pruned_ops": 0, "search_val_acc": 0.5, "retrain_seconds": 10.0,
            "retrain_train_acc": 0.9, "device": "NVIDIA H200"}


def study(tmp_path: Path, seeds: list[int], extra_files: bool = False) -> tuple[Path, Path]:
    params = {"configs": CONFIGS, "labels": LABELS, "seeds": seeds}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for k, config in enumerate(CONFIGS):
        for seed in seeds:
            path = tmp_path / "metrics" / config / f"{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics_row(config, seed, k)))
    if extra_files:  # stale outputs of a removed seed and a removed config must not be counted
        (tmp_path / "metrics" / "DARTS" / "9.json").write_text(json.dumps(metrics_row("DARTS", 9, 50)))
        (tmp_path / "metrics" / "OLD").mkdir()
        old = {**metrics_row("DARTS", 0, 9), "config": "OLD"}
        (tmp_path / "metrics" / "OLD" / "0.json").write_text(json.dumps(old))
    return tmp_path / "params.yaml", tmp_path / "metrics"


def test_table_numbers_equal_pandas_on_the_metrics_files(tmp_path):
    params, metrics = study(tmp_path, [0, 1, 2], extra_files=True)
    aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))
    files = [metrics / c / f"{s}.json" for c in CONFIGS for s in (0, 1, 2)]
    runs = pd.DataFrame([json.loads(f.read_text()) for f in files])
    runs["search_hours"] = runs["search_seconds"] / 3600
    cols = ["test_error", "params_m", "search_gpu_days", "search_hours"]
    expected = runs.groupby("config")[cols].agg(["mean", "std", "count"])
    table = pd.read_csv(tmp_path / "reports" / "table1.csv")
    ours = table[table["source"] == "this study"].set_index("config")
    assert list(ours.index) == list(CONFIGS)  # params order, stale OLD config absent
    for config in CONFIGS:
        assert ours.loc[config, "n"] == 3 == expected.loc[config, ("test_error", "count")]
        for col in cols:
            assert ours.loc[config, f"{col}_mean"] == pytest.approx(expected.loc[config, (col, "mean")], rel=1e-5)
            assert ours.loc[config, f"{col}_std"] == pytest.approx(expected.loc[config, (col, "std")], rel=1e-5)
    md = (tmp_path / "reports" / "table1.md").read_text()
    e = expected.loc["PR_FIMT_CRB", ("test_error", "mean")], expected.loc["PR_FIMT_CRB", ("test_error", "std")]
    assert f"{e[0]:.2f} ± {e[1]:.2f}" in md
    assert "3.05 ± 0.21" in md  # the paper's figure for +PR+FIMT+CRB side by side
    assert "NVIDIA H200" in md and "nan" not in md.lower()


def test_literature_block_is_marked_reported_everywhere(tmp_path):
    params, metrics = study(tmp_path, [0, 1])
    aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))
    table = pd.read_csv(tmp_path / "reports" / "table1.csv")
    lit = table[table["source"] == "reported"]
    assert list(lit["method"])[0] == "NASNet-A" and list(lit["method"])[-1] == "NASP"
    md = (tmp_path / "reports" / "table1.md").read_text()
    assert "Reported in the literature" in md and "AmoebaNet-A" in md
    tex = (tmp_path / "reports" / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"NASP$^\dagger$" in tex and "reported in the literature" in tex
    assert "DARTS (2nd order) &" in tex and "±" not in tex and "—" not in tex


def test_single_seed_shows_a_dash_not_nan(tmp_path):
    params, metrics = study(tmp_path, [0])
    aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))
    md = (tmp_path / "reports" / "table1.md").read_text()
    tex = (tmp_path / "reports" / "table1.tex").read_text()
    assert "nan" not in md.lower() and "nan" not in tex.lower()
    row = next(line for line in md.splitlines() if line.startswith("| +PR+FIMT+CRB"))
    assert f"{metrics_row('PR_FIMT_CRB', 0, 1)['test_error']:.2f} ± —" in row
    assert re.search(r"\|\s+1\s+\|", row)  # n
    assert "| 0.5 " in row.replace("  ", " ") or re.search(r"\|\s+0\.5\s+\|", row)  # paper's search days: no std given
    table = pd.read_csv(tmp_path / "reports" / "table1.csv")
    assert table.loc[table["config"] == "DARTS", "test_error_std"].isna().all()  # empty cell, not "nan" text
    assert "nan" not in (tmp_path / "reports" / "table1.csv").read_text().lower()


def test_missing_metrics_file_is_a_clear_error(tmp_path):
    params, metrics = study(tmp_path, [0, 1])
    (metrics / "DARTS" / "1.json").unlink()
    with pytest.raises(ParamsError, match="DARTS seed 1"):
        aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))


def test_fmt_and_paper_matching():
    assert report.fmt(2.891, 0.149, 2) == "2.89 ± 0.15"
    assert report.fmt(2.891, math.nan, 2) == "2.89 ± —"
    assert report.fmt(math.nan, math.nan, 2) == "—"
    assert report.fmt(0.0134, 0.0021, 2) == "0.013 ± 0.002"  # two significant digits for small values
    assert report.fmt(0.00021, 0.00001, 4) == "0.00021 ± 0.00001"
    assert report.fmt_reported(2.65, math.nan, 2) == "2.65"  # a reported figure without std is not one seed
    paper = pd.read_csv(aggregate.PAPER_CSV)
    assert report.paper_row(paper, "+PR+FIMT")["test_error_mean"] == 2.60
    assert report.paper_row(paper, "DARTS (2nd order)")["test_error_mean"] == 2.76  # literature row, any case
    assert report.paper_row(paper, "+NEW") is None
    assert report.paper_dimensions("+ADMM+FIMT+CRB") == {"activation": "crb", "schedule": "fimt",
                                                          "regularization": "admm"}
    assert report.paper_dimensions("+CS10") == {"activation": "softmax", "schedule": "constant",
                                                "regularization": "none"}
