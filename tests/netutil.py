"""Helpers shared by the search-network tests: a tiny seeded supernet, a batch, a call counter."""
from __future__ import annotations

from collections import Counter

import torch

import darts.supernet
from darts.supernet import SearchNetwork

_forward_many = darts.supernet.forward_many


def _counted_forward_many(ops, *args, **kw):
    """darts.edgebatch.forward_many, first telling each op's counter (set by count_calls)
    that it runs: a batched op calls neither its forward nor its ``mixed``."""
    for op in ops:
        getattr(op, "_count_call", lambda: None)()
    return _forward_many(ops, *args, **kw)


darts.supernet.forward_many = _counted_forward_many


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
    (forward), an op's fused search path (``mixed``, where the op has one) or several edges'
    op computed as one (``darts.edgebatch.forward_many``)."""
    counts = Counter()
    for key, m in modules.items():
        object.__setattr__(m, "_count_call", lambda _key=key: counts.update([_key]))
        for name in ("forward", "mixed"):
            orig = getattr(m, name, None)
            if orig is None:
                continue

            def wrapped(*args, _orig=orig, _key=key, **kw):
                counts[_key] += 1
                return _orig(*args, **kw)

            object.__setattr__(m, name, wrapped)
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
