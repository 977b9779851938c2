"""The op zoo of the DARTS CIFAR space (paper-notes "Search space").

Every op maps (N, C, H, W) -> (N, C, H/stride, W/stride). In the search network all ops
are built with ``affine=False`` and pools are followed by a non-affine BatchNorm; the
evaluation network uses affine BatchNorm and bare pools, as in DARTS.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ReLUConvBN(nn.Sequential):
    """ReLU -> k×k conv -> BN: the cell-input preprocessing of DARTS."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise k×k (dilation d) -> 1×1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation=1); only the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op. The search network never calls it (its output is known to be 0)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU -> two 1×1 stride-2 convs (the second shifted by one pixel) -> concat -> BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # odd sizes: pad so both branches give ceil(H/2); DARTS only meets even sizes
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def _pool(kind: str, c: int, stride: int, search: bool) -> nn.Module:
    pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if search else pool


OpFactory = Callable[[int, int, bool], nn.Module]

#: name -> factory(C, stride, search). ``search=True`` builds the supernet variant
#: (affine=False everywhere, BN after pools); ``False`` the evaluation-network variant.
OPS: dict[str, OpFactory] = {
    "none": lambda c, s, search: Zero(s),
    "max_pool_3x3": lambda c, s, search: _pool("max", c, s, search),
    "avg_pool_3x3": lambda c, s, search: _pool("avg", c, s, search),
    "skip_connect": lambda c, s, search: Identity() if s == 1 else FactorizedReduce(c, c, affine=not search),
    "sep_conv_3x3": lambda c, s, search: SepConv(c, c, 3, s, 1, affine=not search),
    "sep_conv_5x5": lambda c, s, search: SepConv(c, c, 5, s, 2, affine=not search),
    "dil_conv_3x3": lambda c, s, search: DilConv(c, c, 3, s, 2, 2, affine=not search),
    "dil_conv_5x5": lambda c, s, search: DilConv(c, c, 5, s, 4, 2, affine=not search),
}


def build_op(name: str, channels: int, stride: int, search: bool) -> nn.Module:
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}")
    return OPS[name](channels, stride, search)
