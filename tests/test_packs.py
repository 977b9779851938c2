"""Packed weights of batched edges (darts.nn.fast.edgebatch): the packing math, and their reuse.

The packs are linear maps of the member weights; their gradients are checked against
finite differences (and second order, which the exact unrolled test relies on). Reuse is
checked where it could go wrong: torch's fused SGD leaves a weight's version counter as
it was, so a search run with reuse must equal one that packs afresh every forward.
"""
from __future__ import annotations

import copy

import pytest
import torch

from darts.data import BatchStream
from darts.data.synthetic import make_synthetic
from darts.loops.search import SearchConfig, Searcher
from darts.method.activations import CRB, Softmax
from darts.method.regularizers import NoRegularizer
from darts.method.schedules import Constant, alternate
from darts.nn.fast import edgebatch
from netutil import tiny


def _kernels(sizes, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, 1, k, k, dtype=torch.float64, generator=g, requires_grad=True) for k in sizes]


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("sizes", [(3, 3), (5, 5, 5), (3, 3, 5), (3, 5, 5, 5)])
def test_pack_depthwise_places_each_kernel_zero_padded(sizes, interleave):
    ws = _kernels(sizes)
    big, c, e = max(sizes), 3, len(sizes)
    packed = edgebatch._PackDepthwise.apply(big, interleave, *ws).detach()
    assert packed.shape == (e * c, 1, big, big)
    for m, w in enumerate(ws):
        p = (big - w.shape[-1]) // 2
        padded = torch.nn.functional.pad(w.detach(), (p, p, p, p))
        rows = torch.arange(c) * e + m if interleave else torch.arange(c) + m * c  # (c, m) / (m, c)
        assert torch.equal(packed[rows], padded)
    assert torch.autograd.gradcheck(lambda *w: edgebatch._PackDepthwise.apply(big, interleave, *w), ws)
    assert torch.autograd.gradgradcheck(lambda *w: edgebatch._PackDepthwise.apply(big, interleave, *w), ws)


@pytest.mark.parametrize("interleave", [True, False])
def test_block_diagonal_matches_its_definition(interleave):
    g = torch.Generator().manual_seed(1)
    e, o, c = 3, 4, 2
    ps = [torch.randn(o, c, 1, 1, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(e)]
    w = edgebatch._BlockDiagonal.apply(interleave, *ps).detach().view(e * o, e * c)
    expect = torch.zeros(e * o, e * c, dtype=torch.float64)
    for m, p in enumerate(ps):
        for oo in range(o):
            for cc in range(c):
                col = cc * e + m if interleave else m * c + cc
                expect[m * o + oo, col] = p[oo, cc, 0, 0]
    assert torch.equal(w, expect)
    assert torch.autograd.gradcheck(lambda *p: edgebatch._BlockDiagonal.apply(interleave, *p), ps)
    assert torch.autograd.gradgradcheck(lambda *p: edgebatch._BlockDiagonal.apply(interleave, *p), ps)


def test_pack_cache_reuses_only_inside_a_block_and_for_the_same_weights():
    cache, built = edgebatch.PackCache(), []
    w = torch.randn(3, requires_grad=True)

    def build():
        built.append(1)
        return w * 2

    cache.get("k", [w], build), cache.get("k", [w], build)
    assert len(built) == 2  # outside a block: packed afresh every time
    with cache.reusing():
        first = cache.get("k", [w], build)
        assert cache.get("k", [w], build) is first and len(built) == 3
        with torch.no_grad():
            w.add_(1)  # an in-place write moves the version: rebuilt
        assert cache.get("k", [w], build) is not first and len(built) == 4
        other = w.detach().clone().requires_grad_()  # another tensor (functional_call): rebuilt
        cache.get("k", [other], build)
        assert len(built) == 5
        with torch.no_grad():  # another autograd mode: rebuilt
            cache.get("k", [other], build)
        assert len(built) == 6
    with cache.reusing():  # a new block starts empty
        cache.get("k", [other], build)
    assert len(built) == 7


def _searcher(net, schedule):
    ds = make_synthetic(64, size=8, seed=0, n_classes=5)
    cfg = SearchConfig(epochs=2, batch_size=16, alpha_lr=0.05)
    return Searcher(net, cfg, schedule, NoRegularizer(),
                    BatchStream(ds.take(torch.arange(32)), 16, seed=0),
                    BatchStream(ds.take(torch.arange(32, 64)), 16, seed=1))


@pytest.mark.parametrize("activation,schedule", [(Softmax, alternate), (CRB, lambda: Constant(k=2))])
def test_search_with_reused_packs_equals_packing_every_forward(monkeypatch, activation, schedule):
    """Bitwise: the w optimizer (fused SGD) does not move versions, so a stale pack would show."""
    results = []
    for reuse in (True, False):
        if not reuse:
            monkeypatch.setattr(edgebatch.PackCache, "get", lambda self, key, members, build: build())
        net = tiny(activation(), seed=0)
        s = _searcher(net, schedule())
        s.run_epoch(), s.run_epoch()
        results.append({k: v.clone() for k, v in net.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_a_network_with_packs_can_be_copied_and_pickled(tmp_path):
    net = tiny(Softmax(), seed=0)
    x = torch.randn(4, 3, 8, 8)
    with net.reusing_packs():
        net(x).sum().backward()
        clone = copy.deepcopy(net)  # packs are non-leaf tensors: a copy starts without them
        torch.save(net, tmp_path / "net.pt")
    assert torch.equal(clone.eval()(x), net.eval()(x))
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    assert torch.equal(loaded.eval()(x), net(x))
