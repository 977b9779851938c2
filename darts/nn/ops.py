"""The op zoo of the DARTS CIFAR space (paper-notes "Search space"), arranged to be fast on CPU.

Every op maps (N, C, H, W) -> (N, C, H/stride, W/stride). Search-network ops have
``affine=False`` and a BN after pools; the evaluation network's have affine BN, bare pools.
Modules and state_dict keys are the plain formulation's (darts/nn/reference.py, pinned to
this one by tests/test_fast_ops.py); the math is the same, arranged for oneDNN on CPU:
depthwise convolutions whose backward is fast (``darts.nn.fast.depthwise``), channels-last from the cell
inputs on (avoiding ops whose backward returns NCHW gradients), a row-wise BatchNorm where
torch's NHWC one is slow. The search network's weighted sum is in darts.nn.supernet.mixed_op.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from darts.nn.fast.depthwise import depthwise_conv, dilation_input, dilation_plan

CL = torch.channels_last


def to_fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU (a no-op when it already is); untouched elsewhere."""
    return x.contiguous(memory_format=CL) if x.device.type == "cpu" else x


class _RowBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of a channels-last tensor seen as an (N·H·W, C) matrix.

    torch's CPU NHWC BatchNorm is 3–5× slower than this for C ≤ 8 or large N·H·W (600 vs
    150 µs forward at 32×8×32×32): it vectorises over a row's few channels. This takes the
    same two-pass statistics from column sums: μ = Σx/M, σ² = Σ(x−μ)²/M, y = (x−μ)·w/σ + b.
    Under ``create_graph=True`` backward differentiates torch's own BatchNorm (exact).
    """

    @staticmethod
    def forward(ctx, x, scale, bias, running_mean, running_var, momentum: float, eps: float):
        n, c, h, w = x.shape
        rows, m = x.permute(0, 2, 3, 1).reshape(-1, c), n * h * w
        mean = rows.sum(0).div_(m)
        xc = rows - mean
        var = xc.square().sum(0).div_(m)
        invstd = var.add(eps).rsqrt_()
        a = invstd if scale is None else invstd * scale
        if running_mean is not None:
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * (m / max(m - 1, 1)), momentum)
        ctx.save_for_backward(x, mean, invstd, scale)
        ctx.eps = eps
        # written into a channels-last tensor of its own, not returned as a view of a (N·H·W, C)
        # matrix: a view made in a custom Function may not be changed in place (the ReLU after)
        out = torch.empty_like(x)
        y = out.permute(0, 2, 3, 1).view(-1, c)
        torch.mul(xc, a, out=y) if bias is None else torch.addcmul(bias, xc, a, out=y)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: go through torch's differentiable BN
            inputs = [x] + ([scale] if ctx.needs_input_grad[1] else [])
            y = F.batch_norm(x, None, None, scale, None, True, 0.0, ctx.eps)
            grads = list(torch.autograd.grad(y, inputs, grad, create_graph=True)) + [None]
            g_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
            return grads[0], grads[1], g_bias, None, None, None, None
        n, c, h, w = grad.shape
        g, m = grad.permute(0, 2, 3, 1).reshape(-1, c), n * h * w
        xc = x.permute(0, 2, 3, 1).reshape(-1, c) - mean
        sum_g = g.sum(0)
        sum_gx = (g * xc).sum(0).mul_(invstd)  # Σ g·x̂
        a = invstd if scale is None else invstd * scale
        k1 = -(a * invstd * sum_gx) / m
        gx = torch.addcmul(-(a * sum_g) / m, g, a).addcmul_(xc, k1)
        g_scale = sum_gx if ctx.needs_input_grad[1] else None
        g_bias = sum_g if ctx.needs_input_grad[2] else None
        return gx.view(n, h, w, c).permute(0, 3, 1, 2), g_scale, g_bias, None, None, None, None


def batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(x)``, times ``scale`` (C,) if given (``bn`` non-affine): a BN with weight ``scale``,
    whose backward gives d scale from the input it saves anyway (no extra activation)."""
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    # contiguous: torch 2.14's CPU NHWC BN backward returns garbage for a stride-0 weight
    weight, bias = (bn.weight, bn.bias) if scale is None else (scale.contiguous(), None)
    return batch_norm_function(x, bn.running_mean, bn.running_var, weight, bias,
                               bn.training or not bn.track_running_stats, bn.momentum, bn.eps)


def batch_norm_function(x: torch.Tensor, running_mean, running_var, weight, bias, use_batch: bool,
                        momentum: float, eps: float) -> torch.Tensor:
    """``F.batch_norm`` with the same arguments, by :class:`_RowBatchNorm` where that measured faster.

    Float32 only: under bfloat16 autocast torch's kernel keeps the statistics and running
    buffers in float32 and returns bfloat16, which the row formulation would not."""
    n, c, h, w = x.shape
    # affine BNs (the evaluation network's) measured faster with torch's kernel in the whole
    # training step (0.27 -> 0.24 s/step), though not in isolation; the search network's do not
    rows = n * h * w
    if (use_batch and bias is None and x.device.type == "cpu" and x.dtype == torch.float32
            and (rows >= 32768 or (c < 16 and rows >= 4096)) and x.is_contiguous(memory_format=CL)):
        return _RowBatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps)
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch, momentum, eps)


