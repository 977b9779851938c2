"""The benchmark suite's options: another batch size, another device, mixed precision.

A GPU figure is only worth printing if the step ran on the GPU and the clock waited for
its kernels; these checks fail if a spec's device or amp flag stops reaching the network,
the batches, the loop or the timer.
"""
from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder, not an installed package
from benchmarks import common, search_bench  # noqa: E402
from benchmarks.run import main  # noqa: E402
from benchmarks.search_bench import FakeStream  # noqa: E402


@pytest.fixture
def small_tiny(monkeypatch):
    """A smaller "tiny" (seconds, not tens), one step, no matmul or FLOP measuring."""
    monkeypatch.setitem(search_bench.SIZES, "tiny", (4, 3, 4, 8))
    monkeypatch.setitem(search_bench.STEPS, "tiny", (1, 1))
    monkeypatch.setattr(search_bench, "matmul_gflops", lambda **kw: 1.0)
    flops_at = []
    monkeypatch.setattr(search_bench, "iteration_flops", lambda *args: flops_at.append(args[-1]) or 10 ** 9)
    return {"size": "tiny", "activation": "crb", "config": "tiny-crb", "steps": 1, "impl": "fast"}, flops_at


def test_batch_option_sets_the_search_step_batch(small_tiny):
    spec, flops_at = small_tiny
    row = search_bench.run(dict(spec, batch=2))
    assert row["batch"] == 2 and flops_at == [2]  # FLOPs counted at the batch that ran
    assert row["images_per_s"] == pytest.approx(2 * 2 / row["seconds_per_step"])
    assert search_bench.run(dict(spec, batch=0))["batch"] == 4  # 0: the config's own


def test_amp_runs_ours_in_bfloat16_and_the_reference_in_float32(small_tiny, monkeypatch):
    spec, _ = small_tiny
    loops = []
    make_loop = search_bench.make_loop
    monkeypatch.setattr(search_bench, "make_loop", lambda *a, **k: loops.append(make_loop(*a, **k)) or loops[-1])
    ours = search_bench.run(dict(spec, amp=True))
    ref = search_bench.run(dict(spec, amp=True, impl="reference"))
    assert ours["amp"] is True and loops[0][1].cfg.amp is True
    assert ref["amp"] is False and loops[1][1].cfg.amp is False  # the public code has no mixed precision
    assert search_bench.run(spec)["amp"] is False


def test_fake_batches_are_made_on_the_cpu_then_moved():
    cpu, meta = FakeStream(4, 8, 1, seed=3), FakeStream(4, 8, 1, seed=3, device="meta")
    assert all(x.device.type == "meta" and y.device.type == "meta" for x, y in meta.batches)
    again = FakeStream(4, 8, 1, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cpu.batches, again.batches))


def test_step_timer_syncs_before_each_clock_read():
    calls = []
    timer = common.StepTimer(sync=lambda: calls.append(1))
    timer.reset()
    timer()
    timer()
    assert len(calls) == 3 and len(timer.times) == 2


def test_sync_for_waits_for_cuda_only(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    common.sync_for("cpu")()
    assert waited == []
    common.sync_for("cuda")()
    assert waited == [torch.device("cuda")]


def test_bad_device_and_batch_are_refused_before_any_work():
    with pytest.raises(SystemExit, match="--device 'tpu' is invalid; valid: cpu, cuda"):
        main(["--device", "tpu", "--config", "tiny"])
    with pytest.raises(SystemExit, match="--batch must be 0 .* got -1"):
        main(["--batch", "-1", "--config", "tiny"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device here; valid here: cpu"):
            main(["--device", "cuda", "--config", "tiny"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_and_eval_benchmarks_run_on_the_gpu(small_tiny):
    spec, _ = small_tiny
    for amp in (False, True):
        row = search_bench.run(dict(spec, device="cuda", amp=amp))
        assert row["amp"] is amp and row["peak_device_mb"] > 0 and row["device"] == torch.cuda.get_device_name()
    from benchmarks.other_bench import eval_step
    row = eval_step({"config": "eval", "impl": "fast", "steps": 1, "device": "cuda", "amp": True})
    assert row["amp"] is True and row["peak_device_mb"] > 0


def test_workers_keep_freed_memory_as_the_stages_do_unless_told(monkeypatch, capsys):
    import benchmarks.run as run
    specs = []
    monkeypatch.setattr(run, "machine_line", lambda device: {"bench": "machine"})
    monkeypatch.setattr(run, "_one_run", lambda kind, spec: specs.append(spec) or {"seconds_per_step": 1.0})
    main(["--config", "tiny", "--impl", "both"])
    main(["--config", "tiny", "--no-retain-memory"])
    assert [s["retain_memory"] for s in specs] == [True, True, False]  # ours and the reference alike
    assert [s["impl"] for s in specs] == ["fast", "reference", "fast"]
