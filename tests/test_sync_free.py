"""A search step that keeps a GPU busy: no tensor value read back in the α step with CRB's
pruning, PR or ADMM (`meta` tensors have no data, so any read raises: this finds a sync
without a GPU; where CUDA is present, torch's sync debug mode checks the same), and ops
pruned on the device but not yet skipped (their host copy still on its way) change
nothing."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import darts.nn.supernet
from darts.loops.search import SearchConfig, Searcher
from darts.method.activations import CRB, Softmax
from darts.method.regularizers import ADMM, NoRegularizer, Proximity
from darts.method.schedules import alternate
from netutil import FixedBatches, batch, count_calls, tiny

REGULARIZERS = {"none": NoRegularizer, "pr": Proximity, "admm": lambda: ADMM(n=1)}  # ADMM: z, u every step


def _searcher(activation, reg: str, device: str) -> tuple[Searcher, tuple[torch.Tensor, torch.Tensor]]:
    net = tiny(activation(), seed=2)
    if activation is CRB:
        with torch.no_grad():
            for a in net.arch_parameters():
                a[2:5] = -0.1  # node 1: every op ≤ 0, so pruning and the node rule both act
    net = net.to(device)
    if device == "meta":
        xy = (torch.empty(4, 3, 8, 8, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"))
    else:
        g = torch.Generator(device=device).manual_seed(0)
        xy = (torch.randn(4, 3, 8, 8, device=device, generator=g),
              torch.randint(0, 5, (4,), device=device, generator=g))
    s = Searcher(net, SearchConfig(epochs=2, batch_size=4), alternate(), REGULARIZERS[reg](),
                 FixedBatches(xy, 4), FixedBatches(xy, 4))
    return s, xy


@pytest.mark.parametrize("reg", ["none", "pr", "admm"])
@pytest.mark.parametrize("activation", [CRB, Softmax])
def test_alpha_step_reads_nothing_back_from_the_device(monkeypatch, activation, reg):
    """The whole α step (forward, α gradients, Adam, pruning with the node rule, the penalty and
    ADMM's z/u update, the records) and the next forward, on `meta`."""
    monkeypatch.setattr(Searcher, "_autocast", lambda self: contextlib.nullcontext())  # no meta autocast
    s, xy = _searcher(activation, reg, "meta")
    for _ in range(3):
        s.alpha_step(xy)
    s.net(xy[0])
    assert len(s.history._pending_alpha) == 4
    if activation is CRB:
        assert len(s.history._pending_pruned) == 2 * 3  # queued per cell type and step, not read


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
@pytest.mark.parametrize("reg", ["pr", "admm"])
def test_crb_alpha_step_does_not_sync_the_gpu(reg):
    s, xy = _searcher(CRB, reg, "cuda")
    s.run_epoch()  # warm-up outside the check: lazy CUDA/cuDNN initialisation may sync
    torch.cuda.set_sync_debug_mode("error")  # any sync inside raises
    try:
        for _ in range(3):
            s.alpha_step(xy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    s.net(xy[0])  # picks up the host copy of the live masks
    assert all(len(row) < 7 for row in s.net._live_idx["normal"][2:5])
    assert len(s.history.pruned) == 2 * (3 * 7 - 2)


@pytest.mark.parametrize("batched", [False, True])
def test_ops_pruned_but_not_yet_skipped_change_nothing(monkeypatch, batched):
    """On a GPU the forward after a prune may still compute the just-pruned ops (their host copy
    has not arrived): at weight exactly 0 they add exact zeros. Same logits, α gradients and
    live weights' gradients as the network that skips them (bit for bit without edge batching;
    with it, the batched convolutions change shape, so to rounding), and they are skipped once
    the copy is picked up."""
    if not batched:
        monkeypatch.setattr(darts.nn.supernet, "batchable", lambda *a: False)
    nets = [tiny(CRB(), seed=4) for _ in range(2)]
    for net in nets:
        with torch.no_grad():
            net.alpha_normal[0, 3] = -0.2
            net.alpha_normal[5:9, 1] = -0.3
            net.alpha_reduce[13, 6] = 0.0
    skips, late = nets
    skips.prune()
    held = late._live_copy.poll
    monkeypatch.setattr(late._live_copy, "poll", lambda: None)  # the copy has not arrived
    late.prune()
    assert torch.equal(late.live_normal, skips.live_normal) and late._live_idx != skips._live_idx
    dead = late.cells[0].edges[0].ops[3]
    calls = count_calls({"dead": dead})
    x, y = batch(seed=1)
    results = []
    for net in nets:
        net.zero_grad(set_to_none=True)
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits, [p.grad for p in net.arch_parameters()],
                        {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    assert calls["dead"] >= 1  # the late network did compute the pruned op
    (l_skip, a_skip, w_skip), (l_late, a_late, w_late) = results
    same = torch.equal if not batched else (lambda u, v: torch.allclose(u, v, rtol=1e-5, atol=1e-6))
    assert same(l_late, l_skip)
    assert all(same(u, v) for u, v in zip(a_late, a_skip))
    assert set(w_skip) <= set(w_late)
    assert all(same(w_late[n], w_skip[n]) for n in w_skip)
    assert all(not g.any() for n, g in w_late.items() if n not in w_skip)  # the pruned ops' weights
    monkeypatch.setattr(late._live_copy, "poll", held)  # the copy arrives: the next forward skips
    calls.clear()
    late(x)
    assert calls["dead"] == 0 and late._live_idx == skips._live_idx
