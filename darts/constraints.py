"""Π_S, the projection onto the discrete set S of the paper (eqs. 1–4), and the genotype.

S holds the α matrices in which every intermediate node has exactly two active
incoming edges (S²), at most one active op per edge (S¹), and binary values (S³).
The projection keeps, for each node, the two incoming edges whose best op weight is
largest and sets that best op to 1, everything else to 0. `none` and pruned ops are
never candidates. Ties go to the lower index (op order of `space.PRIMITIVES`, then
source state), the same as Python's stable sort in the original DARTS code.
"""
from __future__ import annotations

import torch

from .space import N_INPUTS, Genotype, node_edge_rows


class ProjectionError(ValueError):
    """Π_S is undefined: a node has fewer than two edges with a candidate op."""


def _candidates(ops: tuple[str, ...], live: torch.Tensor) -> torch.Tensor:
    """Bool (E, K): ops that may be chosen (live and not `none`)."""
    cand = live.clone()
    if "none" in ops:
        cand[:, ops.index("none")] = False
    return cand


def choose_edges(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...]) -> list[tuple[int, int]]:
    """The (edge row, op index) pairs that Π_S activates: 2 per node, strongest first.

    `weights` is the activated α (E × K); `live` the bool mask of unpruned ops.
    """
    w = weights.detach().to("cpu", torch.float64)
    cand = _candidates(ops, live.detach().cpu())
    masked = w.masked_fill(~cand, float("-inf"))
    best_val, best_op = masked.max(dim=1)  # max returns the first maximal index on ties
    chosen: list[tuple[int, int]] = []
    for node, rows in enumerate(node_edge_rows()):
        usable = [r for r in rows if cand[r].any()]
        if len(usable) < 2:
            raise ProjectionError(
                f"node {node} has {len(usable)} edge(s) with a live op; Π_S needs 2 "
                "(the pruning rule in activations.CRB should have kept them)"
            )
        ranked = sorted(usable, key=lambda r: -best_val[r].item())  # stable: lower source wins ties
        chosen += [(r, int(best_op[r])) for r in ranked[:2]]
    return chosen


def project(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Π_S(weights): the one-hot E × K matrix of the discrete choice (same dtype/device)."""
    out = torch.zeros_like(weights)
    for r, k in choose_edges(weights, live, ops):
        out[r, k] = 1.0
    return out


def derive_cell(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...]) -> list[tuple[str, int]]:
    """The genotype of one cell type: per node, (op name, source state) strongest first."""
    from .space import edges

    e = edges()
    return [(ops[k], e[r][1]) for r, k in choose_edges(weights, live, ops)]


def derive_genotype(weights: dict[str, torch.Tensor], live: dict[str, torch.Tensor],
                    ops: tuple[str, ...]) -> Genotype:
    concat = list(range(N_INPUTS, N_INPUTS + len(node_edge_rows())))
    return Genotype(
        normal=derive_cell(weights["normal"], live["normal"], ops),
        reduce=derive_cell(weights["reduce"], live["reduce"], ops),
        normal_concat=concat,
        reduce_concat=concat,
    )


def live_edges_per_node(live: torch.Tensor, ops: tuple[str, ...]) -> list[int]:
    """How many incoming edges of each node still have a candidate (live, non-`none`) op."""
    cand = _candidates(ops, live.cpu())
    return [int(sum(bool(cand[r].any()) for r in rows)) for rows in node_edge_rows()]
