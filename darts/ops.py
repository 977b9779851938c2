"""The op zoo of the DARTS CIFAR space (paper-notes "Search space"), written to be fast on CPU.

Every op maps (N, C, H, W) -> (N, C, H/stride, W/stride). In the search network all ops
are built with ``affine=False`` and pools are followed by a non-affine BatchNorm; the
evaluation network uses affine BatchNorm and bare pools, as in DARTS.

The modules (and so the state_dict keys) are those of the straightforward formulation
(``nn.Sequential`` of ReLU, ``nn.Conv2d(groups=C)``, 1×1 ``nn.Conv2d``, BatchNorm); only
the arithmetic is arranged differently, keeping the math identical:

* depthwise convolutions go through :func:`depthwise_conv`, because oneDNN's CPU
  backward of dilated and of 5×5 depthwise convolutions is 10–100× slower than its
  forward (see that function);
* on CPU, tensors are kept channels-last: oneDNN's depthwise, pooling and BatchNorm
  kernels are several times faster in NHWC, and converting once at the cell inputs
  (a no-op after the first cell) means no layout conversion between ops;
* :meth:`mixed` (used by the search network) reuses what all edges leaving one state
  share (ReLU of the input, pooled+normalised input, its dilation phases) through a
  :class:`Shared` cache, and folds the op's α weight into the final BatchNorm's scale,
  so the weighting costs neither a pass over the output nor a saved activation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

CL = torch.channels_last


def to_fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU (a no-op when it already is); untouched elsewhere."""
    return x.contiguous(memory_format=CL) if x.device.type == "cpu" else x


