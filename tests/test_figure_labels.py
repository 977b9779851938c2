"""Error-vs-params figures name what they show: every paper row, literature method and study
config gets a label, and no two labels overlap (the de-overlap helpers, then the figure)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from darts.report import figures as F
from darts.report import figures_study as FS
from stages import figures as stage


def ys(points):
    return [y for _, y in points]


def test_spread_labels_pushes_a_crowd_apart_around_its_centre():
    out = F.spread_labels([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)], gap=1.0, lo=0.0, hi=10.0)
    assert [x for x, _ in out] == [0.0, 1.0, 2.0]  # x untouched
    assert ys(out) == pytest.approx([4.0, 5.0, 6.0])  # tie broken by x; least squares keeps the mean


def test_spread_labels_leaves_separate_labels_alone_and_keeps_order():
    assert ys(F.spread_labels([(0, 1.0), (0, 7.0), (0, 3.0)], 1.0, 0.0, 10.0)) == [1.0, 7.0, 3.0]
    out = ys(F.spread_labels([(0, 5.2), (0, 5.0), (0, 5.1)], 1.0, 0.0, 10.0))  # returned in input order
    assert out == pytest.approx([6.1, 4.1, 5.1])
    assert out[1] < out[2] < out[0]  # the anchors' y order
    assert min(b - a for a, b in itertools.pairwise(sorted(out))) >= 1.0 - 1e-9


def test_spread_labels_stays_in_range():
    assert ys(F.spread_labels([(0, 9.9)] * 3, 1.0, 0.0, 10.0)) == pytest.approx([8.0, 9.0, 10.0])
    assert ys(F.spread_labels([(0, -3.0), (0, 0.2)], 1.0, 0.0, 10.0)) == pytest.approx([0.0, 1.0])
    # too many for the range: evenly spread over it, still in order
    out = ys(F.spread_labels([(0, 1.0 + 0.01 * i) for i in range(5)], 1.0, 0.0, 2.0))
    assert out == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert F.spread_labels([], 1.0, 0.0, 1.0) == []


def test_overlap_groups():
    assert F.overlap_groups([(0, 2), (1, 3), (5, 6), (2.5, 4), (7, 8)]) == [[0, 1, 3], [2], [4]]
    assert F.overlap_groups([(1, 2), (0, 1)]) == [[1], [0]]  # touching is not overlapping
    assert F.overlap_groups([]) == []


REF = stage.reference_points(pd.read_csv(stage.PAPER_CSV))
PAPER_ROWS = list(REF.loc[REF["source"] == "paper", "method"])
LITERATURE = list(REF.loc[(REF["source"] == "literature") & REF["params_m_mean"].notna(), "method"])


def study(scale: str, seeds: int = 2) -> pd.DataFrame:
    """One config per paper row × ``seeds``: at the paper's scale (the panels share axes and
    the study's crowd sits where the paper's does) or a quick study's (tiny nets, high error)."""
    rng = np.random.default_rng(0)
    rows = []
    for _, r in REF[REF["source"] == "paper"].iterrows():
        for seed in range(seeds):
            err, par = ((r["test_error_mean"] + rng.normal(0, 0.12), r["params_m_mean"] + rng.normal(0, 0.2))
                        if scale == "paper" else (rng.uniform(10, 50), rng.uniform(0.04, 0.065)))
            rows.append({"config": r["method"].strip("+").replace("+", "_"), "label": r["method"], "seed": seed,
                         "test_error": err, "params_m": par,
                         **{d: r[d] for d in ("activation", "schedule", "regularization")}})
    return pd.DataFrame(rows)


def drawn(monkeypatch, runs: pd.DataFrame, by: str):
    """The figure ``error_vs_params`` saves (caught at ``save``, nothing written)."""
    figs = []
    monkeypatch.setattr(FS, "save", lambda fig, prefix, *a, **k: figs.append(fig) or [])
    FS.error_vs_params(runs, by, "unused", "t", reference=REF)
    return figs[0]


@pytest.mark.parametrize("scale,by", [("paper", "activation"), ("quick", "schedule"), ("paper", "regularization")])
def test_error_vs_params_names_every_point_without_overlap(monkeypatch, scale, by):
    runs = study(scale)
    fig = drawn(monkeypatch, runs, by)
    ours, reported = fig.axes[:2]
    assert sorted(t.get_text() for t in ours.texts) == sorted(PAPER_ROWS)  # one label per config
    assert sorted(t.get_text() for t in reported.texts) == sorted(PAPER_ROWS + LITERATURE)
    shown = sum(len(c.get_offsets()) for c in ours.collections if c.get_label().endswith("(one run)"))
    assert shown == len(runs)  # every seed's run still drawn
    fig.set_dpi(F.DPI)  # as saved
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in (ours, reported):
        frame = ax.get_window_extent(renderer)
        boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in ax.texts]  # text, not leader
        for text, b in boxes:
            assert frame.x0 - 1 <= b.x0 and b.x1 <= frame.x1 + 1 and frame.y0 - 1 <= b.y0 and b.y1 <= frame.y1 + 1, text
        for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
            w, h = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert w <= 0.5 or h <= 0.5, f"{ta!r} overlaps {tb!r}"


def test_error_vs_params_single_seed_and_unlabelled_runs(monkeypatch):
    fig = drawn(monkeypatch, study("paper", seeds=1), "activation")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(PAPER_ROWS)  # the run itself is named
    bare = pd.DataFrame({"test_error": [2.8, 3.1], "params_m": [3.0, 2.0], "activation": ["softmax", "crb"]})
    assert not drawn(monkeypatch, bare, "activation").axes[0].texts  # nothing to name them by
