"""Table 1: the numbers equal a pandas computation on the metrics files; one seed shows '—'."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from darts.report import table as report
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


def test_welch_columns_in_md_csv_tex(tmp_path):
    """Fixture errors 2.5 + 0.37k + 0.11 s², seeds 0..2: every config has the same spread,
    s² = var([0, 0.11, 0.44]) = 0.052433, so se = sqrt(2 · 0.052433 / 3) = 0.186965, df = 4,
    half width = t_{.975,4} · se = 2.776445 · 0.186965 = 0.519099.
    +PR+FIMT+CRB: 0.37 ± 0.519 = [−0.149, +0.889] crosses 0; 2nd order: 0.74 -> [+0.221, +1.259]."""
    params, metrics = study(tmp_path, [0, 1, 2])
    aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))
    table = pd.read_csv(tmp_path / "reports" / "table1.csv")
    ours = table[table["source"] == "this study"].set_index("config")
    half = 2.776445105 * math.sqrt(2 * 0.0524333333 / 3)
    for config, diff in (("PR_FIMT_CRB", 0.37), ("DARTS_2nd", 0.74)):
        assert ours.loc[config, "diff_vs_DARTS"] == pytest.approx(diff, rel=1e-5)
        assert ours.loc[config, "ci_low_vs_DARTS"] == pytest.approx(diff - half, rel=1e-5)
        assert ours.loc[config, "ci_high_vs_DARTS"] == pytest.approx(diff + half, rel=1e-5)
        assert ours.loc[config, "df_vs_DARTS"] == pytest.approx(4.0, rel=1e-5)
    assert ours.loc["DARTS", ["diff_vs_DARTS", "ci_low_vs_DARTS"]].isna().all()  # the reference itself
    assert "why_vs_DARTS" not in table.columns
    md = (tmp_path / "reports" / "table1.md").read_text()
    assert "Δ test error vs DARTS (pp, 95 % CI)" in md and "Welch" in md and "3 seeds per row" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["DARTS"].count("reference") == 2
    assert "+0.37 [−0.15, +0.89]" in rows["+PR+FIMT+CRB"] and "no difference shown" in rows["+PR+FIMT+CRB"]
    assert "+0.74 [+0.22, +1.26]" in rows["DARTS (2nd order)"] and "| higher" in rows["DARTS (2nd order)"]
    assert "Reference(s) Random not in this study: no comparison column for them." in md  # no Random config here
    tex = (tmp_path / "reports" / "table1.tex").read_text()
    assert r"+0.37 [$-$0.15, +0.89] & no difference shown \\" in tex and "−" not in tex and "Δ" not in tex
    assert r"\begin{tabular}{lcccccc}" not in tex and r"\begin{tabular}{lccccc}" in tex
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert {line.count("&") for line in body} == {5}  # every row has the header's 6 cells


def test_hand_made_runs_lower_and_missing_reference():
    """DARTS errors [2, 4, 6, 8], X [1, 2, 3, 4]: −2.50 [−6.36, +1.36] (the by-hand case of
    test_stats); Y [0.1, 0.2, 0.3, 0.4]: −4.75 with se = sqrt(6.667/4 + 0.01667/4) = 1.2923,
    df ≈ 3.02 -> high = −4.75 + 3.18 · 1.29 < 0: 'lower'. RANDOM is not in the study."""
    errors = {"DARTS": [2, 4, 6, 8], "X": [1, 2, 3, 4], "Y": [0.1, 0.2, 0.3, 0.4]}
    runs = pd.DataFrame([{"config": c, "seed": s, "test_error": e, "params_m": 1.0, "search_seconds": 60.0,
                          "search_gpu_days": 60 / 86400, "device": "cpu"}
                         for c, es in errors.items() for s, e in enumerate(es)])
    paper = pd.read_csv(aggregate.PAPER_CSV)
    refs = ("DARTS", "RANDOM")
    table = report.with_comparisons(report.with_paper(report.summarize(runs, list(errors), {}), paper), runs, refs)
    assert "diff_vs_RANDOM" not in table.columns  # silently skipped in the numbers
    x = table.set_index("config").loc["X"]
    assert (x["diff_vs_DARTS"], x["ci_low_vs_DARTS"], x["ci_high_vs_DARTS"]) == pytest.approx(
        (-2.5, -6.364167215486197, 1.364167215486197))
    display = report.display_table(table, refs).set_index("Method")
    assert display.loc["X", "Δ test error vs DARTS (pp, 95 % CI)"] == "−2.50 [−6.36, +1.36]"
    assert display.loc["X", "Test error vs DARTS"] == "no difference shown"
    assert display.loc["Y", "Test error vs DARTS"] == "lower"
    assert display.loc["Y", "Δ test error vs DARTS (pp, 95 % CI)"].startswith("−4.75 [−")
    legend = report.comparison_legend(table, refs)
    assert "4 seeds per row" in legend and "RANDOM not in this study" in legend
    tex = report.to_latex(display.reset_index(), report.literature_table(paper))
    assert r"$-$2.50 [$-$6.36, +1.36] & no difference shown \\" in tex


def test_single_seed_interval_is_undefined_and_explained(tmp_path):
    params, metrics = study(tmp_path, [0])
    aggregate.run(str(params), str(metrics), str(tmp_path / "reports"))
    md = (tmp_path / "reports" / "table1.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| +PR+FIMT+CRB"))
    assert "+0.37 [—]" in row and row.rstrip(" |").endswith("—")
    assert "undefined (fewer than 2 seeds in a group)" in md and "over 1 seed per row" in md
    table = pd.read_csv(tmp_path / "reports" / "table1.csv")
    assert table.loc[table["config"] == "PR_FIMT_CRB", "ci_low_vs_DARTS"].isna().all()
