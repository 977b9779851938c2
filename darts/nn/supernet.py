"""The search network (supernet): mixed edges, search cells, α as registered parameters.

α lives in the model as `alpha_normal` / `alpha_reduce` (nn.Parameter, E × K) and the
pruning masks as bool buffers `live_normal` / `live_reduce`, so a state_dict holds the
whole architecture state. The forward never asks the device which ops are live: it
computes the ops of a host list of live op indices per edge, so pruned ops and `none`
cost nothing. After an α step that list is renewed from a host copy of the masks
(``darts.nn.fast.hostcopy``), made at once on a CPU and asynchronously on a GPU, so neither the
forward nor the pruning syncs.

``aux_skip`` (DARTS-, Chu et al. 2021) adds an auxiliary skip connection to every edge,
outside α: edge output Σ_k w_k·op_k(x) + β·skip(x), skip being the identity (or, on a
stride-2 edge, the factorized reduction, as DARTS' `skip_connect`). β is a buffer the search
sets from its progress (:meth:`SearchNetwork.set_progress`): 1 − epoch/epochs, their linear
decay from 1 toward 0. The auxiliary branch is search-only: Π_S and the genotype ignore it.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from darts.nn.fast.depthwise import dilation_plan
from darts.nn.fast.edgebatch import PackCache, batchable, forward_many
from darts.nn.fast.hostcopy import HostCopy
from darts.space.projection import discretize
from darts.nn.ops import (DilConv, FactorizedReduce, Identity, Pool, ReLUConvBN, SepConv, Shared, as_shared, batch_norm,
                  build_op, preprocess, to_fast_layout)
from darts.space.primitives import CELL_TYPES, N_INPUTS, N_NODES, edges


def accumulate(acc: torch.Tensor | None, y: torch.Tensor, scale: torch.Tensor | None = None,
               inplace: bool = False) -> torch.Tensor:
    """acc + y·scale (scale (C,) broadcast over channels), in one pass where possible.

    ``inplace``: add into ``acc``, which the caller made with an earlier out-of-place add (so
    no autograd node saved it and it is no view): on 32×32 maps, where the search step is
    bound by memory bandwidth, a node's ~20 partial sums then stay in one hot buffer instead
    of each filling a fresh one. Same values, same order."""
    if scale is not None:
        if acc is None:
            return y * scale.view(1, -1, 1, 1)
        return acc.addcmul_(y, scale.view(1, -1, 1, 1)) if inplace else torch.addcmul(acc, y, scale.view(1, -1, 1, 1))
    if acc is None:
        return y
    return acc.add_(y) if inplace else acc + y


def mixed_op(op: nn.Module, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None,
             inplace: bool = False) -> torch.Tensor:
    """``acc`` + scale · op(src.x), with ``scale`` (the op's α, as a (C,) vector) folded into
    the op's last BatchNorm where it has one, and the ReLU/pooling/dilation rearrangement
    of ``src`` shared with every other op of every edge leaving the same state.

    Pools: in training a non-affine BN normalises with batch statistics, so the BNs of
    all edges pooling the same state give the same output; it is computed once, and each
    other live BN's running statistics are set to the first's, which is what their own
    pass would give (live ops of one state have seen the same batches since the start).
    """
    if isinstance(op, SepConv):
        # the inner ReLU in place: its input, a BatchNorm output, is read by nothing else
        return accumulate(acc, op[1].after_relu(F.relu(op[0].after_relu(src.relu), inplace=True), scale), None, inplace)
    if isinstance(op, DilConv):
        dw = op.dw
        plan = dilation_plan(src.x, dw.kernel_size[0], dw.stride[0], dw.padding[0], dw.dilation[0])
        y = op.after_relu(src.relu, scale, None if plan is None else src.dilation_input(plan))
        return accumulate(acc, y, None, inplace)
    if isinstance(op, FactorizedReduce):
        return accumulate(acc, op.after_relu(src.relu, scale), None, inplace)
    if isinstance(op, Identity):
        return accumulate(acc, src.x, scale, inplace)
    if not isinstance(op, Pool):
        raise TypeError(f"the search network cannot mix a {type(op).__name__}")
    pooled, bn = src.get(op.key, lambda: op[0](src.x)), op[1]
    if not (bn.training and bn.track_running_stats):
        return accumulate(acc, batch_norm(bn, pooled, scale), None, inplace)
    first_bn, out = src.get(op.key + ("bn",), lambda: (bn, batch_norm(bn, pooled)))
    if first_bn is not bn:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            getattr(bn, name).copy_(getattr(first_bn, name))
    return accumulate(acc, out, scale, inplace)


class MixedEdge(nn.Module):
    """All candidate ops of one edge; the edge's output is Σ_k w_k · op_k(x) over live ops.

    The sum is made by ``SearchCell.forward``: each live op adds its weighted output to
    the destination node's sum through :func:`mixed_op` (the weight folded into the op's
    last BatchNorm, the input's ReLU and pooling shared by all edges leaving the state),
    or, for the same op of several edges leaving one state, through
    ``darts.nn.fast.edgebatch.forward_many``.
    """

    def __init__(self, ops: tuple[str, ...], channels: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(build_op(name, channels, stride, search=True) for name in ops)


#: per source state j: the (α row, destination node) of every edge leaving it
OUT_EDGES = [[(row, node) for row, (node, src) in enumerate(edges()) if src == j]
             for j in range(N_INPUTS + N_NODES)]


def op_groups(ops: tuple[str, ...]) -> list[list[int]]:
    """Op indices in order, runs of one family together: sep_conv_3x3 and sep_conv_5x5 (and the
    two dil_convs) of every edge leaving a state can be one wider op (``darts.nn.fast.edgebatch``),
    which still adds each node's inputs in (source, op) order since the run is consecutive."""
    groups: list[tuple[str, list[int]]] = []
    for k, name in enumerate(ops):
        family = name.rsplit("_", 1)[0] if name.startswith(("sep_conv_", "dil_conv_")) else name
        if groups and family == groups[-1][0]:
            groups[-1][1].append(k)
        else:
            groups.append((family, [k]))
    return [ks for _, ks in groups]


class SearchCell(nn.Module):
    def __init__(self, ops: tuple[str, ...], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, node_norm: bool, aux_skip: bool = False):
        super().__init__()
        self.reduction = reduction
        self.channels = c
        self.pre0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(ops, c, 2 if reduction and src < N_INPUTS else 1) for _, src in edges()
        )
        self.op_groups = op_groups(ops)
        # DARTS-: one skip per edge outside α (module docstring); None: no auxiliary branch
        self.aux = nn.ModuleList(build_op("skip_connect", c, 2 if reduction and src < N_INPUTS else 1, search=True)
                                 for _, src in edges()) if aux_skip else None
        # CRB: the edge weights no longer sum to 1, so each node sum is renormalised
        self.node_bn = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for _ in range(N_NODES)) if node_norm else None
        self.packs = PackCache()  # batched ops' packed weights (SearchNetwork.reusing_packs)
        self._plan_cache: tuple | None = None  # (live ops key, plan): see _plan

    def forward(self, s0: torch.Tensor | Shared, s1: torch.Tensor | Shared, w: torch.Tensor,
                live_idx: list[list[int]], beta: torch.Tensor | None = None) -> torch.Tensor:
        """Source by source: once a state exists, every edge leaving it is computed, one op
        family (:func:`op_groups`) of all those edges as one (``darts.nn.fast.edgebatch``) where that pays. Each node
        still sums its inputs in (source, op) order, as an edge-by-edge pass would."""
        states = [Shared(preprocess(self.pre0, as_shared(s0))), Shared(preprocess(self.pre1, as_shared(s1)))]
        n_edges, n_ops = w.shape
        # one (C,) scale per (edge, op), made by three autograd nodes instead of E·K indexings
        scale_rows = w.reshape(n_edges * n_ops, 1).expand(n_edges * n_ops, self.channels)
        scales = scale_rows.contiguous().unbind(0)
        plan = self._plan(live_idx, n_ops, w.device)
        totals: list[torch.Tensor | None] = [None] * N_NODES
        owned = [False] * N_NODES  # totals[i] was made by an out-of-place add here: add into it
        for j in range(N_INPUTS + N_NODES - 1):
            if j >= N_INPUTS:
                states.append(Shared(self._finish_node(j - N_INPUTS, totals[j - N_INPUTS], states[1].x)))
            src = states[j]
            for live, ops, idx in plan[j]:
                if batchable(ops[0], src.x, len(ops)):
                    y = forward_many(ops, src.relu, scale_rows.index_select(0, idx).reshape(-1), src.plan_input,
                                     self.packs)
                    for (_, node), part in zip(live, y.split(self.channels, dim=1)):
                        new = accumulate(totals[node], part, None, owned[node])
                        totals[node], owned[node] = new, totals[node] is not None
                else:
                    for op, (i, node) in zip(ops, live):
                        new = mixed_op(op, src, scales[i], totals[node], owned[node])
                        totals[node], owned[node] = new, totals[node] is not None
            if self.aux is not None:  # DARTS-: + β·skip(x) on every edge leaving this state
                b = beta.expand(self.channels)
                for row, node in OUT_EDGES[j]:
                    new = mixed_op(self.aux[row], src, b, totals[node], owned[node])
                    totals[node], owned[node] = new, totals[node] is not None
        states.append(Shared(self._finish_node(N_NODES - 1, totals[-1], states[1].x)))
        out = torch.cat([s.x for s in states[N_INPUTS:]], dim=1)
        if out.requires_grad and out.device.type == "cpu":
            # gradients from the global pool come NCHW; NHWC ops fed NCHW gradients are ~10× slower
            out.register_hook(to_fast_layout)
            for s in states[N_INPUTS:]:
                # a node's gradient is (or contains) a channel slice of out's: not channels-last
                # contiguous, and every BN summed into the node would run torch's NCHW backward on
                # it (small: 462 vs 56 µs at 32×16×16×16; 0.930 → 0.834 s per step)
                s.x.register_hook(to_fast_layout)
        return out

    def _plan(self, live_idx: list[list[int]], n_ops: int, device: torch.device) -> list:
        """Per source state j, per op group with live ops: ((α row·K + op, node) of each, their
        modules, those indices as a tensor). Kept until pruning changes ``live_idx``: rebuilding
        it every forward took ~2 % of a tiny step in list-making and ModuleList indexing."""
        key = (tuple(map(tuple, live_idx)), n_ops, device)
        if self._plan_cache is None or self._plan_cache[0] != key:
            plan = []
            for j in range(N_INPUTS + N_NODES - 1):
                runs = []
                for group in self.op_groups:
                    live = [(row * n_ops + k, node) for k in group for row, node in OUT_EDGES[j] if k in live_idx[row]]
                    if live:
                        ops = [self.edges[i // n_ops].ops[i % n_ops] for i, _ in live]
                        runs.append((live, ops, torch.tensor([i for i, _ in live], device=device)))
                plan.append(runs)
            self._plan_cache = (key, plan)
        return self._plan_cache[1]

    def _finish_node(self, i: int, total: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
        """Node i's state from its input sum: zeros if every op into it is `none`/pruned, then
        CRB's BatchNorm; channels-last (a sum of one batched edge is a channel slice)."""
        if total is None:
            stride = 2 if self.reduction else 1
            total = ref.new_zeros(ref.shape[0], ref.shape[1], ref.shape[2] // stride, ref.shape[3] // stride)
        total = to_fast_layout(total)
        return total if self.node_bn is None else batch_norm(self.node_bn[i], total)


class SearchNetwork(nn.Module):
    """The DARTS supernet: stem, `layers` cells (reductions at 1/3 and 2/3), classifier."""

    def __init__(self, activation, C: int = 16, n_classes: int = 10, layers: int = 8,
                 stem_multiplier: int = 3, generator: torch.Generator | None = None, aux_skip: bool = False,
                 in_channels: int = 3):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"SearchNetwork takes 1 (gray) or 3 (RGB) input channels, got {in_channels}")
        self.aux_skip = aux_skip
        self.activation = activation
        self.ops: tuple[str, ...] = tuple(activation.ops)
        self.layers = layers
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(self.ops, c_pp, c_p, c_curr, reduction, reduction_prev, activation.node_norm,
                                         aux_skip))
            reduction_prev = reduction
            c_pp, c_p = c_p, N_NODES * c_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, n_classes)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        n_edges = len(edges())
        for t in CELL_TYPES:
            self.register_parameter(f"alpha_{t}", nn.Parameter(activation.init_alpha(n_edges, g)))
            self.register_buffer(f"live_{t}", torch.ones(n_edges, len(self.ops), dtype=torch.bool))
        if aux_skip:  # only then: a network without the branch keeps its state_dict keys
            self.register_buffer("aux_beta", torch.ones(()))
        self.refresh_live()

    def set_progress(self, progress: float) -> None:
        """Told by the search at each epoch's start (progress = epoch/epochs): DARTS-' β = 1 −
        progress, linear from 1 toward 0 as in the authors' code (per epoch); nothing otherwise."""
        if self.aux_skip:
            self.aux_beta.fill_(1.0 - progress)

    # --- architecture state -------------------------------------------------------
    def alphas(self) -> dict[str, nn.Parameter]:
        return {t: getattr(self, f"alpha_{t}") for t in CELL_TYPES}

    def live(self) -> dict[str, torch.Tensor]:
        return {t: getattr(self, f"live_{t}") for t in CELL_TYPES}

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas().values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alpha_")]

    def weights(self) -> dict[str, torch.Tensor]:
        """act(α) per cell type, pruned ops at exactly 0."""
        return {t: self.activation(a, self.live()[t]) for t, a in self.alphas().items()}

    @torch.no_grad()
    def genotype(self, tie_break: str = "raw_alpha"):
        """Π_S of the current α: the discrete cell pair (``darts.space.primitives.Genotype``) that
        `darts discretize` would derive from this network (``darts.space.projection.discretize``)."""
        alphas = {t: a.detach() for t, a in self.alphas().items()}
        return discretize(self.activation, alphas, self.live(), tuple(self.ops), tie_break)

    @torch.no_grad()
    def prune(self) -> dict[str, torch.Tensor] | None:
        """Apply the activation's box (NASP) and pruning (CRB) after an α update; returns the newly pruned masks (on
        α's device: nothing is read back), or None when the activation never prunes.

        The ops to skip are then renewed from a host copy of the live masks: at once on a CPU;
        on a GPU by the first forward that finds the copy arrived. Until then a just-pruned op
        is still computed at weight exactly 0: it adds exact zeros to its node and gets zero
        gradients, so the results are the same, for a little more work and no sync.
        """
        if self.activation.box is not None:  # NASP's prox_C2: α back into its box
            for a in self.alphas().values():
                a.data.clamp_(*self.activation.box)
        if not self.activation.prunes:
            return None
        newly = self.activation.prune_all({t: a.data for t, a in self.alphas().items()}, self.live())
        self._live_copy.post(self.live())
        self._pick_up_live()
        return newly

    def refresh_live(self) -> None:
        """Renew the host list of ops to compute from the live masks now (one sync: after loading
        or editing the masks by hand; the search step goes through :meth:`prune`)."""
        self._live_copy = HostCopy()  # the masks on their way to the host from prune; older ones dropped
        self._set_live({t: m.tolist() for t, m in self.live().items()})

    def _pick_up_live(self) -> None:
        masks = self._live_copy.poll()
        if masks is not None:
            self._set_live(masks)

    def _set_live(self, masks: dict[str, list[list[bool]]]) -> None:
        """Per cell type, per edge, the op indices to compute (live and not `none`)."""
        skip = self.ops.index("none") if "none" in self.ops else -1
        self._live_idx = {t: [[k for k, on in enumerate(row) if on and k != skip] for row in rows]
                          for t, rows in masks.items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.refresh_live()
        return result

    @contextmanager
    def reusing_packs(self):
        """Within the block, the weights of batched edges (``darts.nn.fast.edgebatch``) are packed once
        and reused by every forward until a weight changes in place or is swapped; a weight
        update that torch does not register (fused optimizers, ``.data``) must come last."""
        with ExitStack() as stack:
            for cell in self.cells:
                if isinstance(cell, SearchCell):
                    stack.enter_context(cell.packs.reusing())
            yield

    # --- forward --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._pick_up_live()  # live masks copied to the host by a GPU step's prune, if arrived
        w = self.weights()
        s0 = s1 = Shared(self.stem(to_fast_layout(x)))  # channels-last on CPU from the stem on
        for cell in self.cells:  # Shared: the next two cells preprocess one relu(state)
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, Shared(cell(s0, s1, w[t], self._live_idx[t], self.aux_beta if self.aux_skip else None))
        return self.classifier(self.pool(s1.x).flatten(1))


def reduction_layers(layers: int) -> tuple[int, int]:
    return (layers // 3, 2 * layers // 3)
