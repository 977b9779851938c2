"""Activation of the architecture weights α (paper §3.1).

An activation turns raw α (E × K, one row per edge) into the op weights the supernet
multiplies op outputs with. `softmax` is DARTS; `crb` (Clipped ReLU + BatchNorm) is the
paper's: act(α) = clamp(α, 0, 1), a non-affine BatchNorm after each node's edge sum,
no `none` op, and progressive pruning: once an α is ≤ 0 after an update, it is set to
0 and its op is masked for good (no longer computed).

Node rule (paper-notes asks to fix it): Π_S needs two edges with a live op per node.
If pruning would leave a node with fewer, the edges that would lose their last live op
keep that op (the one with the largest pre-clamp α), held at α = 0, until the node has
two such edges again. An op held at 0 is live: clamp's gradient at the boundary is 1,
so it can recover, and Π_S never has to pick a pruned op.

Where pruning is decided: on the host. The host must learn which ops are live anyway
(the forward skips pruned ops from a host list), and the node rule walks edges one by
one, so CRB copies α and the live masks to the host in one transfer per α step (one
sync on a GPU), decides there, and returns the newly pruned masks as host tensors; the
device is written back only when something was pruned. Softmax never prunes and
returns None: no mask, no sync.
"""
from __future__ import annotations

import torch

from .constraints import live_edges_per_node
from .space import node_edge_rows, search_ops


class Softmax:
    """DARTS: softmax over the ops of each edge; nothing is ever pruned."""

    name = "softmax"
    node_norm = False
    prunes = False

    def __init__(self, init_scale: float = 1e-3):
        self.ops = search_ops("softmax")
        self.init_scale = init_scale

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        return self.init_scale * torch.randn(n_edges, len(self.ops), generator=generator)

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)

    def prune(self, alpha: torch.Tensor, live: torch.Tensor) -> None:
        """Nothing to prune: None rather than an all-false mask, which would cost a sync to read."""

    def prune_all(self, alphas: dict[str, torch.Tensor], lives: dict[str, torch.Tensor]) -> dict:
        """`prune` for every cell type at once: nothing pruned, so no masks."""
        return {}


class CRB:
    """Clipped ReLU on α, BatchNorm after node sums, progressive pruning."""

    name = "crb"
    node_norm = True
    prunes = True

    def __init__(self, init_noise: float = 1e-4):
        self.ops = search_ops("crb")
        self.init_noise = init_noise

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        k = len(self.ops)
        return 1.0 / k + self.init_noise * torch.randn(n_edges, k, generator=generator)

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        # clamp(α, 0, 1) with gradient 1 on the closed interval [0, 1]: torch's clamp passes
        # no gradient at the boundary, which would leave an op held at α = 0 stuck there
        inside = (alpha >= 0.0) & (alpha <= 1.0)
        return torch.where(inside, alpha, alpha.detach().clamp(0.0, 1.0)) * live

    @torch.no_grad()
    def prune(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Mask every live α ≤ 0 (in place on `alpha` and `live`); return the newly pruned mask
        (a host tensor; one device→host copy)."""
        return self.prune_all({"": alpha}, {"": live})[""]

    @torch.no_grad()
    def prune_all(self, alphas: dict[str, torch.Tensor], lives: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`prune` for every cell type with a single device→host copy: the one sync of the α step."""
        keys = list(alphas)
        host = _to_host([alphas[k] for k in keys] + [lives[k] for k in keys])
        newly = {}
        for i, k in enumerate(keys):
            alpha, live = alphas[k], lives[k]
            alpha_h, live_h = host[i], host[len(keys) + i].bool()
            new = live_h & (alpha_h <= 0)
            if new.any():
                new &= ~_rescue(alpha_h, live_h, new, self.ops)
                live &= ~new.to(live.device)  # host→device: only on the rare steps that prune
            alpha.masked_fill_(~live, 0.0)
            alpha.masked_fill_(live & (alpha < 0), 0.0)
            newly[k] = new
        return newly


def _to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Host copies of `tensors` (same shapes, all in the first one's dtype) in one transfer."""
    dtype = tensors[0].dtype
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors]).cpu()
    return [chunk.view(t.shape) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _rescue(alpha: torch.Tensor, live: torch.Tensor, newly: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Ops spared by the node rule (see module docstring)."""
    rescued = torch.zeros_like(live)
    after = live & ~newly
    counts = live_edges_per_node(after, ops)
    for node, rows in enumerate(node_edge_rows()):
        if counts[node] >= 2:
            continue
        # edges that had a live op before this step but lose all of them now
        dying = [r for r in rows if live[r].any() and not after[r].any()]
        dying.sort(key=lambda r: -alpha[r][live[r]].max().item())
        for r in dying[: 2 - counts[node]]:
            vals = alpha[r].masked_fill(~live[r], float("-inf"))
            rescued[r, int(vals.argmax())] = True
    return rescued


ACTIVATIONS = {"softmax": Softmax, "crb": CRB}


def make_activation(name: str, **kwargs) -> Softmax | CRB:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](**kwargs)
