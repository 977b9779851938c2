"""The paper's claims, tested on a study's runs: each one a statistic with its interval.

(a) CRB gives smaller networks than its softmax twin: params, CRB − softmax (Welch).
(b) FIMT delays the first α steps relative to CS10: index of the first α step, FIMT −
    constant (Welch; exact when every seed agrees).
(c) PR lowers the spread of test error: σ_PR / σ_none over seeds (F interval).
(d) each method against random sampling: test error, row − Random (Welch; Table 1's column).

Twins are found from the runs' dimensions, not from config names: two configs are a pair
for claim (a) when they differ in the activation only, and so on. A claim with no pair in
the study says so. Pure functions over a DataFrame of runs (one row per config × seed);
the stage reads the files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from darts.report.stats import sd_ratio_interval, welch_interval

DIMS = ("method", "activation", "schedule", "regularization", "order")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    dim: str          # the dimension the twins differ in
    base: str         # its value in the twin the paper compares against
    treated: str      # its value in the twin the paper credits
    metric: str       # runs column
    unit: str
    stat: str         # "mean": Welch on the means; "sd": ratio of standard deviations
    expect: str       # the verdict that supports the paper: lower / higher / smaller

    @property
    def label(self) -> str:
        return f"({self.key}) {self.text}"


CLAIMS = (
    Claim("a", "CRB gives smaller networks than its softmax twin", "activation", "softmax", "crb",
          "params_m", "M params", "mean", "lower"),
    Claim("b", "FIMT delays the first α steps relative to CS10", "schedule", "constant", "fimt",
          "first_alpha_step", "w steps", "mean", "higher"),
    Claim("c", "PR lowers the spread of test error", "regularization", "none", "pr",
          "test_error", "pp (std over seeds)", "sd", "smaller"),
)


def twins(runs: pd.DataFrame, claim: Claim) -> list[tuple[str, str]]:
    """(treated config, base config) pairs that differ in ``claim.dim`` only."""
    configs = runs.drop_duplicates("config").set_index("config")
    others = [d for d in DIMS if d != claim.dim and d in configs.columns]
    pairs = []
    for t, tr in configs[configs[claim.dim] == claim.treated].iterrows():
        for b, br in configs[configs[claim.dim] == claim.base].iterrows():
            if all(tr[d] == br[d] for d in others):
                pairs.append((t, b))
    return pairs


def _values(runs: pd.DataFrame, config: str, metric: str) -> list[float]:
    return pd.to_numeric(runs.loc[runs["config"] == config, metric], errors="coerce").dropna().tolist()


def _fmt(x: float, d: int = 3) -> str:
    return "—" if not math.isfinite(x) else f"{x:+.{d}g}"


def compare(runs: pd.DataFrame, claim: Claim, treated: str, base: str) -> dict:
    """One twin pair's statistic, interval, verdict and whether it supports the paper."""
    a, b = _values(runs, treated, claim.metric), _values(runs, base, claim.metric)
    label = dict(zip(runs["config"], runs["label"])) if "label" in runs else {}
    row = {"claim": claim.key, "treated": label.get(treated, treated), "base": label.get(base, base),
           "n": f"{len(a)} vs {len(b)}", "metric": claim.metric}
    if claim.stat == "sd":
        r = sd_ratio_interval(a, b)
        mean_a = pd.Series(a).std(ddof=1) if len(a) > 1 else math.nan
        mean_b = pd.Series(b).std(ddof=1) if len(b) > 1 else math.nan
        verdict, why = r.verdict, r.reason
        stat = "—" if why else f"{r.ratio:.2f} [{r.low:.2f}, {r.high:.2f}]"
        row.update(statistic="σ ratio (treated / base), 95 % F interval", value=stat,
                   treated_value=mean_a, base_value=mean_b)
    else:
        d = welch_interval(a, b)
        verdict, why = d.verdict, d.reason
        if why.startswith("no spread") and d.mean_diff != 0:  # every seed agrees: the difference is exact
            verdict, why = ("lower" if d.mean_diff < 0 else "higher"), ""
            stat = f"{_fmt(d.mean_diff)} (identical over seeds)"
        else:
            stat = f"{_fmt(d.mean_diff)} [{_fmt(d.low)}, {_fmt(d.high)}]" if not why else f"{_fmt(d.mean_diff)} [—]"
        row.update(statistic="Δ mean (treated − base), 95 % Welch interval", value=stat,
                   treated_value=sum(a) / len(a) if a else math.nan, base_value=sum(b) / len(b) if b else math.nan)
    row["verdict"] = verdict or f"undefined ({why})"
    row["supports_paper"] = ("yes" if verdict == claim.expect else "no: not shown" if verdict == "no difference shown"
                             else "no: the opposite" if verdict else "undecided")
    return row


def evaluate(runs: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """Every claim on every twin pair of the study, then (d): each config against ``reference``
    (the random-sampling config; skipped when None)."""
    rows = []
    for claim in CLAIMS:
        pairs = twins(runs, claim)
        rows += [compare(runs, claim, t, b) for t, b in pairs]
        if not pairs:
            rows.append({"claim": claim.key, "verdict": f"no twin pair in this study ({claim.dim}: "
                                                        f"{claim.base} vs {claim.treated})"})
    if reference is not None:
        vs_random = Claim("d", "each method against random sampling", "", "", "", "test_error", "pp", "mean", "lower")
        for config in runs.drop_duplicates("config")["config"]:
            if config != reference:
                rows.append(compare(runs, vs_random, config, reference))
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The claims as md: one section per claim, one line per pair."""
    texts = {c.key: c.label for c in CLAIMS}
    texts["d"] = "(d) each method against random sampling (test error, pp)"
    out = ["# The paper's claims on this study", "",
           "Computed by `darts claims` from the runs (twins: configs that differ in that dimension only). "
           "Intervals are two-sided 95 %; 'not shown' means the interval includes no difference.", ""]
    for key in ("a", "b", "c", "d"):
        part = table[table["claim"] == key]
        if part.empty:
            continue
        out += [f"## {texts[key]}", ""]
        for _, r in part.iterrows():
            if pd.isna(r.get("value")):
                out.append(f"- {r['verdict']}")
                continue
            what = "std" if "σ" in r["statistic"] else "mean"
            line = (f"- {r['treated']} vs {r['base']} (n = {r['n']}): {r['statistic']} = {r['value']}; "
                    f"{what} {r['treated_value']:.4g} vs {r['base_value']:.4g}; {r['verdict']}")
            out.append(line + ("" if key == "d" else f"; supports the paper: {r['supports_paper']}"))
        out.append("")
    return "\n".join(out)
