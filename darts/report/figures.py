"""The paper's run figures from search data: α over training (Fig. 1a,b) and cell graphs (Fig. 1c,d).

Pure plotting: every function takes data (tensors, lists, genotype cells) and an output
path prefix, writes ``<prefix>.png`` (dpi 110) and ``<prefix>.pdf`` with matplotlib's Agg
canvas (no pyplot state, no display, no network) and returns the written paths. Which
files hold the data is the caller's business. The study-level figures (test error vs
params, FIMT schedule, pruning timeline, training curves) are in ``figures_study``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from darts.space.primitives import N_INPUTS, N_NODES, edges

DPI = 110
FORMATS = ("png", "pdf")  # raster for READMEs, vector for papers
MAX_POINTS = 400  # α records drawn per line (evenly thinned; keeps files small at paper scale)

#: one colour and line style per op, the same in every figure
OP_STYLE = {
    "none": ("#7f7f7f", ":"),
    "max_pool_3x3": ("#1f77b4", "--"),
    "avg_pool_3x3": ("#17becf", "--"),
    "skip_connect": ("#d62728", "-"),
    "sep_conv_3x3": ("#2ca02c", "-"),
    "sep_conv_5x5": ("#bcbd22", "-"),
    "dil_conv_3x3": ("#9467bd", "-"),
    "dil_conv_5x5": ("#e377c2", "-"),
}
STATE_NAMES = [r"$c_{k-2}$", r"$c_{k-1}$"] + [str(i) for i in range(N_NODES)]


def save(fig: Figure, prefix: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``prefix``.png and .pdf (no timestamps, so unchanged data gives identical files)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None}}
    paths = []
    for ext in formats:
        paths.append(prefix.with_name(f"{prefix.name}.{ext}"))
        fig.savefig(paths[-1], dpi=DPI, metadata=meta.get(ext))
        if ext == "png":
            _shrink_png(paths[-1])
    return paths


def _shrink_png(path: Path) -> None:
    """Re-encode as a 256-colour palette PNG (about 4× smaller; median cut keeps the exact
    line colours, no dithering), so committed example figures stay small."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def note_figure(prefix: str | Path, title: str, text: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """A small figure that says why there is nothing to draw (keeps the figure set fixed)."""
    fig = Figure(figsize=(8, 2.2))
    fig.text(0.5, 0.85, title, ha="center", va="top", fontsize=10.5, wrap=True)
    fig.text(0.5, 0.4, text, ha="center", va="center", fontsize=10, wrap=True, color="#444444")
    return save(fig, prefix, formats)


def thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread records, always keeping the first and last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def spread_labels(points: Sequence[tuple[float, float]], gap: float, lo: float,
                  hi: float) -> list[tuple[float, float]]:
    """Label positions for anchor ``points`` (x, y): x kept, y moved as little as possible
    (least squares) so that labels are at least ``gap`` apart, in the anchors' y order
    (ties: by x, then input order) and within [``lo``, ``hi``]; returned in input order.

    Why least squares under order constraints: labels stay next to their points where there
    is room and only a crowd is fanned out around its centre, and leader lines (anchor to
    label) never cross within a column. Solved exactly by pool-adjacent-violators on
    ``y_i - i·gap`` (the gap constraint becomes "non-decreasing"), then clipped to the range.
    When the range is too short for ``gap`` the labels are spread evenly over it instead.
    """
    n, lo, hi = len(points), min(lo, hi), max(lo, hi)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (points[i][1], points[i][0], i))
    if n > 1 and (hi - lo) < (n - 1) * gap:  # cannot fit: even spacing is the best we can do
        ys = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    else:
        blocks: list[list[float]] = []  # [mean, count] of pooled targets
        for k, i in enumerate(order):
            blocks.append([points[i][1] - k * gap, 1.0])
            while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
                m2, c2 = blocks.pop()
                m1, c1 = blocks[-1]
                blocks[-1] = [(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2]
        top = hi - (n - 1) * gap
        q = [min(max(m, lo), top) for m, c in blocks for _ in range(int(c))]
        ys = [qk + k * gap for k, qk in enumerate(q)]
    out = [(0.0, 0.0)] * n
    for k, i in enumerate(order):
        out[i] = (points[i][0], ys[k])
    return out


def overlap_groups(extents: Sequence[tuple[float, float]]) -> list[list[int]]:
    """Indices of intervals (x0, x1) grouped so that intervals of different groups never
    overlap (connected components of the overlap graph), each group in ascending order.

    Labels of different groups cannot collide whatever their heights, so each group is
    spread vertically on its own and a crowd on the left does not push labels on the right."""
    groups: list[list[int]] = []
    end = -math.inf
    for i in sorted(range(len(extents)), key=lambda i: (extents[i][0], i)):
        if not groups or extents[i][0] >= end:
            groups.append([])
            end = -math.inf
        groups[-1].append(i)
        end = max(end, extents[i][1])
    return [sorted(g) for g in groups]


def chosen_edges(cell: Sequence[tuple[str, int]] | None) -> dict[int, str]:
    """α row -> chosen op for a genotype cell (2 (op, source) pairs per node, node by node)."""
    if not cell:
        return {}
    rows = {e: r for r, e in enumerate(edges())}
    return {rows[(i // 2, int(src))]: op for i, (op, src) in enumerate(cell)}


def alpha_grid(alpha, steps: Sequence[int], ops: Sequence[str], prefix: str | Path, title: str,
               steps_per_epoch: float | None = None, chosen: Sequence[tuple[str, int]] | None = None,
               hide: Sequence[str] = ("none",), formats: Sequence[str] = FORMATS) -> list[Path]:
    """Figure 1(a,b): activated α of every op on every edge of one cell type over the search.

    ``alpha`` is a (records, 14 edges, K ops) array of activated α and ``steps`` the
    iteration of each record. Rows are destination nodes, columns source states; ops in
    ``hide`` are not drawn (the paper omits `none`, which discretization never picks). The
    edges ``chosen`` by discretization (a genotype cell) get a thick frame and their op.
    """
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] == 0:
        return note_figure(prefix, title, "no α records in this run", formats)
    idx = thin(a.shape[0])
    x = np.asarray(steps, dtype=np.float64)[idx]
    xlabel = "iteration"
    if steps_per_epoch:
        x, xlabel = x / steps_per_epoch, "epoch"
    shown = [k for k, op in enumerate(ops) if op not in hide]
    top = max(float(a[:, :, shown].max()) if shown else 1.0, 1e-6)
    picked = chosen_edges(chosen)
    n_src = N_INPUTS + N_NODES - 1
    # a fixed grid layout: constrained layout measured 2/3 of this figure's drawing time, and
    # the study draws two of these per run
    fig = Figure(figsize=(12, 7.6))
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.065, top=0.875, wspace=0.12, hspace=0.62)
    grid = fig.subplots(N_NODES, n_src, sharex=True, sharey=True, squeeze=False)
    for r, (node, src) in enumerate(edges()):
        ax = grid[node][src]
        for k in shown:
            color, ls = OP_STYLE.get(ops[k], ("black", "-"))
            ax.plot(x, a[idx, r, k], color=color, ls=ls, lw=1.3)
        name = f"{STATE_NAMES[src]} → {node}"
        if r in picked:
            color = OP_STYLE.get(picked[r], ("black",))[0]
            ax.set_title(f"{name}: kept {picked[r]}", fontsize=8.5, pad=2, color=color, fontweight="bold")
            for spine in ax.spines.values():
                spine.set_linewidth(2.2)
                spine.set_color(color)
        else:
            ax.set_title(name, fontsize=8.5, pad=2)
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=8)
    for node in range(N_NODES):
        grid[node][0].set_ylabel(f"node {node}\nα", fontsize=9)
        for src in range(N_INPUTS + node, n_src):
            grid[node][src].set_axis_off()
        grid[node][N_INPUTS + node - 1].xaxis.set_tick_params(labelbottom=True)
        grid[node][N_INPUTS + node - 1].set_xlabel(xlabel, fontsize=9)
    grid[0][0].set_ylim(0, top * 1.05)
    handles = [grid[0][0].plot([], [], color=OP_STYLE.get(ops[k], ("black",))[0],
                               ls=OP_STYLE.get(ops[k], ("", "-"))[1], lw=2, label=ops[k])[0] for k in shown]
    legend = fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.99, 0.9), fontsize=9, ncols=2,
                        title="op (line colour and style)", frameon=False)
    legend.set_in_layout(False)  # it sits in the empty upper-right triangle of the grid
    hidden = [op for op in hide if op in ops]
    sub = "rows: destination node, columns: source state; framed edges are kept by discretization"
    if hidden:
        sub += f"; not shown: {', '.join(hidden)}"
    fig.suptitle(f"{title}\n{sub}", fontsize=11)
    return save(fig, prefix, formats)


def _positions() -> dict[int, tuple[float, float]]:
    """Layout of the cell graph: inputs left, intermediate nodes zig-zag, output right (-1)."""
    pos = {0: (0.0, 2.2), 1: (0.0, -2.2)}
    for i in range(N_NODES):
        pos[N_INPUTS + i] = (2.6 + 2.6 * i, 1.0 if i % 2 == 0 else -1.0)
    pos[-1] = (2.6 + 2.6 * N_NODES + 0.6, 0.0)
    return pos


def _rad(p0, p1, others) -> float:
    """Arc bend of an edge: straight when it clears every other state by a node's width,
    else the smallest bend (either side) that keeps it furthest from them."""
    ts = np.linspace(0.1, 0.9, 17)

    def clearance(rad: float) -> float:
        pts = np.array([_bezier(p0, p1, rad, t) for t in ts])
        if np.abs(pts[:, 1]).max() > 2.7:  # would leave the drawing
            return -1.0
        return min((np.hypot(*(pts - np.asarray(o)).T).min() for o in others), default=9.0)

    best = max((-0.1, 0.1, -0.2, 0.2, -0.3, 0.3), key=clearance)
    return 0.0 if clearance(0.0) >= 0.9 else best


def _bezier(p0, p1, rad: float, t: float) -> tuple[float, float]:
    """Point at ``t`` on matplotlib's arc3 curve from p0 to p1 (equal-aspect axes)."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1 - t
    return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1


