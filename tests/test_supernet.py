"""The search network: shapes, α as parameters, reduction placement, skipped ops, state_dict."""
from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn

from darts.method.activations import CRB, Softmax
from darts.nn.ops import Zero
from darts.nn.supernet import reduction_layers
from darts.space.primitives import N_EDGES
from netutil import batch, count_calls, tiny


def test_output_shape_and_weights():
    for act, k in ((Softmax(), 8), (CRB(), 7)):
        net = tiny(act)
        x, _ = batch()
        assert net(x).shape == (4, 5)
        w = net.weights()
        assert set(w) == {"normal", "reduce"} and w["normal"].shape == (N_EDGES, k)
    sm = tiny(Softmax()).weights()["normal"]
    assert torch.allclose(sm.sum(1), torch.ones(N_EDGES))


def test_alphas_are_registered_parameters():
    net = tiny(CRB())
    named = dict(net.named_parameters())
    assert isinstance(named["alpha_normal"], nn.Parameter) and isinstance(named["alpha_reduce"], nn.Parameter)
    assert named["alpha_normal"].shape == (N_EDGES, 7) and named["alpha_normal"].requires_grad
    sd = net.state_dict()
    assert {"alpha_normal", "alpha_reduce", "live_normal", "live_reduce"} <= set(sd)
    assert sd["live_normal"].dtype == torch.bool and sd["live_normal"].all()
    assert "live_normal" in dict(net.named_buffers())
    arch = net.arch_parameters()
    assert [id(p) for p in arch] == [id(named["alpha_normal"]), id(named["alpha_reduce"])]
    ids = {id(p) for p in net.weight_parameters()}
    assert not ids & {id(p) for p in arch}
    assert len(ids) + 2 == len(list(net.parameters()))
    # a backward reaches α through the registered parameters
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    assert net.alpha_normal.grad is not None and net.alpha_reduce.grad.abs().sum() > 0
    # α follows .double() / .to() like any parameter
    assert net.double().alpha_normal.dtype == torch.float64


def test_alpha_init_is_seeded():
    a = tiny(CRB(), seed=3)
    b = tiny(CRB(), seed=3)
    c = tiny(CRB(), seed=4)
    assert torch.equal(a.alpha_normal, b.alpha_normal) and torch.equal(a.alpha_reduce, b.alpha_reduce)
    assert not torch.equal(a.alpha_normal, c.alpha_normal)
    assert not torch.equal(a.alpha_normal, a.alpha_reduce)
    assert abs(a.alpha_normal.mean().item() - 1 / 7) < 1e-4


def test_reduction_cells_and_spatial_sizes():
    assert reduction_layers(3) == (1, 2)
    assert reduction_layers(5) == (1, 3)
    assert reduction_layers(8) == (2, 5)
    assert reduction_layers(20) == (6, 13)
    C = 4
    net = tiny(Softmax(), layers=5, C=C)
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    shapes = []
    hooks = [c.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for c in net.cells]
    x, _ = batch(n=2, hw=16)
    assert net(x).shape == (2, 5)
    for h in hooks:
        h.remove()
    # 4 nodes concatenated: 4·C, channels doubled and H, W halved at each reduction
    assert shapes == [(2, 4 * C, 16, 16), (2, 8 * C, 8, 8), (2, 8 * C, 8, 8), (2, 16 * C, 4, 4), (2, 16 * C, 4, 4)]
    assert net.stem[0].out_channels == 3 * C
    assert net.classifier.in_features == 16 * C
    # stride 2 exactly on the edges leaving the two cell inputs of a reduction cell
    red = net.cells[1]
    from darts.space.primitives import edges as _edges
    for (node, src), edge in zip(_edges(), red.edges):
        conv = edge.ops[4][0][1]  # sep_conv_3x3 → first DilConv → depthwise conv
        assert conv.stride == ((2, 2) if src < 2 else (1, 1))


def test_none_op_never_executed():
    net = tiny(Softmax(), layers=5)
    zeros = [m for m in net.modules() if isinstance(m, Zero)]
    assert len(zeros) == 5 * N_EDGES
    calls = count_calls({**{f"zero{i}": m for i, m in enumerate(zeros)},
                         **{f"pool{i}": cell.edges[0].ops[1] for i, cell in enumerate(net.cells)}})
    x, y = batch(n=2, hw=16)
    F.cross_entropy(net(x), y).backward()
    assert all(calls[f"pool{i}"] >= 1 for i in range(5))
    assert sum(calls[f"zero{i}"] for i in range(len(zeros))) == 0
    assert all(0 not in row for row in net._live_idx["normal"] + net._live_idx["reduce"])
    assert net._live_idx["normal"][0] == list(range(1, 8))
    # none gets no α gradient through an op output, only through the softmax normalisation
    assert net.alpha_normal.grad[:, 0].abs().sum() > 0


