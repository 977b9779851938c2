"""Activations of α: softmax, CRB (clamp + node BN + progressive pruning with the node rule)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from darts.method.activations import CRB, Softmax, make_activation
from darts.space.primitives import N_EDGES, node_edge_rows
from darts.space.projection import derive_genotype
from netutil import batch, count_calls, tiny

# CRB op indices (no `none`)
MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(7)


def live7() -> torch.Tensor:
    return torch.ones(N_EDGES, 7, dtype=torch.bool)


def live_edges_per_node(live: torch.Tensor) -> list[int]:
    """How many incoming edges of each node still have a live op (CRB has no `none`)."""
    return [int(live[rows].any(dim=1).sum()) for rows in node_edge_rows()]


# ---------------------------------------------------------------- values ----------
def test_softmax_values():
    act = Softmax()
    a = torch.zeros(N_EDGES, 8)
    a[0] = torch.log(torch.arange(1.0, 9.0))  # softmax → (1..8)/36
    a[1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.log(9.0)])  # → 1/16 ×7, 9/16
    w = act(a, torch.ones(N_EDGES, 8, dtype=torch.bool))
    assert torch.allclose(w[0], torch.arange(1.0, 9.0) / 36.0, atol=1e-7)
    assert torch.allclose(w[1], torch.tensor([1, 1, 1, 1, 1, 1, 1, 9.0]) / 16.0, atol=1e-7)
    assert torch.allclose(w[2:], torch.full((12, 8), 0.125))
    assert act.ops[0] == "none" and len(act.ops) == 8
    assert not act.prunes and not act.node_norm
    live = torch.ones(N_EDGES, 8, dtype=torch.bool)
    assert act.prune(a, live) is None and act.prune_all({"normal": a}, {"normal": live}) == {}
    assert live.all()


def test_crb_clamp_values_and_mask():
    act = CRB()
    a = torch.full((N_EDGES, 7), 0.5)
    a[0, :4] = torch.tensor([-0.2, 0.0, 0.3, 1.4])
    a[0, 4:] = torch.tensor([1.0, 0.999, 1e-3])
    live = live7()
    live[1, 2] = False
    w = act(a, live)
    assert torch.equal(w[0], torch.tensor([0.0, 0.0, 0.3, 1.0, 1.0, 0.999, 1e-3]))
    assert w[1, 2] == 0.0 and w[1, 3] == 0.5
    assert act.ops == ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                       "dil_conv_3x3", "dil_conv_5x5")
    assert act.prunes and act.node_norm


def test_crb_gradient_is_one_on_closed_interval():
    """d act/dα = 1 on [0, 1] (incl. α = 0, where a held op must be able to recover), 0 outside
    and on masked ops."""
    a = torch.tensor([[-0.2, 0.0, 0.3, 1.0, 1.4, 0.7, 0.5]], requires_grad=True)
    live = torch.ones(1, 7, dtype=torch.bool)
    live[0, 6] = False
    CRB()(a, live).sum().backward()
    assert torch.equal(a.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]]))


def test_init_statistics_seeded():
    n = 20000
    c = CRB().init_alpha(n, torch.Generator().manual_seed(1))
    assert c.shape == (n, 7)
    assert abs(c.mean().item() - 1 / 7) < 2e-6
    assert abs(c.std().item() - 1e-4) < 3e-6
    s = Softmax().init_alpha(n, torch.Generator().manual_seed(1))
    assert s.shape == (n, 8)
    assert abs(s.mean().item()) < 2e-5
    assert abs(s.std().item() - 1e-3) < 3e-5
    # seeded: same generator seed, same α; different seed, different α
    assert torch.equal(c, CRB().init_alpha(n, torch.Generator().manual_seed(1)))
    assert not torch.equal(c, CRB().init_alpha(n, torch.Generator().manual_seed(2)))
    assert isinstance(make_activation("crb"), CRB) and isinstance(make_activation("softmax"), Softmax)
    with pytest.raises(ValueError, match="relu"):
        make_activation("relu")


# ---------------------------------------------------------------- pruning ---------
def test_prune_masks_nonpositive_for_good():
    act = CRB()
    a = torch.full((N_EDGES, 7), 0.1)
    a[0, AVG] = -0.05
    a[3, SKIP] = 0.0
    a[5, DIL5] = -1.0
    a[7, SEP3] = 1e-9  # positive: stays
    live = live7()
    newly = act.prune(a, live)
    expected = torch.zeros(N_EDGES, 7, dtype=torch.bool)
    expected[0, AVG] = expected[3, SKIP] = expected[5, DIL5] = True
    assert torch.equal(newly, expected)
    assert torch.equal(live, ~expected)
    assert a[0, AVG] == 0.0 and a[5, DIL5] == 0.0 and a[7, SEP3] == 1e-9
    assert (a[~expected] == 0.1).sum() == 98 - 3 - 1
    # α goes positive again (e.g. Adam momentum): still 0 via the mask, and re-zeroed by prune
    a[0, AVG] = 0.7
    a[5, DIL5] = 0.4
    assert act(a, live)[0, AVG] == 0.0 and act(a, live)[5, DIL5] == 0.0
    newly2 = act.prune(a, live)
    assert not newly2.any()
    assert torch.equal(live, ~expected)
    assert a[0, AVG] == 0.0 and a[5, DIL5] == 0.0
    # a second op pruned later is reported alone
    a[9, MAX] = -0.3
    newly3 = act.prune(a, live)
    assert newly3.sum() == 1 and newly3[9, MAX]
    assert live.sum() == 98 - 4


def _node1_all_dying() -> torch.Tensor:
    """Every op of node 1's three edges (rows 2, 3, 4) is ≤ 0; each row's largest pre-clamp α:
    row 2: dil3 = -0.01, row 3: skip = -0.05, row 4: max = dil5 = -0.001 (op tie)."""
    a = torch.full((N_EDGES, 7), 0.1)
    a[2:5] = -0.3
    a[2, DIL3] = -0.01
    a[3, SKIP] = -0.05
    a[4, MAX] = a[4, DIL5] = -0.001
    return a


def test_node_rule_rescues_the_two_strongest_dying_edges():
    act = CRB()
    a = _node1_all_dying()
    live = live7()
    newly = act.prune(a, live)
    # documented rule: the dying edges with the largest pre-clamp α keep their best op, held at 0.
    # Ranking by best α: row 4 (-0.001) > row 2 (-0.01) > row 3 (-0.05) → rows 4 and 2 are rescued;
    # in row 4 the op tie max/dil5 goes to the lower index (max).
    rescued = {(4, MAX), (2, DIL3)}
    expected_live = live7()
    expected_live[2:5] = False
    for r, k in rescued:
        expected_live[r, k] = True
    assert torch.equal(live, expected_live)
    assert torch.equal(newly, ~expected_live & (torch.arange(N_EDGES) >= 2)[:, None] & (torch.arange(N_EDGES) <= 4)[:, None])
    assert newly.sum() == 21 - 2
    assert (a[2:5] == 0.0).all()  # pruned and held ops are all at exactly 0
    assert (a[[0, 1] + list(range(5, 14))] == 0.1).all()
    assert live_edges_per_node(live) == [2, 2, 4, 5]
    weights = act(a, live)
    g = derive_genotype({"normal": weights, "reduce": weights}, {"normal": live, "reduce": live}, act.ops)
    # node 1: the two held edges tie at 0 → lower source first
    assert g.normal[2:4] == [("dil_conv_3x3", 0), ("max_pool_3x3", 2)]
    for r, k in [(2, DIL3), (4, MAX)]:
        assert live[r, k]
    # idempotent: pruning again finds the held ops at 0 and keeps them (nothing newly pruned)
    before_a, before_live = a.clone(), live.clone()
    assert not act.prune(a, live).any()
    assert torch.equal(a, before_a) and torch.equal(live, before_live)


def test_node_rule_three_of_four_edges_die():
    act = CRB()
    a = torch.full((N_EDGES, 7), 0.1)
    a[5:9] = -0.4          # node 2: rows 5..8 (sources 0..3)
    a[7, SEP3] = 0.2       # row 7 keeps a live op
    a[5, SEP5] = -0.02     # rows 5 and 6 tie on their best α → lower source (row 5) rescued
    a[6, AVG] = -0.02
    a[8] = -0.9            # row 8 is the weakest
    live = live7()
    newly = act.prune(a, live)
    assert live_edges_per_node(live) == [2, 3, 2, 5]
    assert live[5].tolist() == [k == SEP5 for k in range(7)]
    assert live[7].tolist() == [k == SEP3 for k in range(7)]
    assert not live[6].any() and not live[8].any()
    assert newly.sum() == 4 * 7 - 2 and not newly[5, SEP5] and not newly[7, SEP3]
    assert a[5, SEP5] == 0.0 and a[7, SEP3] == pytest.approx(0.2)
    weights = act(a, live)
    g = derive_genotype({"normal": weights, "reduce": weights}, {"normal": live, "reduce": live}, act.ops)
    assert g.normal[4:6] == [("sep_conv_3x3", 2), ("sep_conv_5x5", 0)]


def test_no_rescue_when_two_edges_survive():
    act = CRB()
    a = torch.full((N_EDGES, 7), 0.1)
    a[9:12] = -0.1  # node 3: sources 0, 1, 2 die entirely; sources 3 and 4 survive
    live = live7()
    newly = act.prune(a, live)
    assert newly[9:12].all() and newly.sum() == 21
    assert live_edges_per_node(live) == [2, 3, 4, 2]


def test_held_op_recovers_and_node_rule_reapplies():
    act = CRB()
    a = _node1_all_dying()
    live = live7()
    act.prune(a, live)
    a[2, DIL3] = 0.3   # the held op of row 2 recovers
    a[4, MAX] = -0.2   # the held op of row 4 goes negative again: rescued again (node needs 2)
    newly = act.prune(a, live)
    assert not newly.any()
    assert live[4, MAX] and a[4, MAX] == 0.0 and a[2, DIL3] == pytest.approx(0.3)


# -------------------------------------------------------- inside the network ------
def test_pruned_op_gets_no_gradient_and_is_not_executed():
    net = tiny(CRB())
    assert net.cells[0].reduction is False and net.cells[1].reduction and net.cells[2].reduction
    with torch.no_grad():
        net.alpha_normal[0, SEP3] = -1.0   # normal cell, edge 0 (state 0 → node 0)
        net.alpha_reduce[5, DIL5] = -0.5   # reduce cells, edge 5 (state 0 → node 2)
    newly = net.prune()
    assert newly["normal"].sum() == 1 and newly["normal"][0, SEP3]
    assert newly["reduce"].sum() == 1 and newly["reduce"][5, DIL5]
    assert SEP3 not in net._live_idx["normal"][0] and SEP3 in net._live_idx["normal"][1]
    pruned = {"n": net.cells[0].edges[0].ops[SEP3], "r1": net.cells[1].edges[5].ops[DIL5],
              "r2": net.cells[2].edges[5].ops[DIL5]}
    control = {"cn": net.cells[0].edges[0].ops[SEP5], "cr": net.cells[1].edges[5].ops[DIL3]}
    counts = count_calls({**pruned, **control})
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    assert counts["cn"] >= 1 and counts["cr"] >= 1  # the counters do see executions
    assert counts["n"] == counts["r1"] == counts["r2"] == 0
    assert net.alpha_normal.grad[0, SEP3] == 0.0 and net.alpha_reduce.grad[5, DIL5] == 0.0
    assert (net.alpha_normal.grad != 0).sum() == 98 - 1
    for m in pruned.values():
        for p in m.parameters():
            assert p.grad is None or not p.grad.any()
    for m in control.values():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    # the weight the network uses for a pruned op is 0 even if α turns positive again
    with torch.no_grad():
        net.alpha_normal[0, SEP3] = 0.5
    assert net.weights()["normal"][0, SEP3] == 0.0


def _node_outputs(net, x):
    outs = []
    handles = [cell.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for cell in net.cells]
    net(x)
    for h in handles:
        h.remove()
    return outs


def test_node_batchnorm_crb_present_softmax_absent():
    crb, sm = tiny(CRB()), tiny(Softmax())
    for cell in crb.cells:
        assert len(cell.node_bn) == 4
        assert all(isinstance(b, torch.nn.BatchNorm2d) and not b.affine for b in cell.node_bn)
    assert all(cell.node_bn is None for cell in sm.cells)
    x, _ = batch(n=8)
    for o in _node_outputs(crb, x):  # cell output = concat of the 4 node-BN outputs
        mean = o.mean(dim=(0, 2, 3))
        var = o.var(dim=(0, 2, 3), unbiased=False)
        assert mean.abs().max() < 1e-5
        assert (var - 1).abs().max() < 2e-3
    sm_vars = [o.var(dim=(0, 2, 3), unbiased=False) for o in _node_outputs(sm, x)]
    # softmax: each node is a 1/8-weighted sum of BN'd ops, not renormalised
    assert max((v - 1).abs().max().item() for v in sm_vars) > 0.3


def _loop_prune(alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The pruning rule as a walk over nodes and edges (how it ran on the host before it
    became tensor arithmetic): the newly pruned mask for this α and these live ops."""
    new = live & (alpha <= 0)
    after = live & ~new
    for rows in node_edge_rows():
        count = sum(bool(after[r].any()) for r in rows)
        dying = [r for r in rows if live[r].any() and not after[r].any()]
        dying.sort(key=lambda r: -alpha[r][live[r]].max().item())  # stable: lower row first on ties
        for r in dying[: max(0, 2 - count)]:
            new[r, int(alpha[r].masked_fill(~live[r], float("-inf")).argmax())] = False
    return new


def test_prune_matches_a_walk_over_nodes_on_random_states():
    """CRB.prune decides on the device; on random α (coarse grid: ties, many α ≤ 0, so the node
    rule fires often) and random earlier pruning it prunes and spares what the walk does."""
    g = torch.Generator().manual_seed(11)
    rescues = 0
    for trial in range(400):
        a = torch.randint(-5, 3, (N_EDGES, 7), generator=g).float() / 8
        live = torch.rand(N_EDGES, 7, generator=g) > 0.3
        want = _loop_prune(a, live)
        rescues += int(((live & (a <= 0)) & ~want).any())
        a2, live2 = a.clone(), live.clone()
        newly = CRB().prune(a2, live2)
        assert torch.equal(newly, want), trial
        assert torch.equal(live2, live & ~want)
        assert torch.equal(a2, torch.where(live2, a.clamp(min=0.0), torch.zeros(())))
    assert rescues > 100
