"""Π_S, the projection onto the discrete set S of the paper (eqs. 1–4), and the genotype.

S holds the α matrices in which every intermediate node has exactly two active
incoming edges (S²), at most one active op per edge (S¹), and binary values (S³).
The projection keeps, for each node, the two incoming edges whose best op weight is
largest and sets that best op to 1, everything else to 0. `none` and pruned ops are
never candidates. Ties go to the lower index (op order of `space.PRIMITIVES`, then
source state), the same as Python's stable sort in the original DARTS code.

Two forms of the same choice: :func:`choose_edges` walks the nodes on the host (the
genotype, with a clear error when a node cannot have two edges), and :func:`project`,
which PR and ADMM call at every α step, is tensor arithmetic on α's device that reads
no value back, so on a GPU it costs no host synchronisation. Tests hold the two equal.
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
    """Π_S(weights): the one-hot E × K matrix of the discrete choice (same dtype/device).

    The choice of :func:`choose_edges` made without reading a value: per edge its best
    candidate op, and the edges that rank 0 or 1 in their node. Unlike ``choose_edges`` it
    cannot raise :class:`ProjectionError` (that would need a read): a node with fewer than
    two candidate edges keeps the ones it has. A search never gets there (CRB's node rule
    keeps two; softmax never prunes); the genotype, made by ``choose_edges``, would say so.
    """
    cand = _candidates(ops, live)
    best_val, best_op = best_ops(weights.detach(), cand)
    usable = cand.any(dim=1)
    chosen = usable & (rank_in_node(best_val, usable) < 2)
    return (best_op & chosen[:, None]).to(weights.dtype)


def best_ops(weights: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the largest allowed weight and a bool one-hot mask of its op (the first on
    ties, as ``max`` gives; a row with nothing allowed: −inf and op 0)."""
    best_val, best_idx = weights.masked_fill(~allowed, float("-inf")).max(dim=1)
    return best_val, torch.arange(weights.shape[1], device=weights.device) == best_idx[:, None]


def rank_in_node(values: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Per edge row, its place among the eligible rows of its node in the order (value
    descending, then row ascending): what a stable sort by −value gives. (E,) longs; the
    value of a row that is not eligible is not looked at."""
    node = _node_of_row(values.device)
    row = torch.arange(len(node), device=values.device)
    v_other, v_self = values[None, :], values[:, None]
    ahead = (v_other > v_self) | ((v_other == v_self) & (row[None, :] < row[:, None]))
    return (ahead & eligible[None, :] & (node[None, :] == node[:, None])).sum(dim=1)


def candidate_edges_per_node(live: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Per edge row, how many incoming edges of its node have a candidate (live, non-`none`)
    op, the row's own included; (E,) longs, on ``live``'s device."""
    node = _node_of_row(live.device)
    has = _candidates(ops, live).any(dim=1)
    return ((node[None, :] == node[:, None]) & has[None, :]).sum(dim=1)


_NODE_OF_ROW: dict[torch.device, torch.Tensor] = {}


def _node_of_row(device: torch.device) -> torch.Tensor:
    """The node each α row enters, kept per device (made once: a host→device copy)."""
    if device not in _NODE_OF_ROW:
        node = [0] * sum(map(len, node_edge_rows()))
        for n, rows in enumerate(node_edge_rows()):
            for r in rows:
                node[r] = n
        _NODE_OF_ROW[device] = torch.tensor(node, device=device)
    return _NODE_OF_ROW[device]


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
