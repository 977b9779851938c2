"""The benchmarks' reference search loop is the public DARTS first-order loop.

What makes it the public loop, and not ours: its α step is a full backward (every
weight gets a gradient, and only α moves), and its w step leaves α's requires_grad on
(α's gradient grows). Our Searcher does neither, so these checks fail if the reference
ever runs through it again.
"""
from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT

from darts.loops.search import SearchConfig, Searcher
from darts.method.activations import CRB, Softmax

sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder, not an installed package
from benchmarks import search_bench
from benchmarks.public_loop import PublicFirstOrderLoop
from darts.nn.reference import ReferenceSearchNetwork
from benchmarks.search_bench import FakeStream, make_loop


def _loop(activation, n_steps: int = 2) -> PublicFirstOrderLoop:
    torch.manual_seed(0)
    net = ReferenceSearchNetwork(activation, C=4, layers=3, generator=torch.Generator().manual_seed(0))
    return PublicFirstOrderLoop(net, FakeStream(4, 8, n_steps, seed=1), FakeStream(4, 8, n_steps, seed=2))


def _copies(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def test_alpha_step_is_a_full_backward_that_moves_only_alpha():
    loop = _loop(Softmax())
    w0, a0 = _copies(loop.w_params), _copies(loop.a_params)
    loop.alpha_step()
    no_grad = [n for n, p in loop.net.named_parameters() if not n.startswith("alpha_")
               and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"the α step left these weights without a gradient: {no_grad[:5]}"
    assert all(torch.equal(p, q) for p, q in zip(loop.w_params, w0))  # weights are not stepped
    assert all(not torch.equal(p, q) for p, q in zip(loop.a_params, a0))


def test_w_step_also_computes_alpha_gradients():
    loop = _loop(Softmax())
    loop.alpha_step()
    after_alpha = _copies(a.grad for a in loop.a_params)
    w0 = _copies(loop.w_params)
    x, y = loop.train_stream.next()
    loop.w_step(x, y)
    # the w step's α gradient is accumulated onto the α step's (DARTS zeroes it at the next α step)
    assert all(not torch.equal(a.grad, g) for a, g in zip(loop.a_params, after_alpha))
    assert sum(not torch.equal(p, q) for p, q in zip(loop.w_params, w0)) == len(w0)


def test_crb_public_loop_prunes_after_the_alpha_step():
    loop = _loop(CRB())
    with torch.no_grad():
        loop.net.alpha_normal[0, 3] = -1.0
    loop.alpha_step()
    assert not loop.net.live()["normal"][0, 3] and loop.net.live()["normal"].sum() == 14 * 7 - 1
    assert 3 not in loop.net._live_idx["normal"][0]


def test_run_epoch_calls_on_step_once_per_iteration():
    loop = _loop(Softmax(), n_steps=3)
    calls = []
    loop.run_epoch(lambda i, n, loss: calls.append((i, n, bool(torch.isfinite(loss)))))
    assert calls == [(1, 3, True), (2, 3, True), (3, 3, True)]


def test_reference_uses_the_public_loop_for_first_order_only():
    net = _loop(Softmax()).net
    streams = (FakeStream(4, 8, 1, seed=1), FakeStream(4, 8, 1, seed=2))
    name, loop = make_loop("reference", 1, net, *streams, batch=4)
    assert name == "public" and isinstance(loop, PublicFirstOrderLoop)
    for impl, order in (("reference", 2), ("fast", 1), ("fast", 2)):
        name, loop = make_loop(impl, order, net, *streams, batch=4)
        assert name == "ours" and isinstance(loop, Searcher)
    with pytest.raises(ValueError, match="first order only"):
        PublicFirstOrderLoop(net, *streams, SearchConfig(order=2))


def test_benchmark_row_says_which_loop_ran(monkeypatch):
    monkeypatch.setitem(search_bench.SIZES, "tiny", (4, 3, 4, 8))  # a smaller "tiny": seconds, not tens
    monkeypatch.setitem(search_bench.STEPS, "tiny", (1, 1))
    monkeypatch.setattr(search_bench, "matmul_gflops", lambda **kw: 1.0)
    monkeypatch.setattr(search_bench, "iteration_flops", lambda *args: 10 ** 9)  # FLOP counting: seconds
    spec = {"size": "tiny", "activation": "softmax", "config": "tiny", "steps": 1}
    assert search_bench.run(dict(spec, impl="reference"))["loop"] == "public"
    assert search_bench.run(dict(spec, impl="fast"))["loop"] == "ours"


def test_paired_ratio_is_the_median_of_back_to_back_pairs():
    from benchmarks.run import paired_ratio
    fast = [{"seconds_per_step": s} for s in (0.2, 0.3, 0.25)]
    ref = [{"seconds_per_step": s} for s in (0.6, 0.6, 1.0)]  # the machine slowed for the last pair
    row = paired_ratio("tiny", fast, ref)
    assert row["paired"] == pytest.approx([3.0, 2.0, 4.0])
    assert row["reference_over_fast"] == pytest.approx(3.0)
    assert row["of_medians"] == pytest.approx(0.6 / 0.25)  # the two medians came from different pairs
    assert paired_ratio("tiny", fast[:2], ref[:2])["reference_over_fast"] == pytest.approx(2.5)
    assert "error" in paired_ratio("tiny", fast, ref[:2] + [{"error": "boom"}])


def test_repeated_runs_report_the_median_process():
    from benchmarks.run import main, median_run
    rows = [{"seconds_per_step": s, "peak_rss_mb": s * 10} for s in (0.3, 0.1, 0.2)]
    best = median_run(rows)
    assert best["seconds_per_step"] == 0.2 and best["peak_rss_mb"] == 2.0  # one real run's row
    assert best["runs_seconds"] == [0.3, 0.1, 0.2]
    assert median_run(rows[:2])["seconds_per_step"] == 0.1  # even count: the faster middle one
    assert "error" in median_run(rows + [{"error": "boom"}])
    with pytest.raises(SystemExit, match="--repeat must be at least 1, got 0"):
        main(["--repeat", "0", "--config", "tiny"])
