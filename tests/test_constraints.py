"""Π_S (projection onto the discrete set S) and genotype derivation on hand-built α."""
from __future__ import annotations

import pytest
import torch

from darts.method.activations import CRB
from darts.space.projection import (
    ProjectionError,
    choose_edges,
    count_ties,
    derive_cell,
    derive_genotype,
    candidate_edges_per_node,
    project,
    tie_key,
)
from darts.space.primitives import PRIMITIVES, WITHOUT_NONE, Genotype, node_edge_rows

SOFTMAX_OPS = PRIMITIVES  # none, max, avg, skip, sep3, sep5, dil3, dil5
CRB_OPS = WITHOUT_NONE          # max, avg, skip, sep3, sep5, dil3, dil5
NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)


def hand_alpha() -> torch.Tensor:
    """14×8 α (softmax op order); every unset entry is -1.

    node 0 (rows 0,1):      row0 none=9 (ignored), sep3=.5;  row1 skip=.7
    node 1 (rows 2,3,4):    row2 dil5=.9;  row3 avg=.2;  row4 none=5 (ignored), max=.95
    node 2 (rows 5..8):     row5 sep5=.3;  row6 dil3=.6;  row7 skip=.6 (edge tie: row6 wins);  row8 sep3=.1
    node 3 (rows 9..13):    rows 9,10,12 avg=.1;  row11 max=.7;  row13 sep3=.8 = sep5 (op tie: sep3 wins)
    """
    a = torch.full((14, 8), -1.0)
    a[0, NONE], a[0, SEP3] = 9.0, 0.5
    a[1, SKIP] = 0.7
    a[2, DIL5] = 0.9
    a[3, AVG] = 0.2
    a[4, NONE], a[4, MAX] = 5.0, 0.95
    a[5, SEP5] = 0.3
    a[6, DIL3] = 0.6
    a[7, SKIP] = 0.6
    a[8, SEP3] = 0.1
    a[[9, 10, 12], AVG] = 0.1
    a[11, MAX] = 0.7
    a[13, SEP3] = a[13, SEP5] = 0.8
    return a


EXPECTED_CHOICE = [(1, SKIP), (0, SEP3), (4, MAX), (2, DIL5), (6, DIL3), (7, SKIP), (13, SEP3), (11, MAX)]
EXPECTED_CELL = [("skip_connect", 1), ("sep_conv_3x3", 0),
                 ("max_pool_3x3", 2), ("dil_conv_5x5", 0),
                 ("dil_conv_3x3", 1), ("skip_connect", 2),
                 ("sep_conv_3x3", 4), ("max_pool_3x3", 2)]


def all_live(k: int = 8) -> torch.Tensor:
    return torch.ones(14, k, dtype=torch.bool)


def one_hot(choice, k: int = 8) -> torch.Tensor:
    m = torch.zeros(14, k)
    for r, op in choice:
        m[r, op] = 1.0
    return m


def test_choice_and_genotype_on_hand_alpha():
    a = hand_alpha()
    assert choose_edges(a, all_live(), SOFTMAX_OPS) == EXPECTED_CHOICE
    assert derive_cell(a, all_live(), SOFTMAX_OPS) == EXPECTED_CELL


def test_projection_matrix_exact():
    a = hand_alpha()
    p = project(a, all_live(), SOFTMAX_OPS)
    assert p.dtype == a.dtype and p.shape == (14, 8)
    assert torch.equal(p, one_hot(EXPECTED_CHOICE))
    assert p.sum().item() == 8.0
    # 2 active edges per node, ≤ 1 op per edge, binary: the set S
    assert [int(p[rows].sum()) for rows in ([0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13])] == [2, 2, 2, 2]
    assert p.sum(1).max() == 1.0
    # projecting a point of S returns it
    assert torch.equal(project(p, all_live(), SOFTMAX_OPS), p)
    # float64 in, float64 out with the same numbers
    p64 = project(a.double(), all_live(), SOFTMAX_OPS)
    assert p64.dtype == torch.float64 and torch.equal(p64.float(), p)


def test_none_never_chosen_even_when_largest_everywhere():
    a = hand_alpha()
    a[:, NONE] = 100.0
    assert all(op != NONE for _, op in choose_edges(a, all_live(), SOFTMAX_OPS))
    assert choose_edges(a, all_live(), SOFTMAX_OPS) == EXPECTED_CHOICE


def test_pruned_ops_never_chosen_even_when_largest():
    a = hand_alpha()
    live = all_live()
    live[1, SKIP] = False  # row 1's best → all -1 now: first live non-none op (max) at -1
    live[4, MAX] = False   # node 1 now picks rows 2 (.9) and 3 (.2)
    a[1, SKIP] = a[4, MAX] = 50.0  # largest values, but pruned
    got = choose_edges(a, live, SOFTMAX_OPS)
    assert got[:4] == [(0, SEP3), (1, MAX), (2, DIL5), (3, AVG)]
    assert got[4:] == EXPECTED_CHOICE[4:]
    p = project(a, live, SOFTMAX_OPS)
    assert not (p.bool() & ~live).any()


