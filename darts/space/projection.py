"""Π_S, the projection onto the discrete set S of the paper (eqs. 1–4), and the genotype.

S holds the α matrices in which every intermediate node has exactly two active
incoming edges (S²), at most one active op per edge (S¹), and binary values (S³).
The projection keeps, for each node, the two incoming edges whose best op weight is
largest and sets that best op to 1, everything else to 0. `none` and pruned ops are
never candidates.

Ties (``tie_break``). With ``raw`` (the pre-activation α) given, equal activated values
are ordered by raw α, larger first, and only then by the lower index (op order of
`space.PRIMITIVES`, then source state): rule ``raw_alpha``, the default. Without it the
lower index wins at once (rule ``index``), what Python's stable sort gives in the
original DARTS code. Why: CRB's clamp has gradient 0 above 1 and CRB's α has no weight
decay, so every op that passes 1 freezes there and they all tie at 1.0; the index rule
then hands the edge to `max_pool_3x3` (index 0 of CRB's ops), whatever the raw α say,
which may explain the paper's remark that only CRB runs chose pooling in normal
cells. Raw α keeps the order the updates gave. Under softmax (strictly increasing) the
two rules agree but for exact ties of raw α. :func:`count_ties` says how many choices a
tie decided.

Two forms of the same choice: :func:`choose_edges` walks the nodes on the host (the
genotype, with a clear error when a node cannot have two edges), and :func:`project`,
which PR and ADMM call at every α step, is tensor arithmetic on α's device that reads
no value back, so on a GPU it costs no host synchronisation. Tests hold the two equal.
"""
from __future__ import annotations

import torch

from darts.space.primitives import N_INPUTS, Genotype, node_edge_rows


class ProjectionError(ValueError):
    """Π_S is undefined: a node has fewer than two edges with a candidate op."""


def _candidates(ops: tuple[str, ...], live: torch.Tensor) -> torch.Tensor:
    """Bool (E, K): ops that may be chosen (live and not `none`)."""
    cand = live.clone()
    if "none" in ops:
        cand[:, ops.index("none")] = False
    return cand


TIE_BREAKS = ("raw_alpha", "index")


