"""The straightforward formulation of the search network, frozen as the "before".

This is the supernet as first written (one nn.Module per op, ``nn.Conv2d(groups=C)``
depthwise convolutions, NCHW, every op of every edge run separately). It exists for
two reasons: the benchmarks report its speed next to the fast network's in the same
run (ratios on this noisy machine only mean something when measured together; the
first-order search benchmark drives it with the public DARTS loop of
``benchmarks/public_loop.py``, as the public code would run it), and
tests/test_fast_ops.py checks that the fast network computes the same function. It
uses the same parameter and buffer names as ``darts.nn.supernet.SearchNetwork``, so one
state_dict loads into either.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from darts.nn import evalnet
from darts.nn import ops as darts_ops
from darts.nn.supernet import SearchNetwork, reduction_layers
from darts.space.primitives import N_INPUTS, N_NODES, edges


def relu_conv_bn(c_in, c_out, kernel, stride, padding, affine=True) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


def dil_conv(c_in, c_out, kernel, stride, padding, dilation, affine=True) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                                   groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


def sep_conv(c_in, c_out, kernel, stride, padding, affine=True) -> nn.Sequential:
    return nn.Sequential(dil_conv(c_in, c_in, kernel, stride, padding, 1, affine),
                         dil_conv(c_in, c_out, kernel, 1, padding, 1, affine))


class Identity(darts_ops.Identity):
    """Subclass only so ``darts.nn.evalnet``'s isinstance check (no drop-path on identities) holds."""

    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def pool(kind, c, stride, search) -> nn.Module:
    p = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
         else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
    return nn.Sequential(p, nn.BatchNorm2d(c, affine=False)) if search else p


# name -> factory(C, stride, search), as darts.nn.ops.OPS
OPS = {
    "none": lambda c, s, search: Zero(s),
    "max_pool_3x3": lambda c, s, search: pool("max", c, s, search),
    "avg_pool_3x3": lambda c, s, search: pool("avg", c, s, search),
    "skip_connect": lambda c, s, search: Identity() if s == 1 else FactorizedReduce(c, c, affine=not search),
    "sep_conv_3x3": lambda c, s, search: sep_conv(c, c, 3, s, 1, affine=not search),
    "sep_conv_5x5": lambda c, s, search: sep_conv(c, c, 5, s, 2, affine=not search),
    "dil_conv_3x3": lambda c, s, search: dil_conv(c, c, 3, s, 2, 2, affine=not search),
    "dil_conv_5x5": lambda c, s, search: dil_conv(c, c, 5, s, 4, 2, affine=not search),
}


def build_op(name: str, channels: int, stride: int, search: bool) -> nn.Module:
    return OPS[name](channels, stride, search)


def _as_is(x):
    return x


def drop_path(x, drop_prob):
    """DARTS ``utils.drop_path`` (per op, per sample), out of place with the mask scaled
    instead of ``x``: one pass over x where DARTS makes two in place, kept for the reference."""
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class EvalCell(evalnet.EvalCell):
    """DARTS ``model.Cell.forward``: preprocess, every op on its input, drop-path per op (not
    on identities), h1 + h2 per node, concat. The modules are ``darts.nn.evalnet.EvalCell``'s."""

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(darts_ops.as_shared(s0).x), self.preprocess1(darts_ops.as_shared(s1).x)]
        for i in range(self.n_nodes):
            h = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                y = op(states[self.indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(op, darts_ops.Identity):
                    y = drop_path(y, drop_prob)
                h.append(y)
            states.append(h[0] + h[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


@contextlib.contextmanager
def evalnet_ops():
    """While active, ``darts.nn.evalnet`` builds its cells from these ops (the eval-step "before")."""
    # to_fast_layout: NCHW throughout, as the public code (no channels-last stem, no layout hooks)
    names = ("build_op", "FactorizedReduce", "Identity", "ReLUConvBN", "to_fast_layout", "EvalCell")
    saved = {n: getattr(evalnet, n) for n in names}
    for n, v in zip(names, (build_op, FactorizedReduce, Identity, relu_conv_bn, _as_is, EvalCell)):
        setattr(evalnet, n, v)
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(evalnet, n, v)


class MixedEdge(nn.Module):
    def __init__(self, ops, channels, stride):
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](channels, stride, True) for name in ops)

    def forward(self, x, w, live_idx):
        out = None
        for k in live_idx:
            y = self.ops[k](x) * w[k]
            out = y if out is None else out + y
        return out


class SearchCell(nn.Module):
    def __init__(self, ops, c_pp, c_p, c, reduction, reduction_prev, node_norm):
        super().__init__()
        self.reduction = reduction
        self.pre0 = (FactorizedReduce(c_pp, c, affine=False) if reduction_prev
                     else relu_conv_bn(c_pp, c, 1, 1, 0, affine=False))
        self.pre1 = relu_conv_bn(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(MixedEdge(ops, c, 2 if reduction and src < N_INPUTS else 1)
                                   for _, src in edges())
        self.node_bn = (nn.ModuleList(nn.BatchNorm2d(c, affine=False) for _ in range(N_NODES))
                        if node_norm else None)

    def forward(self, s0, s1, w, live_idx):
        states = [self.pre0(s0), self.pre1(s1)]
        row = 0
        for i in range(N_NODES):
            total = None
            for j in range(N_INPUTS + i):
                y = self.edges[row](states[j], w[row], live_idx[row])
                row += 1
                if y is not None:
                    total = y if total is None else total + y
            if total is None:
                ref, st = states[1], 2 if self.reduction else 1
                total = ref.new_zeros(ref.shape[0], ref.shape[1], ref.shape[2] // st, ref.shape[3] // st)
            if self.node_bn is not None:
                total = self.node_bn[i](total)
            states.append(total)
        return torch.cat(states[N_INPUTS:], dim=1)


class ReferenceSearchNetwork(SearchNetwork):
    """``SearchNetwork`` whose cells are the straightforward ones above.

    The stem, classifier, α, live masks and the whole public API are inherited; only
    the cells are rebuilt (same constructor arguments, same parameter names).
    """

    def __init__(self, activation, C: int = 16, n_classes: int = 10, layers: int = 8,
                 stem_multiplier: int = 3, generator: torch.Generator | None = None):
        super().__init__(activation, C, n_classes, layers, stem_multiplier, generator)
        self.cells = nn.ModuleList()
        c_pp = c_p = stem_multiplier * C
        c_curr, reduction_prev = C, False
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            c_curr *= 2 if reduction else 1
            self.cells.append(SearchCell(self.ops, c_pp, c_p, c_curr, reduction, reduction_prev,
                                         activation.node_norm))
            reduction_prev = reduction
            c_pp, c_p = c_p, N_NODES * c_curr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, w[t], self._live_idx[t])
        return self.classifier(self.pool(s1).flatten(1))