def _phases(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, H/2, W/2): the four pixel phases (r, c) ∈ {0,1}², stacked in batch."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=CL):
        y = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
        return y.reshape(4 * n, h // 2, w // 2, c).permute(0, 3, 1, 2)
    y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(3, 5, 0, 1, 2, 4)
    return y.reshape(4 * n, c, h // 2, w // 2)


def _unphase(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_phases`."""
    n4, c, h, w = y.shape
    n = n4 // 4
    if y.is_contiguous(memory_format=CL):
        z = y.permute(0, 2, 3, 1).reshape(2, 2, n, h, w, c).permute(2, 3, 0, 4, 1, 5)
        return z.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    z = y.reshape(2, 2, n, c, h, w).permute(2, 3, 4, 0, 5, 1)
    return z.reshape(n, c, 2 * h, 2 * w)


def _dilation_plan(x: torch.Tensor, k: int, stride: int, padding: int, dilation: int) -> str | None:
    """How :func:`depthwise_conv` rearranges a dilation-2 "same" convolution, if it does."""
    if x.device.type != "cpu" or dilation != 2 or padding != k - 1:
        return None
    if stride == 2:
        return "even"
    return "phases" if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 else None


def dilation_input(x: torch.Tensor, plan: str) -> torch.Tensor:
    """The rearranged input for ``plan`` (shareable by every conv reading the same x)."""
    if plan == "even":
        return x[:, :, ::2, ::2].contiguous(memory_format=CL if x.is_contiguous(memory_format=CL)
                                            else torch.contiguous_format)
    return _phases(x)


def depthwise_conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int,
                   prepared: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, stride, padding, dilation, groups=C)``, arranged so CPU backward is fast.

    A dilation-2 "same" convolution (padding = k − 1) only ever combines pixels of one
    parity phase, so it equals an undilated convolution (padding (k−1)/2) on each of
    the four phases: at stride 2 only phase (0, 0) is read, so it is an undilated
    convolution of ``x[:, :, ::2, ::2]``; at stride 1 the phases are stacked into the
    batch. Same products, same sums: only the order of memory accesses changes.
    oneDNN has a fast (jit_dw) backward only for undilated depthwise convolutions, so
    this turns 20–100 ms backward passes into ~1 ms. ``prepared`` may pass
    ``dilation_input(x, plan)`` in, computed once for all convs reading x. On other
    devices (cuDNN handles dilation well) the plain call is used.
    """
    c, k = x.shape[1], w.shape[-1]
    plan = _dilation_plan(x, k, stride, padding, dilation)
    if plan is None:
        return F.conv2d(x, w, None, stride, padding, dilation, c)
    xi = dilation_input(x, plan) if prepared is None else prepared
    y = F.conv2d(xi, w, None, 1, padding // 2, 1, c)
    return y if plan == "even" else _unphase(y)


def accumulate(acc: torch.Tensor | None, y: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """acc + y·scale (scale (C,) broadcast over channels), one pass where possible."""
    if scale is None:
        return y if acc is None else acc + y
    s = scale.view(1, -1, 1, 1)
    return y * s if acc is None else torch.addcmul(acc, y, s)


class _RowBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of a channels-last tensor seen as an (N·H·W, C) matrix.

    torch's CPU channels-last BatchNorm kernels are 3–5× slower than this for C ≤ 8
    or large N·H·W (e.g. 600 µs vs 150 µs forward at 32×8×32×32): they vectorise over
    the few channels of a row. Column sums (``sum(0)``) and broadcast multiplies are
    fast, so this computes the same two-pass statistics from them: μ = Σx/M,
    σ² = Σ(x−μ)²/M, y = (x−μ)·(w/σ). Running statistics are updated in place exactly
    as ``F.batch_norm`` does. Under ``create_graph=True`` (the exact second-order
    gradients of tests/test_unrolled.py) the backward differentiates torch's own
    BatchNorm instead, so double backward stays exact.
    """

    @staticmethod
    def forward(ctx, x, scale, running_mean, running_var, momentum: float, eps: float):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        m = rows.shape[0]
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
        return (xc * a).view(n, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: go through torch's differentiable BN
            inputs = [x] + ([scale] if ctx.needs_input_grad[1] else [])
            y = F.batch_norm(x, None, None, scale, None, True, 0.0, ctx.eps)
            grads = torch.autograd.grad(y, inputs, grad, create_graph=True)
            return grads[0], (grads[1] if len(grads) > 1 else None), None, None, None, None
        n, c, h, w = grad.shape
        g = grad.permute(0, 2, 3, 1).reshape(-1, c)
        xc = x.permute(0, 2, 3, 1).reshape(-1, c) - mean
        m = g.shape[0]
        sum_g = g.sum(0)
        sum_gx = (g * xc).sum(0).mul_(invstd)  # Σ g·x̂
        a = invstd if scale is None else invstd * scale
        k1 = -(a * invstd * sum_gx) / m
        gx = torch.addcmul(-(a * sum_g) / m, g, a).addcmul_(xc, k1)
        g_scale = sum_gx if ctx.needs_input_grad[1] else None
        return gx.view(n, h, w, c).permute(0, 3, 1, 2), g_scale, None, None, None, None


def _use_row_bn(x: torch.Tensor) -> bool:
    """Where _RowBatchNorm measured faster than torch's kernel (CPU, channels-last)."""
    n, c, h, w = x.shape
    return (x.device.type == "cpu" and (c < 16 or n * h * w >= 32768)
            and x.is_contiguous(memory_format=CL) and n * h * w > 1)


def batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(x)``, optionally times ``scale`` (C,), as one BatchNorm with that scale as its weight.

    ``bn`` must be non-affine when ``scale`` is given: then (x − μ)/σ · s is exactly a
    BatchNorm with weight s, and autograd gets ds from the BatchNorm backward, which
    needs only the BN input it saves anyway.
    """
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    # contiguous: torch 2.14's CPU BN backward reads a stride-0 (expanded) weight wrongly
    # when input and grad are channels-last (grad_input comes out garbage)
    weight, bias = (bn.weight, bn.bias) if scale is None else (scale.contiguous(), None)
    use_batch = bn.training or not bn.track_running_stats
    if use_batch and bias is None and _use_row_bn(x):
        return _RowBatchNorm.apply(x, weight, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, use_batch, bn.momentum, bn.eps)


class Shared:
    """What every edge leaving one state can share, computed on first use.

    ``relu`` feeds all conv ops; ``dilation_input`` is relu(x) rearranged for dilated
    convolutions (see :func:`depthwise_conv`);
    ``pooled`` caches pool(x) and, in training mode, its BatchNorm output (a
    non-affine BN in training normalises with batch statistics, so all edges' BNs of
    the same pooled input produce the same output; their running statistics are kept
    equal by copying, so the state_dict is what separate BNs would hold).
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
        return self.get("relu", lambda: F.relu(self.x))

    def dilation_input(self, plan: str) -> torch.Tensor:
        return self.get(("dilation", plan), lambda: dilation_input(self.relu, plan))


class ReLUConvBN(nn.Sequential):
    """ReLU -> k×k conv -> BN: the cell-input preprocessing of DARTS (switches to channels-last)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm(self[2], self[1](F.relu(to_fast_layout(x))))


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

    def after_relu(self, r: torch.Tensor, scale=None, prepared=None) -> torch.Tensor:
        dw = self[1]
        y = depthwise_conv(r, dw.weight, dw.stride[0], dw.padding[0], dw.dilation[0], prepared)
        return batch_norm(self[3], F.conv2d(y, self[2].weight), scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(F.relu(x))

    def mixed(self, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        dw = self[1]
        plan = _dilation_plan(src.x, dw.kernel_size[0], dw.stride[0], dw.padding[0], dw.dilation[0])
        y = self.after_relu(src.relu, scale, None if plan is None else src.dilation_input(plan))
        return accumulate(acc, y)


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation=1); only the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x))

    def mixed(self, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        return accumulate(acc, self[1].after_relu(F.relu(self[0].after_relu(src.relu)), scale))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def mixed(self, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        return accumulate(acc, src.x, scale)


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

    def after_relu(self, x: torch.Tensor, scale=None) -> torch.Tensor:
        # odd sizes: pad so both branches give ceil(H/2); DARTS only meets even sizes
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        y = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return batch_norm(self.bn, y, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(F.relu(to_fast_layout(x)))

    def mixed(self, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        return accumulate(acc, self.after_relu(src.relu, scale))


class Pool(nn.Sequential):
    """3×3 max or average pool (count_include_pad=False); the search variant adds a BN."""

    def __init__(self, kind: str, c: int, stride: int, search: bool):
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        super().__init__(pool, nn.BatchNorm2d(c, affine=False)) if search else super().__init__(pool)
        self.key = (kind, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[0](x)
        return batch_norm(self[1], y) if len(self) > 1 else y

    def mixed(self, src: Shared, scale: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
        pooled = src.get(self.key, lambda: self[0](src.x))
        bn = self[1]
        if not (bn.training and bn.track_running_stats):
            return accumulate(acc, batch_norm(bn, pooled, scale))
        first_bn, out = src.get(self.key + ("bn",), lambda: (bn, batch_norm(bn, pooled)))
        if first_bn is not bn:  # keep this BN's running statistics what its own pass would give
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(bn, name).copy_(getattr(first_bn, name))
        return accumulate(acc, out, scale)


OpFactory = Callable[[int, int, bool], nn.Module]

#: name -> factory(C, stride, search). ``search=True`` builds the supernet variant
#: (affine=False everywhere, BN after pools); ``False`` the evaluation-network variant.
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
