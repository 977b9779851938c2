"""Several edges' op computed as one wider op (darts/nn/fast/edgebatch.py) == each edge's op alone.

Compared with the plain formulation (darts/nn/reference.py) in float64: outputs, the
gradients of the input, of every edge's α scale and of every weight, and each edge's
BatchNorm running statistics, in training and in evaluation mode.
"""
from __future__ import annotations

import pytest
import torch

from darts.method.activations import CRB, Softmax  # noqa: E402
from darts.nn import reference as ref  # noqa: E402
from darts.nn import ops  # noqa: E402
from darts.nn.fast import edgebatch
from darts.nn.supernet import SearchNetwork, Shared  # noqa: E402

BATCHED = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "skip_connect"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# skip_connect is batched at stride 2 only (FactorizedReduce); at stride 1 it is the identity
CASES = [((name,) * 3, stride, 12) for name in BATCHED for stride in (1, 2)
         if not (name == "skip_connect" and stride == 1)]
# one family's kernel sizes mixed (darts.nn.supernet.op_groups), on even and odd maps (the
# odd stride-1 dilated conv is not rearranged into phases: a dilated conv of padded kernels)
CASES += [(names, stride, side) for names in (("sep_conv_3x3", "sep_conv_5x5", "sep_conv_3x3"),
                                              ("dil_conv_5x5", "dil_conv_3x3", "dil_conv_3x3"))
          for stride in (1, 2) for side in (12, 11)]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("names,stride,side", CASES)
def test_forward_many_matches_each_edge_alone(names, stride, side, training):
    torch.manual_seed(11)
    c, e = 4, len(names)
    fast = [ops.build_op(name, c, stride, True).double() for name in names]
    plain = [ref.build_op(name, c, stride, True).double() for name in names]
    for f, p in zip(fast, plain):
        with torch.no_grad():  # distinct running statistics, so eval mode reads each edge's own
            for b in (m for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                b.running_mean.uniform_(-1, 1)
                b.running_var.uniform_(0.5, 2)
        p.load_state_dict(f.state_dict())
        f.train(training), p.train(training)
    x0 = torch.randn(6, c, side, side, dtype=torch.float64)
    a0 = torch.rand(e, dtype=torch.float64) + 0.1
    x, a = x0.clone().requires_grad_(), a0.clone().requires_grad_()
    src = Shared(ops.to_fast_layout(x))
    y = edgebatch.forward_many(fast, src.relu, a.repeat_interleave(c), src.plan_input)
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y, [x, a] + [q for f in fast for q in f.parameters()], g)
    x, a = x0.clone().requires_grad_(), a0.clone().requires_grad_()
    want_y = torch.cat([p(x) * a[m] for m, p in enumerate(plain)], dim=1)
    want = torch.autograd.grad(want_y, [x, a] + [q for p in plain for q in p.parameters()], g)
    assert rel(y, want_y) < 1e-12
    for got_g, want_g in zip(got, want):
        assert rel(got_g, want_g) < 1e-11
    for f, p in zip(fast, plain):
        fast_state = f.state_dict()
        for key, value in p.state_dict().items():
            assert torch.allclose(fast_state[key].double(), value.double(), rtol=0, atol=1e-12), key


@pytest.mark.parametrize("activation", ["softmax", "crb"])
def test_network_batches_edges_and_computes_the_same(monkeypatch, activation):
    """At tiny sizes the supernet does batch edges (so the paths above are what runs), and
    the result equals the edge-by-edge network's, gradients and running statistics included."""
    act = Softmax() if activation == "softmax" else CRB()
    torch.manual_seed(0)
    nets = [SearchNetwork(act, C=4, layers=4).double()]
    nets.append(SearchNetwork(act, C=4, layers=4).double())
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    calls = []
    real = edgebatch.forward_many
    monkeypatch.setattr("darts.nn.supernet.forward_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    for i, net in enumerate(nets):
        monkeypatch.setattr(edgebatch, "MAX_NUMEL", 1 << 15 if i == 0 else 0)
        out = net(x)
        results.append((out, torch.autograd.grad(out.square().sum(), list(net.parameters()))))
        if i == 0:
            assert len(calls) > 0
            n_batched = len(calls)
    assert len(calls) == n_batched  # MAX_NUMEL = 0: nothing batched
    assert rel(results[0][0], results[1][0]) < 1e-12
    for got, want in zip(results[0][1], results[1][1]):
        assert rel(got, want) < 1e-10
    batched = nets[0].state_dict()  # once: a supernet's state_dict() walks ~1,000 modules
    for key, value in nets[1].state_dict().items():
        assert torch.allclose(batched[key].double(), value.double(), rtol=0, atol=1e-12), key


def test_op_groups_put_one_family_s_consecutive_ops_together():
    from darts.nn.supernet import op_groups
    from darts.space.primitives import PRIMITIVES

    assert op_groups(PRIMITIVES) == [[0], [1], [2], [3], [4, 5], [6, 7]]
    assert op_groups(PRIMITIVES[1:]) == [[0], [1], [2], [3, 4], [5, 6]]  # CRB: no `none`
    # not consecutive: merging would change the order in which a node adds its inputs
    assert op_groups(("sep_conv_3x3", "max_pool_3x3", "sep_conv_5x5")) == [[0], [1], [2]]


def test_batchable_counts_the_per_edge_output_size():
    """A stride-2 op's output is a quarter of its input: a reduction cell's inputs batch
    at 4× the map size of a normal cell's."""
    x = torch.zeros(1, 4, 2, edgebatch.MAX_NUMEL // 4)  # MAX_NUMEL · 2 values
    assert edgebatch.batchable(ops.build_op("sep_conv_3x3", 4, 2, True), x, 2)
    assert edgebatch.batchable(ops.build_op("skip_connect", 4, 2, True), x, 2)  # FactorizedReduce
    assert not edgebatch.batchable(ops.build_op("sep_conv_3x3", 4, 1, True), x, 2)
    assert not edgebatch.batchable(ops.build_op("dil_conv_3x3", 4, 2, True), x, 1)
