"""BatchNorm running statistics re-estimated at the current weights (BN recalibration).

A BatchNorm's running mean/variance is an exponential average (momentum 0.1) of the batch
statistics of its last ~10 training-mode forwards, taken while the weights moved. A
network evaluated in eval mode after a few dozen fast-learning steps is then normalised
by statistics of earlier weights, and its accuracy understates what it has learned: the
quick study's second-order DARTS supernets scored far lower in eval mode than with
batch statistics (benchmarks/README.md, "Learning probe"). One-shot NAS
re-estimates the statistics before it evaluates a network for that reason (BN
recalibration: Guo et al. 2020, "Single Path One-Shot NAS"). Late in a long search
(the paper's 50 epochs) the weights move little between steps and the two estimates
should be close; in short searches they are not (README, *Deviations and choices* 14, has
the measured gaps), and this measures the supernet instead of its averaging lag.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _tracking_norms(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
    """Set every tracking BatchNorm's running statistics to the plain average of its batch
    statistics over ``batches`` (training-mode forwards without gradients; no weight
    changes). Returns the number of batches used; with none, nothing changes.

    The t-th batch runs with momentum 1/t, so the running value after T batches is the
    mean of the T batch statistics whichever kernel computes them (torch's, or ours in
    darts.nn.ops and darts.nn.fast.edgebatch, which read ``bn.momentum`` on every call);
    ``momentum=None`` would do the same for torch's kernel only. Momenta, num_batches_tracked
    and the model's train/eval mode are put back afterwards.
    """
    norms = _tracking_norms(model)
    momenta = [m.momentum for m in norms]
    tracked = [m.num_batches_tracked.clone() for m in norms]
    was_training = model.training
    device = next(model.parameters()).device
    t = 0
    model.train()
    try:
        for x, _ in batches:
            t += 1
            for m in norms:
                m.momentum = 1.0 / t  # t = 1 overwrites the old statistics entirely
            model(x.to(device, non_blocking=True))
    finally:
        for m, momentum, n in zip(norms, momenta, tracked):
            m.momentum = momentum
            m.num_batches_tracked.copy_(n)
        model.train(was_training)
    return t
