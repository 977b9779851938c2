"""Second-order DARTS: the α gradient through one unrolled w step (Liu et al., eq. 7–8).

∇α L_val(w', α) − ξ · [∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)] / (2ε),
with w' = w − ξ·(momentum·buf + ∇w L_train(w, α) + wd·w) (the SGD step the w optimizer
would take), w± = w ± ε·∇w' L_val(w', α) and ε = eps_scale / ‖∇w' L_val(w', α)‖.
The divisor is (2ε): one public reimplementation wrote ``(p - n) / 2.*eps``, which
multiplies by ε instead; tests/test_unrolled.py pins the difference.

BatchNorm running statistics (``bn_stats``). Every pass here is a train-mode forward, so
each would also move the running mean/variance (and num_batches_tracked) of every BN,
though none of them is a training step: the α gradients never read those buffers (train
mode normalises with batch statistics), only the eval-mode supernet does (the final
``val_acc``). Running them all on the search network itself, as this module first did,
added four updates per α step, one of them from the validation batch at the virtual
weights w′, which DARTS runs on a copy (quark0's ``_construct_model_from_theta``, pt.darts'
``v_net``). Measured on a 3-cell C=4 supernet, batch 8, two second-order iterations: the
buffers differed from DARTS' by up to 0.13 and the eval-mode logits by 0.16 (0.7 / 0.7
from ``"untouched"``'s); α and its gradients were the same bits in all three.
``"untouched"`` (default): the α step leaves every buffer as it found it, as it leaves
the weights; only the w step's forward updates them. ``"darts"``: DARTS' code: L_val(w′)
leaves the real buffers alone, but the three train-batch passes at w, w + εv and w − εv
run on the real network and update them (quark0 ``_compute_unrolled_model`` and
``_hessian_vector_product``, pt.darts ``virtual_step`` and ``compute_hessian`` all call
the real model). tests/test_unrolled.py pins both.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: what a second-order α step does to BN running statistics (module docstring)
BN_STATS = ("untouched", "darts")


def _ce(net, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x), y)


def running_stat_buffers(net: nn.Module) -> list[torch.Tensor]:
    """Every BN running-statistics buffer of ``net``: running_mean, running_var and
    num_batches_tracked of each norm layer that tracks them (all of the search network's are
    ``nn.BatchNorm2d`` modules, whichever kernel runs them: darts.nn.ops, darts.nn.fast.edgebatch)."""
    bufs: list[torch.Tensor] = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            bufs += [m.running_mean, m.running_var, m.num_batches_tracked]
    return bufs


@contextmanager
def kept(buffers: list[torch.Tensor]):
    """Within the block, the ``buffers`` may change; after it they hold their values again,
    bit for bit (one batched copy each way, on their device: no host sync)."""
    if not buffers:
        yield
        return
    saved = torch._foreach_mul(buffers, 1)  # a copy of each (x·1 is x exactly, −0 and NaN too)
    try:
        yield
    finally:
        torch._foreach_copy_(buffers, saved)


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


class UnrolledGrads(NamedTuple):
    """One second-order α gradient and its two terms (per α tensor, in ``arch_parameters()`` order)."""

    val_loss: torch.Tensor        # L_val(w′, α)
    grads: list[torch.Tensor]     # ∇α L_val(w′, α) + hessian: what α steps on
    hessian: list[torch.Tensor]   # −ξ · [∇α L_train(w⁺) − ∇α L_train(w⁻)] / (2ε): the second-order term


def unrolled_alpha_grads(net, w_opt: torch.optim.SGD, train_batch, val_batch, eps_scale: float = 0.01,
                         bn_stats: str = "untouched") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(L_val at the unrolled weights, α gradients) for one second-order α step.

    The network's weights are left exactly as they were (the unrolled step is undone); its BN
    running statistics too with ``bn_stats="untouched"``, all but those of the three
    train-batch passes with ``"darts"`` (module docstring). The gradients are the same.
    ``unrolled_alpha_grad_terms`` returns the Hessian term apart as well.
    """
    terms = unrolled_alpha_grad_terms(net, w_opt, train_batch, val_batch, eps_scale, bn_stats)
    return terms.val_loss, terms.grads


def unrolled_alpha_grad_terms(net, w_opt: torch.optim.SGD, train_batch, val_batch, eps_scale: float = 0.01,
                              bn_stats: str = "untouched") -> UnrolledGrads:
    """``unrolled_alpha_grads`` with the second-order (Hessian-vector) term returned apart,
    for a caller that studies it (``darts.loops.search.StepRecord.hessian_term``)."""
    if bn_stats not in BN_STATS:
        raise ValueError(f"unknown bn_stats {bn_stats!r}; valid: {', '.join(BN_STATS)}")
    bufs = running_stat_buffers(net)
    with kept(bufs if bn_stats == "untouched" else []):
        return _unrolled(net, w_opt, train_batch, val_batch, eps_scale, bufs if bn_stats == "darts" else [])


def _unrolled(net, w_opt, train_batch, val_batch, eps_scale: float, keep_at_w_prime: list[torch.Tensor]):
    """unrolled_alpha_grads' work; ``keep_at_w_prime``: the buffers the L_val(w′) pass must not move."""
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
    # the virtual weights' pass: DARTS runs it on a copy. Restored after the backward, which
    # checks that the buffers its BNs saved were not rewritten in between
    with kept(keep_at_w_prime):
        loss_val = _ce(net, val_batch)
        grads = torch.autograd.grad(loss_val, list(a) + list(w), allow_unused=True, materialize_grads=True)
    g_alpha, g_w = list(grads[: len(a)]), list(grads[len(a):])
    with torch.no_grad():
        for p, b in zip(w, backup):
            p.copy_(b)
    hvp = finite_difference_hvp(net, train_batch, g_w, eps_scale)
    hessian = [-lr * h for h in hvp]
    return UnrolledGrads(loss_val.detach(), [ga + hh for ga, hh in zip(g_alpha, hessian)], hessian)
