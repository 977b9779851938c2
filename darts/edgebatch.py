"""The ops of several edges leaving the same state, computed as one wider op.

On small feature maps the search step is bound by per-call overhead, not arithmetic:
a tiny supernet's forward makes ~500 op applications on 16×16 maps, each a handful
of kernels of a few microseconds of work. The edges leaving one state all read the
same input, so the same op of ``e`` such edges is one convolution with ``e``× the
output channels (a depth-multiplier depthwise convolution, or a plain one for
FactorizedReduce), one BatchNorm over ``e·C`` channels (statistics are per channel,
so this is exactly ``e`` BatchNorms) and, where the next layer must keep the edges
apart, a block-diagonal 1×1 convolution. Same products and sums per edge as
``darts.ops``; only the number of calls changes. The weights stay in each edge's own
modules (same parameters, state_dict and checkpoints); they are stacked per forward,
which autograd differentiates like any other op. The 3×3 and 5×5 ops of one family
(sep_conv or dil_conv) go together too: a 3×3 kernel zero-padded to 5×5 gives the same
sums (the extra products are exact zeros), for two calls fewer per layer.

Channel orders: a depth-multiplier convolution (groups = C, ``e·C`` outputs) emits
channel ``c·e + m`` for input channel ``c`` and edge ``m``, "(c, m)"; everything after
the first 1×1 convolution is edge-major, "(m, c)", so member ``m``'s output is the
channel slice ``[m·C, (m+1)·C)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import CL, DilConv, FactorizedReduce, SepConv, batch_norm_function, depthwise_conv

#: batch edges only where calls dominate: per-edge output maps (N·C·H'·W') of at most this
#: many values. Measured per cell, forward + backward, 2 threads: at 32×4×16×16 (the tiny and
#: quick configs' first cells) 67 → 46 ms, at 32×16×4×4 32 → 27 ms; at 32×16×16×16 and
#: 32×32×8×8 ("small") 72 → 96 and 53 → 68 ms: there the block-diagonal 1×1 convolutions'
#: e× arithmetic (and oneDNN's slower wide kernels) cost more than the calls saved.
MAX_NUMEL = 1 << 15


def batchable(op: nn.Module, x: torch.Tensor, n_edges: int) -> bool:
    """Whether ``n_edges`` ops like ``op`` reading ``x`` are computed as one (CPU only: on
    GPUs cuDNN's grouped kernels have other trade-offs, not measured here). The size that
    counts is the per-edge output, x's at stride 1, a quarter of it at stride 2."""
    if n_edges < 2 or x.device.type != "cpu" or not isinstance(op, (SepConv, DilConv, FactorizedReduce)):
        return False
    stride = 2 if isinstance(op, FactorizedReduce) else (op[0][1] if isinstance(op, SepConv) else op[1]).stride[0]
    return x.numel() // (stride * stride) <= MAX_NUMEL


def forward_many(ops: list[nn.Module], relu_x: torch.Tensor, scale: torch.Tensor,
                 prepared=None) -> torch.Tensor:
    """[scale_m · op_m(x)] for the edges m, as one (N, e·C, H', W') edge-major tensor.

    ``relu_x`` = relu(x), shared with every other op reading x; ``scale`` the e·C
    per-channel weights (edge-major); ``prepared(relu_x, k, stride, padding, dilation)``
    gives the shared rearranged input of a dilated convolution, or None
    (``darts.ops.Shared.plan_input``). ``ops`` are all SepConv, all DilConv (in either case
    of any kernel sizes, ``darts.supernet.op_groups``) or all FactorizedReduce (:func:`batchable`).
    """
    first = ops[0]
    if isinstance(first, SepConv):
        y = _dil_conv_many([op[0] for op in ops], relu_x, None, None, first_layer=True)
        return _dil_conv_many([op[1] for op in ops], F.relu(y, inplace=True), scale, None, first_layer=False)
    if isinstance(first, DilConv):
        return _dil_conv_many(ops, relu_x, scale, prepared, first_layer=True)
    x = relu_x
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    w = torch.cat([op.weight_2x2() for op in ops])  # every edge reads the same x: a plain conv
    return _batch_norm_many([op.bn for op in ops], F.conv2d(x, w, None, 2), scale)


def _dil_conv_many(ops: list[DilConv], x: torch.Tensor, scale, prepared, first_layer: bool) -> torch.Tensor:
    """depthwise -> 1×1 -> BN of e DilConvs (minus the ReLU). ``first_layer``: all edges read
    the same ``x`` (C channels); otherwise ``x`` is already edge-major (e·C channels).

    The ops may differ in kernel size (3×3 and 5×5 of one family, same stride and dilation):
    each depthwise kernel is zero-padded to the largest, k×k at padding p becoming K×K at
    padding p + dilation·(K − k)/2, which reads the same pixels with the same weights."""
    e, dw = len(ops), ops[0][1]
    big = max(op[1].kernel_size[0] for op in ops)
    stride, dil = dw.stride[0], dw.dilation[0]
    pad = dw.padding[0] + dil * (big - dw.kernel_size[0]) // 2
    weights = [_pad_kernel(op[1].weight, big) for op in ops]
    if first_layer:
        w_dw = torch.stack(weights, 1).flatten(0, 1)  # (c, m) order
        plan_input = None if prepared is None else prepared(x, big, stride, pad, dil)
    else:
        w_dw = torch.cat(weights)  # (m, c): a plain depthwise conv
        plan_input = None
    y = depthwise_conv(x, w_dw, stride, pad, dil, plan_input)
    pw = torch.stack([op[2].weight.flatten(1) for op in ops])  # (e, O, C)
    eye = torch.eye(e, dtype=pw.dtype, device=pw.device)
    if first_layer:  # input (c, m): W[(m, o), (c, m')] = P_m[o, c]·δ(m, m')
        w_pw = (pw.unsqueeze(-1) * eye.view(e, 1, 1, e)).reshape(e * pw.shape[1], -1, 1, 1)
    else:            # input (m, c): W[(m, o), (m', c)] = P_m[o, c]·δ(m, m')
        w_pw = (pw.unsqueeze(2) * eye.view(e, 1, e, 1)).reshape(e * pw.shape[1], -1, 1, 1)
    return _batch_norm_many([op[3] for op in ops], F.conv2d(y, w_pw), scale)


def _pad_kernel(w: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, 1, k, k) kernel zero-padded, centred, to size × size (k, size odd)."""
    m = (size - w.shape[-1]) // 2
    return F.pad(w, (m, m, m, m)) if m else w


def _batch_norm_many(bns: list[nn.BatchNorm2d], x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The e non-affine BNs ``bns`` over the edge-major channels of ``x``, times ``scale``.

    Their running statistics are concatenated for the call and written back, so each
    BN's buffers end as if it had run alone.
    """
    bn = bns[0]
    track = bn.track_running_stats
    rm = torch.cat([b.running_mean for b in bns]) if track else None
    rv = torch.cat([b.running_var for b in bns]) if track else None
    use_batch = bn.training or not track
    y = batch_norm_function(x.contiguous(memory_format=CL), rm, rv, None if scale is None else scale.contiguous(),
                            None, use_batch, bn.momentum, bn.eps)
    if track and bn.training:
        c = bn.num_features
        torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(c)))
        torch._foreach_copy_([b.running_var for b in bns], list(rv.split(c)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y
