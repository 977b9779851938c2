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
from matplotlib.patheffects import withStroke
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from darts.report.figures import FORMATS, note_figure, overlap_groups, save, spread_labels

#: colours of the categories of each paper dimension (the same in every figure)
CATEGORY_COLORS = {
    "activation": {"softmax": "#1f77b4", "crb": "#ff7f0e", "sigmoid": "#2ca02c", "nasp": "#d62728"},
    "schedule": {"alternate": "#1f77b4", "constant": "#2ca02c", "fimt": "#d62728"},
    "regularization": {"none": "#7f7f7f", "pr": "#9467bd", "admm": "#8c564b", "zero_one": "#e377c2"},
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


def _group_key(runs: pd.DataFrame) -> str | None:
    """The column naming a configuration: params' ``labels`` ('+PR+FIMT+CRB') when the
    metrics carry them, else the config name; None when runs cannot be grouped."""
    return next((c for c in ("label", "config") if c in runs.columns), None)


def _draw_runs(ax, runs: pd.DataFrame, by: str) -> list[tuple[float, float, str, str]]:
    """Every run as a small dot and, per configuration, the mean over its seeds as a large
    circle joined to its runs; returns the means (x, y, config label, colour) to name."""
    for value, sub in runs.groupby(by, sort=False):
        ax.scatter(sub["params_m"], sub["test_error"], s=18, color=_color(by, value), alpha=0.6, lw=0,
                   label=f"{value} (one run)", zorder=3)
    key = _group_key(runs)
    if key is None or runs.empty:
        return []
    means, several = [], bool(runs.groupby(key).size().max() > 1)
    for name, sub in runs.groupby(key, sort=False):
        color = _color(by, sub[by].iloc[0])
        x, y = float(sub["params_m"].mean()), float(sub["test_error"].mean())
        if len(sub) > 1:  # a seed's distance from its mean is the spread the mean hides
            for px, py in zip(sub["params_m"], sub["test_error"]):
                ax.plot([x, px], [y, py], color=color, lw=0.6, alpha=0.35, zorder=2)
            ax.scatter([x], [y], s=60, color=color, edgecolor="black", lw=0.8, zorder=4)
        means.append((x, y, str(name), color))
    if several:
        ax.scatter([], [], s=60, color="white", edgecolor="black", lw=0.8, label="mean over seeds (named)")
    return means


def _draw_reference(ax, ref: pd.DataFrame, by: str, faint: bool = False) -> list[tuple[float, float, str, str]]:
    """The paper's rows (hollow diamonds with error bars) and the literature (crosses);
    returns every point to name (x, y, row or method, colour). ``faint``: as an unnamed
    backdrop behind this study's runs."""
    paper = ref[ref["source"] == "paper"]
    alpha = 0.35 if faint else 1.0
    for value, sub in paper.groupby(by, sort=False, dropna=False):
        ax.errorbar(sub["params_m_mean"], sub["test_error_mean"], xerr=sub["params_m_std"].fillna(0),
                    yerr=sub["test_error_std"].fillna(0), fmt="D", ms=6, mfc="none", mew=1.4, alpha=alpha,
                    color=_color(by, value), elinewidth=0.8, capsize=2, zorder=2,
                    label=None if faint else f"{value} (paper row, mean ± std)")
    lit = ref[(ref["source"] == "literature") & ref["params_m_mean"].notna()]
    if len(lit):
        ax.scatter(lit["params_m_mean"], lit["test_error_mean"], marker="x", s=30, color=LITERATURE_COLOR,
                   alpha=alpha, label="paper and literature (reported), faint" if faint else "literature (reported)",
                   zorder=2)
    if faint:
        return []
    named = [(x, y, str(m), _color(by, v)) for x, y, m, v in
             zip(paper["params_m_mean"], paper["test_error_mean"], paper["method"], paper[by])]
    return named + [(x, y, str(m), LITERATURE_COLOR) for x, y, m in
                    zip(lit["params_m_mean"], lit["test_error_mean"], lit["method"])]


def label_points(ax, points: Sequence[tuple[float, float, str, str]], fontsize: float = 7.0,
                 offset: float = 5.0, pad: float = 1.5) -> list:
    """Name each (x, y, text, colour) data point of ``ax`` with no two labels overlapping.

    Each label goes beside its point, on a side where it stays in the axes and covers no other
    point (right of the median x the right side first, else the left); labels whose horizontal
    extents overlap are spread vertically by ``spread_labels``, a label that lands on another
    point then tries its other side, and a moved label gets a thin leader line. A white outline
    (not a box) keeps text readable over lines without hiding a marker it must cross.
    ``offset`` (label to point) and ``pad`` (clearance around a label) are in points. Call once
    everything else is drawn (it lays the figure out to measure). Returns the annotations,
    kept out of the layout so that they cannot move the axes they were measured in.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not points:
        return []
    fig = ax.figure
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    anchors = ax.transData.transform([(x, y) for x, y, _, _ in points])
    size = []
    for _, _, text, _ in points:  # measure each label once, off the axes' artists
        probe = fig.text(0, 0, text, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        size.append((box.width + 2 * pad * px_per_pt, box.height + 2 * pad * px_per_pt))
    off, r, n = offset * px_per_pt, 3 * px_per_pt, len(points)
    height = max(h for _, h in size)
    marks = _marker_positions(ax)

    def box(i: int, side: int, y: float) -> tuple[float, float, float, float]:
        x = anchors[i][0] + side * off
        x0, x1 = (x, x + size[i][0]) if side > 0 else (x - size[i][0], x)
        return x0, x1, y - height / 2, y + height / 2

    def fits(i: int, side: int) -> bool:
        x0, x1, _, _ = box(i, side, 0.0)
        return frame.x0 <= x0 and x1 <= frame.x1

    def clear(i: int, side: int, y: float) -> bool:
        return not _covers(*box(i, side, y), marks, own=tuple(anchors[i]), r=r)

    def spread(sides: list[int]) -> list[float]:
        ys = [0.0] * n
        for group in overlap_groups([box(i, sides[i], 0.0)[:2] for i in range(n)]):
            for i, (_, y) in zip(group, spread_labels([tuple(anchors[i]) for i in group], height,
                                                      frame.y0 + height / 2, frame.y1 - height / 2)):
                ys[i] = y
        return ys

    middle = float(np.median(anchors[:, 0]))
    sides = []
    for i, (px, py) in enumerate(anchors):
        # in turn: a side that fits and hides no other point; then one that fits; a crowd
        # fans out to both sides of its middle (two short columns, not one tall one)
        prefer = (1, -1) if px >= middle else (-1, 1)
        sides.append(next((k for k in prefer if fits(i, k) and clear(i, k, py)), None) or next(
            (k for k in prefer if fits(i, k)), 1 if frame.x1 - px >= px - frame.x0 else -1))
    ys, flipped = spread(sides), set()
    while True:  # a label the spread pushed onto another point tries its other side (once)
        i = next((i for i in range(n) if i not in flipped and not clear(i, sides[i], ys[i])
                  and fits(i, -sides[i]) and clear(i, -sides[i], ys[i])), None)
        if i is None:
            break
        flipped.add(i)
        sides[i] = -sides[i]
        ys = spread(sides)
    placed = [(anchors[i][0] + sides[i] * off, ys[i]) for i in range(n)]
    to_data = ax.transData.inverted()
    notes = []
    for (x, y, text, color), (lx, ly), side, (_, py) in zip(points, placed, sides, anchors):
        moved = abs(ly - py) > 0.3 * height  # a leader says which point a moved label names
        note = ax.annotate(text, (x, y), xytext=tuple(to_data.transform((lx, ly))), textcoords="data",
                           ha="left" if side > 0 else "right", va="center", fontsize=fontsize, color=color,
                           zorder=4, path_effects=[withStroke(linewidth=2, foreground="white", alpha=0.8)],
                           arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "alpha": 0.7,
                                       "shrinkA": 0, "shrinkB": 2} if moved else None)
        note.set_in_layout(False)
        notes.append(note)
    return notes


def _marker_positions(ax) -> np.ndarray:
    """Display positions of every point on ``ax`` (scatter points, markers of lines; error-bar
    caps are not points: a label may cover the end of a bar)."""
    from matplotlib.collections import PathCollection

    xy = [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
          if isinstance(c, PathCollection) and len(c.get_offsets())]
    xy += [ax.transData.transform(ln.get_xydata()) for ln in ax.lines
           if ln.get_marker() not in (None, "", "None", " ", "|", "_") and len(ln.get_xydata())]  # not caps
    return np.concatenate(xy) if xy else np.empty((0, 2))


def _covers(x0: float, x1: float, y0: float, y1: float, marks: np.ndarray, own: tuple[float, float],
            r: float) -> bool:
    """Whether the box covers a marker (radius ``r``) other than the one at ``own``."""
    if not len(marks):
        return False
    other = np.hypot(marks[:, 0] - own[0], marks[:, 1] - own[1]) > 0.5
    hit = (marks[:, 0] + r > x0) & (marks[:, 0] - r < x1) & (marks[:, 1] + r > y0) & (marks[:, 1] - r < y1)
    return bool((hit & other).any())


def error_vs_params_figure(runs: pd.DataFrame, by: str, title: str,
                           reference: pd.DataFrame | None = None) -> Figure:
    """The figure of ``error_vs_params`` (unsaved, so tests can read its labels)."""
    ref = reference if reference is not None else pd.DataFrame(
        columns=["method", "source", "test_error_mean", "test_error_std", "params_m_mean", "params_m_std", by])
    together = _spans(runs, ref)
    fig = Figure(figsize=(13, 6.2), layout="constrained")
    axes = list(fig.subplots(1, 2, sharex=together, sharey=together))
    ours = _draw_runs(axes[0], runs, by)
    if together:
        _draw_reference(axes[0], ref, by, faint=True)
    reported = _draw_reference(axes[1], ref, by)
    key = _group_key(runs)
    several = key is not None and not runs.empty and runs.groupby(key).size().max() > 1
    axes[0].set_title("this study: " + ("small dots are runs, named circles each config's mean over seeds"
                                        if several else "one point per run, named by its config"), fontsize=10)
    axes[1].set_title("reported: paper Table 1 rows (diamonds) and literature (crosses)"
                      + ("" if together else ", a different scale"), fontsize=10)
    for ax in axes:
        ax.set_xlabel("params (M)")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.08)
        if ax.get_legend_handles_labels()[0]:  # below the axes: the labels need the whole plot
            ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, frameon=False)
    if runs.empty:
        axes[0].text(0.5, 0.5, "no runs", transform=axes[0].transAxes, ha="center")
    fig.suptitle(title, fontsize=11)
    for ax, points in zip(axes, (ours, reported)):
        label_points(ax, points)
    return fig


def error_vs_params(runs: pd.DataFrame, by: str, prefix: str | Path, title: str,
                    reference: pd.DataFrame | None = None) -> list[Path]:
    """Figures 3 / S1: test error (%) vs params (M) of every run, coloured by one dimension.

    ``runs`` has test_error, params_m, the column ``by`` and (to name the configs) label or
    config; ``reference`` (optional) has method, source ('paper' / 'literature'),
    test_error_mean/std, params_m_mean/std and ``by`` for the paper's rows. Ours on the left
    (every run, and each config's mean over seeds named), the reported points on the right
    (every paper row and literature method named); labels never overlap. When both share a
    scale the panels share axes and the reported points also appear faintly behind ours,
    otherwise (a quick study on small images) each panel keeps its own scale.
    """
    return save(error_vs_params_figure(runs, by, title, reference), prefix)


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
