"""Second-order DARTS: the finite-difference α gradient against the exact unrolled gradient.

f(α) = L_val(w − ξ(∇w L_train(w, α) + wd·w + μ·buf), α) is differentiated exactly with autograd
(create_graph=True) on a tiny float64 supernet in train mode (BN on batch statistics, so every
forward is deterministic). The finite-difference step is taken small (eps_scale=1e-7): the
network is piecewise smooth (ReLU, max-pool), and with DARTS' 0.01 a random perturbation of a
net this small crosses kinks, so only a small ε checks the formula itself.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from darts.method.activations import CRB, Softmax
from darts.method.unrolled import finite_difference_hvp, unrolled_alpha_grad_terms, unrolled_alpha_grads
from darts.nn.supernet import SearchNetwork

EPS = 1e-7
ALPHA_NAMES = ("alpha_normal", "alpha_reduce")


def tiny(activation, seed=0):
    torch.manual_seed(seed)
    return SearchNetwork(activation, C=2, n_classes=3, layers=3,
                         generator=torch.Generator().manual_seed(seed)).double()


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
    return mk(), mk()


def split(net):
    params = dict(net.named_parameters())
    a = {n: params[n].detach().clone().requires_grad_(True) for n in ALPHA_NAMES}
    w = {n: p.detach().clone().requires_grad_(True) for n, p in params.items() if n not in ALPHA_NAMES}
    return a, w


def ce(net, params, batch):
    x, y = batch
    return F.cross_entropy(functional_call(net, params, (x,)), y)


def exact_unrolled(net, train, val, lr, wd, momentum=0.0, bufs=None):
    """(exact ∇α f, first-order term ∇α L_val(w', α), exact H_αw·∇w' L_val) by autograd."""
    a, w = split(net)
    g = torch.autograd.grad(ce(net, {**w, **a}, train), list(w.values()), create_graph=True,
                            allow_unused=True, materialize_grads=True)
    w2 = {}
    for (n, p), gp in zip(w.items(), g):
        d = gp + wd * p
        if bufs is not None and n in bufs:
            d = d + momentum * bufs[n]
        w2[n] = p - lr * d
    exact = torch.autograd.grad(ce(net, {**w2, **a}, val), list(a.values()))
    # the two terms separately
    w2c = {n: t.detach().requires_grad_(True) for n, t in w2.items()}
    lv = ce(net, {**w2c, **a}, val)
    parts = torch.autograd.grad(lv, list(a.values()) + list(w2c.values()), allow_unused=True, materialize_grads=True)
    first, v = parts[:2], parts[2:]
    a2, w3 = split(net)
    g3 = torch.autograd.grad(ce(net, {**w3, **a2}, train), list(w3.values()), create_graph=True,
                             allow_unused=True, materialize_grads=True)
    dot = sum((gi * vi).sum() for gi, vi in zip(g3, v))
    hvp = torch.autograd.grad(dot, list(a2.values()))
    return exact, first, hvp, v


def rel(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def snapshot(net):
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def assert_bitwise_same(net, snap):
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), snap[n]), n


def test_unrolled_matches_exact_gradient_and_restores_weights():
    net = tiny(Softmax())
    train, val = batches()
    lr, wd = 0.1, 3e-4
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    exact, first, hvp, v = exact_unrolled(net, train, val, lr, wd)
    # the second-order term matters here (else this test could not tell the forms apart)
    assert rel(first, exact) > 0.1
    snap = snapshot(net)
    _, grads = unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS)
    assert_bitwise_same(net, snap)
    assert rel(grads, exact) < 1e-5
    # the ``(p - n) / 2.*eps`` form multiplies by ε/2 instead of dividing by 2ε: its hvp is ours·ε²,
    # i.e. the second-order term vanishes and the gradient is the first-order one
    eps = EPS / torch.sqrt(sum((t * t).sum() for t in v))
    fd_hvp = [(ga - g) / lr for ga, g in zip(first, grads)]  # our hvp, recovered from our gradient
    assert rel(fd_hvp, hvp) < 1e-5
    buggy = [ga - lr * (h * (2 * eps)) * eps / 2 for ga, h in zip(first, fd_hvp)]
    assert rel(buggy, exact) > 0.1
    assert rel(buggy, first) < 1e-9


def test_unrolled_loss_is_val_loss_at_unrolled_weights():
    net = tiny(Softmax(), seed=1)
    train, val = batches(1)
    lr, wd = 0.05, 0.0
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.0, weight_decay=wd)
    a, w = split(net)
    g = torch.autograd.grad(ce(net, {**w, **a}, train), list(w.values()))
    w2 = {n: (p - lr * gp).detach() for (n, p), gp in zip(w.items(), g)}
    expected = ce(net, {**w2, **a}, val).item()
    loss, _ = unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_unrolled_includes_momentum_buffer():
    net = tiny(Softmax(), seed=2)
    train, val = batches(2)
    lr, wd, mom = 0.1, 3e-4, 0.9
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=mom, weight_decay=wd)
    # one real w step creates momentum buffers (α frozen as in the search loop)
    for p in net.arch_parameters():
        p.requires_grad_(False)
    x, y = batches(3)[0]
    F.cross_entropy(net(x), y).backward()
    opt.step()
    for p in net.arch_parameters():
        p.requires_grad_(True)
    names = {id(p): n for n, p in net.named_parameters()}
    bufs = {names[id(p)]: opt.state[p]["momentum_buffer"].clone() for p in net.weight_parameters()}
    assert any(b.abs().sum() > 0 for b in bufs.values())
    exact, *_ = exact_unrolled(net, train, val, lr, wd, mom, bufs)
    without, *_ = exact_unrolled(net, train, val, lr, wd)
    assert rel(without, exact) > 1e-3  # the buffer does change the answer
    snap = snapshot(net)
    _, grads = unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS)
    assert_bitwise_same(net, snap)
    assert rel(grads, exact) < 1e-5
    # the optimizer state is untouched
    assert all(torch.equal(opt.state[p]["momentum_buffer"], bufs[names[id(p)]]) for p in net.weight_parameters())


def test_finite_difference_hvp_against_exact():
    net = tiny(Softmax(), seed=4)
    train, _ = batches(4)
    g = torch.Generator().manual_seed(5)
    w = net.weight_parameters()
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in w]
    grads = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), w, create_graph=True)
    exact = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(grads, v)), net.arch_parameters())
    snap = snapshot(net)
    ours = finite_difference_hvp(net, train, v, EPS)
    assert_bitwise_same(net, snap)
    assert rel(ours, exact) < 1e-5
    eps = EPS / torch.sqrt(sum((t * t).sum() for t in v))
    buggy = [h * (2 * eps) * eps / 2 for h in ours]  # (p - n) / 2.*eps
    assert rel(buggy, exact) > 0.99  # off by the factor ε² ≈ 1e-16


def test_unrolled_with_pruned_crb_ops():
    net = tiny(CRB(), seed=6)
    with torch.no_grad():
        net.alpha_normal[0, 3] = -1.0  # sep_conv_3x3 on edge 0: its weights drop out of the graph
        net.alpha_reduce[2, 6] = -1.0  # dil_conv_5x5
    net.prune()
    train, val = batches(6)
    lr, wd = 0.1, 3e-4
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    exact, *_ = exact_unrolled(net, train, val, lr, wd)
    snap = snapshot(net)
    _, grads = unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS)
    assert_bitwise_same(net, snap)
    assert grads[0][0, 3] == 0.0 and grads[1][2, 6] == 0.0
    assert rel(grads, exact) < 1e-5


# --- BatchNorm running statistics (darts.method.unrolled's docstring) ------------------------------
STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def bn_buffers(net) -> dict[str, torch.Tensor]:
    """Every running-statistics buffer by name, found independently of darts.method.unrolled (by name)."""
    bufs = {n: b.detach().clone() for n, b in net.named_buffers() if n.rsplit(".", 1)[-1] in STAT_NAMES}
    assert bufs
    return bufs


def warmed(activation, seed):
    """A tiny float64 net whose BN buffers are no longer at their initial values."""
    net = tiny(activation, seed=seed)
    with torch.no_grad():
        net(batches(seed + 10)[0][0])
    return net


@pytest.mark.parametrize("activation", [Softmax, CRB])
def test_unrolled_step_leaves_every_bn_buffer_untouched_and_gradients_unchanged(activation):
    net = warmed(activation(), seed=7)
    assert any(n.endswith("node_bn.0.running_mean") for n in bn_buffers(net)) == (activation is CRB)
    train, val = batches(7)
    lr, wd = 0.1, 3e-4
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    twin = copy.deepcopy(net)
    twin_opt = torch.optim.SGD(twin.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    before, snap = bn_buffers(net), snapshot(net)
    loss, grads = unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS)
    after = bn_buffers(net)
    assert all(torch.equal(after[n], before[n]) for n in before)  # bit for bit, every buffer
    assert_bitwise_same(net, snap)
    # DARTS' choice moves them (three train-batch passes), and the gradients are the same bits:
    # train-mode BN never reads its running statistics
    loss2, grads2 = unrolled_alpha_grads(twin, twin_opt, train, val, eps_scale=EPS, bn_stats="darts")
    moved = bn_buffers(twin)
    assert max((moved[n] - before[n]).abs().max().item() for n in before if "running" in n) > 1e-3
    assert torch.equal(loss, loss2) and all(torch.equal(g, h) for g, h in zip(grads, grads2))
    exact, *_ = exact_unrolled(copy.deepcopy(twin), train, val, lr, wd)
    assert rel(grads, exact) < 1e-5


def test_darts_bn_stats_are_the_three_train_passes_not_the_virtual_val_pass():
    """bn_stats="darts": the buffers end as three train-mode passes of the train batch at w leave
    them (w ± εv differ from w by ‖εv‖ = 1e-7 here), not as the validation pass at w′ would."""
    net = warmed(Softmax(), seed=8)
    train, val = batches(8)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    replay, with_val = copy.deepcopy(net), copy.deepcopy(net)
    before = bn_buffers(net)
    unrolled_alpha_grads(net, opt, train, val, eps_scale=EPS, bn_stats="darts")
    got = bn_buffers(net)
    with torch.no_grad():
        for _ in range(3):
            replay(train[0])
        for x in (train[0], val[0], train[0], train[0]):  # what every pass on the network gave
            with_val(x)
    want, today = bn_buffers(replay), bn_buffers(with_val)
    for n in got:
        if n.endswith("num_batches_tracked"):
            assert got[n] - before[n] == 3 or got[n] == before[n]  # each BN that ran: 3 passes
            assert torch.equal(got[n], want[n])
        else:
            assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-9), n
    gap = max((today[n] - want[n]).abs().max().item() for n in got if "running" in n)
    assert gap > 1e-2  # the validation pass would have moved them visibly


def test_bn_stats_choice_is_checked():
    net = tiny(Softmax(), seed=0)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    with pytest.raises(ValueError, match="valid: untouched, darts"):
        unrolled_alpha_grads(net, opt, *batches(0), bn_stats="copy")


def test_second_order_search_iteration_only_the_w_step_moves_bn_stats():
    """One search iteration (α step, then w step) of a second-order Searcher: its BN buffers end as
    the w step's forward alone leaves them: a copy of the net from before the iteration, given the
    new α and run forward once on the train batch, has the same buffers, bit for bit."""
    from darts.loops.search import SearchConfig, Searcher
    from darts.method.regularizers import NoRegularizer
    from darts.method.schedules import alternate
    from netutil import FixedBatches

    net = warmed(Softmax(), seed=9)
    train, val = batches(9)
    s = Searcher(net, SearchConfig(epochs=1, batch_size=4, order=2, alpha_lr=0.1), alternate(), NoRegularizer(),
                 FixedBatches(train, 1), FixedBatches(val, 1))
    replay = copy.deepcopy(net)
    assert s.run_epoch() is not None and len(s.history.alpha_steps) == 2  # the initial record + 1 step
    with torch.no_grad():
        for t, a in net.alphas().items():
            replay.alphas()[t].copy_(a)
        replay(train[0])
    assert not torch.equal(net.alpha_normal, tiny(Softmax(), seed=9).alpha_normal)
    got, want = bn_buffers(net), bn_buffers(replay)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_terms_split_the_gradient_into_its_first_order_and_hessian_parts():
    """`unrolled_alpha_grad_terms` (what `StepRecord.hessian_term` reads): grads = ∇α L_val(w′)
    + hessian with hessian = −ξ·H_αw·∇w′ L_val, each against autograd's exact term; the sum is
    `unrolled_alpha_grads`' gradient bit for bit."""
    net = tiny(Softmax(), seed=3)
    train, val = batches(3)
    lr, wd = 0.1, 3e-4
    twin = copy.deepcopy(net)
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    twin_opt = torch.optim.SGD(twin.weight_parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    exact, first, hvp, _ = exact_unrolled(net, train, val, lr, wd)
    terms = unrolled_alpha_grad_terms(net, opt, train, val, eps_scale=EPS)
    assert rel([g - h for g, h in zip(terms.grads, terms.hessian)], first) < 1e-9
    assert rel(terms.hessian, [-lr * h for h in hvp]) < 1e-5
    assert rel(terms.grads, exact) < 1e-5
    assert rel(first, exact) > 0.05  # the first-order part alone is off: the term matters here
    loss, grads = unrolled_alpha_grads(twin, twin_opt, train, val, eps_scale=EPS)
    assert torch.equal(loss, terms.val_loss) and all(torch.equal(a, b) for a, b in zip(grads, terms.grads))
