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

Where pruning is decided: on α's device, by tensor arithmetic that reads no value
back (the node rule too: :func:`_rescue`), so a CRB α step costs no host
synchronisation on a GPU. The newly pruned masks come back as device tensors; the
history queues them with its other records, and the supernet learns which ops to skip
from a host copy of the masks that arrives asynchronously (``darts.nn.supernet``).
Softmax never prunes and returns None.

`sigmoid` is FairDARTS' (Chu et al. 2020, "Fair DARTS: eliminating unfair advantages in
differentiable architecture search"): σ(α) for each op on its own, so ops no longer compete
for one share of the edge (the "exclusive competition" they blame for skip-connection
collapse); their search space drops `none` (7 ops) and starts α at 0 (all weights ½).
Its partner is the zero-one loss (``darts.method.regularizers.ZeroOne``).

`nasp` is NASP's proximal iteration (Yao et al. 2020, "Efficient neural architecture search
via proximal iterations"): the network runs forward and backward through the discretized
architecture ā = prox_C1(α), each edge's largest α set to 1 and the others to 0, while the
continuous α takes that gradient (∂L/∂α := ∂L/∂ā) and is kept in its box C2 = [0, 1] after
every step (prox_C2, a clip: the activation's ``box``, applied by the network after the
α update). Π_S reads the continuous α (``for_projection``), not the one-hot ā.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from darts.method.interfaces import Setting
from darts.space.primitives import PRIMITIVES, WITHOUT_NONE
from darts.space.projection import best_ops, candidate_edges_per_node, rank_in_node


class Softmax:
    """DARTS: softmax over the ops of each edge; nothing is ever pruned."""

    name = "softmax"
    node_norm = False
    prunes = False
    #: a threshold rule of the method's own discretization, recorded beside Π_S's (None: none)
    threshold: float | None = None
    #: the box α is clipped into after each α update (NASP's prox_C2); None: α is left as stepped
    box: tuple[float, float] | None = None
    #: the params.search keys it reads -> defaults and valid values (the one place they are written)
    settings = {"softmax_init_scale": Setting(1e-3)}
    #: constructor argument -> the params.search key that sets it
    options = {"init_scale": "softmax_init_scale"}
    #: the params.search key of this activation's own α weight decay (None: search.alpha_weight_decay)
    alpha_weight_decay_option: str | None = None

    def __init__(self, init_scale: float = settings["softmax_init_scale"].default):
        self.ops = PRIMITIVES
        self.init_scale = init_scale

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        return self.init_scale * torch.randn(n_edges, len(self.ops), generator=generator)

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)

    def for_projection(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """The op weights Π_S (the genotype, the tie count) reads: the activated α itself."""
        return self(alpha, live)

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
    threshold: float | None = None
    box: tuple[float, float] | None = None
    # paper §4.1: no α weight decay with CRB (the authors' code kept 1e-3): its own setting, default 0
    settings = {"crb_init_noise": Setting(1e-4), "crb_alpha_weight_decay": Setting(0.0)}
    options = {"init_noise": "crb_init_noise"}
    alpha_weight_decay_option: str | None = "crb_alpha_weight_decay"

    def __init__(self, init_noise: float = settings["crb_init_noise"].default):
        self.ops = WITHOUT_NONE
        self.init_noise = init_noise

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        k = len(self.ops)
        return 1.0 / k + self.init_noise * torch.randn(n_edges, k, generator=generator)

    def for_projection(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return self(alpha, live)

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        # clamp(α, 0, 1) with gradient 1 on the closed interval [0, 1]: torch's clamp passes
        # no gradient at the boundary, which would leave an op held at α = 0 stuck there
        inside = (alpha >= 0.0) & (alpha <= 1.0)
        return torch.where(inside, alpha, alpha.detach().clamp(0.0, 1.0)) * live

    @torch.no_grad()
    def prune(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Mask every live α ≤ 0 (in place on `alpha` and `live`), but for the ops the node
        rule keeps; return the newly pruned mask (on α's device; nothing is read back)."""
        new = live & (alpha <= 0)
        new &= ~_rescue(alpha, live, new, self.ops)
        live &= ~new
        alpha.masked_fill_(~live, 0.0)
        alpha.masked_fill_(live & (alpha < 0), 0.0)
        return new

    def prune_all(self, alphas: dict[str, torch.Tensor], lives: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`prune` for every cell type."""
        return {k: self.prune(alphas[k], lives[k]) for k in alphas}


def _rescue(alpha: torch.Tensor, live: torch.Tensor, newly: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Ops spared by the node rule (module docstring), as a mask: in each node left with
    fewer than two candidate edges, the edges that lose their last live op now, taken by
    their largest pre-clamp α (ties: lower row) until the node has two again, keep their
    best live op (ties: lower op index)."""
    after = live & ~newly
    short = (2 - candidate_edges_per_node(after, ops)).clamp(min=0)  # per row: its node's shortfall
    dying = live.any(dim=1) & ~after.any(dim=1)
    best_val, best_op = best_ops(alpha, live)
    return best_op & (dying & (rank_in_node(best_val, dying) < short))[:, None]


class Sigmoid(Softmax):
    """FairDARTS: σ(α) per op, independently (no sum-to-one across an edge's ops); nothing pruned.

    Ops: the DARTS list without `none`, as in the authors' code (a `none` op whose weight need
    not shrink when others grow would only add zeros). α starts at exactly 0, as there
    (``torch.zeros``): every op at weight ½, the symmetry broken by the data's gradients."""

    name = "sigmoid"
    options: dict[str, str] = {}
    #: FairDARTS' discretization threshold (``--op_threshold``, σ ≥ 0.85): the discretize stage
    #: records the cell their rule keeps (``darts.space.projection.threshold_cell``) beside Π_S's
    threshold: float | None = 0.85

    def __init__(self):
        self.ops = WITHOUT_NONE

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(n_edges, len(self.ops))

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(alpha)


class Proximal(Softmax):
    """NASP: the forward uses ā = one-hot(argmax α) per edge (ties: the lower op index), the
    backward passes ∂L/∂ā to α unchanged (straight through), α lives in [0, 1] (``box``).

    Ops: DARTS' 8, `none` included, and α starts at ½ + 10⁻³·N(0, 1), as in the NASP code
    that nasbench-1shot1 carries (``torch.ones/2 + 1e-3*torch.randn``; ``Hardtanh(0, 1)`` clip).
    Unselected ops are still computed at weight 0 (same values and gradients as NASP's
    forward, not its speed)."""

    name = "nasp"
    options: dict[str, str] = {}
    box: tuple[float, float] | None = (0.0, 1.0)

    def __init__(self):
        self.ops = PRIMITIVES

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor:
        return 0.5 + 1e-3 * torch.randn(n_edges, len(self.ops), generator=generator)

    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        hard = F.one_hot(alpha.argmax(dim=-1), alpha.shape[-1]).to(alpha.dtype)
        return hard + (alpha - alpha.detach())  # value: exactly ā; gradient: to α as is

    def for_projection(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Π_S ranks edges and ops by the continuous α (the one-hot ā would tie every edge)."""
        return alpha


ACTIVATIONS = {"softmax": Softmax, "crb": CRB, "sigmoid": Sigmoid, "nasp": Proximal}


def make_activation(name: str, **kwargs) -> Softmax | CRB | Sigmoid | Proximal:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](**kwargs)
