"""Timing a few real training steps, and the peak memory they take (for cost estimates).

A study's cost on a machine is its steps' cost there, which depends on the machine, its
threads and whatever else runs on it: only measuring tells. These functions drive darts'
own loops (``Searcher.run_epoch``, ``Retrainer.train_epoch``, ``evaluate``) over random
uint8 images of the right shape (nothing to download or prepare) and time each step after
a warm-up (allocator, oneDNN primitive caches / cuDNN plans, lazy initialisation).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from darts.data import BatchStream, ImageSet, as_hw
from darts.loops.search import SearchConfig, Searcher
from darts.loops.train import Retrainer, RetrainConfig, evaluate
from darts.method.regularizers import NoRegularizer
from darts.method.schedules import alternate

Clock = Callable[[], float]
N_CLASSES = 10  # labels of the random images; the head's width barely matters to a step


@dataclass(frozen=True)
class StepCost:
    """Median seconds of ``n`` timed steps; peak host RSS and GPU memory (MB) while they ran."""

    seconds: float
    rss_mb: float | None = None
    gpu_mb: float | None = None
    n: int = 1


class Timer:
    """``on_step`` callback recording each step's duration; waits for a GPU before each reading.

    ``should_stop`` ends a loop early once ``minimum`` steps are timed and they took over
    ``budget_s``. The budget is counted in measured step time, so it reads no clock of its
    own (a scripted clock in a test sees exactly one call per step).
    """

    def __init__(self, device: torch.device, clock: Clock, budget_s: float = float("inf"), minimum: int = 1):
        self.clock, self.times, self.budget_s, self.minimum = clock, [], budget_s, minimum
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self._last = 0.0

    def start(self) -> None:
        self.times = []
        self.sync()
        self._last = self.clock()

    def __call__(self, *_args) -> None:
        self.sync()
        now = self.clock()
        self.times.append(now - self._last)
        self._last = now

    def should_stop(self) -> bool:
        n = len(self.times)
        return n >= self.minimum and sum(self.times) > self.budget_s


def release_memory(device: torch.device) -> None:
    """Hand freed memory back (the OS: glibc's ``malloc_trim``; a GPU: torch's cache), so
    that the next network's peak is its own. Only before a warm-up: the stages keep freed
    memory (``darts.nn.fast.hostmemory``), and a timed step that faulted it back in would be slower
    than theirs."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> bool:
    """Start a fresh memory peak: writing 5 to /proc/self/clear_refs resets Linux's peak RSS,
    which ``getrusage`` reports (it restarts from the current RSS). False where that cannot
    be done: the peak is then the process's so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def step_cost(times: list[float], device: torch.device) -> StepCost:
    """Median of ``times`` with the memory peaks since the last ``reset_peak``."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return StepCost(statistics.median(times), rss, gpu, len(times))


def random_images(n: int, side: int | tuple[int, int], seed: int) -> ImageSet:
    """``n`` random RGB images of ``side`` (a side or (H, W)) with random labels: a step costs
    the same whatever the pixels."""
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, *as_hw(side)), dtype=torch.uint8, generator=g),
                    torch.randint(0, N_CLASSES, (n,), generator=g), [str(c) for c in range(N_CLASSES)])


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def _searcher(net, cfg: SearchConfig, side: int | tuple[int, int], iterations: int) -> Searcher:
    """A Searcher over random batches whose epoch is ``iterations`` alternate iterations:
    each an α step (at ``cfg.order``) on a validation batch, then a w step."""
    device, b = _device(net), cfg.batch_size
    val = BatchStream(random_images(b, side, 1), b, seed=1, device=device)
    train = BatchStream(random_images(b * iterations, side, 0), b, seed=0, device=device)
    return Searcher(net, cfg, alternate(), NoRegularizer(), train, val)


def warm_up_search(net, cfg: SearchConfig, side: int | tuple[int, int]) -> None:
    """One untimed iteration, after handing back what earlier work left (``release_memory``)."""
    release_memory(_device(net))
    _searcher(net, cfg, side, 1).run_epoch()


def time_search(net, cfg: SearchConfig, side: int | tuple[int, int], steps: int, clock: Clock,
                budget_s: float = float("inf")) -> tuple[StepCost, StepCost]:
    """(w step, α step) of ``net`` at ``cfg.order`` over up to ``steps`` iterations (after
    ``warm_up_search``; a second-order α step needs no warm-up of its own after first-order
    iterations: the same kernels, at the same shapes). The α step is timed inside the loop
    and the w step is the rest of its iteration, so both come from the same iteration; the
    α step carries the iteration's peak memory."""
    device = _device(net)
    searcher = _searcher(net, cfg, side, steps)
    timer = Timer(device, clock, budget_s)
    alpha_step, alpha_times = searcher.alpha_step, []

    def timed_alpha_step(batch):
        timer.sync()
        start = clock()
        out = alpha_step(batch)
        timer.sync()
        alpha_times.append(clock() - start)
        return out

    searcher.alpha_step = timed_alpha_step
    reset_peak(device)
    timer.start()
    searcher.run_epoch(timer, timer.should_stop)
    w = [t - a for t, a in zip(timer.times, alpha_times)]
    return StepCost(statistics.median(w), n=len(w)), step_cost(alpha_times, device)


def time_retrain(model, cfg: RetrainConfig, side: int | tuple[int, int], steps: int, clock: Clock,
                 budget_s: float = float("inf")) -> tuple[StepCost, StepCost]:
    """(training step, eval-mode forward of one batch) of an evaluation network. Drop-path is
    at its mid-run rate (most of a retrain runs with it on); cutout as configured."""
    device, b = _device(model), cfg.batch_size
    stream = BatchStream(random_images(b * (1 + steps), side, 3), b, seed=3, device=device, cutout=cfg.cutout)
    timer = Timer(device, clock, budget_s, minimum=2)  # the first step warms up
    trainer = Retrainer(model, cfg, on_step=timer)
    trainer.epoch = cfg.epochs // 2
    release_memory(device)
    reset_peak(device)
    timer.start()
    trainer.train_epoch(stream.epoch_batches(), timer.should_stop)
    step = step_cost(timer.times[1:], device)
    x = BatchStream(random_images(b, side, 4), b, seed=4, device=device, train=False).next()
    evaluate(model, [x])  # warm-up: eval mode runs other kernels
    timer.start()
    evaluate(model, [x])  # reads its result back, so a GPU has finished
    timer()
    return step, StepCost(timer.times[0])
