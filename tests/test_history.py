"""The α step records without reading the device; `History.flush` moves the records once.

On a GPU every read of a device tensor (`.cpu()`, `.item()`, `nonzero()`, `bool()`)
waits for all queued work. The CPU checks pin what the records hold and that they stay
queued until a flush; the `meta` check runs a softmax α step where any such read
raises (meta tensors have no data), so it finds a sync without a GPU; the CUDA check
asserts the same with torch's sync debug mode where a GPU is present.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from netutil import FixedBatches, tiny

from darts.data import BatchStream
from darts.data.synthetic import make_synthetic
from darts.loops.history import History
from darts.loops.search import SearchConfig, Searcher
from darts.method.activations import Softmax
from darts.method.regularizers import NoRegularizer
from darts.method.schedules import alternate


def _searcher(device: str = "cpu", epochs: int = 2) -> Searcher:
    ds = make_synthetic(96, size=8, seed=0, n_classes=5)
    net = tiny(Softmax(), seed=0).to(device)
    cfg = SearchConfig(epochs=epochs, batch_size=16, alpha_lr=0.05)
    return Searcher(net, cfg, alternate(), NoRegularizer(),
                    BatchStream(ds.take(torch.arange(64)), 16, seed=0, device=device),  # 4 steps an epoch
                    BatchStream(ds.take(torch.arange(64, 96)), 16, seed=1, device=device))


def test_alpha_records_wait_on_the_device_until_flush_and_hold_act_alpha():
    s = _searcher()
    expected = {t: [w.detach().clone()] for t, w in s.net.weights().items()}  # the record at step 0
    step = s.alpha_step

    def alpha_step_and_remember(batch):
        info = step(batch)
        for t, w in s.net.weights().items():
            expected[t].append(w.detach().clone())
        return info

    s.alpha_step = alpha_step_and_remember
    stops = iter([False, False, True])
    assert s.run_epoch(should_stop=lambda: next(stops)) is None  # 3 iterations, stopped mid-epoch
    h = s.history
    assert len(h._pending_alpha) == 4 and len(h._pending) == 3  # queued, nothing on the host yet
    assert all(not v for v in h._alpha.values()) and h.val_loss == []
    d = h.state_dict()
    assert h._pending_alpha == [] and h._pending == []
    for t in ("normal", "reduce"):
        assert d["alpha"][t].dtype == torch.float32 and d["alpha"][t].shape == (4, 14, 8)
        assert torch.equal(d["alpha"][t], torch.stack(expected[t]))
    assert not torch.equal(d["alpha"]["normal"][0], d["alpha"]["normal"][3])  # α did move
    assert len(d["val_loss"]) == 3 and d["alpha_steps"] == [0, 0, 1, 2]
    # the checkpoint round trip is exact, and records made after it land behind the loaded ones
    h2 = History(ops=list(s.net.ops))
    h2.load_state_dict(d)
    d2 = h2.state_dict()
    assert all(torch.equal(d2["alpha"][t], d["alpha"][t]) for t in d["alpha"]) and d2["val_loss"] == d["val_loss"]
    h2.record_alpha(3, 0, s.net.weights())
    assert len(h2._pending_alpha) == 1 and len(h2.alpha["normal"]) == 5 and h2._pending_alpha == []
    assert torch.equal(h2.alpha["normal"][4], s.net.weights()["normal"].detach())


def test_epoch_end_flushes_and_losses_keep_their_values():
    s = _searcher()
    row = s.run_epoch()
    h = s.history
    assert h._pending_alpha == [] and h._pending == []
    assert len(h.alpha["normal"]) == 1 + 4 and len(h.val_loss) == 4
    assert row["val_loss"] == pytest.approx(sum(h.val_loss) / 4)


def test_record_alpha_accepts_every_no_pruning_answer():
    h = History(ops=["a", "b", "c"])
    w = {"normal": torch.zeros(2, 3), "reduce": torch.zeros(2, 3)}
    for newly in (None, {}, {"normal": None, "reduce": None}):  # new prune / old prune with softmax
        h.record_alpha(1, 0, w, newly=newly)
    assert h.pruned == []
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 2] = True
    h.record_alpha(2, 0, w, newly={"normal": mask, "reduce": torch.zeros_like(mask)})
    assert h.pruned == [{"step": 2, "cell": "normal", "edge": 1, "op": "c"}]
    assert h.alpha_tensor("reduce").shape == (4, 2, 3)


def test_softmax_alpha_step_reads_nothing_back_from_the_device(monkeypatch):
    """On `meta` every host read raises, so this fails wherever the α step would sync a GPU."""
    monkeypatch.setattr(Searcher, "_autocast", lambda self: contextlib.nullcontext())  # no meta autocast
    net = tiny(Softmax(), seed=0).to("meta")
    batch = (torch.empty(4, 3, 8, 8, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"))
    s = Searcher(net, SearchConfig(epochs=2, batch_size=4), alternate(), NoRegularizer(),
                 FixedBatches(batch), FixedBatches(batch))
    for _ in range(3):
        s.alpha_step(batch)
    assert len(s.history._pending_alpha) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_softmax_alpha_step_does_not_sync_the_gpu():
    # pre-drawn batches already on the GPU: the data pipeline is not what is checked here
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = (torch.randn(16, 3, 8, 8, device="cuda", generator=g),
             torch.randint(0, 5, (16,), device="cuda", generator=g))
    net = tiny(Softmax(), seed=0).to("cuda")
    s = Searcher(net, SearchConfig(epochs=3, batch_size=16), alternate(), NoRegularizer(),
                 FixedBatches(batch, 4), FixedBatches(batch, 4))
    s.run_epoch()  # warm-up outside the check: lazy CUDA/cuDNN initialisation may sync
    step = s.alpha_step

    def checked_alpha_step(train_batch):
        torch.cuda.set_sync_debug_mode("error")  # any sync inside raises
        try:
            return step(train_batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    s.alpha_step = checked_alpha_step
    row = s.run_epoch()  # first order, alternate: an α step before each of the 4 w steps
    assert row["alpha_steps"] == 4 and s.history._pending_alpha == []
    assert all(t.device.type == "cpu" for t in s.history.alpha["normal"]) and len(s.history.alpha["normal"]) == 9
