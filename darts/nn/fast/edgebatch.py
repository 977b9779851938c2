"""The ops of several edges leaving the same state, computed as one wider op.

On small feature maps the search step is bound by per-call overhead, not arithmetic:
a tiny supernet's forward makes ~500 op applications on 16×16 maps, each a handful
of kernels of a few microseconds of work. The edges leaving one state all read the
same input, so the same op of ``e`` such edges is one convolution with ``e``× the
output channels (a depth-multiplier depthwise convolution, or a plain one for
FactorizedReduce), one BatchNorm over ``e·C`` channels (statistics are per channel,
so this is exactly ``e`` BatchNorms) and, where the next layer must keep the edges
apart, a block-diagonal 1×1 convolution. Same products and sums per edge as
``darts.nn.ops``; only the number of calls changes. The weights stay in each edge's own
modules (same parameters, state_dict and checkpoints); they are packed into the wide
op's kernels by two autograd Functions (:class:`_PackDepthwise`, :class:`_BlockDiagonal`),
once per search iteration where :class:`PackCache` may keep them. The 3×3 and 5×5 ops of one family
(sep_conv or dil_conv) go together too: a 3×3 kernel zero-padded to 5×5 gives the same
sums (the extra products are exact zeros), for two calls fewer per layer.

Channel orders: a depth-multiplier convolution (groups = C, ``e·C`` outputs) emits
channel ``c·e + m`` for input channel ``c`` and edge ``m``, "(c, m)"; everything after
the first 1×1 convolution is edge-major, "(m, c)", so member ``m``'s output is the
channel slice ``[m·C, (m+1)·C)``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from darts.nn.fast.depthwise import depthwise_conv
from darts.nn.ops import CL, DilConv, FactorizedReduce, SepConv, batch_norm_function

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
    stride = 2 if isinstance(op, FactorizedReduce) else (op[0].dw if isinstance(op, SepConv) else op.dw).stride[0]
    return x.numel() // (stride * stride) <= MAX_NUMEL


def forward_many(ops: list[nn.Module], relu_x: torch.Tensor, scale: torch.Tensor,
                 prepared=None, packs: PackCache | None = None) -> torch.Tensor:
    """[scale_m · op_m(x)] for the edges m, as one (N, e·C, H', W') edge-major tensor.

    ``relu_x`` = relu(x), shared with every other op reading x; ``scale`` the e·C
    per-channel weights (edge-major); ``prepared(relu_x, k, stride, padding, dilation)``
    gives the shared rearranged input of a dilated convolution, or None
    (``darts.nn.ops.Shared.plan_input``); ``packs`` keeps the packed weights between forwards
    (:class:`PackCache`; None: packed afresh). ``ops`` are all SepConv, all DilConv (in either
    case of any kernel sizes, ``darts.nn.supernet.op_groups``) or all FactorizedReduce (:func:`batchable`).
    """
    packs = packs if packs is not None else PackCache()
    first = ops[0]
    if isinstance(first, SepConv):
        y = _dil_conv_many([op[0] for op in ops], relu_x, None, None, True, packs)
        return _dil_conv_many([op[1] for op in ops], F.relu(y, inplace=True), scale, None, False, packs)
    if isinstance(first, DilConv):
        return _dil_conv_many(ops, relu_x, scale, prepared, True, packs)
    x = relu_x
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    members = [w for op in ops for w in (op.conv_1.weight, op.conv_2.weight)]
    # every edge reads the same x: a plain conv
    w = packs.get(("fr", *map(id, ops)), members, lambda: torch.cat([op.weight_2x2() for op in ops]))
    return _batch_norm_many([op.bn for op in ops], F.conv2d(x, w, None, 2), scale)


def _dil_conv_many(ops: list[DilConv], x: torch.Tensor, scale, prepared, first_layer: bool,
                   packs: PackCache) -> torch.Tensor:
    """depthwise -> 1×1 -> BN of e DilConvs (minus the ReLU). ``first_layer``: all edges read
    the same ``x`` (C channels); otherwise ``x`` is already edge-major (e·C channels).

    The ops may differ in kernel size (3×3 and 5×5 of one family, same stride and dilation):
    each depthwise kernel is zero-padded to the largest, k×k at padding p becoming K×K at
    padding p + dilation·(K − k)/2, which reads the same pixels with the same weights."""
    dws, pws = [op.dw for op in ops], [op.pw.weight for op in ops]
    dw = dws[0]
    big = max(m.kernel_size[0] for m in dws)
    stride, dil = dw.stride[0], dw.dilation[0]
    pad = dw.padding[0] + dil * (big - dw.kernel_size[0]) // 2
    members = [m.weight for m in dws] + pws
    w_dw, w_pw = packs.get((first_layer, *map(id, ops)), members, lambda: (
        _PackDepthwise.apply(big, first_layer, *members[:len(ops)]), _BlockDiagonal.apply(first_layer, *pws)))
    plan_input = None if prepared is None or not first_layer else prepared(x, big, stride, pad, dil)
    y = depthwise_conv(x, w_dw, stride, pad, dil, plan_input)
    return _batch_norm_many([op.bn for op in ops], F.conv2d(y, w_pw), scale)


class PackCache:
    """Packed weights of edge groups, reused within one :meth:`reusing` block.

    A search iteration runs two forwards with the same weights (the α step's, then the w
    step's), so packing once per iteration instead of once per forward halves that work
    (with this and the two packing Functions, which replaced per-member pads, stacks and a
    product with an identity matrix, the benchmark's tiny step went 0.216 → 0.210 s,
    in-process A/B, medians of 16). Reuse needs to know when a weight changes, and torch cannot always tell: its
    fused optimizers and writes through ``.data`` leave a tensor's version counter as it
    was. So packs are kept only inside a block whose owner clears them where weights
    change without telling (``darts.loops.search.Searcher``: one block per iteration, left after
    the w optimizer's step); inside it an entry is also rebuilt when a member is another
    tensor (``torch.func.functional_call``) or its version moved (in-place writes such as
    the second-order step's), or autograd's mode changed. Outside a block every call packs
    afresh. The packs' backward saves no tensors, so two backward passes through one pack
    are fine. A copy or a pickle starts empty.
    """

    def __init__(self):
        self._entries: dict = {}
        self.active = False

    def get(self, key, members: list[torch.Tensor], build):
        if not self.active:
            return build()
        mode = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        versions = [t._version for t in members]
        hit = self._entries.get(key)
        if (hit is not None and hit[0] == mode and hit[2] == versions
                and all(a is b for a, b in zip(hit[1], members))):
            return hit[3]
        value = build()
        self._entries[key] = (mode, members, versions, value)
        return value

    @contextmanager
    def reusing(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False
            self._entries.clear()

    def __deepcopy__(self, memo) -> PackCache:
        return PackCache()

    def __getstate__(self) -> dict:
        return {"_entries": {}, "active": False}


def _runs(ws) -> list[tuple[int, int, int]]:
    """(start, end, k) of the runs of equal kernel size k in ``ws`` (op_groups keeps them together)."""
    runs, i = [], 0
    while i < len(ws):
        k, j = ws[i].shape[-1], i
        while j < len(ws) and ws[j].shape[-1] == k:
            j += 1
        runs.append((i, j, k))
        i = j
    return runs


class _PackDepthwise(torch.autograd.Function):
    """The e members' (C, 1, k, k) depthwise kernels as one (e·C, 1, K, K) kernel: (c, m)
    channel order for a depth-multiplier conv (``interleave``), else (m, c); each kernel
    zero-padded, centred, to K×K. Backward hands each member its part (a linear map: no
    tensor saved, so a cached pack may be backpropagated through more than once)."""

    @staticmethod
    def forward(ctx, size: int, interleave: bool, *ws):
        c, e = ws[0].shape[0], len(ws)
        runs = _runs(ws)
        ctx.meta = (size, interleave, c, e, runs)
        if len(runs) == 1 and runs[0][2] == size:
            return torch.stack(ws, 1 if interleave else 0).view(e * c, 1, size, size)
        out = ws[0].new_zeros((c, e, size, size) if interleave else (e, c, size, size))
        for i, j, k in runs:
            p = (size - k) // 2
            part = torch.stack(ws[i:j], 1 if interleave else 0).flatten(1, 2)  # (C, run, k, k) / (run, C, k, k)
            if interleave:
                out[:, i:j, p:p + k, p:p + k] = part
            else:
                out[i:j, :, p:p + k, p:p + k] = part
        return out.view(e * c, 1, size, size)

    @staticmethod
    def backward(ctx, g):
        size, interleave, c, e, runs = ctx.meta
        g4 = g.reshape(c, e, size, size).transpose(0, 1) if interleave else g.reshape(e, c, size, size)
        grads = []
        for i, j, k in runs:
            p = (size - k) // 2
            grads += [m.unsqueeze(1) for m in g4[i:j, :, p:p + k, p:p + k].contiguous().unbind(0)]
        return (None, None, *grads)


class _BlockDiagonal(torch.autograd.Function):
    """The e members' (O, C, 1, 1) 1×1 kernels as one block-diagonal (e·O, e·C, 1, 1) kernel:
    W[(m, o), (c, m')] = P_m[o, c]·δ(m, m') for input channels in (c, m) order (``interleave``),
    W[(m, o), (m', c)] = P_m[o, c]·δ(m, m') for (m, c). Backward: each member's diagonal block."""

    @staticmethod
    def forward(ctx, interleave: bool, *ps):
        e, (o, c) = len(ps), ps[0].shape[:2]
        ctx.meta = (interleave, e, o, c)
        out = ps[0].new_zeros((e, o, c, e) if interleave else (e, o, e, c))
        out.diagonal(0, 0, 3 if interleave else 2).copy_(torch.stack(ps, -1).view(o, c, e))
        return out.view(e * o, e * c, 1, 1)

    @staticmethod
    def backward(ctx, g):
        interleave, e, o, c = ctx.meta
        g4 = g.reshape((e, o, c, e) if interleave else (e, o, e, c))
        blocks = g4.diagonal(0, 0, 3 if interleave else 2).permute(2, 0, 1).contiguous()
        return (None, *[b.view(o, c, 1, 1) for b in blocks.unbind(0)])


def _batch_norm_many(bns: list[nn.BatchNorm2d], x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The e non-affine BNs ``bns`` over the edge-major channels of ``x``, times ``scale``.

    Their running statistics are concatenated for the call and written back, so each
    BN's buffers end as if it had run alone.
    """
    bn = bns[0]
    track = bn.track_running_stats
    means, variances = ([b.running_mean for b in bns], [b.running_var for b in bns]) if track else ((), ())
    rm = torch.cat(means) if track else None
    rv = torch.cat(variances) if track else None
    use_batch = bn.training or not track
    y = batch_norm_function(x.contiguous(memory_format=CL), rm, rv, None if scale is None else scale.contiguous(),
                            None, use_batch, bn.momentum, bn.eps)
    if track and bn.training:
        c = bn.num_features
        torch._foreach_copy_(means, list(rm.split(c)))
        torch._foreach_copy_(variances, list(rv.split(c)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y
