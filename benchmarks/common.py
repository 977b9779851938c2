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

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def matmul_gflops(n: int = 1024, reps: int = 8) -> float:
    """Best-of-``reps`` float32 n×n matmul rate in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
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
    """Collects per-step durations through an ``on_step``-style callback."""

    def __init__(self):
        self.times: list[float] = []
        self._last = time.perf_counter()

    def reset(self) -> None:
        self.times.clear()
        self._last = time.perf_counter()

    def __call__(self, *args) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def summary(self) -> dict:
        return {"seconds_per_step": statistics.median(self.times), "seconds_min": min(self.times),
                "steps": len(self.times)}


def report(row: dict, flops: int | None, images_per_step: int, mm: float) -> dict:
    """Add the derived rates to a timing row (median step time is the headline)."""
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
