"""The random-sampling baseline draws uniformly from S (chi-square checks over many draws),
goes through the same Π_S as a search, and fits the study as a method, not a special case."""
from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

import pytest
import torch

from darts.method.activations import make_activation
from darts.method.registry import METHODS, Untrained
from darts.method.sampling import draw_alpha, sample_genotype
from darts.nn.supernet import SearchNetwork
from darts.space.primitives import N_EDGES, N_INPUTS, N_NODES, PRIMITIVES, WITHOUT_NONE
from darts.space.projection import derive_genotype, tie_key
from stages.params import ParamsError, run_spec, study_runs

DRAWS = 3000
OPS = WITHOUT_NONE  # the non-`none` ops: K = 7


def chi2_sf(x: float, k: int) -> float:
    """P(χ²_k > x) by the Wilson–Hilferty cube-root normal approximation (ample for k >= 10)."""
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi2_uniform(counts: Counter, cells: list) -> float:
    """The p-value of the counts under 'every cell equally likely'."""
    n = sum(counts[c] for c in cells)
    assert n == sum(counts.values()), "a draw fell outside the cells of S"
    expected = n / len(cells)
    stat = sum((counts[c] - expected) ** 2 / expected for c in cells)
    return chi2_sf(stat, len(cells) - 1)


def node_cells(node: int) -> list:
    """Every (source pair, op of the lower source, op of the higher source) of one node of S."""
    return [(pair, a, b) for pair in combinations(range(node + N_INPUTS), 2) for a in OPS for b in OPS]


def node_draws(genotypes) -> dict[int, Counter]:
    out = {i: Counter() for i in range(N_NODES)}
    for g in genotypes:
        for cell in (g.normal, g.reduce):
            for i in range(N_NODES):
                (op1, s1), (op2, s2) = sorted(cell[2 * i: 2 * i + 2], key=lambda p: p[1])
                out[i][((s1, s2), op1, op2)] += 1
    return out


@pytest.fixture(scope="module")
def drawn():
    return [sample_genotype(seed) for seed in range(DRAWS)]


def test_each_node_is_uniform_over_its_pairs_and_ops(drawn):
    """Per node i: the joint law of (two distinct sources, one non-none op each) is uniform over
    its C(i+2, 2)·49 outcomes (49 … 490 cells; 6000 node draws each)."""
    counts = node_draws(drawn)
    for i in range(N_NODES):
        p = chi2_uniform(counts[i], node_cells(i))
        assert p > 1e-3, f"node {i}: p = {p:.2g}"


def test_nodes_are_independent(drawn):
    """The joint law of two nodes' source pairs is the product of uniforms (60 cells)."""
    joint = Counter()
    for g in drawn:
        for cell in (g.normal, g.reduce):
            joint[tuple(sorted(s for _, s in cell[4:6])), tuple(sorted(s for _, s in cell[6:8]))] += 1
    cells = [(a, b) for a in combinations(range(4), 2) for b in combinations(range(5), 2)]
    assert chi2_uniform(joint, cells) > 1e-3


def test_the_check_rejects_a_biased_sampler():
    """The same check fails on draws whose edge strengths lean on the edge index (so it can fail).
    (A scale, not an offset: softmax ignores a constant added to a row.)"""
    act, live = make_activation("softmax"), torch.ones(N_EDGES, 8, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    genotypes = []
    for _ in range(DRAWS):
        alpha = {t: torch.rand((N_EDGES, 8), generator=g) * (1 + 0.1 * torch.arange(N_EDGES)[:, None])
                 for t in ("normal", "reduce")}
        genotypes.append(derive_genotype({t: act(a, live) for t, a in alpha.items()}, {t: live for t in alpha},
                                         PRIMITIVES, {t: tie_key(a, "raw_alpha") for t, a in alpha.items()}))
    counts = node_draws(genotypes)
    assert min(chi2_uniform(counts[i], node_cells(i)) for i in range(1, N_NODES)) < 1e-6


def test_chi2_sf_matches_tabulated_quantiles():
    # χ² table: the 0.95 and 0.999 quantiles for 10 and 100 degrees of freedom
    for x, k, p in ((18.307, 10, 0.05), (29.588, 10, 0.001), (124.342, 100, 0.05), (149.449, 100, 0.001)):
        assert chi2_sf(x, k) == pytest.approx(p, rel=0.1)


def test_the_run_draws_what_sample_genotype_says():
    """The search stage's state for the random method: α from draw_alpha, no step, Π_S as discretize."""
    act = make_activation("softmax")
    net = SearchNetwork(act, C=4, n_classes=10, layers=3, generator=torch.Generator().manual_seed(0))
    state = Untrained(net, METHODS["random"].set_alpha, seed=5)
    assert state.done and state.step == 0 and state.seconds == 0.0
    live = net.live()
    got = derive_genotype({t: w.detach() for t, w in net.weights().items()}, live, net.ops,
                          {t: tie_key(a.detach(), "raw_alpha") for t, a in net.alphas().items()})
    assert got == sample_genotype(5)
    assert sample_genotype(5) != sample_genotype(6)
    again = SearchNetwork(act, C=4, n_classes=10, layers=3, generator=torch.Generator().manual_seed(1))
    draw_alpha(again, 5)  # the weights' init does not move the draw
    assert all(torch.equal(a, b) for a, b in zip(again.arch_parameters(), net.arch_parameters()))


PARAMS = {"configs": {"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
                      "Random": {"method": "random"}},
          "labels": {"Random": "Random sampling (same protocol)"}, "seeds": [0, 1],
          "activation": "crb", "schedule": "fimt", "regularization": "pr"}


def test_params_take_the_method_and_fix_its_dimensions():
    runs = {(r.name, r.seed): r for r in study_runs(PARAMS)}
    r = runs["Random", 1]
    assert (r.method, r.activation, r.schedule, r.regularization, r.order) == ("random", "softmax", "none", "none", 1)
    assert runs["DARTS", 0].method == "darts"
    assert run_spec({**PARAMS, "method": "random"}, None, None).name == "random"  # the variant ignores the rest
    assert run_spec(PARAMS, None, None).name == "crb-fimt-pr"


@pytest.mark.parametrize("entry, message", [
    ({"method": "randm"}, "configs.X.method='randm' is invalid; valid: darts, random"),
    ({"method": "random", "activation": "crb"},
     "configs.X sets activation, which method 'random' does not take; valid keys for it: method"),
    ({"method": "darts", "activation": "crb"}, "configs.X is missing 'schedule'"),
])
def test_bad_method_entries_fail_in_one_line(entry, message):
    with pytest.raises(ParamsError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        run_spec({"configs": {"X": entry}}, "X", 0)
