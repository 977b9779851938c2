"""Random sampling from S: the baseline every study compares its searched rows with.

Best practice in NAS evaluation (Li & Talwalkar 2019; Yang et al. 2020) is to train
architectures drawn at random from the same space with the same protocol. Here the draw
goes through the same path as a search: α is filled with i.i.d. U(0, 1) values from the
run's seed and Π_S (``darts.space.projection.derive_genotype``: per edge the best non-`none`
op, per node the two strongest edges) turns it into the genotype. Why that is uniform over
S (per node two distinct sources, one non-`none` op each): the α rows of the edges are
i.i.d., so their strengths are i.i.d. continuous values and each node's top-2 pair is
uniform among its pairs; within a row the non-`none` entries are exchangeable, so the
argmax op is uniform and independent of the row's strength, hence of which edges win. A
chi-square test over many draws holds the claim (tests/test_sampling.py).
"""
from __future__ import annotations

import torch

from darts.method.activations import make_activation
from darts.space.primitives import CELL_TYPES, N_EDGES, Genotype
from darts.space.projection import derive_genotype, tie_key

#: added to the run's seed so the α draw is not the stream that initialised the weights
STREAM = 104_729


def _draws(shapes: list[torch.Size], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(int(seed) + STREAM)
    return [torch.rand(s, generator=g) for s in shapes]


@torch.no_grad()
def draw_alpha(net, seed: int) -> None:
    """Fill every α of ``net`` (a SearchNetwork) with i.i.d. U(0, 1) draws from ``seed``."""
    params = net.arch_parameters()
    for a, v in zip(params, _draws([a.shape for a in params], seed)):
        a.copy_(v)


def sample_genotype(seed: int, activation: str = "softmax") -> Genotype:
    """The genotype the random method's run of this seed gets (``draw_alpha``, then Π_S as
    `darts discretize` applies it), without building a network."""
    act = make_activation(activation)
    ops = act.ops
    alpha = dict(zip(CELL_TYPES, _draws([torch.Size((N_EDGES, len(ops)))] * 2, seed)))
    live = {t: torch.ones(N_EDGES, len(ops), dtype=torch.bool) for t in CELL_TYPES}
    return derive_genotype({t: act(a, live[t]) for t, a in alpha.items()}, live, ops,
                           {t: tie_key(a, "raw_alpha") for t, a in alpha.items()})