def test_ties_between_edges_lower_source_wins():
    a = torch.zeros(14, 7)  # CRB op order; every op equal everywhere
    # every edge ties with every other edge and every op ties: sources 0 and 1, op index 0
    assert derive_cell(a, all_live(7), CRB_OPS) == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    a[9:14, 4] = 0.5  # node 3: five tied edges (sep5) → sources 0, 1
    a[12, 2] = 0.5    # row 12 (source 3): op tie skip/sep5 (skip); its edge still ties with the others
    assert derive_cell(a, all_live(7), CRB_OPS)[6:] == [("sep_conv_5x5", 0), ("sep_conv_5x5", 1)]
    a[12, 2] = 0.6    # now source 3 is strictly strongest: ranked first, then the lowest tied source
    assert derive_cell(a, all_live(7), CRB_OPS)[6:] == [("skip_connect", 3), ("sep_conv_5x5", 0)]


def test_ties_between_ops_lower_index_wins():
    a = torch.zeros(14, 7)
    a[0, [6, 3, 1]] = 0.4  # dil5, sep3, avg tie → avg (index 1)
    a[1, [5, 4]] = 0.3     # dil3, sep5 tie → sep5 (index 4)
    assert derive_cell(a, all_live(7), CRB_OPS)[:2] == [("avg_pool_3x3", 0), ("sep_conv_5x5", 1)]


def test_derive_genotype_both_cells_crb():
    a = hand_alpha()[:, 1:]  # drop the none column: CRB op order
    red = torch.zeros(14, 7)
    red[0, 0] = red[1, 0] = 1.0  # node 0: max from 0 and 1
    red[4, 2] = 0.9              # node 1: skip from 2, then source 0 (first of the tied zeros, op max)
    red[7, 6] = 0.2              # node 2: dil5 from 2 (strongest), then source 0
    red[13, 3], red[10, 1] = 0.1, 0.05  # node 3: sep3 from 4, avg from 1
    g = derive_genotype({"normal": a, "reduce": red}, {"normal": all_live(7), "reduce": all_live(7)}, CRB_OPS)
    assert isinstance(g, Genotype)
    assert g.normal == EXPECTED_CELL
    assert g.reduce == [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                        ("dil_conv_5x5", 2), ("max_pool_3x3", 0), ("sep_conv_3x3", 4), ("avg_pool_3x3", 1)]
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]


def per_node(per_row: torch.Tensor) -> list[int]:
    """candidate_edges_per_node's per-row counts, one per node (equal within a node)."""
    counts = [sorted(set(per_row[rows].tolist())) for rows in node_edge_rows()]
    assert all(len(c) == 1 for c in counts)
    return [c[0] for c in counts]


def test_projection_error_when_node_has_fewer_than_two_candidate_edges():
    a = hand_alpha()
    live = all_live()
    live[3] = False
    live[4] = False  # node 1 keeps only row 2
    assert per_node(candidate_edges_per_node(live, SOFTMAX_OPS)) == [2, 1, 4, 5]
    with pytest.raises(ProjectionError, match="node 1 has 1 edge"):
        choose_edges(a, live, SOFTMAX_OPS)
    # the device-side projection cannot raise (that would read a value): node 1 keeps its one edge
    p = project(a, live, SOFTMAX_OPS)
    assert p[2:5].sum() == 1 and p[2].sum() == 1 and p[:2].sum() == 2 and p.sum() == 2 + 1 + 2 + 2
    # an edge whose only live op is `none` is not a candidate either
    live = all_live()
    live[0] = False
    live[0, NONE] = True
    assert per_node(candidate_edges_per_node(live, SOFTMAX_OPS)) == [1, 3, 4, 5]
    with pytest.raises(ProjectionError, match="node 0"):
        choose_edges(a, live, SOFTMAX_OPS)
    # the same mask with CRB ops (no none column) and a single live op left: fine
    live7 = all_live(7)
    live7[0] = False
    live7[0, 5] = True
    assert per_node(candidate_edges_per_node(live7, CRB_OPS)) == [2, 3, 4, 5]
    assert choose_edges(torch.zeros(14, 7), live7, CRB_OPS)[:2] == [(0, 5), (1, 0)]


def test_project_makes_the_choice_of_choose_edges_on_random_alpha():
    """Property check of the tensor form of Π_S against the host walk: random α on a coarse
    grid (ties between edges and between ops everywhere), random pruning, both op sets, and
    both tie rules: raw=None (lowest index) and a raw α on a coarse grid of its own (ties of
    the activated values broken by it, some of them tied again)."""
    g = torch.Generator().manual_seed(5)
    compared = {None: 0, "raw": 0}
    for trial in range(800):
        ops = SOFTMAX_OPS if trial % 2 else CRB_OPS
        k = len(ops)
        a = torch.randint(-3, 4, (14, k), generator=g).float() / 4
        raw = None if trial % 4 < 2 else torch.randint(0, 3, (14, k), generator=g).float()
        live = torch.rand(14, k, generator=g) > 0.5
        try:
            pairs = choose_edges(a, live, ops, raw)
        except ProjectionError:
            continue
        want = torch.zeros(14, k)
        for r, o in pairs:
            want[r, o] = 1.0
        assert torch.equal(project(a, live, ops, raw), want), trial
        compared[None if raw is None else "raw"] += 1
    assert min(compared.values()) > 200


