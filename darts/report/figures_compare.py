"""The study's statistics as a figure: each row's test-error difference against each
reference row (random sampling, DARTS) with its 95 % Welch interval over seeds.

Input is Table 1's numeric frame (``darts.report.table.with_comparisons``): the same numbers as
the table, drawn, so a reader sees at a glance which intervals exclude zero.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from darts.report.figures import FORMATS, note_figure, save
from darts.report.table import present_references, verdict

VERDICT_COLORS = {"lower": "#2ca02c", "higher": "#d62728", "no difference shown": "#555555"}
UNDEFINED_COLOR = "#aaaaaa"


def interval_rows(table: pd.DataFrame, ref: str) -> list[dict]:
    """Per row, in table order (the same rows in every panel): label, Δ, interval and verdict
    (None where undefined); the reference row itself has verdict "reference"."""
    rows = []
    for _, r in table.iterrows():
        if r["config"] == ref:
            rows.append({"label": f"{r['method']} (n={int(r['n'])})", "diff": 0.0, "low": None, "high": None,
                         "verdict": "reference"})
            continue
        diff, low, high = (float(r[f"{k}_vs_{ref}"]) for k in ("diff", "ci_low", "ci_high"))
        defined = math.isfinite(low) and math.isfinite(high)
        rows.append({"label": f"{r['method']} (n={int(r['n'])})", "diff": diff,
                     "low": low if defined else None, "high": high if defined else None,
                     "verdict": verdict(low, high) if defined else None})
    return rows


def comparisons(table: pd.DataFrame, references: Sequence[str], prefix: str | Path, title: str,
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """One panel per reference present in the study: Δ test error (pp) per row, its interval
    as a bar (coloured by verdict), zero as a line."""
    refs = present_references(table, references)
    if not refs or len(table) < 2:
        return note_figure(prefix, title, "no reference row (Random, DARTS) and another row in this study: "
                                          "nothing to compare", formats)
    n = len(table)
    fig = Figure(figsize=(5.2 * len(refs) + 1.8, 0.42 * n + 1.6), layout="constrained")
    axes = fig.subplots(1, len(refs), sharey=True, squeeze=False)[0]
    for ax, ref in zip(axes, refs):
        rows = interval_rows(table, ref)
        for y, r in enumerate(rows):
            if r["verdict"] == "reference":
                ax.plot([0.0], [y], "D", color="#1f1f1f", ms=5)
                ax.annotate("reference", (0.0, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7.5)
                continue
            color = VERDICT_COLORS[r["verdict"]] if r["verdict"] else UNDEFINED_COLOR
            if r["low"] is not None:
                ax.plot([r["low"], r["high"]], [y, y], color=color, lw=2.2, solid_capstyle="butt")
            if math.isfinite(r["diff"]):
                ax.plot([r["diff"]], [y], "o", color=color, ms=5)
        ax.axvline(0.0, color="#333333", lw=0.8)
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ref_label = table.loc[table["config"] == ref, "method"].iloc[0]
        ax.set_title(f"vs {ref_label}", fontsize=9.5)
        ax.set_xlabel("Δ test error (pp): row − reference; 95 % Welch interval", fontsize=8.5)
        ax.grid(axis="x", alpha=0.3)
    handles = [axes[0].plot([], [], color=c, lw=2.2)[0] for c in (*VERDICT_COLORS.values(), UNDEFINED_COLOR)]
    fig.legend(handles, [*VERDICT_COLORS, "undefined (n < 2)"], loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=10.5)
    return save(fig, prefix, formats)
