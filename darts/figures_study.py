"""Study-level figures: test error vs params (Fig. 3, S1), the FIMT schedule (Fig. 5),
the CRB pruning timeline and per-epoch training curves.

Like ``figures``: data in (DataFrames, lists, dicts), ``<prefix>.png`` + ``.pdf`` out,
written paths returned; nothing here knows where the data came from.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox

from .figures import FORMATS, note_figure, save

#: colours of the categories of each paper dimension (the same in every figure)
CATEGORY_COLORS = {
    "activation": {"softmax": "#1f77b4", "crb": "#ff7f0e"},
    "schedule": {"alternate": "#1f77b4", "constant": "#2ca02c", "fimt": "#d62728"},
    "regularization": {"none": "#7f7f7f", "pr": "#9467bd", "admm": "#8c564b"},
}
LITERATURE_COLOR = "#555555"


def _color(by: str, value) -> str:
    return CATEGORY_COLORS.get(by, {}).get(str(value), "#000000")


def _spans(ours: pd.DataFrame, ref: pd.DataFrame) -> bool:
    """Whether our runs and the reported points share a scale (then both panels share axes)."""
    if ours.empty or ref.empty:
        return not ours.empty or not ref.empty
    err, par = ref["test_error_mean"].astype(float), ref["params_m_mean"].astype(float)
    return bool(ours["test_error"].max() <= 3 * err.max() and ours["test_error"].min() >= err.min() / 3
                and ours["params_m"].max() <= 3 * par.max() and ours["params_m"].min() >= par.min() / 3)


def _draw_runs(ax, runs: pd.DataFrame, by: str) -> None:
    for value, sub in runs.groupby(by, sort=False):
        ax.scatter(sub["params_m"], sub["test_error"], s=36, color=_color(by, value), alpha=0.85,
                   edgecolor="white", lw=0.5, label=f"{value} (this study, one point per run)", zorder=3)


def _draw_reference(ax, ref: pd.DataFrame, by: str, faint: bool = False) -> list[tuple[float, float, str]]:
    """The paper's rows (hollow diamonds with error bars) and the literature (crosses); returns
    the literature points to name once the figure is laid out. ``faint``: as a backdrop."""
    paper = ref[ref["source"] == "paper"]
    alpha = 0.35 if faint else 1.0
    for value, sub in paper.groupby(by, sort=False, dropna=False):
        ax.errorbar(sub["params_m_mean"], sub["test_error_mean"], xerr=sub["params_m_std"].fillna(0),
                    yerr=sub["test_error_std"].fillna(0), fmt="D", ms=6, mfc="none", mew=1.4, alpha=alpha,
                    color=_color(by, value), elinewidth=0.8, capsize=2, zorder=2,
                    label=None if faint else f"{value} (paper, mean ± std)")
    lit = ref[(ref["source"] == "literature") & ref["params_m_mean"].notna()]
    if len(lit):
        ax.scatter(lit["params_m_mean"], lit["test_error_mean"], marker="x", s=30, color=LITERATURE_COLOR,
                   alpha=alpha, label="paper and literature (reported), faint" if faint else "literature (reported)",
                   zorder=2)
    return list(zip(lit["params_m_mean"], lit["test_error_mean"], lit["method"]))


#: label offsets (points) tried in turn around a reference marker: right, left, above, below, further out
_OFFSETS = [(6, 0, "left"), (-6, 0, "right"), (0, 8, "center"), (0, -8, "center"), (6, 8, "left"),
            (6, -8, "left"), (-6, 8, "right"), (-6, -8, "right"), (12, 15, "left"), (-12, -15, "right")]


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Name each literature point where the label covers no other label, marker or run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    marks = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    marks += [ln.get_xydata() for ln in ax.lines if ln.get_marker() not in (None, "", "None")]
    for xy in marks:  # every marker on the axes, as a small box
        for px, py in ax.transData.transform(np.asarray(xy, dtype=float)):
            taken.append(Bbox.from_extents(px - 3, py - 3, px + 3, py + 3))
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        for dx, dy, ha in _OFFSETS:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va="center",
                            fontsize=6.5, color=LITERATURE_COLOR, zorder=2)
            box = t.get_window_extent(renderer).padded(3)
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and not any(
                    box.overlaps(o) for o in taken):
                break
            t.remove()
        else:
            t = ax.annotate(text, (x, y), xytext=(5, 0), textcoords="offset points", va="center", fontsize=6.5,
                            color=LITERATURE_COLOR, zorder=2)
            box = t.get_window_extent(renderer)
        taken.append(box)


def error_vs_params(runs: pd.DataFrame, by: str, prefix: str | Path, title: str,
                    reference: pd.DataFrame | None = None) -> list[Path]:
    """Figures 3 / S1: test error (%) vs params (M) of every run, coloured by one dimension.

    ``runs`` has test_error, params_m and the column ``by``; ``reference`` (optional) has
    method, source ('paper' / 'literature'), test_error_mean/std, params_m_mean/std and
    ``by`` for the paper's rows. Ours on the left, the reported points (named) on the right;
    when both share a scale the panels share axes and the reported points also appear faintly
    behind ours, otherwise (a quick study on small images) each panel keeps its own scale.
    """
    ref = reference if reference is not None else pd.DataFrame(
        columns=["method", "source", "test_error_mean", "test_error_std", "params_m_mean", "params_m_std", by])
    together = _spans(runs, ref)
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    axes = list(fig.subplots(1, 2, sharex=together, sharey=together))
    _draw_runs(axes[0], runs, by)
    if together:
        _draw_reference(axes[0], ref, by, faint=True)
    literature = _draw_reference(axes[1], ref, by)
    axes[0].set_title("this study (each point is one run)", fontsize=10)
    axes[1].set_title("reported: paper Table 1 rows and literature" + ("" if together else " (a different scale)"),
                      fontsize=10)
    for ax in axes:
        ax.set_xlabel("params (M)")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    if runs.empty:
        axes[0].text(0.5, 0.5, "no runs", transform=axes[0].transAxes, ha="center")
    fig.suptitle(title, fontsize=11)
    if literature:
        _place_labels(axes[1], literature)
    return save(fig, prefix)


def fimt_schedule(steps: dict, steps_per_epoch: int, prefix: str | Path, title: str,
                  epochs: Sequence[int] | None = None, empty: str = "this run logged no FIMT schedule",
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """Figure 5: F, F̄, the threshold T and the α steps over the first and the last epoch.

    ``steps`` holds per-iteration lists: "alpha" (bool), "fisher", "fbar", "threshold".
    """
    n = len(steps.get("alpha", []))
    if not n or "fbar" not in steps or steps_per_epoch <= 0:
        return note_figure(prefix, title, empty, formats)
    last = max(math.ceil(n / steps_per_epoch) - 1, 0)
    epochs = list(epochs) if epochs is not None else sorted({0, last})
    fig = Figure(figsize=(6.2 * len(epochs), 4.2), layout="constrained")
    axes = fig.subplots(1, len(epochs), squeeze=False)[0]
    for ax, e in zip(axes, epochs):
        lo, hi = e * steps_per_epoch, min((e + 1) * steps_per_epoch, n)
        it = np.arange(lo, hi) - lo
        for key, label, color, lw, ls in (("fisher", r"$F$ (Fisher trace, before clipping)", "#b0b0b0", 0.9, "-"),
                                          ("fbar", r"$\bar{F}$ (smoothed)", "#1f77b4", 1.8, "-"),
                                          ("threshold", r"threshold $T$", "#ff7f0e", 1.6, "--")):
            if key in steps:
                ax.plot(it, np.asarray(steps[key][lo:hi], dtype=float), color=color, lw=lw, ls=ls, label=label)
        flags = np.asarray(steps["alpha"][lo:hi], dtype=bool)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        for j, x in enumerate(np.flatnonzero(flags)):
            ax.axvline(x, color="#2ca02c", lw=0.8, alpha=0.6, label="α step" if j == 0 else None)
        k = int(flags.sum())
        ax.set_title(f"epoch {e + 1}: {k} α step{'' if k == 1 else 's'} in {hi - lo} iterations", fontsize=10)
        ax.set_xlabel("iteration within the epoch")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("value (log scale)")
    handles = {}  # one entry per label over all panels (epoch 1 may have no α step)
    for ax in axes:
        handles.update({label: h for h, label in zip(*ax.get_legend_handles_labels()) if label not in handles})
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    fig.suptitle(title + "\n" + r"an α step is taken when $0 < \bar{F} < T$; $T$ shrinks by $m^{-k}$ after one, "
                 r"grows by $m$ otherwise", fontsize=10.5)
    return save(fig, prefix, formats)


def live_ops_series(pruned: Sequence[dict], initial: int, total_steps: int, cell: str) -> tuple[list, list]:
    """(iterations, live op count) of one cell type as a step function from pruning events."""
    xs, ys, live = [0], [initial], initial
    for ev in sorted((e for e in pruned if e["cell"] == cell), key=lambda e: e["step"]):
        live -= 1
        xs.append(ev["step"])
        ys.append(live)
    xs.append(max(total_steps, xs[-1]))
    ys.append(live)
    return xs, ys


def pruning_timeline(runs: Sequence[dict], prefix: str | Path, title: str, kept: int = 8,
                     empty: str = "no CRB run in this study: nothing is pruned during search",
                     formats: Sequence[str] = FORMATS) -> list[Path]:
    """Live (unpruned) ops per cell type over the search, one line per CRB run.

    Each run: {"label", "pruned" (events with step, cell), "initial" (ops per cell at
    start), "total_steps", "steps_per_epoch", "color" (optional)}.
    """
    if not runs:
        return note_figure(prefix, title, empty, formats)
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    palette = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    configs = list(dict.fromkeys(r.get("config", r["label"]) for r in runs))
    for ax, cell in zip(axes, ("normal", "reduce")):
        for r in runs:
            xs, ys = live_ops_series(r["pruned"], r["initial"], r["total_steps"], cell)
            ci = configs.index(r.get("config", r["label"]))
            seed_i = r.get("seed_index", 0)
            ax.step(np.asarray(xs) / max(r["steps_per_epoch"], 1), ys, where="post", lw=1.6,
                    color=r.get("color", palette[ci % 10]), ls=styles[seed_i % 4], label=r["label"])
        ax.axhline(kept, color="black", lw=0.8, ls=":")
        ax.text(0.01, kept, f" {kept} ops kept by discretization", transform=ax.get_yaxis_transform(),
                va="bottom", fontsize=8)
        ax.set_title(f"{cell} cell", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, max(r["initial"] for r in runs) * 1.05)
    axes[0].set_ylabel("live ops (all 14 edges)")
    total = sum(len(r["pruned"]) for r in runs)
    if len(runs) > 1:
        fig.legend(handles=axes[0].get_legend_handles_labels()[0], loc="outside right upper", fontsize=8,
                   title="run (line style: seed)", title_fontsize=8)
    fig.suptitle(f"{title}\n{total} ops pruned" + (f" in {len(runs)} runs" if len(runs) > 1 else ""), fontsize=10.5)
    return save(fig, prefix, formats)


def training_curves(search: Sequence[dict], retrain: Sequence[dict], prefix: str | Path, title: str,
                    formats: Sequence[str] = FORMATS) -> list[Path]:
    """Per-epoch search (train/val loss, train acc, α-step ratio) and retrain (loss, acc) curves."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_ratio = fig.subplots(1, 3)

    def col(rows, key):
        return [r.get("epoch", i + 1) for i, r in enumerate(rows)], [
            np.nan if r.get(key) is None else float(r[key]) for r in rows]

    for rows, key, label, color, ls in ((search, "train_loss", "search: train (w) loss", "#1f77b4", "-"),
                                        (search, "val_loss", "search: val loss at α steps", "#1f77b4", "--"),
                                        (retrain, "loss", "retrain: train loss (incl. auxiliary)", "#d62728", "-")):
        if rows:
            ax_loss.plot(*col(rows, key), marker="o", ms=3, color=color, ls=ls, label=label)
    for rows, key, label, color in ((search, "train_acc", "search: train acc", "#1f77b4"),
                                    (retrain, "acc", "retrain: train acc", "#d62728")):
        if rows:
            ax_acc.plot(*col(rows, key), marker="o", ms=3, color=color, label=label)
    if search:
        ax_ratio.plot(*col(search, "alpha_ratio"), marker="o", ms=3, color="#2ca02c")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_ratio, "α steps per w step")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    ax_ratio.set_ylim(bottom=0)
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return save(fig, prefix, formats)
