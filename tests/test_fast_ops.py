"""The fast op formulation computes the same function as the straightforward one.

darts/nn/ops.py rearranges the arithmetic for CPU speed (dilated depthwise convolutions on
pixel phases, a row-wise BatchNorm, channels-last, shared ReLU/pooling per source
state, α folded into the last BatchNorm). These tests pin it to the plain formulation
in darts/nn/reference.py: nn.Conv2d(groups=C), nn.BatchNorm2d, one module per op.

Float32 comparisons use 1e-5 relative to the largest entry. Whole-network gradients
are compared in float64: a network of ReLUs and max-pools is only piecewise smooth,
and in float32 a pre-activation within rounding of 0 (a handful among millions) flips
a ReLU in one formulation and not the other; that changes a few gradient entries by
O(1) while both are "right". In float64 the formulations agree to ~1e-13.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder, not an installed package

from darts.nn import reference as ref  # noqa: E402
from benchmarks.search_bench import prune_half  # noqa: E402
from darts.method.activations import CRB, Softmax  # noqa: E402
from darts.nn import ops  # noqa: E402
from darts.nn.fast import depthwise
from darts.nn.supernet import Shared, mixed_op  # noqa: E402
from darts.nn.supernet import SearchNetwork  # noqa: E402

CL = torch.channels_last


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("size", [16, 15, 17])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_matches_grouped_conv(stride, kernel, dilation, size, layout):
    torch.manual_seed(kernel * 10 + dilation + stride)
    c = 8
    padding = dilation * (kernel - 1) // 2
    x0 = torch.randn(4, c, size, size)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=CL)
    w0 = torch.randn(c, 1, kernel, kernel)
    outs = []
    for fn in (depthwise.depthwise_conv, lambda x, w, s, p, d: F.conv2d(x, w, None, s, p, d, c)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fn(x, w, stride, padding, dilation)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        outs.append((y, *torch.autograd.grad(y, (x, w), g)))
    for got, want in zip(*outs):
        assert got.shape == want.shape
        assert rel(got, want) < 1e-5


class _CountWeightGrads(TorchDispatchMode):
    """Counts convolution backward calls that compute a weight gradient."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default and args[-1][1]:
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_depthwise_5x5_matches_plain_convolution_on_large_maps(monkeypatch, stride, dilation):
    """Large enough for the 5×3-pieces weight gradient (depthwise._Depthwise5x5): same values
    as the plain grouped convolution, the weight gradient only computed when asked for (the
    α step), and exact under create_graph (double backward)."""
    torch.manual_seed(7)
    x0 = torch.randn(8, 16, 34, 34).contiguous(memory_format=CL)
    w0 = torch.randn(16, 1, 5, 5)
    g = torch.randn(8, 16, 34 // stride, 34 // stride, generator=torch.Generator().manual_seed(1))
    pad = 2 * dilation
    calls = []
    real = depthwise._Depthwise5x5.apply
    monkeypatch.setattr(depthwise._Depthwise5x5, "apply", lambda *a: calls.append(1) or real(*a))
    runs = {}
    for name, fn in (("fast", depthwise.depthwise_conv),
                     ("plain", lambda x, w, s, p, d: F.conv2d(x, w, None, s, p, d, 16))):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with _CountWeightGrads() as only_x:
            gx_only, = torch.autograd.grad(fn(x, w, stride, pad, dilation), x, g)
        y = fn(x, w, stride, pad, dilation)
        gx, gw = torch.autograd.grad(y, (x, w), g, create_graph=True)
        second, = torch.autograd.grad((gw * w0).sum() + (gx * x0).sum(), x)
        runs[name] = (y, gx_only, gx, gw, second, only_x.n)
    assert len(calls) == 2  # the fast runs took that path (phases of 34×34 are 17 wide)
    for got, want in zip(runs["fast"][:5], runs["plain"][:5]):
        assert rel(got, want) < 1e-5
    assert runs["fast"][5] == 0  # α-step-like backward: no weight gradient computed


def test_depthwise_5x5_weight_gradient_from_5x3_pieces_is_exact():
    """In float64 the pieces give the plain weight gradient to rounding, edges included
    (odd widths, stride 2: every product with a real pixel is counted once)."""
    torch.manual_seed(9)
    for stride, side in ((1, 16), (1, 17), (2, 16), (2, 19)):
        x = torch.randn(3, 4, side + 1, side, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
        w = torch.randn(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
        fast = depthwise.depthwise_conv(x, w, stride, 2, 1)
        plain = F.conv2d(x, w, None, stride, 2, 1, 4)
        g = torch.randn(plain.shape, dtype=torch.float64)
        got, want = torch.autograd.grad(fast, (x, w), g), torch.autograd.grad(plain, (x, w), g)
        assert torch.equal(fast, plain)
        for a, b in zip(got, want):
            assert rel(a, b) < 1e-12, (stride, side)


def test_depthwise_5x5_weight_gradient_reaches_the_weight():
    """Regression: an earlier custom 5×5 path once never computed the weight gradient outside
    create_graph, so ``backward()`` left 5×5 depthwise weights of large maps untrained."""
    torch.manual_seed(8)
    x = torch.randn(8, 16, 32, 32).contiguous(memory_format=CL).requires_grad_()
    w, w_plain = torch.randn(16, 1, 5, 5, requires_grad=True), None
    w_plain = w.detach().clone().requires_grad_()
    depthwise.depthwise_conv(x, w, 1, 2, 1).square().sum().backward()
    F.conv2d(x, w_plain, None, 1, 2, 1, 16).square().sum().backward()
    assert w.grad is not None and rel(w.grad, w_plain.grad) < 1e-5
    got, = torch.autograd.grad(depthwise.depthwise_conv(x, w * 1.0, 1, 2, 1).square().sum(), w)
    assert rel(got, w_plain.grad) < 1e-5


@pytest.mark.parametrize("weights", ["none", "scale", "affine"])
@pytest.mark.parametrize("shape", [(8, 4, 6, 6), (4, 16, 8, 8)])
def test_row_batch_norm_matches_batch_norm(shape, weights):
    torch.manual_seed(0)
    c = shape[1]
    x0 = (torch.randn(shape) * 2 + 1).contiguous(memory_format=CL)
    s0, b0 = torch.rand(c) + 0.5, torch.randn(c)
    g = torch.randn(shape).contiguous(memory_format=CL)
    results, stats = [], []
    for fast in (True, False):
        x = x0.clone().requires_grad_()
        s = s0.clone().requires_grad_() if weights != "none" else None
        b = b0.clone().requires_grad_() if weights == "affine" else None
        rm, rv = torch.zeros(c), torch.ones(c)
        if fast:
            y = ops._RowBatchNorm.apply(x, s, b, rm, rv, 0.1, 1e-5)
        else:
            y = F.batch_norm(x, rm, rv, s, b, True, 0.1, 1e-5)
        results.append((y, *torch.autograd.grad(y, [t for t in (x, s, b) if t is not None], g)))
        stats.append((rm, rv))
    for got, want in zip(*results):
        assert rel(got, want) < 1e-5
    for got, want in zip(*stats):
        assert rel(got, want) < 1e-6


def test_row_batch_norm_double_backward_is_exact():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    s = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda *t: ops._RowBatchNorm.apply(*t, None, None, 0.1, 1e-5),
                                        (x, s, b))


@pytest.mark.parametrize("dtype,size,tol", [(torch.float32, 12, 1e-5), (torch.float64, 24, 1e-10)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", [n for n in ops.OPS if n != "none"])
def test_search_op_matches_reference(name, stride, dtype, size, tol):
    """``mixed_op`` (weighted, channels-last, shared input) == reference op(x) · w.

    Float64 at 8×24×24 (≥ 4096 rows: the row-wise BatchNorm path) because there dw is a
    sum of 36864 products with cancellation (Σ|terms| ≈ 7600·|dw|): two float32 orders
    of summation then differ by ~2e-5 even where both are right to float32 precision.
    """
    torch.manual_seed(3)
    c = 8
    fast, plain = ops.build_op(name, c, stride, True), ref.build_op(name, c, stride, True)
    plain.load_state_dict(fast.state_dict())
    fast, plain = fast.to(dtype), plain.to(dtype)
    x0 = torch.randn(4 if size == 12 else 8, c, size, size, dtype=dtype)
    w0 = torch.tensor(0.3, dtype=dtype)
    results = []
    for i, net in enumerate((fast, plain)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = mixed_op(net, Shared(ops.to_fast_layout(x)), w.expand(c), None) if i == 0 else net(x) * w
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        results.append((y, *torch.autograd.grad(y, [x, w, *net.parameters()], g.contiguous(memory_format=CL))))
    for got, want in zip(*results):
        assert rel(got, want) < tol
    for key, value in plain.state_dict().items():  # running statistics too
        assert rel(fast.state_dict()[key], value) < max(tol, 1e-6)


@pytest.mark.parametrize("name", [n for n in ops.OPS if n != "none"])
def test_eval_op_matches_reference(name):
    torch.manual_seed(4)
    fast, plain = ops.build_op(name, 8, 1, False), ref.build_op(name, 8, 1, False)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 8, 10, 10)
    assert rel(fast(ops.to_fast_layout(x)), plain(x)) < 1e-5


def _net_pair(activation, half: bool, dtype=torch.float64):
    torch.manual_seed(0)
    fast = SearchNetwork(activation, C=4, layers=5)
    if half:
        prune_half(fast)
    plain = ref.ReferenceSearchNetwork(activation, C=4, layers=5)
    plain.load_state_dict(fast.state_dict())
    return fast.to(dtype), plain.to(dtype)


@pytest.mark.parametrize("activation,half,side", [("softmax", False, 16), ("crb", False, 16),
                                                  ("crb", True, 18)])
def test_search_network_matches_reference(activation, half, side):
    """Output, every gradient (α and weights) and the BN running statistics, float64."""
    fast, plain = _net_pair(Softmax() if activation == "softmax" else CRB(), half)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, side, side, generator=g, dtype=torch.float64)  # ≥ 4096 rows: row-wise BN
    y = torch.randint(0, 10, (16,), generator=g)
    results = []
    for net in (fast, plain):
        out = net(x)
        grads = torch.autograd.grad(F.cross_entropy(out, y), list(net.parameters()), allow_unused=True)
        results.append((out, grads))
    assert rel(results[0][0], results[1][0]) < 1e-10
    for (name, _), got, want in zip(fast.named_parameters(), results[0][1], results[1][1]):
        assert (got is None) == (want is None), name  # pruned ops: no gradient in either
        if want is not None:
            assert rel(got, want) < 1e-9, name
    fs, ps = fast.state_dict(), plain.state_dict()
    for key in ps:
        assert torch.allclose(fs[key].double(), ps[key].double(), rtol=0, atol=1e-10), key


def test_search_network_float32_forward_matches_reference():
    fast, plain = _net_pair(CRB(), True, torch.float32)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    assert rel(fast(x), plain(x)) < 1e-5


@pytest.mark.parametrize("drop_prob", [0.0, 0.3])
def test_eval_network_matches_reference_forward_and_gradients(drop_prob, monkeypatch):
    """The whole evaluation network (stride-2 reduce ops, FactorizedReduce, auxiliary head)
    built from the fast ops computes what the plain ops compute, gradients included; with
    drop-path too, given the same masks (ours draws a cell's at once and sums each node
    with addcmul, the reference drops per op as DARTS and adds)."""
    from darts.nn import evalnet
    from darts.nn.evalnet import EvalNetwork
    from darts.space.primitives import Genotype

    gen = torch.Generator().manual_seed(3)
    cells_masks: list[torch.Tensor] = []  # the masks our cells drew, in order

    def drop_masks(n, like, p):
        m = (torch.rand(n, like.size(0), 1, 1, 1, generator=gen, dtype=like.dtype) >= p).to(like.dtype) / (1 - p)
        cells_masks.append(m)
        return m

    monkeypatch.setattr(evalnet, "drop_masks", drop_masks)

    g = Genotype.from_dict({
        "normal": [["max_pool_3x3", 1], ["sep_conv_3x3", 0], ["max_pool_3x3", 1], ["sep_conv_5x5", 2],
                   ["sep_conv_5x5", 2], ["sep_conv_3x3", 3], ["max_pool_3x3", 1], ["skip_connect", 3]],
        "normal_concat": [2, 3, 4, 5],
        "reduce": [["dil_conv_5x5", 0], ["sep_conv_5x5", 1], ["dil_conv_3x3", 1], ["sep_conv_5x5", 2],
                   ["skip_connect", 3], ["skip_connect", 2], ["avg_pool_3x3", 2], ["sep_conv_3x3", 1]],
        "reduce_concat": [2, 3, 4, 5]})
    torch.manual_seed(0)
    fast = EvalNetwork(g, C=8, n_classes=10, layers=5, auxiliary=True).double()
    with ref.evalnet_ops():
        torch.manual_seed(0)
        plain = EvalNetwork(g, C=8, n_classes=10, layers=5, auxiliary=True).double()
    plain.load_state_dict(fast.state_dict())
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    fast.drop_path_prob = plain.drop_path_prob = drop_prob
    outs, layouts = [], []
    for net in (fast, plain):
        if net is plain:  # the reference takes, op by op, the masks ours drew for its non-identity ops
            queue = [m[k] for m, cell in zip(cells_masks, fast.cells)
                     for k, op in enumerate(cell._ops) if not isinstance(op, ops.Identity)]
            monkeypatch.setattr(ref, "drop_path", lambda h, p: h * queue.pop(0))
        hook = net.cells[0].register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous()))
        logits, aux = net(x)
        hook.remove()
        (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
        outs.append((logits, aux, {n: p.grad for n, p in net.named_parameters()}))
    assert layouts == [False, True]  # ours channels-last from the stem on; the plain one NCHW, as public code
    if drop_prob:
        assert len(cells_masks) == 5 and not queue  # every mask drawn was used
        assert 0 < sum((m == 0).sum().item() for m in cells_masks) < sum(m.numel() for m in cells_masks)
    assert rel(outs[0][0], outs[1][0]) < 1e-10 and rel(outs[0][1], outs[1][1]) < 1e-10
    for name, grad in outs[1][2].items():
        assert rel(outs[0][2][name], grad) < 1e-8, name
