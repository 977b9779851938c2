"""Helpers shared by the search-network tests: a tiny seeded supernet, a batch, a call counter."""
from __future__ import annotations

from collections import Counter

import torch

import darts.nn.supernet
from darts.nn.supernet import SearchNetwork

_forward_many = darts.nn.supernet.forward_many


def _counted_forward_many(ops, *args, **kw):
    """darts.nn.fast.edgebatch.forward_many, first telling each op's counter (set by count_calls)
    that it runs: a batched op calls neither its forward nor its ``mixed``."""
    for op in ops:
        getattr(op, "_count_call", lambda: None)()
    return _forward_many(ops, *args, **kw)


_mixed_op = darts.nn.supernet.mixed_op


def _counted_mixed_op(op, *args, **kw):
    """darts.nn.supernet.mixed_op (an op's fused search path), first telling the op's counter
    that it runs: the search network calls it instead of the op's forward."""
    getattr(op, "_count_call", lambda: None)()
    return _mixed_op(op, *args, **kw)


darts.nn.supernet.forward_many = _counted_forward_many
darts.nn.supernet.mixed_op = _counted_mixed_op


def tiny(activation, layers: int = 3, seed: int = 0, C: int = 4) -> SearchNetwork:
    """A 5-class supernet small enough for exact, fast checks."""
    torch.manual_seed(seed)
    return SearchNetwork(activation, C=C, n_classes=5, layers=layers,
                         generator=torch.Generator().manual_seed(seed))


def batch(n: int = 4, hw: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hw, hw, generator=g), torch.randint(0, 5, (n,), generator=g)


def count_calls(modules: dict) -> Counter:
    """Count every execution of each module, however the network invokes it: the module call
    (forward), the search network's fused path (``darts.nn.supernet.mixed_op``) or several
    edges' op computed as one (``darts.nn.fast.edgebatch.forward_many``)."""
    counts = Counter()
    for key, m in modules.items():
        object.__setattr__(m, "_count_call", lambda _key=key: counts.update([_key]))

        def wrapped(*args, _orig=m.forward, _key=key, **kw):
            counts[_key] += 1
            return _orig(*args, **kw)

        object.__setattr__(m, "forward", wrapped)
    return counts


class FixedBatches:
    """The stream API over one fixed batch (any device, `meta` included)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], n: int = 2):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def next(self):
        return self.batch

    def epoch_batches(self):
        for _ in range(self.n):
            yield self.batch
