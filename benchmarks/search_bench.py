"""One search iteration (α step on a val batch + w step on a train batch), timed.

``--impl fast`` times our code as the search stage runs it: ``darts.loops.search.Searcher``
(alternate schedule, no regularizer, the configured activation) driving
``darts.nn.supernet.SearchNetwork``, whose first-order α step takes gradients w.r.t. α
only. ``--impl reference`` times the "before": the straightforward network of
``darts/nn/reference.py`` driven by the public DARTS first-order loop
(``benchmarks/public_loop.py``: full backward in the α step, α gradients in the w
step); for second order the reference network stays on ``Searcher``, as there is no
public loop here for the unrolled step. Each row's ``loop`` says which ran ("ours" or
"public"). Both run over fake streams of pre-drawn random CIFAR-shaped batches, so data
loading is not in the time (it has its own benchmark), and time each step of an epoch
through ``on_step``. FLOPs are the *model's*: counted once per config on the meta device
with the straightforward formulation and α-only gradients in the α step, so a loop or a
formulation that executes more arithmetic (or less) does not change the GFLOP/s yardstick.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from darts.loops.search import SearchConfig, Searcher
from darts.method.activations import CRB, Softmax
from darts.method.regularizers import NoRegularizer
from darts.method.schedules import alternate
from darts.nn.supernet import SearchNetwork

from .common import StepTimer, count_flops, matmul_gflops, report, sync_for
from .public_loop import PublicFirstOrderLoop
from darts.nn.reference import ReferenceSearchNetwork

SIZES = {  # name: (C, cells, batch, image side); FLOP/iteration softmax: 2.2 G, 23.6 G, 230 G
    "tiny": (4, 5, 32, 16),
    "small": (8, 5, 32, 32),
    "paper": (16, 8, 64, 32),
}
STEPS = {"tiny": (2, 8), "small": (2, 5), "paper": (1, 3)}  # (warm-up, timed) iterations


class FakeStream:
    """The stream API both loops use, cycling through a few fixed random batches."""

    def __init__(self, batch: int, side: int, n_steps: int, seed: int, n_batches: int = 3,
                 device: torch.device | str = "cpu"):
        g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same batches on any device
        self.batches = [(torch.randn(batch, 3, side, side, generator=g).to(device),
                         torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(n_batches)]
        self.n_steps, self.i = n_steps, 0

    def __len__(self) -> int:
        return self.n_steps

    def next(self):
        self.i += 1
        return self.batches[self.i % len(self.batches)]

    def epoch_batches(self):
        for _ in range(self.n_steps):
            yield self.next()

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, d: dict) -> None:
        self.i = d["i"]


def prune_half(net) -> None:
    """Mask (seeded) 4 ops on even edges and 3 on odd ones: half of CRB's 14×7 per cell type."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t, live in net.live().items():
            k = live.shape[1]
            for e in range(live.shape[0]):
                dead = torch.randperm(k, generator=g)[: (k + 1) // 2 if e % 2 == 0 else k // 2]
                live[e, dead] = False
            net.alphas()[t].masked_fill_(~live, 0.0)
    net.refresh_live()


def build_net(impl: str, activation: str, size: str):
    c, layers, _, _ = SIZES[size]
    act = Softmax() if activation == "softmax" else CRB()
    cls = ReferenceSearchNetwork if impl == "reference" else SearchNetwork
    torch.manual_seed(0)
    net = cls(act, C=c, layers=layers)
    if activation == "crb_half":
        prune_half(net)
    return net


def iteration_flops(activation: str, size: str, order: int, batch: int) -> int:
    """Model FLOPs of one iteration at ``batch``, on the meta device (fast, no memory)."""
    side = SIZES[size][3]
    net = build_net("reference", activation, size).to("meta")
    x = torch.empty(batch, 3, side, side, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    a = net.arch_parameters()

    def iteration():
        if order == 2:
            from darts.method.unrolled import unrolled_alpha_grads
            opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
            unrolled_alpha_grads(net, opt, (x, y), (x, y))
        else:
            torch.autograd.grad(F.cross_entropy(net(x), y), a)
        for p in a:
            p.requires_grad_(False)
        F.cross_entropy(net(x), y).backward()
        for p in a:
            p.requires_grad_(True)

    return count_flops(iteration)


def make_loop(impl: str, order: int, net, train, val, batch: int,
              amp: bool = False) -> tuple[str, PublicFirstOrderLoop | Searcher]:
    """("public", the public DARTS loop) for the first-order reference, else ("ours", a Searcher);
    ``amp``: bfloat16 autocast (``SearchConfig.amp``), for ours only."""
    cfg = SearchConfig(epochs=1000, batch_size=batch, order=order, amp=amp)
    if impl == "reference" and order == 1:
        return "public", PublicFirstOrderLoop(net, train, val, cfg)
    return "ours", Searcher(net, cfg, alternate(), NoRegularizer(), train, val)


def run(spec: dict) -> dict:
    size, activation, impl = spec["size"], spec["activation"], spec["impl"]
    order = spec.get("order", 1)
    device = torch.device(spec.get("device") or "cpu")
    amp = bool(spec.get("amp")) and impl == "fast"  # the public code has no mixed precision
    _, _, batch, side = SIZES[size]
    batch = spec.get("batch") or batch  # --batch: at 1–2 a step is almost all per-call cost
    warm, steps = STEPS[size]
    steps = spec.get("steps") or steps
    flops = iteration_flops(activation, size, order, batch)
    net = build_net(impl, activation, size).to(device)
    train, val = FakeStream(batch, side, warm, 1, device=device), FakeStream(batch, side, warm, 2, device=device)
    loop_name, loop = make_loop(impl, order, net, train, val, batch, amp)
    timer = StepTimer(sync_for(device))
    loop.run_epoch(timer)  # warm-up: allocator, oneDNN primitive caches / cuDNN plans, lazy inits
    train.n_steps = steps
    mm = matmul_gflops(device=device, dtype=torch.bfloat16 if amp else torch.float32)
    timer.reset()
    loop.run_epoch(timer)
    row = {"bench": "search_step", "config": spec["config"], "impl": impl, "loop": loop_name,
           "activation": activation, "order": order, "batch": batch, "amp": amp,
           "live_ops": {t: int(m.sum()) for t, m in net.live().items()}}
    row.update(timer.summary())
    return report(row, flops, 2 * batch, mm, device)
