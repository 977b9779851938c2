"""Second-order DARTS: the α gradient through one unrolled w step (Liu et al., eq. 7–8).

∇α L_val(w', α) − ξ · [∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)] / (2ε),
with w' = w − ξ·(momentum·buf + ∇w L_train(w, α) + wd·w) (the SGD step the w optimizer
would take), w± = w ± ε·∇w' L_val(w', α) and ε = eps_scale / ‖∇w' L_val(w', α)‖.
The divisor is (2ε): one public reimplementation wrote ``(p - n) / 2.*eps``, which
multiplies by ε instead; tests/test_unrolled.py pins the difference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _ce(net, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x), y)


def finite_difference_hvp(net, train_batch, vector: list[torch.Tensor], eps_scale: float) -> list[torch.Tensor]:
    """[∇α L_train(w + εv) − ∇α L_train(w − εv)] / (2ε), ε = eps_scale / ‖v‖; w restored after."""
    w = net.weight_parameters()
    a = net.arch_parameters()
    norm = torch.sqrt(sum((v * v).sum() for v in vector))
    eps = eps_scale / norm
    backup = [p.detach().clone() for p in w]  # w + εv − 2εv + εv is not w in floating point
    with torch.no_grad():
        for p, v in zip(w, vector):
            p.add_(v * eps)
    g_pos = torch.autograd.grad(_ce(net, train_batch), a)
    with torch.no_grad():
        for p, v in zip(w, vector):
            p.sub_(v * (2 * eps))
    g_neg = torch.autograd.grad(_ce(net, train_batch), a)
    with torch.no_grad():
        for p, b in zip(w, backup):
            p.copy_(b)
    return [(gp - gn) / (2 * eps) for gp, gn in zip(g_pos, g_neg)]


def unrolled_alpha_grads(net, w_opt: torch.optim.SGD, train_batch, val_batch, eps_scale: float = 0.01):
    """(L_val at the unrolled weights, α gradients) for one second-order α step.

    The network's weights are left exactly as they were (the unrolled step is undone).
    """
    w = net.weight_parameters()
    a = net.arch_parameters()
    group = w_opt.param_groups[0]
    lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    # weights of pruned (CRB) ops take no part in the forward: their gradients are zero
    g_train = torch.autograd.grad(_ce(net, train_batch), w, allow_unused=True, materialize_grads=True)
    backup = [p.detach().clone() for p in w]
    with torch.no_grad():
        for p, g in zip(w, g_train):
            d = g + wd * p
            buf = w_opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None and momentum:
                d = d + momentum * buf
            p.sub_(lr * d)
    loss_val = _ce(net, val_batch)
    grads = torch.autograd.grad(loss_val, list(a) + list(w), allow_unused=True, materialize_grads=True)
    g_alpha, g_w = list(grads[: len(a)]), list(grads[len(a):])
    with torch.no_grad():
        for p, b in zip(w, backup):
            p.copy_(b)
    hvp = finite_difference_hvp(net, train_batch, g_w, eps_scale)
    return loss_val.detach(), [ga - lr * h for ga, h in zip(g_alpha, hvp)]
