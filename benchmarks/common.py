"""Shared measuring tools: the machine's matmul rate, model FLOPs, peak RSS, timing.

Achieved GFLOP/s is only meaningful next to what the machine can do *right now*
(other jobs share these 2 cores), so every benchmark measures the matmul rate in its
own process just before timing, and reports both.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def sync_for(device: torch.device | str) -> Callable[[], None]:
    """What to call before reading the clock: a CUDA device runs ahead of the host, so a
    step's time is only known once its kernels have finished (the benchmark's sync, not the
    step's: the code it times makes none of its own)."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def matmul_gflops(n: int = 1024, reps: int = 8, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` n×n matmul rate in GFLOP/s, in ``dtype`` on ``device`` (n ≥ 8192 on a
    GPU, which a 1024 product leaves mostly idle)."""
    device = torch.device(device)
    n = max(n, 8192) if device.type == "cuda" else n
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = sync_for(device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Each requested gradient of a convolution costs what its forward costs.

    torch's own formula ignores ``groups`` for the weight gradient, so it counts a
    depthwise convolution's weight gradient C times over (on the paper config that
    would double the iteration's FLOPs); this one does not.
    """
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return fwd * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn) -> int:
    """Matmul/conv FLOPs of one call of ``fn`` (run it on the meta device: no compute)."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


class StepTimer:
    """Collects per-step durations through an ``on_step``-style callback; ``sync`` (see
    :func:`sync_for`) runs before each reading of the clock."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.times: list[float] = []
        self._sync = sync or (lambda: None)
        self._last = time.perf_counter()

    def reset(self) -> None:
        self.times.clear()
        self._sync()
        self._last = time.perf_counter()

    def __call__(self, *args) -> None:
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def summary(self) -> dict:
        return {"seconds_per_step": statistics.median(self.times), "seconds_min": min(self.times),
                "steps": len(self.times)}


def report(row: dict, flops: int | None, images_per_step: int, mm: float,
           device: torch.device | str = "cpu") -> dict:
    """Add the derived rates to a timing row (median step time is the headline); on a GPU
    also its name and the peak of its memory allocated by torch (``peak_device_mb``)."""
    device = torch.device(device)
    if device.type == "cuda":
        row["device"] = torch.cuda.get_device_name(device)
        row["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    s = row["seconds_per_step"]
    row["images_per_s"] = images_per_step / s
    if flops is not None:
        row["gflop_per_step"] = flops / 1e9
        row["gflops_per_s"] = flops / s / 1e9
        row["fraction_of_matmul"] = row["gflops_per_s"] / mm
    row["matmul_gflops_per_s"] = mm
    row["peak_rss_mb"] = peak_rss_mb()
    row["threads"] = torch.get_num_threads()
    # > threads means other processes competed for the cores: with OpenMP, one preempted
    # thread stalls every parallel op, so such figures can be many times too slow
    row["loadavg_1m"] = os.getloadavg()[0]
    return row
