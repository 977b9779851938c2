"""The DARTS evaluation networks (``NetworkCIFAR``, ``NetworkImageNet``) built from a Genotype.

This is the network whose test error and parameter count the paper reports
(paper-notes "Evaluation protocol"): 20 cells, C=36, an auxiliary head after cell
2·layers//3 and drop-path on every non-identity op. The construction follows the
original DARTS ``model.py`` module for module, so the parameter count of a genotype
is directly comparable with the numbers published by DARTS and its follow-ups
(DARTS_V2 at C=36, 20 layers: 3.349342M).

DARTS' network for large images is in ``darts.nn.evalnet_imagenet``. Both take 1 (grayscale)
or 3 input channels and any height x width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts.nn.ops import (DilConv, FactorizedReduce, Identity, Pool, ReLUConvBN, SepConv, Shared, as_shared, build_op,
                       preprocess, to_fast_layout)
from darts.space.primitives import N_INPUTS, Genotype

STEM_MULTIPLIER = 3
AUX_NAME = "auxiliary_head"  # parameters under this name are not counted (as DARTS)


def drop_masks(n: int, like: Tensor, drop_prob: float) -> Tensor:
    """``n`` drop-path masks for the samples of ``like``, shaped (n, N, 1, 1, 1): per sample
    0 with probability ``drop_prob``, else 1/keep.

    Per-sample Bernoulli masks as in DARTS ``utils.drop_path``: dividing by the keep
    probability preserves the expectation, so eval mode (no dropping) needs no rescale.
    One draw for all the ops of a cell rather than one per op (fewer calls, same law).
    """
    keep_prob = 1.0 - drop_prob
    masks = torch.empty(n, like.size(0), 1, 1, 1, device=like.device, dtype=like.dtype)
    return masks.bernoulli_(keep_prob).div_(keep_prob)


def node_sum(a: Tensor, mask_a: Tensor | None, b: Tensor, mask_b: Tensor | None) -> Tensor:
    """``a·mask_a + b·mask_b``, a node's two drop-path'd op outputs (mask None: not dropped).

    ``addcmul`` multiplies and adds in one pass over the maps where DARTS makes two
    multiplies and an add (eval step, in-process A/B: 0.226 → 0.214 s). Out of place on
    the op outputs, which autograd may have saved; in place only on the fresh product.
    """
    if mask_a is None and mask_b is None:
        return a + b
    if mask_a is None:
        return torch.addcmul(a, b, mask_b)
    if mask_b is None:
        return torch.addcmul(b, a, mask_a)
    return (a * mask_a).addcmul_(b, mask_b)


class EvalCell(nn.Module):
    """A discrete DARTS cell: every node sums its two chosen ops on earlier states."""

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        # the previous cell halved the resolution: s0 (two cells back) must be halved too
        self.preprocess0: nn.Module = (FactorizedReduce(c_prev_prev, c) if reduction_prev
                                       else ReLUConvBN(c_prev_prev, c, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.indices = [src for _, src in pairs]
        self.n_nodes = len(pairs) // 2
        self.multiplier = len(self.concat)
        self.reduction = reduction
        # only edges leaving the cell inputs carry the stride (nodes are already reduced)
        self._ops = nn.ModuleList(
            build_op(op, c, 2 if reduction and src < N_INPUTS else 1, search=False) for op, src in pairs
        )
        self._layout = to_fast_layout  # taken when built (darts/nn/reference.py builds an NCHW one)

    def forward(self, s0: Tensor | Shared, s1: Tensor | Shared, drop_prob: float) -> Tensor:
        states = [Shared(preprocess(self.preprocess0, as_shared(s0))),
                  Shared(preprocess(self.preprocess1, as_shared(s1)))]
        masks = (drop_masks(len(self._ops), states[0].x, drop_prob) if self.training and drop_prob > 0.0
                 else None)
        for i in range(self.n_nodes):
            (a, mask_a), (b, mask_b) = (self._edge(k, states, masks) for k in (2 * i, 2 * i + 1))
            states.append(Shared(node_sum(a, mask_a, b, mask_b)))
        out = torch.cat([states[i].x for i in self.concat], dim=1)
        if out.requires_grad and out.device.type == "cpu":
            out.register_hook(self._layout)  # the global pool's gradient comes NCHW (darts.nn.supernet)
        return out

    def _edge(self, k: int, states: list[Shared], masks: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Op ``k``'s output and its drop-path mask: None outside training and for an identity
        (parameter-free, never dropped, as in DARTS)."""
        op = self._ops[k]
        return (shared_forward(op, states[self.indices[k]]),
                None if masks is None or isinstance(op, Identity) else masks[k])


