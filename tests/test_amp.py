"""Mixed precision (bfloat16 autocast) as an option of the search and the retrain.

No GPU is needed to check the mechanics: CPU autocast runs the same code path. The
checks: the option is validated, the forward really runs in bfloat16 under it, weights
and α stay float32, and one step lands close to the float32 step.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darts.activations import CRB
from darts.data import BatchStream
from darts.evalnet import EvalNetwork
from darts.regularizers import NoRegularizer
from darts.schedules import alternate
from darts.search import SearchConfig, Searcher
from darts.space import DARTS_V2
from darts.synthetic import make_synthetic
from darts.train import RetrainConfig, Retrainer, autocast
from netutil import tiny


def _searcher(amp: bool) -> Searcher:
    ds = make_synthetic(64, size=8, seed=0, n_classes=5)
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
