"""The live progress line: steps per epoch known to the retrainer, an ETA computed from
steps (checked against a fake clock), and no "step 24/0" when the count is unknown."""
from __future__ import annotations

import io

import torch
from torch import nn

from darts.data import BatchStream, ImageSet
from darts.loops.train import RetrainConfig, Retrainer
from stages.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _stream(n: int = 40, batch_size: int = 8) -> BatchStream:
    g = torch.Generator().manual_seed(0)
    ds = ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                  torch.arange(n) % 4, ["a", "b", "c", "d"])
    return BatchStream(ds, batch_size, seed=0, crop_pad=0)


def _trainer(calls: list) -> Retrainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    return Retrainer(model, RetrainConfig(epochs=2, batch_size=8, cutout=0),
                     on_step=lambda i, n: calls.append((i, n)))


def test_epoch_batches_has_the_epochs_length():
    stream = _stream()  # 40 images, batch 8: 5 steps
    batches = stream.epoch_batches()
    assert len(batches) == 5 and stream.position == 0  # lazy: nothing drawn yet
    next(batches)
    next(batches)
    assert len(batches) == 5 and stream.position == 2  # len is the pass's, fixed
    assert len(stream.epoch_batches()) == 3  # a pass made mid-epoch: the rest of it
    assert len(list(stream.epoch_batches())) == 3


def test_retrainer_reports_true_total_over_a_stream_and_after_a_resume():
    calls: list = []
    stream = _stream()
    trainer = _trainer(calls)
    assert trainer.train_epoch(stream.epoch_batches(), should_stop=lambda: len(calls) == 2) is None
    assert calls == [(1, 5), (2, 5)]  # was (1, 0), (2, 0): "step 24/0" on a paper retrain
    trainer.train_epoch(stream.epoch_batches())  # the resumed rest counts on from step 3 of 5
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_stop_in_an_epochs_last_step_finishes_the_epoch():
    """A stop flag raised during the last step must not return "stopped mid-epoch": the stream
    is already at the next epoch, so a checkpoint then would resume one epoch too many."""
    calls: list = []
    stream = _stream()
    trainer = _trainer(calls)
    stats = trainer.train_epoch(stream.epoch_batches(), should_stop=lambda: len(calls) == 5)
    assert stats is not None and stats["epoch"] == 0
    assert trainer.epoch == 1 and not trainer.mid_epoch and stream.position == 0 and stream.epoch == 1


def test_live_line_shows_step_of_total_and_eta_from_steps():
    clock, out = FakeClock(100.0), FakeTTY()
    p = Progress("retrain X seed 0", 600, stream=out, clock=clock)
    p.start_epoch(1, 0)
    for i in range(1, 25):  # 6 s per step, paper-like
        clock.t = 100.0 + 6.0 * i
        p.step(i, 521, None)
    last = out.getvalue().split("\r")[-1]
    assert "epoch 1/600 step 24/521 " in last and "/0" not in last
    # rate since the first step: 138 s for 23 steps = 6 s/step; 600*521 - 24 steps left
    assert (600 * 521 - 24) * 6 == 1875456
    assert "ETA 520h57m" in last, last  # 1875456 s; the old line said "4.0% ETA 1h01m"
    assert "  0.0%" in last


def test_first_step_has_no_eta_yet():
    clock, out = FakeClock(5.0), FakeTTY()
    p = Progress("search", 50, stream=out, clock=clock)
    p.start_epoch(1, 0)
    p.step(1, 390, 2.3)
    assert out.getvalue().endswith("step 1/390   0.0% loss 2.300 ETA ?   ")


def test_unknown_steps_per_epoch_prints_no_total_and_eta_from_epochs():
    clock, out = FakeClock(0.0), FakeTTY()
    p = Progress("retrain X seed 0", 600, stream=out, clock=clock)
    p.start_epoch(1, 0)
    clock.t = 144.0
    p.step(24, 0, None)
    last = out.getvalue().split("\r")[-1]
    assert "epoch 1/600 step 24 ETA ?" in last and "/0" not in last and "%" not in last
    clock.t = 3000.0  # epoch 1 took 3000 s
    p.start_epoch(2, 1)
    clock.t = 3060.0
    p.step(10, 0, None)
    last = out.getvalue().split("\r")[-1]
    assert 3000 * (600 - 1) - 60 == 1796940
    assert "epoch 2/600 step 10 ETA 499h09m" in last, last


def test_not_a_tty_prints_no_live_line():
    out = io.StringIO()
    p = Progress("search", 2, stream=out, clock=FakeClock())
    p.start_epoch(1, 0)
    p.step(3, 10, 1.0)
    assert out.getvalue() == ""