# --- CRB's ties at the clip value (constraints module docstring, "Ties") -------------------------
MAX7, AVG7, SKIP7, SEP3_7, SEP5_7, DIL3_7, DIL5_7 = range(7)


def crb_tie_alpha() -> torch.Tensor:
    """14×7 raw α (CRB op order); every unset entry .2. After clamp(α, 0, 1):

    node 0 (rows 0,1):     row0 max=1.3, sep3=1.7 (both 1.0: raw picks sep3, index max);  row1 skip=.6
    node 1 (rows 2,3,4):   row2 dil5=1.2;  row3 skip=1.05;  row4 avg=2.0: three edges tied at 1.0,
                           raw picks rows 4, 2 (sources 2, 0), index rows 2, 3 (sources 0, 1)
    node 2 (rows 5..8):    row5 sep5=.9;  row6 dil3=.8 (no tie)
    node 3 (rows 9..13):   row9 max = sep3 = 1.0 (raw ties too: index decides, max);  row12 sep5=.95
    """
    a = torch.full((14, 7), 0.2)
    a[0, MAX7], a[0, SEP3_7] = 1.3, 1.7
    a[1, SKIP7] = 0.6
    a[2, DIL5_7], a[3, SKIP7], a[4, AVG7] = 1.2, 1.05, 2.0
    a[5, SEP5_7], a[6, DIL3_7] = 0.9, 0.8
    a[9, MAX7] = a[9, SEP3_7] = 1.0
    a[12, SEP5_7] = 0.95
    return a


CHOICE_RAW = [(0, SEP3_7), (1, SKIP7), (4, AVG7), (2, DIL5_7), (5, SEP5_7), (6, DIL3_7), (9, MAX7), (12, SEP5_7)]
CHOICE_INDEX = [(0, MAX7), (1, SKIP7), (2, DIL5_7), (3, SKIP7), (5, SEP5_7), (6, DIL3_7), (9, MAX7), (12, SEP5_7)]
CELL_RAW = [("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 2), ("dil_conv_5x5", 0),
            ("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 3)]
CELL_INDEX = [("max_pool_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 0), ("skip_connect", 1),
              ("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 3)]


@pytest.mark.parametrize("rule, choice, cell, ties", [
    ("raw_alpha", CHOICE_RAW, CELL_RAW, {"op": 2, "edge": 1, "by_index": 1}),
    ("index", CHOICE_INDEX, CELL_INDEX, {"op": 2, "edge": 1, "by_index": 3}),
])
def test_crb_ties_at_the_clip_value(rule, choice, cell, ties):
    alpha = crb_tie_alpha()
    live = all_live(7)
    w = CRB()(alpha, live)
    assert w[0, MAX7] == w[0, SEP3_7] == w[2, DIL5_7] == w[3, SKIP7] == w[4, AVG7] == 1.0  # the ties
    raw = tie_key(alpha, rule)
    assert (raw is None) == (rule == "index")
    assert choose_edges(w, live, CRB_OPS, raw) == choice
    assert derive_cell(w, live, CRB_OPS, raw) == cell
    assert torch.equal(project(w, live, CRB_OPS, raw), one_hot(choice, 7))  # device form agrees
    assert count_ties(w, live, CRB_OPS, raw) == ties
    g = derive_genotype({"normal": w, "reduce": w}, {"normal": live, "reduce": live}, CRB_OPS,
                        {"normal": raw, "reduce": raw})
    assert g.normal == g.reduce == cell


def test_tie_rules_agree_without_ties_and_count_none():
    a = hand_alpha()
    assert choose_edges(a, all_live(), SOFTMAX_OPS, torch.softmax(a, 1)) == choose_edges(a, all_live(), SOFTMAX_OPS)
    w = torch.softmax(torch.randn(14, 8, generator=torch.Generator().manual_seed(1)), 1)
    assert count_ties(w, all_live(), SOFTMAX_OPS, w) == {"op": 0, "edge": 0, "by_index": 0}
    # hand_alpha's own ties (row 13 sep3 = sep5; rows 6, 7 at .6 is inside the pair, not a tie
    # of the choice) under the index rule: one op tie
    assert count_ties(a, all_live(), SOFTMAX_OPS) == {"op": 1, "edge": 0, "by_index": 1}
    with pytest.raises(ValueError, match="valid: raw_alpha, index"):
        tie_key(a, "lowest")


def test_project_with_raw_alpha_reads_nothing_back():
    """The raw-α tie break adds only tensor arithmetic: on `meta` (no data) any read would raise."""
    a = torch.empty(14, 7, device="meta")
    live = torch.ones(14, 7, dtype=torch.bool, device="meta")
    p = project(a, live, CRB_OPS, a)
    assert p.device.type == "meta" and p.shape == (14, 7)
