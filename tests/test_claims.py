"""darts.report.claims: twins found from dimensions (not names), each claim's statistic by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from darts.report import claims

CONFIGS = {  # name -> (method, activation, schedule, regularization)
    "A": ("darts", "softmax", "alternate", "none"), "B": ("darts", "crb", "alternate", "none"),
    "C": ("darts", "softmax", "constant", "none"), "D": ("darts", "softmax", "fimt", "none"),
    "E": ("darts", "softmax", "fimt", "pr"), "R": ("random", "softmax", "none", "none"),
}


def runs(values: dict[str, list[tuple[float, float, float]]]) -> pd.DataFrame:
    """values: config -> per seed (test_error, params_m, first_alpha_step)."""
    rows = []
    for c, per_seed in values.items():
        m, a, s, r = CONFIGS[c]
        for seed, (err, par, first) in enumerate(per_seed):
            rows.append({"config": c, "label": f"L{c}", "seed": seed, "method": m, "activation": a, "schedule": s,
                         "regularization": r, "order": 1, "test_error": err, "params_m": par,
                         "first_alpha_step": first})
    return pd.DataFrame(rows)


STUDY = runs({
    "A": [(30, 1.0, 0), (32, 1.2, 0), (34, 1.4, 0)],   # params s² = 0.04
    "B": [(31, 0.5, 0), (33, 0.7, 0), (35, 0.9, 0)],   # 0.5 lower, same spread
    "C": [(30, 1.0, 9), (31, 1.0, 9), (32, 1.0, 9)],
    "D": [(28, 1.0, 35), (30, 1.0, 35), (38, 1.0, 35)],
    "E": [(30, 1.0, 30), (31, 1.0, 31), (32, 1.0, 32)],
    "R": [(40, 1.0, math.nan), (41, 1.0, math.nan), (42, 1.0, math.nan)],
})


def test_twins_differ_in_one_dimension_only():
    assert claims.twins(STUDY, claims.CLAIMS[0]) == [("B", "A")]
    assert claims.twins(STUDY, claims.CLAIMS[1]) == [("D", "C")]
    assert claims.twins(STUDY, claims.CLAIMS[2]) == [("E", "D")]  # R has regularization none too, but schedule none


def test_claim_a_welch_on_params():
    """B − A = −0.5; both s² = 0.04, se = sqrt(2·0.04/3) = 0.163299, df = 4, t = 2.776445:
    half = 0.453393 -> [−0.953, −0.0466]: lower, supports the paper."""
    row = claims.compare(STUDY, claims.CLAIMS[0], "B", "A")
    assert row["value"] == "-0.5 [-0.953, -0.0466]"
    assert row["verdict"] == "lower" and row["supports_paper"] == "yes"


def test_claim_b_exact_when_every_seed_agrees():
    row = claims.compare(STUDY, claims.CLAIMS[1], "D", "C")
    assert row["value"] == "+26 (identical over seeds)" and row["supports_paper"] == "yes"


def test_claim_c_sd_ratio():
    """σ_E = 1, σ_D = sqrt(28) = 5.2915: ratio 0.18898; [0.18898/√39, 0.18898·√39] = [0.0303, 1.18]."""
    row = claims.compare(STUDY, claims.CLAIMS[2], "E", "D")
    assert row["value"] == "0.19 [0.03, 1.18]"
    assert row["verdict"] == "no difference shown" and row["supports_paper"] == "no: not shown"
    assert row["treated_value"] == pytest.approx(1.0) and row["base_value"] == pytest.approx(28 ** 0.5)


def test_evaluate_lists_every_claim_and_each_config_against_random():
    table = claims.evaluate(STUDY, "R")
    assert list(table["claim"]) == ["a", "b", "c", "d", "d", "d", "d", "d"]
    d = table[table["claim"] == "d"].set_index("treated")
    assert d.loc["LA", "verdict"] == "lower"  # 32 vs 41, both s² = 1 -> [−11.27, −6.73]
    md = claims.markdown(table)
    assert "## (d) each method against random sampling" in md and "supports the paper: yes" in md
    lone = claims.evaluate(STUDY[STUDY["config"].isin(["A", "R"])], None)
    assert set(lone["verdict"]) == {"no twin pair in this study (activation: softmax vs crb)",
                                    "no twin pair in this study (schedule: constant vs fimt)",
                                    "no twin pair in this study (regularization: none vs pr)"}
