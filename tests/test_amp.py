"""Mixed precision (bfloat16 autocast) as an option of the search and the retrain.

No GPU is needed to check the mechanics: CPU autocast runs the same code path. The
checks: the option is validated, the forward really runs in bfloat16 under it, weights
and α stay float32, and one step lands close to the float32 step.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darts.data import BatchStream
from darts.data.synthetic import make_synthetic
from darts.loops.search import SearchConfig, Searcher
from darts.loops.train import RetrainConfig, Retrainer, autocast
from darts.method.activations import CRB
from darts.method.regularizers import NoRegularizer
from darts.method.schedules import alternate
from darts.nn.evalnet import EvalNetwork
from darts.space.primitives import DARTS_V2
from netutil import tiny


def _searcher(amp: bool, size: int = 8) -> Searcher:
    ds = make_synthetic(64, size=size, seed=0, n_classes=5)
    net = tiny(CRB(), seed=0)
    cfg = SearchConfig(epochs=1, batch_size=16, alpha_lr=0.05, amp=amp)
    return Searcher(net, cfg, alternate(), NoRegularizer(),
                    BatchStream(ds.take(torch.arange(32)), 16, seed=0),
                    BatchStream(ds.take(torch.arange(32, 64)), 16, seed=1))


def test_amp_must_be_a_bool():
    with pytest.raises(ValueError, match="search.amp='yes'"):
        SearchConfig(amp="yes").validate()
    with pytest.raises(ValueError, match="retrain.amp=1"):
        RetrainConfig(amp=1).validate()


def test_autocast_runs_convolutions_in_bfloat16():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with autocast(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32


def test_search_epoch_with_amp_runs_and_keeps_float32_state():
    for amp in (False, True):
        s = _searcher(amp)
        row = s.run_epoch()
        assert torch.isfinite(torch.tensor(row["train_loss"]))
        assert all(p.dtype == torch.float32 for p in s.net.parameters())
        assert len(s.history.alpha_steps) - 1 == 2  # alternate: one α step per w step


@pytest.mark.parametrize("batched", [True, False])
def test_search_epoch_with_amp_takes_the_cpu_fast_paths(monkeypatch, batched):
    """At 16×16 the first cell's BatchNorms (4096 rows, 4 channels) are row BatchNorms in
    float32 and its 5×5 depthwise convolutions compute their weight gradient in two 5×3
    pieces; under autocast both once failed (a bfloat16 mean into float32 running stats, a
    bfloat16 gradient against a float32 weight). Unbatched, every edge's 5×5 takes that path
    (as a family pruned down to one member does)."""
    if not batched:
        monkeypatch.setattr("darts.nn.fast.edgebatch.MAX_NUMEL", 0)
    losses = []
    for amp in (False, True):
        s = _searcher(amp, size=16)
        losses.append(s.run_epoch()["train_loss"])
        assert all(p.dtype == torch.float32 for p in s.net.parameters())
        assert all(b.dtype == torch.float32 for n, b in s.net.named_buffers() if "running" in n)
    assert abs(losses[0] - losses[1]) < 0.05 * losses[0]


def test_row_batch_norm_is_float32_only():
    from darts.nn.ops import batch_norm_function
    x = torch.randn(16, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    stats = [(torch.zeros(4), torch.ones(4)) for _ in range(2)]
    for dtype in (torch.float32, torch.bfloat16):
        for (rm, rv), fn in zip(stats, (batch_norm_function, F.batch_norm)):
            y = fn(x.to(dtype), rm, rv, None, None, True, 0.1, 1e-5)
            assert y.dtype == dtype and rm.dtype == rv.dtype == torch.float32
        torch.testing.assert_close(stats[0], stats[1])  # float32 statistics either way


def test_amp_alpha_gradient_points_where_fp32_does():
    # Adam's first steps are ~lr·sign(g), so compare gradients, not α after a step
    net = tiny(CRB(), seed=0)
    ds = make_synthetic(32, size=8, seed=0, n_classes=5)
    x = ds.images.float() / 255
    grads, losses = [], []
    for amp in (False, True):
        with autocast(torch.device("cpu"), amp):
            loss = F.cross_entropy(net(x).float(), ds.labels)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, net.arch_parameters())]))
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 0.02 * losses[0]
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.95


def test_retrain_step_with_amp():
    losses = []
    for amp in (False, True):
        torch.manual_seed(0)
        net = EvalNetwork(DARTS_V2, C=4, n_classes=5, layers=3, auxiliary=True)
        r = Retrainer(net, RetrainConfig(epochs=1, batch_size=8, amp=amp, cutout=0))
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
        losses.append(r.train_epoch([(x, y)])["loss"])
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert abs(losses[0] - losses[1]) < 0.05 * losses[0]