def _free(box, taken) -> bool:
    x, y, w, h = box
    return all(abs(x - bx) * 2 >= w + bw or abs(y - by) * 2 >= h + bh for bx, by, bw, bh in taken)


def draw_cell(ax, cell: Sequence[tuple[str, int]], concat: Sequence[int] | None = None, title: str = "") -> None:
    """Figure 1(c,d) on one axes: states c_{k-2}, c_{k-1}, nodes 0–3, c_k; edges labelled with ops.

    Labels sit on their edge at the first position (middle first) that does not cover
    another label or a node, so a glance reads every op.
    """
    pos = _positions()
    concat = list(concat) if concat is not None else list(range(N_INPUTS, N_INPUTS + N_NODES))
    taken = [(x, y, 1.0, 0.75) for x, y in pos.values()]  # nodes (x, y, width, height in data units)
    for s in concat:
        rad = _rad(pos[s], pos[-1], [q for k, q in pos.items() if k not in (s, -1)])
        ax.add_patch(FancyArrowPatch(pos[s], pos[-1], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=11, color="#b0b0b0", lw=1.0, shrinkA=15, shrinkB=15, zorder=1))
    for i, (op, src) in enumerate(cell):
        p0, p1 = pos[int(src)], pos[N_INPUTS + i // 2]
        rad = _rad(p0, p1, [q for k, q in pos.items() if q not in (p0, p1)])
        color = OP_STYLE.get(op, ("black",))[0]
        ax.add_patch(FancyArrowPatch(p0, p1, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", zorder=2,
                                     mutation_scale=13, color=color, lw=1.6, shrinkA=16, shrinkB=16))
        w, h = 0.11 * len(op) + 0.25, 0.42
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78, 0.5):
            x, y = _bezier(p0, p1, rad, t)
            if _free((x, y, w, h), taken):
                break
        taken.append((x, y, w, h))
        ax.text(x, y, op, ha="center", va="center", fontsize=8, color=color, zorder=3,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": color, "lw": 0.6})
    for s, (x, y) in pos.items():
        name, fc = ((r"$c_{k}$", "#ffe08a") if s == -1 else
                    (STATE_NAMES[s], "#b7e4c7") if s < N_INPUTS else (STATE_NAMES[s], "#a9d6f5"))
        ax.text(x, y, name, ha="center", va="center", fontsize=11, zorder=4,
                bbox={"boxstyle": "round,pad=0.45" if s < N_INPUTS else "circle,pad=0.3", "fc": fc, "ec": "#333333"})
    ax.set_xlim(-0.8, pos[-1][0] + 0.8)
    ax.set_ylim(-3.0, 3.0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=11)


def cell_graphs(cells: dict[str, Sequence[tuple[str, int]]], prefix: str | Path, title: str,
                concats: dict[str, Sequence[int]] | None = None, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Figure 1(c,d): the final normal and reduction cells (one panel each) of one genotype."""
    concats = concats or {}
    fig = Figure(figsize=(8.5, 3.3 * len(cells) + 0.5), layout="constrained")
    axes = fig.subplots(len(cells), 1, squeeze=False)[:, 0]
    for ax, (name, cell) in zip(axes, cells.items()):
        draw_cell(ax, cell, concats.get(name), f"{name} cell")
    fig.suptitle(title, fontsize=11)
    return save(fig, prefix, formats)
