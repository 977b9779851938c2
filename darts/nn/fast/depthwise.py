"""Depthwise convolutions arranged so that their CPU backward is fast (oneDNN's jit_dw kernels).

Two rearrangements, same products: a dilation-2 "same" convolution becomes an undilated
one over the four pixel phases (:func:`depthwise_conv`), and a 5×5 kernel's weight
gradient is made of two 5×3 ones (:class:`_Depthwise5x5`). Elsewhere than CPU these are
the plain calls. Used by ``darts.nn.ops`` (one edge's op) and ``darts.nn.fast.edgebatch`` (several).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _phases(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, H/2, W/2) channels-last: the four pixel phases, stacked in batch."""
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
    return y.reshape(4 * n, h // 2, w // 2, c).permute(0, 3, 1, 2)


def _unphase(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_phases` (channels-last result)."""
    n4, c, h, w = y.shape
    z = y.permute(0, 2, 3, 1).reshape(2, 2, n4 // 4, h, w, c).permute(2, 3, 0, 4, 1, 5)
    return z.reshape(n4 // 4, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def dilation_plan(x: torch.Tensor, k: int, stride: int, padding: int, dilation: int) -> str | None:
    """How :func:`depthwise_conv` rearranges a dilation-2 "same" convolution, if it does."""
    if x.device.type != "cpu" or dilation != 2 or padding != k - 1:
        return None
    return "even" if stride == 2 else "phases" if x.shape[-1] % 2 == 0 == x.shape[-2] % 2 else None


def dilation_input(x: torch.Tensor, plan: str) -> torch.Tensor:
    """The rearranged input for ``plan`` (shareable by every conv reading the same x)."""
    # a 1×1 average pool reads x[:, :, ::2, ::2]; unlike the slice, its backward stays NHWC
    return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), 1, 2) if plan == "even" else _phases(x)


def depthwise_conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int,
                   prepared: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, stride, padding, dilation, groups=C)``, arranged so CPU backward is fast.

    A dilation-2 "same" convolution (padding k − 1) only combines pixels of one parity
    phase, so it is an undilated convolution (padding (k−1)/2) of each of the four phases;
    at stride 2 only phase (0, 0) is read: an undilated convolution of x[:, :, ::2, ::2].
    Same products and sums, other memory order. oneDNN's fast (jit_dw) backward exists
    only for undilated depthwise convolutions, so 20–100 ms backward passes become ~1 ms.
    ``prepared`` = ``dilation_input(x, plan)``, computed once for all convs reading x.
    Elsewhere than CPU (cuDNN handles dilation well) this is the plain call.
    """
    c, k = x.shape[1], w.shape[-1]
    plan = dilation_plan(x, k, stride, padding, dilation)
    if plan is not None:
        y = depthwise_conv(dilation_input(x, plan) if prepared is None else prepared, w, 1, padding // 2, 1)
        return y if plan == "even" else _unphase(y)
    if (k == 5 and padding == 2 and dilation == 1 and w.shape[0] == c and x.shape[-1] >= MIN_WIDTH_5X5
            and x.device.type == "cpu" and torch.is_grad_enabled() and w.requires_grad):
        # a view: the engine can say whether a non-leaf node runs (for a leaf under
        # autograd.grad it cannot), and its node must be taken here, with grad mode on
        w = w.view_as(w)
        return _Depthwise5x5.apply(x, w, stride, torch.autograd.graph.get_gradient_edge(w).node)
    return F.conv2d(x, w, None, stride, padding, dilation, c)


#: the 5×5 weight gradient from 5×3 pieces pays from 16×16 input maps on. Weight gradient alone,
#: 2 threads, oneDNN's 5×5 vs the two 5×3 pieces (pads included): 64×16×32×32 2908 → 457 µs,
#: 32×8×32×32 675 → 291, 32×16×16×16 286 → 135, 32×32×8×8 176 → 125 (close to the Function's own
#: cost: its Python backward took ~55 µs per call in the small step's profile), 32×64×4×4 108 → 244.
MIN_WIDTH_5X5 = 16


class _Depthwise5x5(torch.autograd.Function):
    """A "same" 5×5 depthwise convolution (padding 2, stride 1 or 2) whose weight gradient
    is made of two 5×3 ones.

    oneDNN's fast depthwise weight-gradient kernel (jit_dw) takes kernels at most 3 wide;
    a 5×5 one falls back to a dense blocked kernel that pads every channel to a 16×16
    block, 1.4–6× slower than the two 5×3 ones; 5×5 depthwise backward passes were ~11 % of
    the small search step.
    The gradient of tap (i, d), d ∈ −2..2 the column offset, is Σ g[n,c,h,w]·x[n,c,h'+i−2,
    w'+d] (h' = stride·h, w' = stride·w). A 5×3 kernel with no column padding over
    x padded by two zero columns on the left reads offsets −2..0; over x padded by two on
    the right, 0..2. Both are exact (every product with a real pixel is in), so column 0
    is taken from the first. Same products, other summation order than oneDNN's (float32
    results agree to rounding). The weight gradient is computed only if this backward
    pass uses it (the α step asks for α gradients alone), which autograd's engine tells
    of ``w_node``, the node ``w`` came from (taken by the caller, with grad mode on: taken
    in ``forward`` it was always None, and once the weight gradient silently never came).
    """

    @staticmethod
    def forward(ctx, x, w, stride: int, w_node):
        if torch.is_autocast_enabled("cpu"):  # cast as autocast casts F.conv2d's inputs, so that the
            dt = torch.get_autocast_dtype("cpu")  # backward (run outside autocast) sees one dtype;
            x, w = x.to(dt), w.to(dt)  # autograd returns w's gradient to w's float32
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.w_node = stride, w_node
        return F.conv2d(x, w, None, stride, 2, 1, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, c, conv_bwd = ctx.stride, x.shape[1], torch.ops.aten.convolution_backward
        if torch.is_grad_enabled():  # create_graph: differentiate the plain convolution
            need = [t for t, n in zip((x, w), ctx.needs_input_grad) if n]
            grads = iter(torch.autograd.grad(F.conv2d(x, w, None, s, 2, 1, c), need, g, create_graph=True))
            return tuple(next(grads) if n else None for n in ctx.needs_input_grad[:2]) + (None, None)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = conv_bwd(g, x, w, None, [s, s], [2, 2], [1, 1], False, [0, 0], c, [True, False, False])[0]
        if not torch._C._will_engine_execute_node(ctx.w_node):
            return gx, None, None, None
        w53, args = w.new_empty(c, 1, 5, 3), ([s, s], [2, 0], [1, 1], False, [0, 0], c, [False, True, False])
        left = conv_bwd(g, F.pad(x, (2, 0)), w53, None, *args)[1]  # column offsets −2..0
        right = conv_bwd(g, F.pad(x, (0, 2)), w53, None, *args)[1]  # 0..2
        return gx, torch.cat([left, right[..., 1:]], -1), None, None