class Shared:
    """What every edge leaving one state can share, computed on first use.

    A state feeds up to 4 edges × 7 ops. ``relu`` feeds all conv ops (computed and
    saved for backward once, not 16 times); ``dilation_input`` is relu(x) rearranged for
    dilated convolutions (:func:`depthwise_conv`); ``get`` also holds pool(x) and
    its BatchNorm output (:class:`Pool`). One ``Shared`` lives for one forward.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x
        self._cache: dict = {}

    def get(self, key, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def relu(self) -> torch.Tensor:
        return self.get("relu", lambda: F.relu(to_fast_layout(self.x)))

    def dilation_input(self, plan: str) -> torch.Tensor:
        return self.get(("dilation", plan), lambda: dilation_input(self.relu, plan))

    def plan_input(self, r: torch.Tensor, k: int, stride: int, padding: int, dilation: int) -> torch.Tensor | None:
        """The shared rearranged input a dilated depthwise conv of relu(x) reads, if any."""
        plan = dilation_plan(r, k, stride, padding, dilation)
        return None if plan is None else self.dilation_input(plan)


class ReLUConvBN(nn.Sequential):
    """ReLU -> k×k conv -> BN: the cell-input preprocessing of DARTS (switches to channels-last)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))

    def after_relu(self, r: torch.Tensor) -> torch.Tensor:
        return batch_norm(self[2], self[1](r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(F.relu(to_fast_layout(x)))


class DilConv(nn.Sequential):
    """ReLU -> depthwise k×k (dilation d) -> 1×1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                                   groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))

    @property
    def dw(self) -> nn.Conv2d:  # self[1] without Sequential's slow indexing (hot in darts.nn.fast.edgebatch)
        return self._modules["1"]

    @property
    def pw(self) -> nn.Conv2d:
        return self._modules["2"]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self._modules["3"]

    def after_relu(self, r: torch.Tensor, scale=None, prepared=None) -> torch.Tensor:
        dw = self.dw
        y = depthwise_conv(r, dw.weight, dw.stride[0], dw.padding[0], dw.dilation[0], prepared)
        return batch_norm(self.bn, F.conv2d(y, self.pw.weight), scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(F.relu(x))


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation=1); only the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op. The search network never calls it (its output is known to be 0)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def after_relu(self, x: torch.Tensor, scale=None) -> torch.Tensor:
        # odd sizes: pad so both branches give ceil(H/2); DARTS only meets even sizes
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return batch_norm(self.bn, F.conv2d(x, self.weight_2x2(), None, 2), scale)

    def weight_2x2(self) -> torch.Tensor:
        """conv_1 (even pixels) ‖ conv_2 (odd) as ONE 2×2 stride-2 conv with zero taps, 3–10× faster:
        the slice x[:, :, 1:, 1:] has an NCHW backward that slows the NHWC ReLU backward 10×."""
        return torch.cat([F.pad(self.conv_1.weight, (0, 1, 0, 1)), F.pad(self.conv_2.weight, (1, 0, 1, 0))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(F.relu(to_fast_layout(x)))


class Pool(nn.Sequential):
    """3×3 max or average pool (count_include_pad=False); the search variant adds a BN."""

    def __init__(self, kind: str, c: int, stride: int, search: bool):
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        super().__init__(*([pool, nn.BatchNorm2d(c, affine=False)] if search else [pool]))
        self.key = (kind, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm(self[1], self[0](x)) if len(self) > 1 else self[0](x)


def as_shared(x: torch.Tensor | Shared) -> Shared:
    return x if isinstance(x, Shared) else Shared(x)


def preprocess(pre: nn.Module, s: Shared) -> torch.Tensor:
    """A cell's input preprocessing ``pre(s.x)``, through the state's shared ReLU: a cell's
    output is preprocessed by the next two cells (and the stem's by the first two cells'
    three preprocessings), so relu(state) is computed once, not two or three times."""
    if isinstance(pre, (ReLUConvBN, FactorizedReduce)):
        return pre.after_relu(s.relu)
    return pre(s.x)


OpFactory = Callable[[int, int, bool], nn.Module]
#: name -> factory(C, stride, search): search=True builds the supernet variant, False the eval one.
OPS: dict[str, OpFactory] = {
    "none": lambda c, s, search: Zero(s),
    "max_pool_3x3": lambda c, s, search: Pool("max", c, s, search),
    "avg_pool_3x3": lambda c, s, search: Pool("avg", c, s, search),
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
