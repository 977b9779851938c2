"""Table 1 from per-run metrics: mean ± sample std over seeds, next to the paper's figures,
and each row's Welch interval for the test-error difference against reference rows.

Pure functions over pandas frames; the aggregate stage does the file reading/writing.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from darts.report.stats import welch_interval

METRICS = {  # column in the per-run metrics -> (table header, decimals)
    "test_error": ("Test error (%)", 2),
    "params_m": ("Params (M)", 2),
    "search_gpu_days": ("Search (GPU days)", 4),
    "search_hours": ("Search (wall h)", 3),
    "supernet_val_acc": ("Supernet val acc (%)", 1),  # the searched supernet at the end (null: none trained)
}
DERIVED = ("search_hours", "supernet_val_acc")  # computed in summarize from search_seconds, search_val_acc
DASH = "—"
MINUS = "\u2212"  # a typographic minus in the md table; the tex writer maps it to $-$
REFERENCES = ("Random", "DARTS")  # configs every row's test error is compared with


def summarize(runs: pd.DataFrame, order: list[str], labels: dict[str, str]) -> pd.DataFrame:
    """One row per config (in `order`): n and mean/std (ddof=1; NaN for one seed) of each metric."""
    runs = runs.copy()
    # a run of a genotype that was never searched has null search fields: NaN, shown as '—'
    for col in ("search_seconds", "search_val_acc", *(c for c in METRICS if c not in DERIVED)):
        runs[col] = pd.to_numeric(runs[col], errors="coerce") if col in runs else math.nan
    runs["search_hours"] = runs["search_seconds"] / 3600.0
    runs["supernet_val_acc"] = runs["search_val_acc"] * 100.0
    rows = []
    for config in order:
        sub = runs[runs["config"] == config]
        row = {"config": config, "method": labels.get(config, config), "n": int(len(sub))}
        for col in METRICS:
            values = sub[col].astype(float).dropna()
            row[f"{col}_mean"] = values.mean() if len(values) else math.nan
            row[f"{col}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        devices = sorted(set(sub["device"].astype(str))) if "device" in sub else []
        row["device"] = "; ".join(devices)
        rows.append(row)
    return pd.DataFrame(rows)


def with_comparisons(table: pd.DataFrame, runs: pd.DataFrame,
                     references: Sequence[str] = REFERENCES) -> pd.DataFrame:
    """Per reference config R in the study: diff_vs_R = mean test error of the row − of R (pp),
    ci_low/ci_high_vs_R its 95 % Welch interval over seeds, df_vs_R, why_vs_R (why undefined).

    Seeds of two configs are independent runs, so the two-sample Welch interval applies; the
    reference row itself gets NaN (it is shown as 'reference'). References absent from the
    study are skipped: see `missing_references`."""
    out = table.copy()
    values = {c: pd.to_numeric(runs.loc[runs["config"] == c, "test_error"], errors="coerce").dropna().tolist()
              for c in out["config"]}
    for ref in present_references(out, references):
        diffs = [None if c == ref else welch_interval(values[c], values[ref]) for c in out["config"]]
        nan = math.nan
        out[f"diff_vs_{ref}"] = [nan if d is None else d.mean_diff for d in diffs]
        out[f"ci_low_vs_{ref}"] = [nan if d is None else d.low for d in diffs]
        out[f"ci_high_vs_{ref}"] = [nan if d is None else d.high for d in diffs]
        out[f"df_vs_{ref}"] = [nan if d is None else d.df for d in diffs]
        out[f"why_vs_{ref}"] = ["" if d is None else d.reason for d in diffs]
    return out


def present_references(table: pd.DataFrame, references: Sequence[str]) -> list[str]:
    """The reference configs that are rows of this study, in the order given."""
    configs = set(table["config"])
    return [r for r in references if r in configs]


def missing_references(table: pd.DataFrame, references: Sequence[str]) -> list[str]:
    """The reference configs that are not in this study (no comparison column for them)."""
    configs = set(table["config"])
    return [r for r in references if r not in configs]


def _signed(x: float, decimals: int = 2) -> str:
    """'+1.25' / '−3.10': an explicit sign, since a difference's direction is the point."""
    return f"{x:+.{decimals}f}".replace("-", MINUS)


def fmt_diff(diff: float, low: float, high: float, decimals: int = 2) -> str:
    """'+1.25 [−3.10, +5.60]'; '+1.25 [—]' when the interval is undefined; '—' with no difference."""
    if diff is None or not math.isfinite(diff):
        return DASH
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{_signed(diff, decimals)} [{DASH}]"
    return f"{_signed(diff, decimals)} [{_signed(low, decimals)}, {_signed(high, decimals)}]"


