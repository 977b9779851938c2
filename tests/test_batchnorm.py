"""BN recalibration (darts.loops.batchnorm): running statistics become the plain average of
the batch statistics at the current weights, whichever kernel computes them."""
from __future__ import annotations

import torch
from torch import nn

from darts.loops.batchnorm import recalibrate_batchnorm
from darts.loops.search import evaluate_supernet
from darts.method.activations import make_activation
from tests.netutil import batch, tiny


def _buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def test_running_statistics_are_the_mean_of_the_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    net = nn.Sequential(bn).eval()
    xs = [torch.randn(5, 3, 4, 4) * s + m for s, m in ((1.0, 0.0), (2.0, 3.0), (0.5, -1.0))]
    bn.running_mean.fill_(7.0)  # stale values: must not survive
    bn.num_batches_tracked.fill_(11)
    assert recalibrate_batchnorm(net, [(x, None) for x in xs]) == 3
    means = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    unbiased = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for x in xs]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, unbiased)
    ema = torch.full((3,), 7.0)  # what the module's own momentum would have given instead
    for x in xs:
        ema = 0.9 * ema + 0.1 * x.mean((0, 2, 3))
    assert (ema - means).abs().min() > 1.0
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 11 and not net.training


def test_no_batches_changes_nothing():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    assert recalibrate_batchnorm(nn.Sequential(bn), []) == 0
    assert torch.equal(bn.running_mean, torch.full((2,), 3.0))


def test_supernet_kernels_average_too_order_and_repeats_do_not_matter():
    """The search network's BNs run in our kernels (darts.nn.ops, darts.nn.fast.edgebatch),
    not torch's module forward: a plain average is order-invariant and unchanged by
    repeating every batch, which an exponential average is not."""
    a, b = batch(6, seed=1), batch(6, seed=2)
    nets = [tiny(make_activation(name)) for name in ("softmax", "crb") for _ in range(3)]
    for i in range(0, 6, 3):
        ab, ba, aabb = nets[i:i + 3]
        for n in (ba, aabb):
            n.load_state_dict(ab.state_dict())
        recalibrate_batchnorm(ab, [a, b])
        recalibrate_batchnorm(ba, [b, a])
        recalibrate_batchnorm(aabb, [a, a, b, b])
        first, second, third = _buffers(ab), _buffers(ba), _buffers(aabb)
        assert len(first) > 20
        for k in first:
            torch.testing.assert_close(first[k], second[k], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(first[k], third[k], rtol=1e-5, atol=1e-6)
        # and the EMA of a training-mode forward is order-dependent: the check can fail
        ema_ab, ema_ba = tiny(make_activation("softmax")), tiny(make_activation("softmax"))
        ema_ab.train(), ema_ba.train()
        with torch.no_grad():
            ema_ab(a[0]), ema_ab(b[0]), ema_ba(b[0]), ema_ba(a[0])
        assert any(not torch.allclose(v, _buffers(ema_ba)[k]) for k, v in _buffers(ema_ab).items())


def test_evaluate_supernet_reports_both_and_keeps_the_recalibrated_statistics():
    net = tiny(make_activation("softmax"))
    val, cal = [batch(8, seed=3)], [batch(8, seed=4), batch(8, seed=5)]
    plain = evaluate_supernet(net, iter(val))
    assert set(plain) == {"val_loss", "val_acc"}
    out = evaluate_supernet(net, iter(val), iter(cal))  # generators: the validation batches are scored twice
    assert out["val_acc_running_stats"] == plain["val_acc"]
    after = _buffers(net)
    recalibrate_batchnorm(net, cal)
    for k, v in _buffers(net).items():
        torch.testing.assert_close(v, after[k])
    assert evaluate_supernet(net, iter(val))["val_acc"] == out["val_acc"]