def shared_forward(op: nn.Module, src: Shared) -> Tensor:
    """``op(src.x)``, with what several ops reading one state have in common computed once:
    relu(x) (DARTS_V2's normal cell feeds 3 sep_convs from one state), a dilated
    convolution's rearranged input, and a bare pool (its reduce cell max-pools one
    state 3 times). Same math; drop-path comes after, per op. The ReLU inside a sep_conv
    works in place on its BatchNorm's output, which nothing else reads or saved."""
    if isinstance(op, SepConv):
        return op[1].after_relu(F.relu(op[0].after_relu(src.relu), inplace=True))
    if isinstance(op, DilConv):
        dw = op[1]
        return op.after_relu(src.relu, None, src.plan_input(src.relu, dw.kernel_size[0], dw.stride[0],
                                                            dw.padding[0], dw.dilation[0]))
    if isinstance(op, FactorizedReduce):
        return op.after_relu(src.relu)
    if isinstance(op, Pool) and len(op) == 1:
        return src.get(op.key, lambda: op[0](src.x))
    return op(src.x)


def _darts_pool_gives_2(size: int) -> bool:
    """Whether AvgPool2d(5, stride=3) turns ``size`` pixels into exactly 2 (sizes 8–10)."""
    return size >= 5 and (size - 5) // 3 + 1 == 2


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS auxiliary classifier, designed for an 8×8 input (32×32 images).

    The DARTS pooling (5×5, stride 3) maps 8–10 pixels to the 2×2 the 2×2 conv
    expects. Any other size (e.g. 4×4 from 16×16 smoke-test images) is pooled
    adaptively to 2×2 instead: same parameters, and small-image runs still work.
    """

    def __init__(self, c: int, n_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)  # DARTS: inplace=True, which would also edit s1
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        self.small_pool = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Sequential(
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        x = self.pool(x) if all(_darts_pool_gives_2(n) for n in x.shape[-2:]) else self.small_pool(x)
        x = self.features(x)
        return self.classifier(x.flatten(1))


class EvalNetwork(nn.Module):
    """NetworkCIFAR: stem, ``layers`` cells (two reductions), global pool, linear.

    ``drop_path_prob`` is an attribute, not an argument, because the training loop
    ramps it every epoch (DARTS sets ``model.drop_path_prob`` the same way).
    """

    kind = "cifar"

    def __init__(self, genotype: Genotype, C: int = 36, n_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, in_channels: int = 3):
        super().__init__()
        self._check(C, layers, in_channels)
        c_curr = STEM_MULTIPLIER * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        self.cells, c_prev, c_aux = self._build_cells(genotype, C, c_curr, c_curr, False)
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, n_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, n_classes)

    def _check(self, C: int, layers: int, in_channels: int) -> None:
        """Validate the shape arguments and set what every variant keeps."""
        if layers < 1 or C < 1 or in_channels not in (1, 3):
            raise ValueError(f"{type(self).__name__} needs layers >= 1, C >= 1 and 1 or 3 input channels, "
                             f"got layers={layers}, C={C}, in_channels={in_channels}")
        self.layers, self.in_channels = layers, in_channels
        self.aux_position = 2 * layers // 3
        self.drop_path_prob = 0.0
        self._layout = to_fast_layout  # taken when built (darts/nn/reference.py builds an NCHW one)

    def _build_cells(self, genotype: Genotype, C: int, c_prev_prev: int, c_prev: int,
                     reduction_prev: bool) -> tuple[nn.ModuleList, int, int]:
        """Stack the cells on stems of widths ``c_prev_prev``, ``c_prev`` (``reduction_prev``:
        the last stem halved the resolution); returns the cells, the last cell's width and
        the aux head's input width."""
        cells = nn.ModuleList()
        c_curr, c_aux = C, c_prev
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                c_curr *= 2
            cell = EvalCell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_position:
                c_aux = c_prev
        return cells, c_prev, c_aux

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(logits, logits_aux)``; ``logits_aux`` only exists in training."""
        # channels-last from the stem on, as the cells (stem forward + backward 11–13 → 6 ms at 64×3×32×32)
        s0 = s1 = Shared(self.stem(self._layout(x)))  # Shared: the next two cells preprocess one relu(state)
        return self._cells_forward(s0, s1)

    def _cells_forward(self, s0: Shared, s1: Shared) -> tuple[Tensor, Tensor | None]:
        """The cells, the auxiliary head (training only) and the classifier on the stems' output."""
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, Shared(cell(s0, s1, self.drop_path_prob))
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1.x)
        logits = self.classifier(self.global_pooling(s1.x).flatten(1))
        return logits, logits_aux


def count_params_m(model: nn.Module) -> float:
    """Parameters in millions, without the auxiliary head (it is discarded after training)."""
    n = sum(p.numel() for name, p in model.named_parameters() if AUX_NAME not in name)
    return n / 1e6