def verdict(low: float, high: float) -> str:
    """'lower'/'higher' test error than the reference when the interval excludes 0, else
    'no difference shown' (not 'equal': a few seeds rarely have the power to show one); '—' undefined."""
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        return DASH
    return "lower" if high < 0 else "higher" if low > 0 else "no difference shown"


COMPARISON_PREFIXES = ("Δ test error vs ", "Test error vs ")  # how to_latex finds the columns below


def comparison_headers(ref_label: str) -> tuple[str, str]:
    """The md/tex column names of one reference's interval and verdict."""
    return f"Δ test error vs {ref_label} (pp, 95 % CI)", f"Test error vs {ref_label}"


def paper_row(paper: pd.DataFrame, method: str) -> pd.Series | None:
    """The paper's figures for one of our rows: its own Table 1 row of that label, else a
    literature row of the same name ignoring case (e.g. 'DARTS (2nd order)')."""
    for source, key in (("paper", lambda s: s), ("literature", str.casefold)):
        rows = paper[(paper["source"] == source) & (paper["method"].map(key) == key(method))]
        if len(rows):
            return rows.iloc[0]
    return None


def with_paper(summary: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Join the paper's reported mean/std for each row, matched by the method label."""
    out = summary.copy()
    rows = [paper_row(paper, m) for m in out["method"]]
    for col, src in (("paper_test_error", "test_error"), ("paper_params_m", "params_m"),
                     ("paper_search_gpu_days", "search_gpu_days")):
        for stat in ("mean", "std"):
            out[f"{col}_{stat}"] = [math.nan if r is None else float(r[f"{src}_{stat}"]) for r in rows]
    return out


def paper_dimensions(method: str) -> dict[str, str]:
    """Activation, schedule and regularization of one of the paper's Table 1 labels ('+PR+FIMT+CRB')."""
    parts = set(method.replace("+", " +").split())
    return {"activation": "crb" if "+CRB" in parts else "softmax",
            "schedule": "fimt" if "+FIMT" in parts else "constant" if "+CS10" in parts else "alternate",
            "regularization": "pr" if "+PR" in parts else "admm" if "+ADMM" in parts else "none"}


def _decimals(mean: float, decimals: int) -> int:
    """At least ``decimals``, more when needed to show two significant digits (0.013 M, not 0.01)."""
    if not mean or not math.isfinite(mean):
        return decimals
    return max(decimals, 1 - math.floor(math.log10(abs(mean))))


def fmt(mean: float, std: float, decimals: int) -> str:
    """'2.89 ± 0.15'; '2.89 ± —' for a single seed (std undefined); '—' when missing.

    Small means get extra decimals (a quick study's 0.013 M params, 0.0002 GPU days)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    decimals = _decimals(mean, decimals)
    s = f"{mean:.{decimals}f}"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{s} ± {DASH}"
    return f"{s} ± {std:.{decimals}f}"


def fmt_reported(mean: float, std: float, decimals: int) -> str:
    """A reported figure: '2.76 ± 0.09', or just '2.65' where the source gives no std."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def display_table(table: pd.DataFrame, references: Sequence[str] = ()) -> pd.DataFrame:
    """The human table: formatted strings, ours next to the paper's; then, per reference in
    the study (see `with_comparisons`), the Δ test error interval and its verdict."""
    refs = present_references(table, references)
    ref_labels = {r: table.loc[table["config"] == r, "method"].iloc[0] for r in refs}
    rows = []
    for _, r in table.iterrows():
        rows.append({
            "Method": r["method"],
            "n": r["n"],
            "Test error (%)": fmt(r["test_error_mean"], r["test_error_std"], 2),
            "Paper test error (%)": fmt_reported(r["paper_test_error_mean"], r["paper_test_error_std"], 2),
            "Params (M)": fmt(r["params_m_mean"], r["params_m_std"], 2),
            "Paper params (M)": fmt_reported(r["paper_params_m_mean"], r["paper_params_m_std"], 2),
            "Search (GPU days)": fmt(r["search_gpu_days_mean"], r["search_gpu_days_std"], 4),
            "Paper search (GPU days)": fmt_reported(r["paper_search_gpu_days_mean"], r["paper_search_gpu_days_std"], 1),
            "Search (wall h)": fmt(r["search_hours_mean"], r["search_hours_std"], 3),
            "Supernet val acc (%)": fmt(r["supernet_val_acc_mean"], r["supernet_val_acc_std"], 1),
            "Device": r["device"],
        })
        for ref in refs:
            head, word = comparison_headers(ref_labels[ref])
            if r["config"] == ref:
                rows[-1][head], rows[-1][word] = "reference", "reference"
            else:
                low, high = r[f"ci_low_vs_{ref}"], r[f"ci_high_vs_{ref}"]
                rows[-1][head] = fmt_diff(r[f"diff_vs_{ref}"], low, high)
                rows[-1][word] = verdict(low, high)
    return pd.DataFrame(rows)


def comparison_legend(table: pd.DataFrame, references: Sequence[str]) -> str:
    """The md legend's sentences on the Δ columns: what the interval is, over how many seeds,
    why a cell shows '—', and which requested references are not in the study."""
    refs, missing = present_references(table, references), missing_references(table, references)
    parts = []
    if refs:
        ns = sorted({int(n) for n in table["n"]})
        seeds = (f"{ns[0]} seed{'s' if ns[0] != 1 else ''} per row" if len(ns) == 1
                 else "the n seeds of each row (column n)")
        names = ", ".join(table.loc[table["config"] == r, "method"].iloc[0] for r in refs)
        parts.append(f"Δ test error vs {names}: the row's mean test error minus the reference's, in "
                     f"percentage points, with a two-sided 95 % Welch t interval (unequal variances, "
                     f"Welch–Satterthwaite degrees of freedom) over {seeds}. An interval that crosses "
                     f"zero reads 'no difference shown'; 'lower'/'higher' means it excludes zero.")
        why = sorted({w for r in refs for w in table[f"why_vs_{r}"] if w})
        if why:
            parts.append(f"'[—]': the interval is undefined ({'; '.join(why)}).")
    if missing:
        parts.append(f"Reference(s) {', '.join(missing)} not in this study: no comparison column for them.")
    return " ".join(parts)


def literature_table(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's reference block (NASNet-A … NASP), as reported."""
    lit = paper[paper["source"] == "literature"]
    return pd.DataFrame({
        "Method": lit["method"],
        "Test error (%)": [fmt_reported(m, s, 2) for m, s in zip(lit["test_error_mean"], lit["test_error_std"])],
        "Params (M)": [fmt_reported(m, s, 2) for m, s in zip(lit["params_m_mean"], lit["params_m_std"])],
        "Search (GPU days)": [f"{m:g}" for m in lit["search_gpu_days_mean"]],
        "Note": lit["note"].fillna(""),
    })


def literature_rows(paper: pd.DataFrame) -> pd.DataFrame:
    """The literature block in the numeric table's columns, marked source="reported"."""
    lit = paper[paper["source"] == "literature"]
    cols = ["test_error_mean", "test_error_std", "params_m_mean", "params_m_std", "search_gpu_days_mean"]
    out = lit[["method"] + cols].copy().reset_index(drop=True)
    out.insert(0, "config", "")
    out["source"] = "reported"
    out["note"] = lit["note"].fillna("").to_numpy()
    return out


def to_latex(display: pd.DataFrame, literature: pd.DataFrame) -> str:
    """A booktabs tabular a user can paste into a paper (literature rows marked as reported)."""
    esc = lambda s: (str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("—", "--").replace("_", r"\_")
                     .replace(MINUS, "$-$").replace("Δ", r"$\Delta$"))
    extra = [c for c in display.columns if c.startswith(COMPARISON_PREFIXES)]
    lines = [r"% Table 1 (needs \usepackage{booktabs}); ours: mean $\pm$ sample std over seeds.",
             r"\begin{tabular}{lccc" + "c" * len(extra) + "}", r"\toprule",
             r"Method & Test Error (\%) & Params (M) & Search Cost (GPU days)"
             + "".join(f" & {esc(c)}" for c in extra) + r" \\", r"\midrule"]
    for _, r in literature.iterrows():
        lines.append(f"{esc(r['Method'])}$^\\dagger$ & {esc(r['Test error (%)'])} & {esc(r['Params (M)'])} & "
                     f"{esc(r['Search (GPU days)'])}" + " &" * len(extra) + " \\\\")
    lines.append(r"\midrule")
    for _, r in display.iterrows():
        lines.append(f"{esc(r['Method'])} & {esc(r['Test error (%)'])} & {esc(r['Params (M)'])} & "
                     f"{esc(r['Search (GPU days)'])}" + "".join(f" & {esc(r[c])}" for c in extra) + " \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"% $^\dagger$: reported in the literature, not rerun here."]
    if extra:
        lines.append(r"% $\Delta$: mean difference in test error (percentage points) with a 95\% Welch t "
                     r"interval over seeds; an interval crossing zero shows no difference.")
    return "\n".join(lines) + "\n"
