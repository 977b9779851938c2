"""A given genotype as a study row: a published cell by name, or a genotype's text.

A study config ``{method: fixed, genotype: DARTS_V2}`` trains no supernet. Its "search" sets
the supernet's α so that Π_S (``darts.space.projection.derive_genotype``, what `darts discretize`
applies) returns exactly the given genotype, and the run goes through the same discretize →
retrain → test as every searched row. That is how a study calibrates its retrain protocol
against a cell with a known result (DARTS_V2: 2.76 % on CIFAR-10 at the paper's protocol)
without a special case in any stage.

The α it writes: per node, 2 on the first (op, source) pair as the genotype lists it, 1 on the
second, 0 elsewhere. Under softmax over an edge's ops the two chosen edges then have the two
largest best-op weights of their node, the first above the second, so Π_S lists each node's
pairs in the genotype's own order and the retrained network is built (and initialised) exactly
as ``darts retrain --genotype`` builds it from the same genotype.
"""
from __future__ import annotations

import torch

from darts.space.parse import parse_genotype
from darts.space.primitives import CELL_TYPES, Genotype, GenotypeError, edges
from darts.space.projection import derive_genotype

FIRST, SECOND = 2.0, 1.0  # the α of a node's first and second chosen pair (see the module docstring)


def resolve(text: str) -> Genotype:
    """The genotype a config's ``genotype:`` names: a published name (any case) or the text of
    a genotype in any accepted form (JSON, DARTS' flat ``Genotype(...)``, pt.darts' nested one).
    Not a file: a study's params must hold everything its runs depend on. Raises GenotypeError."""
    if not isinstance(text, str) or not text.strip():
        raise GenotypeError(f"{text!r} is invalid; give a published name (DARTS_V1, DARTS_V2, PC_DARTS, "
                            "PDARTS) or a genotype's text")
    return parse_genotype(text)


def genotype_alpha(genotype: Genotype, ops: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per cell type, the α (edges × ops) that Π_S turns into ``genotype`` (module docstring)."""
    row_of = {(node, src): row for row, (node, src) in enumerate(edges())}
    alpha = {}
    for cell in CELL_TYPES:
        a = torch.zeros(len(row_of), len(ops))
        for i, (op, src) in enumerate(getattr(genotype, cell)):
            if op not in ops:
                raise GenotypeError(f"op {op!r} of the {cell} cell is not in this search space; valid: {', '.join(ops)}")
            a[row_of[(i // 2, src)], ops.index(op)] = FIRST if i % 2 == 0 else SECOND
        alpha[cell] = a
    return alpha


@torch.no_grad()
def set_genotype_alpha(net, seed: int, genotype: str) -> None:
    """``Method.set_alpha`` of the fixed method: α of ``net`` (a SearchNetwork) set from the
    config's genotype; the seed plays no part (it seeds the retrain). Checks that Π_S gives
    the genotype back before any training depends on it."""
    target = resolve(genotype)
    alpha = genotype_alpha(target, tuple(net.ops))
    for param, cell in zip(net.arch_parameters(), CELL_TYPES):
        param.copy_(alpha[cell].to(param.device, param.dtype))
    derived = derive_genotype(net.weights(), net.live(), tuple(net.ops), None)
    if (derived.normal, derived.reduce) != (target.normal, target.reduce):  # an invariant, not user input
        raise AssertionError(f"Π_S of the fixed α gave {derived}, not {target}")
