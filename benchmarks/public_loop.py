"""The public DARTS first-order search iteration, the benchmarks' reference *loop*.

``darts.loops.search.Searcher`` takes α-only gradients in its α step. The public DARTS code's
first-order path does not: its α step is a full ``loss.backward()`` that also fills
every weight's gradient (thrown away by the next ``zero_grad``), and its w step leaves
α's ``requires_grad`` on, so α gradients are computed there too. Timing our network
with our loop against the straightforward network driven by our loop would credit the
reference with our loop's savings, so the reference is timed with this loop instead.

It runs on any search network (``darts.nn.supernet.SearchNetwork`` or the benchmarks'
``ReferenceSearchNetwork``) and any stream with the ``Searcher`` API (``next()``,
``epoch_batches()``, ``len()``), with the same hyperparameters (``SearchConfig``'s
defaults are the DARTS values) and the same ``run_epoch(on_step)`` timing protocol.
The activation (softmax or CRB) is applied by the network's forward, as in the public
code. Not public: for a pruning activation (CRB, which the public code does not have)
``net.prune()`` runs after each α step, as in our loop, so pruned ops are skipped the
same way in both. First order only: the second-order reference stays on ``Searcher``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from darts.loops.search import SearchConfig, make_optimizers


class PublicFirstOrderLoop:
    """α step (full backward, Adam) then w step (SGD, clipping) per iteration, as DARTS does."""

    def __init__(self, net, train_stream, val_stream, cfg: SearchConfig | None = None):
        cfg = cfg if cfg is not None else SearchConfig()
        if cfg.order != 1:
            raise ValueError(f"the public loop is first order only; order={cfg.order} runs on darts.loops.search.Searcher")
        self.net, self.cfg = net, cfg
        self.train_stream, self.val_stream = train_stream, val_stream
        self.w_params = net.weight_parameters()
        self.a_params = net.arch_parameters()
        self.w_opt, self.a_opt = make_optimizers(self.w_params, self.a_params, cfg, fast=False)  # DARTS' plain SGD

    def alpha_step(self) -> torch.Tensor:
        """One α update on the next validation batch; the backward also fills weight gradients."""
        x, y = self.val_stream.next()
        self.a_opt.zero_grad()
        loss = F.cross_entropy(self.net(x), y)
        loss.backward()
        self.a_opt.step()
        if self.net.activation.prunes:
            self.net.prune()
        return loss.detach()

    def w_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One weight update; α keeps requires_grad, so its gradient is computed (and accumulated) too."""
        self.w_opt.zero_grad()
        loss = F.cross_entropy(self.net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.w_params, self.cfg.grad_clip)
        self.w_opt.step()
        return loss.detach()

    def run_epoch(self, on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> None:
        """One pass over the training stream, calling ``on_step(i, n, loss)`` after each iteration
        (``Searcher.run_epoch``'s callback, so the same ``StepTimer`` times both loops)."""
        n = len(self.train_stream)
        for i, (x, y) in enumerate(self.train_stream.epoch_batches(), start=1):
            self.alpha_step()
            loss = self.w_step(x, y)
            if on_step is not None:
                on_step(i, n, loss)