def _pruned_crb_net(seed=0):
    net = tiny(CRB(), seed=seed)
    with torch.no_grad():
        net.alpha_normal[0, 3] = -1.0
        net.alpha_normal[6, 0] = -0.1
        net.alpha_reduce[2, :] = -0.5   # a whole edge of node 1
        net.alpha_reduce[13, 6] = 0.0
    net.prune()
    return net


def test_state_dict_round_trip_restores_prune_state():
    a = _pruned_crb_net()
    assert a.live_normal.sum() == 98 - 2 and a.live_reduce.sum() == 98 - 8
    assert a._live_idx["normal"][0] == [0, 1, 2, 4, 5, 6] and a._live_idx["reduce"][2] == []
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = tiny(CRB(), seed=9)  # different α, everything live
    assert b._live_idx != a._live_idx
    b.load_state_dict(torch.load(buf))
    for t in ("normal", "reduce"):
        assert torch.equal(b.live()[t], a.live()[t])
        assert torch.equal(b.alphas()[t], a.alphas()[t])
    assert b._live_idx == a._live_idx
    # the loaded net skips the pruned ops (not merely multiplies them by 0)
    calls = count_calls({"n": b.cells[0].edges[0].ops[3], "r": b.cells[1].edges[13].ops[6],
                         "ok": b.cells[0].edges[0].ops[4]})
    x, _ = batch()
    out_b = b(x)
    assert calls["ok"] >= 1 and calls["n"] == 0 and calls["r"] == 0
    assert torch.equal(out_b, a(x))
    # pruning state continues identically: another prune step gives the same masks on both nets
    for net in (a, b):
        with torch.no_grad():
            net.alpha_normal[9, 1] = -0.2
        newly = net.prune()
        assert newly["normal"].sum() == 1 and not newly["reduce"].any()
    assert a._live_idx == b._live_idx and torch.equal(a.live_normal, b.live_normal)


def test_non_strict_load_and_refresh_on_partial_state():
    a = _pruned_crb_net()
    b = tiny(CRB(), seed=1)
    sd = {k: v for k, v in a.state_dict().items() if k.startswith(("alpha_", "live_"))}
    b.load_state_dict(sd, strict=False)
    assert b._live_idx == a._live_idx


def test_eval_mode_forward_and_double():
    net = _pruned_crb_net().double()
    x, _ = batch()
    net.eval()
    with torch.no_grad():
        out = net(x.double())
    assert out.shape == (4, 5) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_node_sums_added_in_place_give_bit_identical_results(monkeypatch):
    """A node's partial sums are added into one buffer after the first out-of-place add:
    the same values in the same order, so output, gradients (α and weights) and the
    running statistics are bitwise those of all-out-of-place sums (at 32×32 maps too, where
    nothing is batched and every op goes through ``mixed_op``)."""
    import darts.nn.supernet as supernet

    real = supernet.accumulate
    calls = []

    def counted(acc, y, scale=None, inplace=False):
        calls.append(inplace)
        return real(acc, y, scale, inplace)

    results = []
    for mode in ("inplace", "out-of-place"):
        net = tiny(CRB(), seed=3, C=8)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(supernet, "accumulate", counted if mode == "inplace"
                            else lambda acc, y, scale=None, inplace=False: real(acc, y, scale, False))
        out = net(x)
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
        results.append((out, grads, [b.clone() for b in net.buffers()]))
    assert sum(calls) > len(calls) // 2  # most adds went in place
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(torch.equal(a, b) for a, b in zip(bufs_a, bufs_b))


def test_pruning_after_a_forward_drops_the_op_from_the_next_forward():
    """Each cell keeps its per-source plan of live ops between forwards: pruning must renew it."""
    net = tiny(CRB(), seed=3)
    x, _ = batch()
    net(x)  # the plan with every op live
    op = net.cells[0].edges[0].ops[3]
    with torch.no_grad():
        net.alpha_normal[0, 3] = -0.1
    assert net.prune()["normal"][0, 3]
    calls = count_calls({"pruned": op, "live": net.cells[0].edges[0].ops[4]})
    out = net(x)
    assert calls["pruned"] == 0 and calls["live"] >= 1
    fresh = tiny(CRB(), seed=3)  # never ran a forward: plans from the loaded state
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), out)


def test_batch_norms_get_channels_last_gradients():
    """Every BatchNorm backward of the search network on CPU receives a channels-last
    gradient. A node's gradient is a channel slice of the cell output's (the concat), and
    torch's NHWC BatchNorm fed that runs its NCHW backward, ~8× slower (the hook on each
    node state makes it channels-last once). Maps large enough that edges are not batched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Layouts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                self.seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
            return func(*args, **(kwargs or {}))

    net = tiny(Softmax(), layers=1, C=16)
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = net(x)
    with Layouts() as layouts:
        out.square().sum().backward()
    assert len(layouts.seen) > 20 and all(layouts.seen), layouts.seen
