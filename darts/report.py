"""Table 1 from per-run metrics: mean ± sample std over seeds, next to the paper's figures.

Pure functions over pandas frames; the aggregate stage does the file reading/writing.
"""
from __future__ import annotations

import math

import pandas as pd

METRICS = {  # column in the per-run metrics -> (table header, decimals)
    "test_error": ("Test error (%)", 2),
    "params_m": ("Params (M)", 2),
    "search_gpu_days": ("Search (GPU days)", 4),
    "search_hours": ("Search (wall h)", 3),
}
DASH = "—"


def summarize(runs: pd.DataFrame, order: list[str], labels: dict[str, str]) -> pd.DataFrame:
    """One row per config (in `order`): n and mean/std (ddof=1; NaN for one seed) of each metric."""
    runs = runs.copy()
    # a run of a genotype that was never searched has null search fields: NaN, shown as '—'
    for col in ("search_seconds", *(c for c in METRICS if c != "search_hours")):
        runs[col] = pd.to_numeric(runs[col], errors="coerce") if col in runs else math.nan
    runs["search_hours"] = runs["search_seconds"] / 3600.0
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


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The human table: formatted strings, ours next to the paper's."""
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
            "Device": r["device"],
        })
    return pd.DataFrame(rows)


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
    esc = lambda s: str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("—", "--").replace("_", r"\_")
    lines = [r"% Table 1 (needs \usepackage{booktabs}); ours: mean $\pm$ sample std over seeds.",
             r"\begin{tabular}{lccc}", r"\toprule",
             r"Method & Test Error (\%) & Params (M) & Search Cost (GPU days) \\", r"\midrule"]
    for _, r in literature.iterrows():
        lines.append(f"{esc(r['Method'])}$^\\dagger$ & {esc(r['Test error (%)'])} & {esc(r['Params (M)'])} & "
                     f"{esc(r['Search (GPU days)'])} \\\\")
    lines.append(r"\midrule")
    for _, r in display.iterrows():
        lines.append(f"{esc(r['Method'])} & {esc(r['Test error (%)'])} & {esc(r['Params (M)'])} & "
                     f"{esc(r['Search (GPU days)'])} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"% $^\dagger$: reported in the literature, not rerun here."]
    return "\n".join(lines) + "\n"