def tie_key(alpha: torch.Tensor, tie_break: str) -> torch.Tensor | None:
    """What breaks ties between equal activated values under rule ``tie_break``: the raw α,
    or None (the lowest index wins)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie break {tie_break!r}; valid: {', '.join(TIE_BREAKS)}")
    return alpha if tie_break == "raw_alpha" else None


def _host_rows(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...], raw: torch.Tensor | None):
    """Per row (as Python lists): the candidate ops, the activated and the raw values."""
    cand = _candidates(ops, live.detach().cpu()).tolist()
    w = weights.detach().to("cpu", torch.float64).tolist()
    r = torch.zeros(weights.shape).tolist() if raw is None else raw.detach().to("cpu", torch.float64).tolist()
    return cand, w, r


def _host_best(cand: list[bool], w: list[float], r: list[float]) -> int:
    """The op of a row by the order (activated value, then raw α) descending, then index."""
    return min((k for k, c in enumerate(cand) if c), key=lambda k: (-w[k], -r[k], k))


def choose_edges(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...],
                 raw: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """The (edge row, op index) pairs that Π_S activates: 2 per node, strongest first.

    `weights` is the activated α (E × K); `live` the bool mask of unpruned ops; `raw` the
    raw α that orders ties (module docstring), or None for the index rule. A plain walk
    over Python numbers: the reference :func:`project` is tested against.
    """
    cand, w, r = _host_rows(weights, live, ops, raw)
    chosen: list[tuple[int, int]] = []
    for node, rows in enumerate(node_edge_rows()):
        usable = [row for row in rows if any(cand[row])]
        if len(usable) < 2:
            raise ProjectionError(
                f"node {node} has {len(usable)} edge(s) with a live op; Π_S needs 2 "
                "(the pruning rule in activations.CRB should have kept them)"
            )
        best = {row: _host_best(cand[row], w[row], r[row]) for row in usable}
        ranked = sorted(usable, key=lambda row: (-w[row][best[row]], -r[row][best[row]], row))
        chosen += [(row, best[row]) for row in ranked[:2]]
    return chosen


def count_ties(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...],
               raw: torch.Tensor | None = None) -> dict[str, int]:
    """How many of Π_S's choices a tie of activated values decided (host; once per search).

    ``op``: chosen edges whose best activated value another candidate op of the edge shares.
    ``edge``: nodes whose pair of edges a tie decided (the second chosen edge's value equals
    that of the best edge left out). ``by_index``: those of them that the lowest index
    settled, because the raw α tied too (every one of them under the index rule, raw=None).
    """
    cand, w, r = _host_rows(weights, live, ops, raw)
    n = {"op": 0, "edge": 0, "by_index": 0}
    chosen = choose_edges(weights, live, ops, raw)
    for row, k in chosen:
        tied = [j for j, c in enumerate(cand[row]) if c and j != k and w[row][j] == w[row][k]]
        if tied:
            n["op"] += 1
            n["by_index"] += any(r[row][j] == r[row][k] for j in tied)
    picked = dict(chosen)
    strength = {}  # per usable row: (activated, raw) of its best op
    for row, c in enumerate(cand):
        if any(c):
            k = _host_best(c, w[row], r[row])
            strength[row] = (w[row][k], r[row][k])
    for rows in node_edge_rows():
        left = [strength[row] for row in rows if row not in picked and row in strength]
        if left:
            weaker, best_out = min(strength[row] for row in rows if row in picked), max(left)
            if weaker[0] == best_out[0]:
                n["edge"] += 1
                n["by_index"] += weaker[1] == best_out[1]
    return n


def project(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...],
            raw: torch.Tensor | None = None) -> torch.Tensor:
    """Π_S(weights): the one-hot E × K matrix of the discrete choice (same dtype/device).

    The choice of :func:`choose_edges` (same ``raw``) made without reading a value: per edge
    its best candidate op, and the edges that rank 0 or 1 in their node. Unlike
    ``choose_edges`` it cannot raise :class:`ProjectionError` (that would need a read): a
    node with fewer than two candidate edges keeps the ones it has. A search never gets
    there (CRB's node rule keeps two; softmax never prunes); the genotype, made by
    ``choose_edges``, would say so.
    """
    cand = _candidates(ops, live)
    best_val, best_op = best_ops(weights.detach(), cand, None if raw is None else raw.detach())
    usable = cand.any(dim=1)
    second = None if raw is None else raw.detach().masked_fill(~best_op, float("-inf")).amax(dim=1)
    chosen = usable & (rank_in_node(best_val, usable, second) < 2)
    return (best_op & chosen[:, None]).to(weights.dtype)


def best_ops(weights: torch.Tensor, allowed: torch.Tensor,
             raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the largest allowed weight and a bool one-hot mask of its op: among equal
    weights the one with the largest ``raw`` if given, then the first (a row with nothing
    allowed: −inf and op 0)."""
    masked = weights.masked_fill(~allowed, float("-inf"))
    best_val, best_idx = masked.max(dim=1)  # max gives the first maximal index
    if raw is not None:
        tied = allowed & (masked == best_val[:, None])
        raw_tied = raw.masked_fill(~tied, float("-inf"))
        top = tied & (raw_tied == raw_tied.amax(dim=1, keepdim=True))
        best_idx = top.to(torch.uint8).argmax(dim=1)  # the first of the top (op 0 if none)
    return best_val, torch.arange(weights.shape[1], device=weights.device) == best_idx[:, None]


def rank_in_node(values: torch.Tensor, eligible: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
    """Per edge row, its place among the eligible rows of its node in the order (value
    descending, then ``second`` descending if given, then row ascending): what a stable
    sort by (−value, −second) gives. (E,) longs; an ineligible row's values are not looked at."""
    node = _node_of_row(values.device)
    row = torch.arange(len(node), device=values.device)
    v_other, v_self = values[None, :], values[:, None]
    later = row[None, :] < row[:, None]
    if second is not None:
        s_other, s_self = second[None, :], second[:, None]
        later = (s_other > s_self) | ((s_other == s_self) & later)
    ahead = (v_other > v_self) | ((v_other == v_self) & later)
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


def derive_cell(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...],
                raw: torch.Tensor | None = None) -> list[tuple[str, int]]:
    """The genotype of one cell type: per node, (op name, source state) strongest first."""
    from darts.space.primitives import edges

    e = edges()
    return [(ops[k], e[r][1]) for r, k in choose_edges(weights, live, ops, raw)]


def threshold_cell(weights: torch.Tensor, live: torch.Tensor, ops: tuple[str, ...], threshold: float,
                   raw: torch.Tensor | None = None) -> list[tuple[str, int, int]]:
    """FairDARTS' ``threshold_sparse`` reading of one cell: of Π_S's two edges per node (the
    same ranking), keep an edge's best op only if its activated weight is ≥ ``threshold``.
    Returns (op, node state, source state) triples, the authors' form: a node may keep 0, 1 or
    2 inputs, which is outside S, so this is recorded beside the genotype, not retrained."""
    from darts.space.primitives import edges

    e = edges()
    w = weights.detach().to("cpu", torch.float64)
    return [(ops[k], N_INPUTS + node, e[r][1])
            for node, (r, k) in ((i // 2, rk) for i, rk in enumerate(choose_edges(weights, live, ops, raw)))
            if float(w[r, k]) >= threshold]


def derive_genotype(weights: dict[str, torch.Tensor], live: dict[str, torch.Tensor],
                    ops: tuple[str, ...], raw: dict[str, torch.Tensor | None] | None = None) -> Genotype:
    """Both cells' genotype; ``raw`` (per cell type, or None: index rule) orders ties."""
    raw = raw or {}
    concat = list(range(N_INPUTS, N_INPUTS + len(node_edge_rows())))
    return Genotype(
        normal=derive_cell(weights["normal"], live["normal"], ops, raw.get("normal")),
        reduce=derive_cell(weights["reduce"], live["reduce"], ops, raw.get("reduce")),
        normal_concat=concat,
        reduce_concat=concat,
    )


def discretize(activation, alphas: dict[str, torch.Tensor], live: dict[str, torch.Tensor],
               ops: tuple[str, ...], tie_break: str = TIE_BREAKS[0]) -> Genotype:
    """Π_S of a search's final α: the genotype, as `darts discretize` writes it.

    Π_S reads the activated α (``activation.for_projection``: NASP's continuous α, not its
    one-hot forward) of the live ops; ``tie_break`` orders equal values (module docstring)."""
    weights = {t: activation.for_projection(a, live[t]) for t, a in alphas.items()}
    return derive_genotype(weights, live, ops, {t: tie_key(a, tie_break) for t, a in alphas.items()})
